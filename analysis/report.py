"""Build the report: the three tables (CSV + Markdown), the plots and report.md."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from analysis import plots, tables
from analysis.collect import load_metrics, load_runs, load_speed
from analysis.mdx import write_mdx

CHEATING_GAP = 0.05  # nats: prefix-only minus teacher-forced loss that counts as cheating


def build_report(sweep_dirs, out_dir, target_loss=2.0, log=print, mdx=None) -> Path:
    """Tables, plots and report.md in ``out_dir``; with ``mdx`` (a dict of ``write_mdx``'s
    keywords, e.g. ``{"student": NAME}``) also the course's MDX page (analysis/mdx.py)."""
    sweep_dirs = [Path(d) for d in ([sweep_dirs] if isinstance(sweep_dirs, (str, Path))
                                    else sweep_dirs)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(sweep_dirs)
    if runs.empty:
        raise ValueError(f"no job folders (with .hydra/) under {', '.join(map(str, sweep_dirs))}")
    metrics, speed = load_metrics(sweep_dirs), load_speed(sweep_dirs)
    log(f"collected {len(runs)} jobs ({(runs['status'] == 'completed').sum()} completed)")

    made = {
        "positional": tables.positional(runs, metrics, target_loss),
        "mask_audit": tables.mask_audit(runs),
        "kv_cache": tables.kv_cache(runs, speed),
        "status": tables.status_table(runs),
    }
    runs.to_csv(out / "runs.csv", index=False)
    for name, df in made.items():
        df.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.md").write_text(tables.to_markdown(df))

    figures = {
        "Validation loss by positional encoding (causal mask)":
            plots.loss_curves(metrics, "pos", out / "loss_by_pos.png", mask="causal"),
        "Validation loss by mask": plots.loss_curves(metrics, "mask", out / "loss_by_mask.png"),
        "Attention maps, causal vs no mask": plots.attention_grid(runs, out / "attention_grid.png"),
        "KV-cache generation speed": plots.kv_speed(speed, out / "kv_cache_speed.png"),
    }
    text = _report_md(sweep_dirs, runs, made, figures, target_loss)
    (out / "report.md").write_text(text)
    log(f"wrote {out / 'report.md'} and the tables and plots beside it")
    if mdx is not None:
        page = write_mdx(out, made, figures, runs=runs, metrics=metrics, sweep_dirs=sweep_dirs,
                         **mdx)
        log(f"wrote {page} and its images in {out / 'images'}")
    return out / "report.md"


def _report_md(sweep_dirs, runs, made, figures, target_loss) -> str:
    counts = runs["status"].value_counts().to_dict()
    parts = [
        "# Ablation report", "",
        f"Sweeps: {', '.join(f'`{d}`' for d in sweep_dirs)}. Jobs: {len(runs)} "
        f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}).", "",
        "## Findings", "", *[f"- {s}" for s in findings(made)], "",
        "## Positional encodings (causal mask)", "",
        "Validation loss is the mean over seeds with its 95% Student-t interval; "
        f"`steps_to_{target_loss:g}` is the first evaluated step at or below that loss; "
        "`loss_2x`/`loss_4x` are losses on fresh trajectories of 2x/4x the training length; "
        "`diff_vs_rope` is this encoding's loss minus RoPE's, paired by seed.", "",
        tables.to_markdown(made["positional"]),
        "## Mask audit", "",
        "Teacher-forced losses let every position see the whole input; the prefix-only loss "
        "runs each prefix alone, as generation does. `leakage` is the largest change of an "
        "earlier position's logits when later tokens change (0 for a causal model); "
        "`cheating_gap` is prefix-only minus teacher-forced validation loss.", "",
        tables.to_markdown(made["mask_audit"]),
        "## KV cache", "",
        "Median tokens/s of greedy generation over runs, by batch size and number of new tokens.",
        "", tables.to_markdown(made["kv_cache"]),
    ]
    for title, path in figures.items():
        if path is not None:
            parts += [f"### {title}", "", f"![{title}]({path.name})", ""]
    parts += ["## Jobs that did not complete", ""]
    status = made["status"]
    parts.append(tables.to_markdown(status) if not status.empty else "All jobs completed.\n")
    return "\n".join(parts)


