"""Sweep-level figures with seaborn: loss curves, attention grid, KV-cache speed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
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
                 markersize=3, style="config" if val["config"].nunique() > 1 else None)
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
    """The paired speed-up of every model, by number of new tokens and batch size."""
    if speed.empty:
        return None
    data = speed.assign(model=speed["model_key"].fillna(speed["job"]))
    data = data.groupby(["batch_size", "new_tokens", "model"], as_index=False)["speedup"].median()
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    sns.stripplot(data=data, x="new_tokens", y="speedup", hue="batch_size",
                  dodge=data["batch_size"].nunique() > 1, ax=ax,
                  alpha=0.7)
    several = data["batch_size"].nunique() > 1
    sns.pointplot(data=data, x="new_tokens", y="speedup", hue="batch_size",
                  dodge=0.4 if several else False,
                  estimator="median", errorbar=None, markers="_", linestyles="none", ax=ax,
                  legend=False)
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set(xlabel="generated tokens", ylabel="speed-up (uncached time / cached time)",
           title="KV cache: paired speed-up per model (dots), median (bars)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def position_shift(runs, path) -> Path | None:
    """Loss change when the same validation trajectories move k positions later, per pos."""
    cols = [c for c in runs if c.startswith("delta_shift_")]
    done = runs[(runs["status"] == "completed") & (runs["mask"] == "causal")]
    if not cols or done.empty:
        return None
    done = done.drop_duplicates(subset=["model_key"]) if "model_key" in done else done
    long = done.melt(id_vars=["pos", "seed", "config"], value_vars=cols, value_name="delta")
    long = long.dropna(subset=["delta"])
    if long.empty:
        return None
    long["shift"] = long["variable"].str.rsplit("_", n=1).str[1].astype(int)
    zero = long[["pos", "seed", "config"]].drop_duplicates().assign(shift=0, delta=0.0)
    long = pd.concat([zero, long[["pos", "seed", "config", "shift", "delta"]]])
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    sns.lineplot(data=long, x="shift", y="delta", hue="pos",
                 style="config" if long["config"].nunique() > 1 else None,
                 errorbar=("ci", 95), marker="o", ax=ax)
    ax.axhline(0.0, color="grey", lw=1, ls="--")
    ax.set(xlabel="positions added to every token's position",
           ylabel="loss change (nats/token)",
           title="position shift: same trajectories, later positions (causal mask)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
