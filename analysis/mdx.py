"""The course's report page (Scratch-1's MDX template) filled from a sweep's tables and figures.

``write_mdx`` takes the tables ``build_report`` made (``positional``, ``mask_audit``,
``kv_cache``, ``status``) and its figures, and writes ``<student>.mdx`` with the template's
front matter and sections, its images in ``images/`` beside it. Columns are read by name and
any that is absent reads "n/a", so the page survives changes to the tables.

MDX reads ``{`` and ``<`` as the start of code, so every text that comes from data is escaped
and formulas are written as inline code.
"""

from __future__ import annotations

import datetime
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots, tables
from analysis.common import (
    CHEATING_GAP,
    NOISE_FLOOR,
    UNIFORM,
    as_float,
    difference_verdict,
    pm,
    stated_n,
)


def write_mdx(out_dir, made, figures, runs=None, metrics=None, student=None, date=None,
              sweep_dirs=()) -> Path:
    """Write ``<student-slug>.mdx`` and ``images/`` into ``out_dir``; return the page's path."""
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    student = student or "Your Name"
    date = date or datetime.date.today().isoformat()
    runs = runs if runs is not None else pd.DataFrame()
    metrics = metrics if metrics is not None else pd.DataFrame()
    by_name = {Path(p).stem: Path(p) for p in (figures or {}).values() if p is not None}

    pos = _course_pos(made)
    loss_png = plots.training_curve(metrics, images / "loss_curve.png", pos=pos)
    if loss_png is None:
        loss_png = _copy(by_name.get("loss_by_pos"), images / "loss_curve.png")
    attention_png = _copy(by_name.get("attention_grid"), images / "attention_maps.png")
    speed_png = _copy(by_name.get("kv_cache_speed"), images / "kv_cache_speed.png")
    pos_png = _copy(by_name.get("loss_by_pos"), images / "loss_by_pos.png")

    sections = [
        _front_matter(student, date),
        "# Scratch-1: The Transformer Backbone", "",
        _loss_section(made, runs, metrics, pos, loss_png),
        _attention_section(runs, attention_png),
        _audit_section(made),
        _kv_section(made, speed_png),
        _rope_section(made, pos_png),
        _provenance(made, runs, sweep_dirs, student),
    ]
    page = out / f"{_slug(student)}.mdx"
    page.write_text("\n".join(sections).rstrip() + "\n")
    return page


# ------------------------------------------------------------------------------ sections


def _front_matter(student, date) -> str:
    def quoted(text):
        return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "\n".join(["---", f"title: {quoted(f'Scratch-1 Submission: {student}')}",
                      f"student: {quoted(student)}", f"date: {quoted(date)}", "---", ""])


def _loss_section(made, runs, metrics, pos, image) -> str:
    lines = ["## Loss Curve", ""]
    lines += [_image("Training Loss", image), ""] if image else ["_(no loss curve: no metrics)_", ""]
    row = _row(made.get("positional"), pos=pos)
    val, ci, seeds = _num(row, "val_loss_mean"), _num(row, "val_loss_ci95"), _num(row, "seeds")
    steps = _steps(runs, pos)
    first, last = _train_ends(metrics, pos)
    lines.append(
        f"The model (pos={_esc(pos)}, causal mask) trained for {_int(steps)} iterations; its "
        f"training loss fell from {_f(first)} at the first logged step to {_f(last)}, and its "
        f"final validation loss is {pm(val, ci, missing='n/a')} nats per token (mean over "
        f"{_int(seeds)} seed(s); perplexity "
        f"{_f(math.exp(min(val, 50)) if np.isfinite(val) else math.nan, 2)}).")
    lines += ["", f"For scale: guessing uniformly over the 256 tokens costs ln 256 = {UNIFORM:.2f} "
                  f"nats, and the token noise (uniform on -2..2) puts a floor of ln 5 = "
                  f"{NOISE_FLOOR:.3f} nats under any model that predicts the next token "
                  "(the dotted line). The course expects ~1.9-2.2 after full training.", ""]
    return "\n".join(lines)


