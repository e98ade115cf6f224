"""Plot a run's validation curve against steps and minutes, marking where it crossed thresholds.

    python benchmarks/loss_curve.py RUN_DIR [--out docs/default_run_loss.png] [--thresholds 2.0 1.9]
    python benchmarks/loss_curve.py --compare LABEL=RUN_DIR ... --out docs/recipes_loss.png

Reads the run folder's metrics.jsonl; prints, for each threshold, the first evaluated step and
the wall-clock minute at which the validation loss was at or below it. ``--compare`` instead
draws the validation curves of several runs against minutes and against training tokens, and
prints each run's table of evaluations.
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


def read_records(run_dir: Path):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist (is {run_dir} a run folder?)")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def compare(runs, out: Path, thresholds):
    """Validation curves of several runs, against minutes and against training tokens."""
    fig = Figure(figsize=(9.6, 3.8))
    by_time, by_tokens = fig.subplots(1, 2, sharey=True)
    for label, run_dir in runs:
        records = read_records(run_dir)
        val = [r for r in records if r["split"] == "val"]
        tokens_per_step = _tokens_per_step(run_dir)
        by_time.plot([r["elapsed_s"] / 60 for r in val], [r["loss"] for r in val], "o-", ms=3,
                     label=label)
        if tokens_per_step:
            by_tokens.plot([r["step"] * tokens_per_step / 1e6 for r in val],
                           [r["loss"] for r in val], "o-", ms=3, label=label)
        print(f"{label} ({run_dir}):")
        for r in val:
            print(f"  step {r['step']:>5}  minute {r['elapsed_s'] / 60:5.1f}  val {r['loss']:.4f}")
    for ax in (by_time, by_tokens):
        for threshold in thresholds:
            ax.axhline(threshold, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    by_time.set(xlabel="minutes of training", ylabel="validation cross-entropy (nats/token)")
    by_tokens.set(xlabel="training tokens (millions)")
    by_time.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


def _tokens_per_step(run_dir: Path):
    """batch_size x (seq_length - 1) from the run's saved Hydra config, if there is one."""
    config = run_dir / ".hydra" / "config.yaml"
    if not config.exists():
        return None
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config)
    return cfg.train.batch_size * (cfg.data.seq_length - 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--out", type=Path, default=Path("docs/default_run_loss.png"))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[2.0, 1.9])
    parser.add_argument("--compare", nargs="+", metavar="LABEL=RUN_DIR",
                        help="plot several runs' validation curves instead")
    args = parser.parse_args()
    if args.compare:
        runs = []
        for item in args.compare:
            label, sep, folder = item.partition("=")
            if not sep:
                parser.error(f"--compare takes LABEL=RUN_DIR, got '{item}'")
            runs.append((label, Path(folder)))
        compare(runs, args.out, args.thresholds)
        return
    if args.run_dir is None:
        parser.error("give a RUN_DIR, or --compare LABEL=RUN_DIR ...")
    records = read_records(args.run_dir)
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
