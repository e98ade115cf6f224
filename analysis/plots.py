"""Sweep-level figures with seaborn: loss curves, the mask audit, attention grid, KV-cache speed,
and the action error by tokenizer (runs on continuous actions).

Every band or interval says what it is over, and is computed over just that: the seeds of one
encoding (and one training configuration), never several encodings pooled. Colours that tell
groups apart come from one qualitative, colour-blind-safe palette (Okabe-Ito), never a light to
dark ramp whose first colour is barely visible.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.image import imread  # no pyplot: no global backend or figure state
from matplotlib.ticker import MaxNLocator

from analysis.common import ATTENTION_MAPS, ATTENTION_PNG, NOISE_FLOOR

# Okabe-Ito: distinct in colour and in lightness, also for colour-blind readers
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
SEED_BAND = "line: mean over seeds; band: 95% CI over seeds"
TEACHER_FORCED = "teacher-forced (every position sees the whole input)"
PREFIX_ONLY = "prefix-only (each prefix alone, as in generation)"


def _seeds(frame, by) -> str:
    """``n=2-3 seeds``: how many seeds each group of ``by`` holds (one model per seed)."""
    counts = frame.groupby(by)["seed"].nunique() if "seed" in frame else pd.Series([1])
    low, high = int(counts.min()), int(counts.max())
    return f"n={low} seed{'s' if high > 1 else ''}" if low == high else f"n={low}-{high} seeds"


def _figure(style: str | None, data) -> Figure:
    """A one-panel figure, taller where a legend of training configurations goes below it."""
    rows = data[style].nunique() if style else 0
    return Figure(figsize=(6.5, 4.3 + 0.22 * (rows + 2) * bool(rows)), layout="constrained")


def _legend_below(ax, style: str | None) -> None:
    """Long configuration labels below the plot, where they hide no line."""
    if style and ax.get_legend() is not None:
        sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8,
                        frameon=False)


def loss_curves(metrics, hue, path, mask=None) -> Path | None:
    """Validation loss against step, one line per ``hue`` value: the mean over seeds with a
    95% band over seeds, each line one ``hue`` value of one training configuration."""
    val = metrics[metrics["split"] == "val"]
    if mask is not None:
        val = val[val["mask"] == mask]
    if val.empty:
        return None
    # jobs sharing a trained model carry identical curves: count each model once
    val = val.drop_duplicates(subset=["model_key", "step"]) if "model_key" in val else val
    style = "config" if "config" in val and val["config"].nunique() > 1 else None
    fig = _figure(style, val)
    ax = fig.subplots()
    sns.lineplot(data=val, x="step", y="loss", hue=hue, errorbar=("ci", 95), ax=ax, marker="o",
                 markersize=3, style=style, palette=PALETTE[:val[hue].nunique()])
    _legend_below(ax, style)
    groups = [hue, style] if style else [hue]
    ax.set(ylabel="validation loss, teacher-forced (nats/token)",
           title=f"validation loss by {hue}" + (f" (mask={mask})" if mask else "")
           + f"\n{SEED_BAND}, {_seeds(val, groups)}")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return Path(path)


def mask_losses(runs, path) -> Path | None:
    """The mask question in one figure: teacher-forced and prefix-only validation loss side by
    side for each mask, one panel per encoding (and training configuration); one dot per
    trained model (seed), the mean with its 95% interval over those seeds.

    Teacher-forced alone would show the unmasked model "winning": it sees the tokens it is
    asked to predict. The prefix-only loss is what it scores when generating."""
    need = {"status", "pos", "mask", "val_loss_teacher_forced", "val_loss_prefix_only"}
    if runs.empty or not need <= set(runs):
        return None
    done = runs[runs["status"] == "completed"].dropna(
        subset=["val_loss_teacher_forced", "val_loss_prefix_only"], how="all")
    done = done.drop_duplicates(subset=["model_key"]) if "model_key" in done else done
    if done.empty:
        return None
    done = done.assign(config=done["config"] if "config" in done else "default")
    long = done.melt(id_vars=["config", "pos", "mask", "seed"],
                     value_vars=["val_loss_teacher_forced", "val_loss_prefix_only"],
                     var_name="loss", value_name="value").dropna(subset=["value"])
    long["loss"] = long["loss"].map({"val_loss_teacher_forced": TEACHER_FORCED,
                                     "val_loss_prefix_only": PREFIX_ONLY})
    panels = list(long.groupby(["config", "pos"]).groups)
    several = long["config"].nunique() > 1
    masks = sorted(long["mask"].unique(), key=lambda m: (m != "causal", m))
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.4 * cols, 3.6 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    hue = dict(hue="loss", hue_order=[TEACHER_FORCED, PREFIX_ONLY], palette=PALETTE[:2])
    for ax, (config, pos) in zip(axes, panels):
        part = long[(long["config"] == config) & (long["pos"] == pos)]
        sns.stripplot(data=part, x="mask", y="value", order=masks, dodge=True, alpha=0.6,
                      legend=False, ax=ax, **hue)
        sns.pointplot(data=part, x="mask", y="value", order=masks, dodge=0.4,
                      errorbar=("ci", 95), markers="_", linestyles="none", capsize=0.1,
                      legend=ax is axes[0], ax=ax, **hue)
        ax.set(xlabel="attention mask", ylabel="validation loss (nats/token)",
               title=f"{config}\npos={pos}" if several else f"pos={pos}")
        ax.grid(alpha=0.3)
    _blank_and_shared_legend(fig, axes, len(panels), ncols=2)
    fig.suptitle("Mask audit: teacher-forced vs prefix-only validation loss\n"
                 f"dots: one model (seed) each; bars: mean and 95% CI over seeds within one "
                 f"encoding, {_seeds(long, ['config', 'pos', 'mask'])}", fontsize=10)
    fig.savefig(path, dpi=110)
    return Path(path)


def attention_runs(runs) -> list:
    """For each mask, the first completed run with attention maps (RoPE first: the course's)."""
    picks = []
    if runs.empty or not {"status", "mask", "path"} <= set(runs):
        return picks
    for mask in ("causal", "none"):
        done = runs[(runs["status"] == "completed") & (runs["mask"] == mask)]
        order = done.assign(_rope=done["pos"] != "rope").sort_values(["_rope", "pos", "seed", "job"])
        for run in order.itertuples():
            if (Path(job_folder(run)) / ATTENTION_MAPS).exists() or (
                    Path(job_folder(run)) / ATTENTION_PNG).exists():
                picks.append(run)
                break
    return picks


def job_folder(run) -> str:
    """Where this machine reads a job's files: ``folder`` for jobs read from their sweep,
    else the tables' relative ``path`` (found only from where it is relative to)."""
    folder = getattr(run, "folder", None)
    return folder if isinstance(folder, str) else run.path


def load_attention(run_path) -> list | None:
    """One (H, T, T) array per layer from a job's attention_maps.npz, or None."""
    path = Path(run_path) / ATTENTION_MAPS
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = sorted((k for k in npz.files if k.startswith("layer_")),
                           key=lambda k: int(k.split("_")[1]))
            return [npz[k].astype(np.float32) for k in names] or None
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


def future_share(layer) -> float:
    """Mean attention weight on keys after the query (0 for a causal model), over heads and rows."""
    return float(np.triu(layer, k=1).sum(-1).mean())


def attention_grid(runs, path) -> Path | None:
    """Causal mask vs none: one row per mask, one panel per layer (mean over its heads).

    Drawn from the jobs' attention_maps.npz; jobs written before that file existed fall back to
    their rendered attention_maps.png, side by side.
    """
    picks = attention_runs(runs)
    if not picks:
        return None
    maps = [load_attention(job_folder(run)) for run in picks]
    if any(m is None for m in maps):
        return _pasted_grid(picks, path)
    layers = max(len(m) for m in maps)
    # the first query can only attend to itself (weight 1 under the causal mask): scaling by it
    # would leave every other weight dark, so the scale ends at the largest weight after it,
    # and a square-root scale keeps near-uniform rows (1/T each) visible
    vmax = max(float(layer.mean(0)[1:].max()) for m in maps for layer in m) or 1.0
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)
    fig = Figure(figsize=(2.9 * layers + 1.6, 2.8 * len(picks) + 0.9), layout="constrained")
    axes = fig.subplots(len(picks), layers, squeeze=False)
    for row, (run, layer_maps) in enumerate(zip(picks, maps)):
        for li in range(layers):
            ax = axes[row][li]
            if li >= len(layer_maps):
                ax.axis("off")
                continue
            mean = layer_maps[li].mean(0)  # (T, T), over heads
            image = ax.imshow(mean, cmap="viridis", norm=norm, interpolation="nearest")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
            ax.set_title(f"layer {li}: {future_share(layer_maps[li]):.0%} on later steps",
                         fontsize=10)
            ax.set_xlabel("key step", fontsize=9)
            if li == 0:
                ax.set_ylabel(f"mask={run.mask} (pos={run.pos}, seed={run.seed})\nquery step",
                              fontsize=10)
    heads = maps[0][0].shape[0]
    fig.colorbar(image, ax=axes, shrink=0.85, label=f"attention weight (mean of {heads} heads; square-root scale)")
    fig.suptitle("Attention on one validation trajectory: causal mask vs no mask", fontsize=12)
    fig.savefig(path, dpi=110)
    return Path(path)