def _attention_section(runs, image) -> str:
    lines = ["## Attention Visualization", ""]
    if not image:
        return "\n".join(lines + ["_(no attention maps in this sweep)_", ""])
    lines += [_image("Attention Maps", image), ""]
    shares = {}
    for run in plots.attention_runs(runs):
        maps = plots.load_attention(plots.job_folder(run))
        if maps:
            shares[run.mask] = [plots.future_share(layer) for layer in maps]
    text = ("Each panel is one layer's attention on the same validation trajectory, averaged "
            "over its heads; rows are query steps, columns key steps, one colour scale for all "
            "(square-root, so that small weights stay visible).")
    if "causal" in shares:
        text += (f" Under the causal mask the weight on later steps is "
                 f"{max(shares['causal']):.1%} in every layer: everything lies on or below the "
                 "diagonal, each step reading only its past.")
    if "none" in shares:
        worst = int(np.argmax(shares["none"]))
        text += (f" Without the mask, layer {worst} puts {shares['none'][worst]:.0%} of its "
                 "weight on later steps (the upper triangle): those queries read tokens that "
                 "generation will not have yet.")
    return "\n".join(lines + [text, ""])


def _audit_section(made) -> str:
    audit = made.get("mask_audit")
    lines = ["## The Audit: Removing the Causal Mask", ""]
    causal, none = _row(audit, mask="causal", mean=True), _row(audit, mask="none", mean=True)
    tf_c, tf_n = _num(causal, "val_loss_teacher_forced"), _num(none, "val_loss_teacher_forced")
    po_n = _num(none, "val_loss_prefix_only")
    leak_c, leak_n = _num(causal, "leakage"), _num(none, "leakage")
    gap = po_n - tf_n
    lines += [_table(audit, ["pos", "mask", "seeds", "seen_loss_teacher_forced",
                             "val_loss_teacher_forced", "val_loss_prefix_only", "leakage",
                             "cheating_gap"]), ""]
    lines.append(
        f"Without the causal mask the teacher-forced validation loss is {_f(tf_n)} nats, against "
        f"{_f(tf_c)} with it. Scored honestly, each position seeing only the tokens before it as "
        f"in generation (the prefix-only loss), the unmasked model's loss is {_f(po_n)}; the "
        f"difference, {_f(gap)} nats, is what reading the future was worth. Changing the "
        f"later half of a sequence moves the earlier positions' logits by up to {_f(leak_n)} "
        f"without the mask and by {_f(leak_c)} with it (zero by construction).")
    if np.isfinite(tf_n) and tf_n < NOISE_FLOOR:
        lines.append(f"The unmasked teacher-forced loss is below ln 5 = {NOISE_FLOOR:.3f}, the "
                     "floor for any model that predicts: it is copying, not predicting.")
    lines += ["", "### Why the Model \"Cheats\"", "",
              "Teacher forcing feeds the whole sequence at once: the input at position t+1 is "
              "the target of position t. Without the mask, position t may attend to t+1, so the "
              "answer sits in its own context, and the cheapest way to lower the loss is a head "
              "that looks one step ahead and copies, not a model of how the arm moves. Training "
              "never punishes this, because during training the future is always there. At "
              "generation time it is not: the token to be predicted does not exist yet, the "
              "copying head attends to nothing useful, and the loss rises to the prefix-only "
              "value above."]
    if np.isfinite(gap):
        verdict = (f"In this sweep the gap is {_f(gap)} nats, above the {CHEATING_GAP} nats "
                   "that count as cheating: the unmasked model measurably relies on the future."
                   if gap > CHEATING_GAP else
                   f"In this sweep the gap is only {_f(gap)} nats (at most {CHEATING_GAP} counts "
                   "as none): these models are too briefly trained to exploit the leak, though "
                   "the leakage shows the future already reaches their earlier positions.")
        lines += ["", verdict]
    return "\n".join(lines + [""])


