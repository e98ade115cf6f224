"""Build the report: the tables (CSV + Markdown), the plots, report.md and, if asked, the
course's MDX page, from sweep folders, earlier reports' data files, or both."""

from __future__ import annotations

from pathlib import Path

from analysis import plots, tables
from analysis.collect import load_metrics, load_runs, load_speed
from analysis.common import sweep_names
from analysis.datafiles import merge_parts, read_tables, write_data_files
from analysis.findings import findings
from analysis.mdx import write_mdx
from analysis.report_md import report_md, varied

__all__ = ["action_only", "build_report", "findings"]  # findings: for analysis/report.ipynb
MASK_FIGURE = "Validation loss by mask: teacher-forced vs prefix-only"
TOKENIZER_FIGURE = "Action error by tokenizer"


def build_report(sweep_dirs, out_dir, target_loss=2.0, log=print, mdx=None,
                 from_tables=None) -> Path:
    """Tables, plots and report.md in ``out_dir``; with ``mdx`` (a dict of ``write_mdx``'s
    keywords, e.g. ``{"student": NAME}``) also the course's MDX page (analysis/mdx.py).

    ``from_tables``: a folder (or several) with an earlier report's ``runs.csv``,
    ``metrics.csv`` and ``speed.csv``: the report is made from those, together with the sweep
    folders if any are given (a study's parts: ``merge_parts``). The attention figure is drawn
    from job folders, so it shows only jobs whose folder exists on this machine."""
    out = Path(out_dir)
    sweep_dirs = [Path(d) for d in ([sweep_dirs] if isinstance(sweep_dirs, (str, Path))
                                    else sweep_dirs or [])]
    tables_dirs = [Path(d) for d in ([from_tables] if isinstance(from_tables, (str, Path))
                                     else from_tables or [])]
    runs, metrics, speed = _collect(sweep_dirs, tables_dirs)
    # by their names, as the tables give them: a report reads the same on any machine
    live = list(sweep_names(str(d.resolve()) for d in sweep_dirs).values())
    sweep_dirs = list(dict.fromkeys(runs["sweep"].astype(str)))
    out.mkdir(parents=True, exist_ok=True)
    log(f"collected {len(runs)} jobs ({(runs['status'] == 'completed').sum()} completed)")

    made = {
        "positional": tables.positional(runs, metrics, target_loss),
        "mask_audit": tables.mask_audit(runs),
        "kv_cache": tables.kv_cache(runs, speed),
        "tokens": tables.token_layouts(runs),
        "status": tables.status_table(runs),
    }
    tokenizer = tables.tokenizers(runs)  # runs on continuous actions only
    if not tokenizer.empty:
        made["tokenizer"] = tokenizer
    for name in ("tokenizer.csv", "tokenizer.md"):  # none left from an earlier report
        if "tokenizer" not in made:
            (out / name).unlink(missing_ok=True)
    write_data_files(out, runs, metrics, speed)
    for name, df in made.items():
        df.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.md").write_text(tables.tokenizer_markdown(df) if name == "tokenizer"
                                        else tables.to_markdown(df))

    # the course's figures and page show action-token models where a sweep also has others
    course_runs, course_metrics, course_speed = action_only(runs, metrics, speed)
    figures = _figures(out, runs, metrics, course_runs, course_speed, "tokenizer" in made)
    text = report_md(sweep_dirs, runs, made, figures, target_loss, tables_dirs, live)
    (out / "report.md").write_text(text)
    log(f"wrote {out / 'report.md'} and the tables and plots beside it")
    if mdx is not None:
        course = made if course_runs is runs else {
            **made, "positional": tables.positional(course_runs, course_metrics, target_loss),
            "mask_audit": tables.mask_audit(course_runs)}
        page = write_mdx(out, course, figures, runs=course_runs, metrics=course_metrics,
                         sweep_dirs=sweep_dirs, **mdx)
        log(f"wrote {page} and its images in {out / 'images'}")
    return out / "report.md"


def _collect(sweep_dirs, tables_dirs):
    """(runs, metrics, speed) of the report folders' data files and the sweep folders
    together, merged where there are several parts."""
    parts = [(str(d), *read_tables(d)) for d in tables_dirs]
    if sweep_dirs:
        runs = load_runs(sweep_dirs)
        if runs.empty:
            raise ValueError(f"no job folders (with .hydra/) under "
                             f"{', '.join(map(str, sweep_dirs))}")
        parts.append((", ".join(map(str, sweep_dirs)), runs, load_metrics(sweep_dirs, runs),
                      load_speed(sweep_dirs)))
    if not parts:
        raise ValueError("no sweep folders and no report folders to make a report from")
    return merge_parts(parts) if len(parts) > 1 else parts[0][1:]


def _figures(out, runs, metrics, course_runs, course_speed, tokenizer=False) -> dict:
    """The report's figures by title (None where a sweep lacks the data, or did not vary the
    axis a figure compares: mask, tokens), drawn into ``out``; ``tokenizer``: the sweep has
    runs on continuous actions, whose action error gets a figure of its own."""
    for name in ("loss_by_mask.png", "tokens.png", "tokenizer.png"):  # none left from before
        (out / name).unlink(missing_ok=True)
    figures = {
        "Validation loss by positional encoding (causal mask)":
            plots.loss_curves(metrics, "pos", out / "loss_by_pos.png", mask="causal"),
        MASK_FIGURE: (plots.mask_losses(runs, out / "loss_by_mask.png")
                      if varied(runs, "mask") else None),
        "Attention maps, causal vs no mask":
            plots.attention_grid(course_runs, out / "attention_grid.png"),
        "Position shift": plots.position_shift(runs, out / "position_shift.png"),
        "KV-cache speed-up": plots.kv_speed(_labelled(course_speed, course_runs),
                                            out / "kv_cache_speed.png"),
        "Action NLL by token layout": (plots.token_layouts(runs, out / "tokens.png")
                                       if varied(runs, "tokens") else None),
    }
    if tokenizer:  # a key of its own only here: the course's reports stay as they were
        figures[TOKENIZER_FIGURE] = plots.tokenizers(tables.tokenizer_models(runs),
                                                     out / "tokenizer.png")
    return figures


def _labelled(speed, runs):
    """``speed`` with its runs' configuration labels (``config``)."""
    if speed.empty:
        return speed
    return speed.drop(columns=["config"], errors="ignore").merge(
        runs[["sweep", "job", "config"]], on=["sweep", "job"], how="left")


def action_only(runs, metrics, speed):
    """(runs, metrics, speed) of the action-token models, where a sweep has models of other
    token layouts too and some of action tokens; otherwise all of them (the same objects)."""
    if "tokens" not in runs or not (runs["tokens"] == "action").any() or (
            runs["tokens"] == "action").all():
        return runs, metrics, speed
    keep = runs["tokens"] == "action"
    jobs = set(zip(runs.loc[keep, "sweep"], runs.loc[keep, "job"]))

    def of(frame):
        if frame.empty:
            return frame
        return frame[[(s, j) in jobs for s, j in zip(frame["sweep"], frame["job"])]]

    course = runs[keep].assign(config=runs.loc[keep, "config_without_tokens"])
    labels = dict(zip(zip(course["sweep"], course["job"]), course["config"]))
    metrics = of(metrics)
    if not metrics.empty:
        metrics = metrics.assign(config=[labels[(s, j)] for s, j in
                                         zip(metrics["sweep"], metrics["job"])])
    return course, metrics, of(speed)
