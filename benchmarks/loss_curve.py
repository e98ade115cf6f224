"""Plot a run's validation curve against steps and minutes, marking where it crossed thresholds.

    python benchmarks/loss_curve.py RUN_DIR [--out docs/default_run_loss.png] [--thresholds 2.0 1.9]

Reads the run folder's metrics.jsonl; prints, for each threshold, the first evaluated step and
the wall-clock minute at which the validation loss was at or below it.
"""

import argparse
import json
import math
from pathlib import Path

from matplotlib.figure import Figure


def crossings(val, thresholds):
    out = {}
    for threshold in thresholds:
        hit = next((r for r in val if r["loss"] <= threshold), None)
        out[threshold] = None if hit is None else (hit["step"], hit["elapsed_s"] / 60)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/default_run_loss.png"))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[2.0, 1.9])
    args = parser.parse_args()
    records = [json.loads(x) for x in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    found = crossings(val, args.thresholds)

    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    ax.plot([r["elapsed_s"] / 60 for r in train], [r["loss"] for r in train], lw=1,
            label="train (mean over log window)")
    ax.plot([r["elapsed_s"] / 60 for r in val], [r["loss"] for r in val], "o-", ms=3,
            label="validation")
    for threshold, hit in found.items():
        ax.axhline(threshold, color="grey", ls="--", lw=0.8)
        text = (f"{threshold:g}: step {hit[0]}, {hit[1]:.1f} min" if hit
                else f"{threshold:g}: not reached")
        ax.text(0.99, threshold, text, ha="right", va="bottom", fontsize=8,
                transform=ax.get_yaxis_transform())
    ax.axhline(math.log(5), color="black", ls=":", lw=0.8, label="noise floor ln 5")
    ax.set(xlabel="minutes", ylabel="cross-entropy (nats/token)", ylim=(1.5, 3.0),
           title=f"{args.run_dir.name}: final validation loss {val[-1]['loss']:.4f} "
                 f"at step {val[-1]['step']}")
    ax.legend(fontsize=8, loc="upper center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    for threshold, hit in found.items():
        print(f"val loss <= {threshold:g}: " + (f"step {hit[0]}, minute {hit[1]:.1f}" if hit
                                                else "not reached"))
    print(f"final: step {val[-1]['step']}, val loss {val[-1]['loss']:.4f}, "
          f"{val[-1]['elapsed_s'] / 60:.1f} min; wrote {args.out}")


if __name__ == "__main__":
    main()