def findings(made) -> list[str]:
    """A few sentences stating what the numbers show."""
    out = []
    pos = made["positional"].set_index("pos") if not made["positional"].empty else None
    if pos is not None and len(pos) > 0:
        best = pos["val_loss_mean"].idxmin()
        out.append(f"Lowest validation loss under the causal mask: **{best}** "
                   f"({_pm(pos.loc[best, 'val_loss_mean'], pos.loc[best, 'val_loss_ci95'])}, "
                   f"{int(pos.loc[best, 'seeds'])} seed(s)).")
        if "rope" in pos.index and "sinusoidal" in pos.index:
            d, ci = pos.loc["sinusoidal", "diff_vs_rope"], pos.loc["sinusoidal", "diff_vs_rope_ci95"]
            if np.isfinite(d):
                verdict = ("larger than its 95% interval, so the difference is resolved"
                           if np.isfinite(ci) and abs(d) > ci else
                           "not larger than its 95% interval: more seeds are needed to call it"
                           if np.isfinite(ci) else "measured on one seed, so it has no interval")
                winner = "RoPE" if d > 0 else "sinusoidal"
                out.append(f"Sinusoidal minus RoPE validation loss: {_pm(d, ci)} nats "
                           f"({winner} ahead); the difference is {verdict}.")
        for name in pos.index:
            at_4x, at_1x = pos.loc[name, "loss_4x"], pos.loc[name, "val_loss_mean"]
            if np.isfinite(at_4x) and np.isfinite(at_1x):
                out.append(f"{name}: loss at 4x the training length {at_4x:.3f} vs {at_1x:.3f} "
                           "at the training length.")
    audit = made["mask_audit"]
    if not audit.empty and {"causal", "none"} <= set(audit["mask"]):
        a = audit.groupby("mask")[["val_loss_teacher_forced", "val_loss_prefix_only",
                                   "leakage"]].mean()
        tf, honest = a.loc["none", "val_loss_teacher_forced"], a.loc["none", "val_loss_prefix_only"]
        verdict = (
            "the unmasked model reads the next token from its input instead of predicting it, "
            "and that skill is useless when generating"
            if honest - tf > CHEATING_GAP else
            f"the gap is below {CHEATING_GAP} nats, so this model has not learned to exploit "
            "the future (yet)")
        out.append(
            f"Without the causal mask the teacher-forced validation loss is {tf:.3f} (causal: "
            f"{a.loc['causal', 'val_loss_teacher_forced']:.3f}); when each position sees only its "
            f"prefix it is {honest:.3f}: {verdict} (leakage {a.loc['none', 'leakage']:.3g} vs "
            f"{a.loc['causal', 'leakage']:.3g}).")
    kv = made["kv_cache"]
    if not kv.empty and kv["speedup"].notna().any():
        row = kv.loc[kv["speedup"].idxmax()]
        out.append(f"The KV cache's largest speed-up: {row['speedup']:.1f}x at batch "
                   f"{int(row['batch_size'])}, {int(row['new_tokens'])} new tokens; cached decoding "
                   f"matched the full pass in {row['cached_decode_matched']}. Without a causal "
                   "mask cached and full-pass decoding differ by construction.")
    status = made["status"]
    if not status.empty:
        listed = ", ".join(f"job {r.job} ({r.status})" for r in status.itertuples())
        out.append(f"Not completed: {listed}.")
    return out or ["No completed runs to compare yet."]


def _pm(mean, half):
    return f"{mean:.4f}" if not np.isfinite(half) or math.isnan(half) else f"{mean:.4f} ± {half:.4f}"
