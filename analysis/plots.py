"""Sweep-level figures with seaborn: loss curves, attention grid, KV-cache speed."""

from __future__ import annotations

from pathlib import Path

import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.image import imread  # no pyplot: no global backend or figure state


def loss_curves(metrics, hue, path, mask=None) -> Path | None:
    """Validation loss against step, one line per ``hue`` value (mean, 95% band over seeds)."""
    val = metrics[metrics["split"] == "val"]
    if mask is not None:
        val = val[val["mask"] == mask]
    if val.empty:
        return None
    # jobs sharing a trained model carry identical curves: count each model once
    val = val.drop_duplicates(subset=["model_key", "step"]) if "model_key" in val else val
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    sns.lineplot(data=val, x="step", y="loss", hue=hue, errorbar=("ci", 95), ax=ax, marker="o",
                 markersize=3)
    ax.set(ylabel="validation loss (nats/token)",
           title=f"validation loss by {hue}" + (f" (mask={mask})" if mask else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def attention_grid(runs, path) -> Path | None:
    """The first completed run's attention maps for each mask, side by side."""
    picks = []
    for mask in ("causal", "none"):
        done = runs[(runs["status"] == "completed") & (runs["mask"] == mask)]
        for run in done.sort_values(["pos", "seed", "job"]).itertuples():
            image = Path(run.path) / "attention_maps.png"
            if image.exists():
                picks.append((f"mask={mask} (pos={run.pos}, seed={run.seed})", image))
                break
    if not picks:
        return None
    fig = Figure(figsize=(7 * len(picks), 6))
    axes = fig.subplots(1, len(picks), squeeze=False)
    for ax, (title, image) in zip(axes[0], picks):
        ax.imshow(imread(image))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def kv_speed(speed, path) -> Path | None:
    if speed.empty:
        return None
    data = speed.assign(cache=speed["use_cache"].map({True: "on", False: "off"}))
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    sns.lineplot(data=data, x="new_tokens", y="tokens_per_s", hue="cache", style="batch_size",
                 markers=True, estimator="median", errorbar=None, ax=ax)
    ax.set(xlabel="generated tokens", ylabel="tokens/s (median over runs)", yscale="log",
           title="generation speed with and without the KV cache")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
