"""The per-run figures: the loss curve and every layer's and head's attention map."""

from __future__ import annotations

import math

from matplotlib.figure import Figure  # no pyplot: no global backend or figure state


def loss_curve(records, path, title="") -> None:
    train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train"]
    val = [(r["step"], r["loss"]) for r in records if r.get("split") == "val"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5, ms=3)
    ax.axhline(math.log(5), color="grey", ls=":", lw=1, label="noise floor ln 5")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title or "loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def attention_maps(maps, path, title="") -> None:
    """``maps``: one (H, T, T) tensor per layer (one trajectory). Rows: layers; columns: heads."""
    layers, heads = len(maps), maps[0].shape[0]
    fig = Figure(figsize=(1.6 * heads + 1, 1.6 * layers + 0.6))
    axes = fig.subplots(layers, heads, squeeze=False)
    for li, layer in enumerate(maps):
        for hi in range(heads):
            ax = axes[li][hi]
            ax.imshow(layer[hi].float().cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if li == 0:
                ax.set_title(f"head {hi}", fontsize=8)
            if hi == 0:
                ax.set_ylabel(f"layer {li}", fontsize=8)
    fig.suptitle(title or "attention (rows: query, columns: key)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
