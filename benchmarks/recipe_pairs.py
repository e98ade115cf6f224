"""Two recipes' validation losses, paired by seed: each recipe's mean with its 95% t-interval
over seeds, and the paired difference with its own interval.

    python benchmarks/recipe_pairs.py "new=RUNS_A" "today=RUNS_B" [--step 1200 1200]
    python benchmarks/recipe_pairs.py "new=RUNS" "published=docs/results/2026-11-29/metrics.csv" \
        --where pos=rope mask=causal

Each RUNS folder holds one run per seed (a sweep over `seed`, or run folders side by side): every
summary.json below it is read. ``--step A B`` takes the first side's validation loss at step A
and the second's at step B from their metrics.jsonl (the whole split, evaluated every
train.eval_every steps) instead of the final ones, so a longer run can be compared at an equal
step. A side may instead be a ``metrics.csv`` that ``python -m analysis`` wrote (a committed
study's curves, without its run folders): its rows are narrowed by ``--where KEY=VALUE ...``
(columns of that file, e.g. pos=rope mask=causal), and a seed's loss is its whole-split
validation loss at the step asked, or at its last step. Seeds present in both are paired; the
interval of the difference is over those pairs (n pairs, n - 1 degrees of freedom).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

from scipy import stats


def metrics_path(job: Path) -> Path | None:
    """A job's metrics.jsonl: its own, or that of the model folder its summary names (a sweep's
    jobs train into, or reuse, models/KEY/; the summary's model_dir may be absolute or relative
    to the job, the sweep or the launch folder)."""
    own = job / "metrics.jsonl"
    if own.exists() or not (job / "summary.json").exists():
        return own if own.exists() else None
    model_dir = Path(json.loads((job / "summary.json").read_text()).get("model_dir") or "")
    if not str(model_dir):
        return None
    for base in (Path(), job, job.parent, job.parent / "models"):
        for candidate in (base / model_dir, base / model_dir.name):
            if (candidate / "metrics.jsonl").exists():
                return candidate / "metrics.jsonl"
    return None


def losses_by_seed(folder: Path, step: int | None) -> dict[int, float]:
    out = {}
    for summary in sorted(folder.rglob("summary.json")):
        data = json.loads(summary.read_text())
        if data.get("status") != "completed":
            continue
        if step is None:
            value = data["val_loss"]
        else:
            path = metrics_path(summary.parent)
            rows = [] if path is None else [json.loads(x) for x in path.read_text().splitlines()
                                            if x.strip()]
            hits = [r["loss"] for r in rows if r["split"] == "val" and r["step"] == step]
            if not hits:
                raise SystemExit(f"error: {summary.parent} has no validation loss at step {step}")
            value = hits[-1]
        seed = data["seed"]
        if seed in out and out[seed] != value:
            raise SystemExit(f"error: {folder} holds two different runs of seed {seed}")
        out[seed] = value
    if not out:
        raise SystemExit(f"error: no completed summary.json under {folder}")
    return out


def losses_from_csv(path: Path, step: int | None, where: dict[str, str]) -> dict[int, float]:
    """Each seed's whole-split validation loss at ``step`` (None: its last) in an analysis
    metrics.csv, over the rows that match ``where``; jobs that share a model (cache on and off)
    hold the same curve, two different curves for one seed are an error."""
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "val"
                and r.get("status", "completed") == "completed"]
    missing = [k for k in where if rows and k not in rows[0]]
    if missing:
        raise SystemExit(f"error: {path} has no column {', '.join(missing)}")
    rows = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    curves: dict[int, dict[str, dict[int, float]]] = {}
    for r in rows:
        curves.setdefault(int(r["seed"]), {}).setdefault(r["job"], {})[int(r["step"])] = float(
            r["loss"])
    out = {}
    for seed, jobs in curves.items():
        values = set()
        for curve in jobs.values():
            at = max(curve) if step is None else step
            if at not in curve:
                raise SystemExit(f"error: {path}: seed {seed} has no validation loss at step {at}")
            values.add(curve[at])
        if len(values) > 1:
            raise SystemExit(f"error: {path} holds two different runs of seed {seed} for "
                             f"{where or 'all rows'}: narrow it with --where")
        out[seed] = values.pop()
    if not out:
        raise SystemExit(f"error: no validation rows in {path} match {where}")
    return out


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan for one value)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs=2, metavar="LABEL=RUNS")
    parser.add_argument("--step", type=int, nargs=2, metavar=("STEP_A", "STEP_B"),
                        help="compare at these steps of each (default: final losses)")
    parser.add_argument("--where", nargs="+", default=[], metavar="KEY=VALUE",
                        help="rows of a metrics.csv side to keep, e.g. pos=rope mask=causal "
                        "(both sides, where both are one; after the two LABEL=RUNS)")
    args = parser.parse_args()
    where = dict(item.partition("=")[::2] for item in args.where)
    if any(not k or not v for k, v in where.items()) or len(where) != len(args.where):
        parser.error(f"--where takes KEY=VALUE items, got {' '.join(args.where)}")
    if where and not any(item.endswith(".csv") for item in args.runs):
        parser.error("--where narrows a metrics.csv side; neither side is one")
    sides = []
    for item, step in zip(args.runs, args.step or (None, None)):
        label, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"give LABEL=RUNS, got '{item}'")
        path = Path(folder)
        if path.suffix == ".csv":
            values = losses_from_csv(path, step, where)
        else:
            values = losses_by_seed(path, step)
        sides.append((label, values, step))
    (label_a, a, step_a), (label_b, b, step_b) = sides
    print("| recipe | at step | seeds | validation loss per seed | mean ± 95% t-interval |")
    print("|---|---|---|---|---|")
    for label, values, step in sides:
        mean, half = mean_interval(list(values.values()))
        per_seed = ", ".join(f"{s}: {v:.4f}" for s, v in sorted(values.items()))
        print(f"| {label} | {step or 'final'} | {len(values)} | {per_seed} | "
              f"{mean:.4f} ± {half:.4f} |")
    seeds = sorted(set(a) & set(b))
    if not seeds:
        print("no seed in both: nothing to pair")
        return
    diffs = [a[s] - b[s] for s in seeds]
    mean, half = mean_interval(diffs)
    below = sum(d < 0 for d in diffs)
    print(f"\n{label_a} - {label_b}, paired by seed (n = {len(seeds)} pairs, df = "
          f"{len(seeds) - 1}): {mean:+.4f} ± {half:.4f} nats; per seed "
          + ", ".join(f"{s}: {d:+.4f}" for s, d in zip(seeds, diffs))
          + f"; {label_a} lower in {below} of {len(seeds)} seeds")


if __name__ == "__main__":
    main()