def _kv_section(made, image) -> str:
    kv = made.get("kv_cache")
    if kv is not None and "tokens" in kv and (kv["tokens"] == "action").any():
        kv = kv[kv["tokens"] == "action"].reset_index(drop=True)  # the course's decoding
    if kv is not None and "config" in kv and kv["config"].nunique() > 1:
        first = sorted(kv["config"].unique())[0]  # one configuration, as the other sections
        kv = kv[kv["config"] == first].reset_index(drop=True)
    lines = ["## Mastery: KV-Caching", ""]
    if kv is None or kv.empty or "speedup_median" not in kv:
        return "\n".join(lines + ["_(no KV-cache measurements in this sweep: n/a)_", ""])
    lines += [_table(kv, list(kv.columns)), ""]
    speedup = pd.to_numeric(kv["speedup_median"], errors="coerce")
    if not np.isfinite(speedup).any():
        lines.append("Speed-up: n/a (no paired timings in this sweep).")
        return "\n".join(lines + [""])
    fixed = tables.fixed_cell(kv)
    matched = fixed.get("cached_decode_matched", "n/a")
    lines.append(
        f"Greedy generation with the cache (the prompt prefilled once, then one token per step "
        f"at its absolute position) against recomputing the whole sequence every step, timed "
        f"alternately on the same trained model: at batch {_int(fixed.get('batch_size'))} with "
        f"{_int(fixed.get('new_tokens'))} new tokens the cache is "
        f"{_f(as_float(fixed.get('speedup_median')), 2)}x faster (per job the median of "
        f"its pairs; the median over {_int(fixed.get('models'))} models, "
        f"{tables.speedup_spread(fixed)}: the timing reproducibility of this host over "
        f"{_int(fixed.get('jobs'))} jobs, the compute being the same whatever the weights); "
        "over all cells "
        "the median ranges "
        f"{_f(float(speedup.min()), 2)}x-{_f(float(speedup.max()), 2)}x. "
        "Cached decoding reproduced the full pass's logits step by step in "
        f"{_esc(matched)}. Without the causal mask the two differ by construction (a decode "
        "step cannot see later tokens, the full pass can), so only causal runs are checked.")
    if "new_tokens" in kv and kv["new_tokens"].nunique() > 1:
        grouped = speedup.groupby(kv["new_tokens"]).median()
        lines.append(
            f"The gain grows with length ({_f(grouped.iloc[0], 2)}x at {_int(grouped.index[0])} "
            f"new tokens, {_f(grouped.iloc[-1], 2)}x at {_int(grouped.index[-1])}): without the "
            "cache step t recomputes all t positions, with it only one.")
    if image:
        lines += ["", _image("KV-cache generation speed", image)]
    return "\n".join(lines + [""])


def _rope_section(made, image) -> str:
    pos = made.get("positional")
    lines = ["## Mastery: RoPE vs Sinusoidal", ""]
    if pos is None or pos.empty:
        return "\n".join(lines + ["_(no positional-encoding runs in this sweep: n/a)_", ""])
    shift = sorted((c for c in pos if c.startswith("delta_shift_")),
                   key=lambda c: int(c.rsplit("_", 1)[1]))
    beyond = sorted(c for c in pos if c.endswith("x_beyond"))
    lines += [_table(pos, ["config", "pos", "seeds", "val_loss_mean", "val_loss_ci95", *shift,
                           *beyond, "diff_vs_rope", "diff_vs_rope_ci95", "pairs"]), ""]
    sin = _row(pos, pos="sinusoidal")
    d, ci = _num(sin, "diff_vs_rope"), _num(sin, "diff_vs_rope_ci95")
    if np.isfinite(d):
        seeds = stated_n(d, ci, sin.get("diff_vs_rope_per_seed"))
        lines.append(f"Validation loss of sinusoidal minus RoPE, paired by seed: {seeds} "
                     f"({'RoPE' if d > 0 else 'sinusoidal'} ahead); the difference is "
                     f"{difference_verdict(d, ci)}. `delta_shift_k` is the change of loss when "
                     "the same validation trajectories are placed k steps later (positions "
                     "alone move); `loss_Nx_beyond` is the loss at unseen positions of N-times "
                     "longer fresh trajectories, where the process itself also changes.")
    else:
        lines.append("Sinusoidal minus RoPE: n/a (this sweep lacks one of the two).")
    lines += ["", *_rope_reading(pos, d, ci)]
    if image:
        lines += ["", _image("Validation loss by positional encoding", image)]
    return "\n".join(lines + [""])


