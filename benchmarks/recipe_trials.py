"""The trials of a recipe search (`hparams_search=recipe`), best first, and the best one's curve.

    python benchmarks/recipe_trials.py SEARCH_DIR [--csv docs/results/recipe-search/trials.csv]

Reads the Optuna study in SEARCH_DIR/optuna.db (the search's own record of every trial, its
parameters and its objective) and each trial's folder (its validation curve in metrics.jsonl,
found through the overrides Hydra saved in .hydra/overrides.yaml). Prints one row per trial,
ranked by the final validation loss, then the best trial's validation losses along its steps
and the step at which it first reached each --threshold.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import yaml
from recipe_pairs import metrics_path  # benchmarks/: one way to find a job's curve


def load_trials(search: Path) -> list[dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = search / "optuna.db"
    if not db.exists():
        raise SystemExit(f"error: {db} does not exist (is {search} a recipe search's folder?)")
    study = optuna.load_study(study_name="recipe", storage=f"sqlite:///{db}")
    return [{"trial": t.number, "state": t.state.name, "value": t.value, **t.params}
            for t in study.trials]


def _same(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def trial_folders(search: Path, trials: list[dict]) -> dict[int, Path]:
    """Trial number -> its job folder: the folder whose saved overrides give its parameters."""
    jobs = []
    for overrides in search.glob("*/.hydra/overrides.yaml"):
        items = yaml.safe_load(overrides.read_text()) or []
        jobs.append((overrides.parent.parent, dict(i.split("=", 1) for i in items if "=" in i)))
    found = {}
    for t in trials:
        params = {k: v for k, v in t.items() if k not in ("trial", "state", "value")}
        for folder, given in jobs:
            if all(k in given and _same(given[k], v) for k, v in params.items()):
                found[t["trial"]] = folder
    return found


def validation_curve(folder: Path) -> list[tuple[int, float]]:
    """The job's validation losses by step (its own or its trained model's metrics.jsonl)."""
    path = metrics_path(folder)
    if path is None:
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if r["split"] == "val"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("search", type=Path)
    parser.add_argument("--csv", type=Path, help="also write the table as CSV")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[1.95, 1.9])
    args = parser.parse_args()
    trials = load_trials(args.search)
    done = sorted((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    params = sorted({k for t in trials for k in t} - {"trial", "state", "value"})
    short = [p.removeprefix("train.") for p in params]
    print(f"{len(done)} complete of {len(trials)} trials in {args.search / 'optuna.db'}")
    print("| rank | trial | val loss | " + " | ".join(short) + " |")
    print("|---" * (3 + len(params)) + "|")
    for rank, t in enumerate(done, 1):
        cells = [f"{t[p]:.3g}" if isinstance(t.get(p), float) else str(t.get(p, ""))
                 for p in params]
        print(f"| {rank} | {t['trial']} | {t['value']:.4f} | " + " | ".join(cells) + " |")
    others = [t for t in trials if t["state"] != "COMPLETE"]
    for t in others:
        print(f"trial {t['trial']}: {t['state'].lower()}")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["rank", "trial", "state", "value", *params])
            writer.writeheader()
            for rank, t in enumerate(done, 1):
                writer.writerow({"rank": rank, **t})
            for t in others:
                writer.writerow(t)
        print(f"wrote {args.csv}")
    if not done:
        return
    best = done[0]
    folder = trial_folders(args.search, [best]).get(best["trial"])
    curve = validation_curve(folder) if folder else []
    print(f"\nbest: trial {best['trial']}, val loss {best['value']:.4f}"
          + (f", folder {folder.name}" if folder else " (its folder was not found)"))
    for step, loss in curve:
        print(f"  step {step:>5}  val {loss:.4f}")
    for threshold in args.thresholds:
        hit = next((s for s, loss in curve if loss <= threshold), None)
        print(f"val loss <= {threshold:g}: " + (f"step {hit}" if hit else "not reached"))


if __name__ == "__main__":
    main()
