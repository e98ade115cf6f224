"""report.md's text: how the numbers were made, the findings, the tables with what their
columns mean, the figures and the cost."""

from __future__ import annotations

import pandas as pd

from analysis import tables
from analysis.common import NOISE_FLOOR
from analysis.findings import findings


def varied(runs, axis: str) -> bool:
    """Whether the sweep's jobs took more than one value of ``axis`` (``tokens``: ``action``
    where a job did not record it)."""
    if axis not in runs:
        return False
    values = runs[axis].fillna("action") if axis == "tokens" else runs[axis].dropna()
    return values.nunique() > 1


def coverage(runs) -> str:
    """What the seed-to-seed intervals cover, from how the runs drew their data."""
    done = runs[runs["status"] == "completed"]
    varies = done["data_varies_with_seed"] if "data_varies_with_seed" in done else []
    varies = pd.Series(varies, dtype=bool)
    if len(varies) and varies.all():
        return ("model initialisation, batch order and the training trajectories (each seed "
                "trains on its own draw of the process; validation is the same fixed split)")
    if varies.any():
        return ("model initialisation and batch order, and for some runs only the training "
                "trajectories too (the others used a data file or data.vary_with_seed=false): "
                "see data_varies_with_seed in runs.csv")
    return ("model initialisation and batch order only: every seed trained on the same "
            "trajectories (a data file, or data.vary_with_seed=false)")


def report_md(sweep_dirs, runs, made, figures, target_loss, tables_dirs=(), live=()) -> str:
    """report.md's text; ``tables_dirs`` and ``live``: the report folders and sweep folders it
    was made from, when some of it came from report folders' data files."""
    counts = runs["status"].value_counts().to_dict()
    pos = made["positional"]
    shift_cols = [c for c in pos if c.startswith("delta_shift_")]
    parts = [
        "# Ablation report", "",
        f"Sweeps: {', '.join(f'`{d}`' for d in sweep_dirs)}. Jobs: {len(runs)} "
        f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}).", "",
        *([f"Made from the data files of the report folder(s) "
           f"{', '.join(f'`{d}`' for d in tables_dirs)}"
           + (f" and the sweep folder(s) {', '.join(f'`{d}`' for d in live)}" if live else "")
           + ".", ""] if tables_dirs else []),
        f"Intervals are 95% and cover {coverage(runs)}.", "",
        "## Findings", "", *[f"- {s}" for s in findings(made)], "",
        "## Positional encodings (causal mask)", "",
        "One row per training configuration (`config`: the settings that differ between the "
        "sweeps' runs, other than pos, mask and seed) and encoding. Validation loss (of the "
        "action tokens: `val_action_loss`, the validation loss itself with `tokens=action`) is "
        "the mean over seeds with its 95% Student-t interval. "
        f"`steps_to_{target_loss:g}` is the median step at which the loss on a fixed slice of "
        "the validation split first reached that value (runs that never did count as never; "
        "`reached` says how many did). "
        + (f"`{'`, `'.join(shift_cols)}`: the same validation trajectories placed k steps "
           "later, minus their loss at steps 0..T-1: positional generalisation alone, with the "
           "data unchanged. " if shift_cols else "")
        + "`loss_Nx_beyond` is the loss at positions never trained on, in fresh trajectories N "
        "times the training length: new positions *and* a new regime of the process (late in "
        "a long trajectory many joints sit at their limits), to be read beside `loss_1x_fresh` "
        "(fresh trajectories of the training length), never beside the validation loss. "
        "`diff_vs_rope` is this encoding's loss minus RoPE's, paired by seed within the same "
        "configuration; `pairs` counts the seeds it used.", "",
        tables.to_markdown(pos),
        "## Mask audit", "",
        "Teacher-forced losses let every position see the whole input; the prefix-only loss "
        "runs each prefix alone, as generation does. `seen_loss_teacher_forced` is measured "
        "on trajectories of the first training epoch (trained on once each when every epoch "
        "draws fresh trajectories). `leakage` is the largest change of an earlier position's "
        "logits when later tokens change (0 for a causal model); `cheating_gap` is prefix-only "
        "minus teacher-forced validation loss.", "",
        tables.to_markdown(made["mask_audit"]),
        "## KV cache", "",
        "Each job timed cached and uncached greedy generation alternately on its own trained "
        "model, in one process, after an untimed warm-up at each cell. Per job: the median of "
        "its pairs' ratios (each pair's order and two times are in the job's summary.json); "
        "per model: the median of its jobs' (the mean of two). The table gives, per training "
        "configuration, batch size and number of new tokens, the median over models with a "
        "95% percentile-bootstrap interval and the range. The computation does not depend on "
        "the weights, so the interval describes the timing reproducibility of this host on "
        "that day over the cell's `jobs`, not a spread of models. `timed_alone` is "
        "false where jobs ran in parallel (their timings shared the CPU). With `tokens=state_action` a new token is "
        "a step's action, generated after that step's state tokens from the data.",
        "", tables.to_markdown(made["kv_cache"]),
        *(_tokens_section(made) if varied(runs, "tokens") else []),
        *(_tokenizer_section(made) if "tokenizer" in made else []),
    ]
    for title, path in figures.items():
        if path is not None:
            parts += [f"### {title}", "", f"![{title}]({path.name})", ""]
    parts += ["## Cost", "", *cost(runs), ""]
    parts += ["## Jobs that did not complete", ""]
    status = made["status"]
    parts.append(tables.to_markdown(status) if not status.empty else "All jobs completed.\n")
    return "\n".join(parts)


