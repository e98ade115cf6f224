"""Two recipes' validation losses, paired by seed: each recipe's mean with its 95% t-interval
over seeds, and the paired difference with its own interval.

    python benchmarks/recipe_pairs.py "new=RUNS_A" "today=RUNS_B" [--step 1200 1200]

Each RUNS folder holds one run per seed (a sweep over `seed`, or run folders side by side): every
summary.json below it is read. ``--step A B`` takes the first side's validation loss at step A
and the second's at step B from their metrics.jsonl (the whole split, evaluated every
train.eval_every steps) instead of the final ones, so a longer run can be compared at an equal
step. Seeds present in both are paired; the
interval of the difference is over those pairs (n pairs, n - 1 degrees of freedom).
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    sides = []
    for item, step in zip(args.runs, args.step or (None, None)):
        label, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"give LABEL=RUNS, got '{item}'")
        sides.append((label, losses_by_seed(Path(folder), step), step))
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
