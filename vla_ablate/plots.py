"""The per-run figures: the loss curve and every layer's and head's attention map."""

from __future__ import annotations

import math

from matplotlib.figure import Figure  # no pyplot: no global backend or figure state


def loss_curve(records, path, title="") -> None:
    """Training and validation loss against step; with state tokens (records with
    ``action_loss``) also the validation loss of the action tokens, the comparable figure."""
    train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train"]
    val = [(r["step"], r["loss"]) for r in records if r.get("split") == "val"]
    action = [(r["step"], r["action_loss"]) for r in records
              if r.get("split") == "val" and r.get("action_loss") is not None]
    what = " (training objective)" if action else ""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label=f"train{what}", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label=f"validation{what}", lw=1.5, ms=3)
    if action:
        ax.plot(*zip(*action), "s-", label="validation, action tokens", lw=1.5, ms=3)
    ax.axhline(math.log(5), color="grey", ls=":", lw=1, label="noise floor ln 5")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title or "loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def attention_maps(maps, path, title="") -> None:
    """``maps``: one (H, T, T) tensor per layer (one trajectory). Rows: layers; columns: heads.

    One colour scale for every panel (0 to the largest weight), so panels compare directly.
    """
    layers, heads = len(maps), maps[0].shape[0]
    T = maps[0].shape[-1]
    grids = [m.float().cpu().numpy() for m in maps]
    vmax = max(float(g.max()) for g in grids) or 1.0
    fig = Figure(figsize=(1.9 * heads + 1.4, 1.9 * layers + 0.9), layout="constrained")
    axes = fig.subplots(layers, heads, squeeze=False, sharex=True, sharey=True)
    ticks = sorted({0, T // 2, T - 1})
    for li, grid in enumerate(grids):
        for hi in range(heads):
            ax = axes[li][hi]
            image = ax.imshow(grid[hi], cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.tick_params(labelsize=7)
            if li == 0:
                ax.set_title(f"head {hi}", fontsize=9)
            if li == layers - 1:
                ax.set_xlabel("key step", fontsize=8)
            if hi == 0:
                ax.set_ylabel(f"layer {li}\nquery step", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle(title or "attention (rows: query step, columns: key step)", fontsize=10)
    fig.savefig(path, dpi=100)