def _tokens_section(made) -> list[str]:
    """The token-layout section: only for a sweep that varied ``tokens``."""
    return [
        "## Token layouts: state tokens beside action tokens", "",
        "`val_action_loss` is the validation loss of the action tokens a_1 .. a_{T-1} alone, "
        "the one figure that means the same whether or not each step's state tokens precede "
        "its action (`tokens=state_action`; with `tokens=action` it is the validation loss). "
        "Causal mask; mean over seeds with its 95% Student-t interval; `above_noise_floor` is "
        f"the distance to ln 5 = {NOISE_FLOOR:.3f}, the entropy of the process's +-2 "
        "token noise, below which no model can go; `diff_vs_action` is paired by seed within "
        "the same configuration and encoding.", "",
        tables.to_markdown(made["tokens"]),
    ]


def _tokenizer_section(made) -> list[str]:
    """The action-tokenizer section: only for a sweep with runs on continuous actions (their
    summaries' ``action_error``)."""
    tok = made["tokenizer"]
    return [
        "## Action tokenizers (continuous actions)", "",
        "Runs on continuous actions (`data=lerobot`) make one token per action dimension per "
        "step, from bins fitted per dimension on the training episodes only (`tokenizer`: "
        "`uniform`, equal bins between each dimension's 1st and 99th percentile; `quantile`, "
        "bins of equal mass). **Cross-entropy is not comparable across tokenizers**: each "
        "defines its own bins, so one prediction scores differently under each, and the "
        "`val_loss_*` columns serve to read each tokenizer on its own. The rows compare the "
        "action error instead: the model's prediction of each validation step's action "
        "from the true tokens before it, decoded to continuous values (`greedy`: the most likely bin's value; `expected`: "
        "the probability-weighted mean of the bin values) against the recorded action, as the "
        "mean absolute error over dimensions and steps, in the data's units; the mean over "
        "seeds with its 95% Student-t interval. `round_trip_floor` is the tokenizer's own "
        "error on the same steps, decode(encode(action)): what binning alone costs, the error "
        "of a model that always picked the recorded action's bin; `*_above_floor` is a "
        "decode's error minus that floor, taken per seed within each run, what the model adds "
        "to it. `diff_vs_uniform` is the greedy error minus the uniform tokenizer's, paired by "
        "seed within the same configuration and encoding" + (" and mask" if "mask" in tok
                                                             else "")
        + "; `pairs` counts the seeds it used. Per-dimension errors are in `runs.csv` "
        "(`action_error_*_per_dim`, in the order of `action_error_dims`)."
        + (" The action error is teacher-forced, as the validation loss is: without the "
           "causal mask a model can read the action it predicts from its input (the mask "
           "audit above), so compare tokenizers on the causal rows (the findings quote "
           "those alone)." if "mask" in tok else ""), "",
        tables.tokenizer_markdown(tok),
    ]


def cost(runs) -> list[str]:
    """The wall time of every job and in all, from the jobs' own summaries."""
    if "wall_time_s" not in runs or runs["wall_time_s"].isna().all():
        return ["No job recorded its wall time."]
    cols = [c for c in ("job", "status", "trained_here", "train_time_s", "wall_time_s",
                        "precision") if c in runs]
    table = runs[cols].copy()
    # every sitting of a job (a resumed one ran several), where the job recorded it
    total_col = runs["wall_time_total_s"] if "wall_time_total_s" in runs else runs["wall_time_s"]
    table["wall_time_s"] = pd.to_numeric(total_col, errors="coerce").fillna(
        pd.to_numeric(runs["wall_time_s"], errors="coerce"))
    wall = table["wall_time_s"]
    train = pd.to_numeric(table.get("train_time_s"), errors="coerce")
    trained = (table["trained_here"].fillna(False).astype(bool) if "trained_here" in table
               else pd.Series(False, index=table.index))
    total, training = wall.sum(), train[trained].sum()
    return [f"{len(table)} jobs took {_hours(total)} of wall time in all (the sum of their own "
            f"times: one after the other, as the basic launcher runs them), of which "
            f"{_hours(training)} trained {int(trained.sum())} model(s) and the rest evaluated "
            "them; jobs that reused a model trained by an earlier job only evaluated it.", "",
            tables.to_markdown(table, digits=1)]


def _hours(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{seconds / 60:.1f} min"