_ROPE_THEORY = (
    "RoPE rotates pair i of the query at position m by the angle `m θ_i` and of the key at n "
    "by `n θ_i`. Rotations are orthogonal and compose by adding angles, so "
    "`(R(m θ) q)ᵀ (R(n θ) k) = qᵀ R((n − m) θ) k`: for given content the score depends on the "
    "offset n − m alone, and norms are kept (`|R q| = |q|`). An additive sinusoidal `p_m` "
    "instead gives `(x_m + p_m)ᵀ A (x_n + p_n) = x_mᵀ A x_n + x_mᵀ A p_n + p_mᵀ A x_n + "
    "p_mᵀ A p_n` with `A = W_qᵀ W_k`: the two middle terms tie a token's score to its "
    "partner's absolute position, and the last is a function of m − n only if A is "
    "block-diagonal over the sin/cos frequency pairs and each diagonal 2x2 block is a scaled "
    "rotation, which nothing enforces. An action token depends on the arm's recent motion, a "
    "pattern in offsets that is the same at step 5 and step 45: RoPE builds that invariance "
    "in, sinusoidal embeddings leave it to be learned.")


def _rope_reading(pos, d, ci) -> list[str]:
    """The RoPE paragraph: its heading and verdict follow the measured difference (RoPE is
    said to suit trajectories better only where it is ahead beyond the interval)."""
    resolved = np.isfinite(d) and np.isfinite(ci) and abs(d) > ci
    if resolved and d > 0:
        heading = "Why RoPE suits trajectories."
        verdict = ("Measured here, RoPE is ahead on validation loss beyond the interval, and "
                   "the position shift shows the invariance at work.")
    elif resolved:
        heading = "What RoPE builds in, and what the measurements show."
        verdict = ("Measured here, the matched sinusoidal table is ahead on validation loss "
                   f"at the training length ({pm(d, ci)} nats, sinusoidal minus RoPE): "
                   "building the invariance in did not buy a lower loss where every position "
                   "was seen in training. Where it shows is away from those positions:")
    else:
        heading = "What RoPE builds in, and what the measurements show."
        verdict = ("Measured here, the two encodings' validation losses do not differ beyond "
                   "their interval (or lack one); the invariance shows away from the trained "
                   "positions:")
    rope, sin = _row(pos, pos="rope"), _row(pos, pos="sinusoidal")
    shift = sorted((c for c in pos if c.startswith("delta_shift_")),
                   key=lambda c: int(c.rsplit("_", 1)[1]))
    beyond = sorted(c for c in pos if c.endswith("x_beyond"))
    evidence = []
    if shift and rope and sin:
        k = shift[0].rsplit("_", 1)[1]
        evidence.append(f"the same trajectories moved {k} steps later change RoPE's loss by "
                        f"{_num(rope, shift[0]):+.4f} nats and the sinusoidal model's by "
                        f"{_num(sin, shift[0]):+.4f}")
    if beyond and rope and sin:
        col = beyond[-1]
        evidence.append(f"at the unseen positions of {col.split('_')[1]}-length trajectories "
                        f"RoPE scores {_num(rope, col):.3f} and sinusoidal {_num(sin, col):.3f}")
    tail = (" " + "; ".join(evidence) + ".") if evidence else ""
    if resolved and d > 0 and evidence:
        tail = " (" + "; ".join(evidence) + ")."
        verdict = verdict[:-1]
    return [f"**{heading}** {_ROPE_THEORY}", "", verdict + tail]