def _pasted_grid(picks, path) -> Path:
    fig = Figure(figsize=(7 * len(picks), 6))
    axes = fig.subplots(1, len(picks), squeeze=False)
    for ax, run in zip(axes[0], picks):
        ax.imshow(imread(Path(job_folder(run)) / ATTENTION_PNG))
        ax.set_title(f"mask={run.mask} (pos={run.pos}, seed={run.seed})")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def training_curve(metrics, path, pos="rope", mask="causal") -> Path | None:
    """Train and validation loss against step for one (pos, mask), mean over seeds."""
    if metrics.empty or not {"pos", "mask", "split", "step", "loss"} <= set(metrics):
        return None
    data = metrics[(metrics["pos"] == pos) & (metrics["mask"] == mask)]
    if "model_key" in data:  # jobs sharing a trained model carry identical curves
        data = data.drop_duplicates(subset=["model_key", "split", "step"])
    if data.empty:
        return None
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for split, style in (("train", "-"), ("val", "o-")):
        curve = data[data["split"] == split].groupby("step")["loss"].mean()
        if not curve.empty:
            ax.plot(curve.index, curve.values, style, ms=3,
                    label="training" if split == "train" else "validation")
    ax.axhline(NOISE_FLOOR, color="grey", ls=":", lw=1, label="noise floor ln 5")
    ax.set(xlabel="iteration (optimizer step)", ylabel="cross-entropy (nats/token)",
           title=f"loss, pos={pos}, mask={mask} (mean over seeds)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def kv_speed(speed, path) -> Path | None:
    """The paired speed-up of every model, by number of new tokens and batch size; one panel per
    training configuration where ``speed`` has several (``config``: timings of models trained
    differently, e.g. on another host, are never drawn as one)."""
    if speed.empty:
        return None
    data = speed.assign(model=speed["model_key"].fillna(speed["job"]))
    if "config" not in data:
        data = data.assign(config="default")
    data = data.groupby(["config", "batch_size", "new_tokens", "model"],
                        as_index=False)["speedup"].median()
    configs = sorted(data["config"].unique())
    # batch size as categories in a qualitative palette: as numbers seaborn draws them on a
    # light-to-dark ramp, and batch size 1 comes out pale pink
    sizes = sorted(data["batch_size"].unique())
    data["batch size"] = data["batch_size"].map(lambda b: str(int(b)))
    hue = dict(hue="batch size", hue_order=[str(int(b)) for b in sizes],
               palette=PALETTE[:len(sizes)])
    fig = Figure(figsize=(6.5 * len(configs), 4))
    axes = fig.subplots(1, len(configs), squeeze=False)[0]
    several = len(sizes) > 1
    for ax, config in zip(axes, configs):
        part = data[data["config"] == config]
        sns.stripplot(data=part, x="new_tokens", y="speedup", dodge=several, ax=ax, alpha=0.8,
                      size=6, **hue)
        sns.pointplot(data=part, x="new_tokens", y="speedup", dodge=0.4 if several else False,
                      estimator="median", errorbar=None, markers="_", markersize=14,
                      linestyles="none", ax=ax, legend=False, **hue)
        ax.axhline(1.0, color="grey", lw=1, ls="--")
        title = "KV cache: paired speed-up\none dot per model; bar: median over models"
        ax.set(xlabel="generated tokens", ylabel="speed-up (uncached time / cached time)",
               title=title if len(configs) == 1 else f"{config}\n{title}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def position_shift(runs, path) -> Path | None:
    """Loss change when the same validation trajectories move k steps later, per pos."""
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
    style = "config" if long["config"].nunique() > 1 else None
    fig = _figure(style, long)
    ax = fig.subplots()
    sns.lineplot(data=long, x="shift", y="delta", hue="pos", style=style,
                 errorbar=("ci", 95), marker="o", ax=ax, palette=PALETTE[:long["pos"].nunique()])
    _legend_below(ax, style)
    ax.axhline(0.0, color="grey", lw=1, ls="--")
    ax.set(xlabel="steps added to every token's step (the shift k)",
           ylabel="loss change (nats/token)",
           title="position shift: same trajectories, later positions (causal mask)\n"
                 f"{SEED_BAND}, {_seeds(long, ['pos', style] if style else ['pos'])}")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return Path(path)


def token_layouts(runs, path) -> Path | None:
    """Action-token validation loss by token layout: one dot per trained model (seed), the mean
    with its 95% interval, and the noise floor ln 5 (causal mask)."""
    if runs.empty or "val_action_loss" not in runs:
        return None
    done = runs[(runs["status"] == "completed") & (runs["mask"] == "causal")]
    done = done.dropna(subset=["val_action_loss"])
    done = done.drop_duplicates(subset=["model_key"]) if "model_key" in done else done
    if done.empty:
        return None
    order = sorted(done["tokens"].unique(), key=lambda t: (t != "action", t))
    several = done["pos"].nunique() > 1
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    hue = dict(hue="pos", palette=PALETTE[:done["pos"].nunique()])
    sns.stripplot(data=done, x="tokens", y="val_action_loss", order=order,
                  dodge=several, alpha=0.6, ax=ax, **hue)
    sns.pointplot(data=done, x="tokens", y="val_action_loss", order=order,
                  dodge=0.4 if several else False, errorbar=("ci", 95), markers="_",
                  linestyles="none", capsize=0.1, ax=ax, legend=False, **hue)
    ax.axhline(NOISE_FLOOR, color="grey", ls=":", lw=1)
    ax.text(0.99, NOISE_FLOOR, f" noise floor ln 5 = {NOISE_FLOOR:.3f}",
            transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=8, color="grey")
    ax.set(xlabel="token layout (tokens)", ylabel="action-token validation loss (nats)",
           title="action NLL with and without state tokens (causal mask)\ndots: one model "
                 f"(seed) each; bars: mean and 95% CI over seeds, {_seeds(done, ['tokens', 'pos'])}")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


GREEDY = "greedy decode"
EXPECTED = "expected-value decode"


def tokenizers(runs, path) -> Path | None:
    """The tokenizer question in one figure: the validation action error (mean absolute, in the
    data's units) of the greedy and the expected-value decode per tokenizer, one panel per
    encoding (and training configuration apart from the tokenizer: ``runs`` as
    ``tables.tokenizer_models`` labels them); one dot per trained model (seed), the mean with
    its 95% interval over those seeds, and the tokenizer's round-trip floor (binning alone) as
    a grey bar. Causal mask where the sweep has it."""
    need = {"status", "pos", "mask", "tokenizer", "action_error_greedy",
            "action_error_expected", "action_error_round_trip"}
    if runs.empty or not need <= set(runs):
        return None
    done = runs[runs["status"] == "completed"].dropna(subset=["action_error_greedy"])
    done = done.drop_duplicates(subset=["model_key"]) if "model_key" in done else done
    if (done["mask"] == "causal").any():
        done = done[done["mask"] == "causal"]
    if done.empty:
        return None
    done = done.assign(config=done["config"] if "config" in done else "default")
    long = done.melt(id_vars=["config", "pos", "tokenizer", "seed"],
                     value_vars=["action_error_greedy", "action_error_expected"],
                     var_name="decode", value_name="value").dropna(subset=["value"])
    long["decode"] = long["decode"].map({"action_error_greedy": GREEDY,
                                         "action_error_expected": EXPECTED})
    panels = list(long.groupby(["config", "pos"]).groups)
    several = long["config"].nunique() > 1
    order = sorted(long["tokenizer"].unique())
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    # one panel: as wide as the title and the legend below it
    fig = Figure(figsize=(max(4.4 * cols, 7.0), 3.6 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    hue = dict(hue="decode", hue_order=[GREEDY, EXPECTED], palette=PALETTE[:2])
    for ax, (config, pos) in zip(axes, panels):
        part = long[(long["config"] == config) & (long["pos"] == pos)]
        floor = (done[(done["config"] == config) & (done["pos"] == pos)]
                 .groupby("tokenizer")["action_error_round_trip"].mean())
        for i, name in enumerate(order):
            if name in floor:
                ax.hlines(floor[name], i - 0.4, i + 0.4, color="grey", lw=2,
                          label="round-trip floor (binning alone)" if i == 0 else None)
        sns.stripplot(data=part, x="tokenizer", y="value", order=order, dodge=True, alpha=0.6,
                      legend=False, ax=ax, **hue)
        sns.pointplot(data=part, x="tokenizer", y="value", order=order, dodge=0.4,
                      errorbar=("ci", 95), markers="_", linestyles="none", capsize=0.1,
                      legend=ax is axes[0], ax=ax, **hue)
        ax.set(xlabel="action tokenizer", ylabel="validation action error (mean abs.)",
               title=f"{config}\npos={pos}" if several else f"pos={pos}")
        ax.grid(alpha=0.3)
    top = axes[0].get_ylim()[1]  # after every panel (shared): the floors lie near zero
    axes[0].set_ylim(0, top * 1.05)
    _blank_and_shared_legend(fig, axes, len(panels), ncols=3)
    fig.suptitle("Action error by tokenizer, in the data's units (validation episodes)\n"
                 f"dots: one model (seed) each; bars: mean and 95% CI over seeds, "
                 f"{_seeds(long, ['config', 'pos', 'tokenizer'])}", fontsize=10)
    fig.savefig(path, dpi=110)
    return Path(path)


def _blank_and_shared_legend(fig, axes, used: int, ncols: int) -> None:
    """Panels past ``used`` left blank; the first panel's legend moved below the figure."""
    for ax in axes[used:]:
        ax.axis("off")
    legend = axes[0].get_legend()
    if legend is not None:
        legend.remove()
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
                   ncols=ncols, fontsize=9)