def _provenance(made, runs, sweep_dirs, student) -> str:
    jobs = len(runs) if runs is not None else 0
    done = int((runs["status"] == "completed").sum()) if jobs and "status" in runs else 0
    sweeps = ", ".join(f"`{_code(d)}`" for d in sweep_dirs) or "n/a"
    lines = ["## How these numbers were made", "",
             f"Sweep(s) {sweeps}: {jobs} jobs, {done} completed. Page written by "
             f"`python -m analysis SWEEP --format mdx --student \"{_code(student)}\"` "
             "(vla-ablate); the tables beside it hold every number."]
    status = made.get("status")
    if status is not None and not status.empty and "job" in status:
        listed = ", ".join(f"job {_esc(r.get('job'))} ({_esc(r.get('status', '?'))})"
                           for _, r in status.iterrows())
        lines.append(f"Not completed, so not in the tables: {listed}.")
    return "\n".join(lines + [""])


# ------------------------------------------------------------------------------ helpers


def _course_pos(made) -> str:
    """RoPE, the assignment's encoding, when the sweep has it; else the first one present."""
    pos = made.get("positional")
    if pos is None or pos.empty or "pos" not in pos:
        return "rope"
    return "rope" if "rope" in set(pos["pos"]) else str(pos["pos"].iloc[0])


def _row(df, mean=False, **where) -> dict:
    """The row matching ``where`` as a dict (the mean of numeric columns if ``mean``), or {}."""
    if df is None or df.empty or not set(where) <= set(df):
        return {}
    sel = df
    for key, value in where.items():
        sel = sel[sel[key] == value]
    if sel.empty:
        return {}
    if mean:
        return sel.mean(numeric_only=True).to_dict()
    return sel.iloc[0].to_dict()


def _num(row: dict, key: str) -> float:
    return as_float(row.get(key))


def _steps(runs, pos) -> float:
    if runs is None or runs.empty or not {"steps", "pos", "mask"} <= set(runs):
        return math.nan
    sel = runs[(runs["pos"] == pos) & (runs["mask"] == "causal")]["steps"].dropna()
    return float(sel.max()) if len(sel) else math.nan


def _train_ends(metrics, pos) -> tuple[float, float]:
    """Mean over seeds of the first and the last logged training loss."""
    if metrics is None or metrics.empty or not {"split", "pos", "mask", "step", "loss"} <= set(
            metrics):
        return math.nan, math.nan
    train = metrics[(metrics["split"] == "train") & (metrics["pos"] == pos)
                    & (metrics["mask"] == "causal")]
    if train.empty:
        return math.nan, math.nan
    curve = train.groupby("step")["loss"].mean()
    return float(curve.iloc[0]), float(curve.iloc[-1])


def _table(df, columns) -> str:
    """A GitHub table of the ``columns`` that exist, cells escaped for MDX."""
    if df is None or df.empty:
        return "_(no rows: n/a)_"
    cols = [c for c in columns if c in df]
    if not cols:
        return "_(n/a)_"
    lines = ["| " + " | ".join(_esc(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df[cols].iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    return tables.cell_text(value, missing="n/a", text=_esc)


def _f(value, digits=4) -> str:
    value = as_float(value)
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


def _int(value) -> str:
    value = as_float(value)
    return f"{int(value):,}" if np.isfinite(value) else "n/a"


def _esc(text) -> str:
    """Text from data made safe for MDX: braces and angle brackets would start code."""
    return (str(text).replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}")
            .replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|"))


def _code(text) -> str:
    return str(text).replace("`", "'")


def _image(alt, path) -> str:
    return f"![{alt}](./images/{Path(path).name})"


def _copy(src, dst) -> Path | None:
    if src is None or not Path(src).exists():
        return None
    shutil.copyfile(src, dst)
    return Path(dst)


def _slug(name) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "report"
