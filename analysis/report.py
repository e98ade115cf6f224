"""Build the report: the four tables (CSV + Markdown), the plots and report.md."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots, tables
from analysis.collect import label_runs, load_metrics, load_runs, load_speed
from analysis.mdx import write_mdx

CHEATING_GAP = 0.05  # nats: prefix-only minus teacher-forced loss that counts as cheating


# the per-job data a report is made from, written beside it so that it can be made again
# without the sweep folders (``python -m analysis --from-tables DIR``)
DATA_FILES = ("runs.csv", "metrics.csv", "speed.csv")
_METRIC_COLUMNS = ["step", "split", "loss", "objective_loss", "action_loss", "elapsed_s",
                   "tokens_per_s", "job", "sweep", "config", "pos", "mask", "cache", "seed",
                   "tokens", "model_key", "status"]


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
    runs, metrics, speed = merge_parts(parts) if len(parts) > 1 else parts[0][1:]
    live = sweep_dirs
    if tables_dirs:
        sweep_dirs = [Path(d) for d in dict.fromkeys(runs["sweep"].astype(str))]
    out.mkdir(parents=True, exist_ok=True)
    log(f"collected {len(runs)} jobs ({(runs['status'] == 'completed').sum()} completed)")

    made = {
        "positional": tables.positional(runs, metrics, target_loss),
        "mask_audit": tables.mask_audit(runs),
        "kv_cache": tables.kv_cache(runs, speed),
        "tokens": tables.token_layouts(runs),
        "status": tables.status_table(runs),
    }
    runs.to_csv(out / "runs.csv", index=False)
    # one job's records per trained model (jobs sharing a model share its curves)
    models = set(zip(tables.trained_models(runs)["sweep"], tables.trained_models(runs)["job"]))
    kept = metrics[[(s, j) in models for s, j in zip(metrics["sweep"], metrics["job"])]]
    kept[[c for c in _METRIC_COLUMNS if c in kept]].to_csv(out / "metrics.csv", index=False)
    speed.to_csv(out / "speed.csv", index=False)
    for name, df in made.items():
        df.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.md").write_text(tables.to_markdown(df))

    # the course's figures and page show action-token models where a sweep also has others
    course_runs, course_metrics, course_speed = action_only(runs, metrics, speed)
    figures = {
        "Validation loss by positional encoding (causal mask)":
            plots.loss_curves(metrics, "pos", out / "loss_by_pos.png", mask="causal"),
        "Validation loss by mask": plots.loss_curves(metrics, "mask", out / "loss_by_mask.png"),
        "Attention maps, causal vs no mask":
            plots.attention_grid(course_runs, out / "attention_grid.png"),
        "Position shift": plots.position_shift(runs, out / "position_shift.png"),
        "KV-cache speed-up": plots.kv_speed(_labelled(course_speed, course_runs),
                                            out / "kv_cache_speed.png"),
        "Action NLL by token layout": plots.token_layouts(runs, out / "tokens.png"),
    }
    text = _report_md(sweep_dirs, runs, made, figures, target_loss, tables_dirs, live)
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


# columns that are names, whatever they look like (a job folder "0", a seed-like label)
_TEXT_COLUMNS = {c: str for c in ("sweep", "job", "path", "config", "config_without_tokens",
                                  "pos", "mask", "cache", "tokens", "model_key", "status",
                                  "split", "precision", "training_config")}
_NEEDED = {"runs.csv": {"sweep", "job", "path", "status", "config", "pos", "mask", "cache",
                        "seed", "model_key"}}


def read_tables(folder):
    """(runs, metrics, speed) from a report folder's data files (``DATA_FILES``).

    metrics.csv holds one job's records per completed, trained model, so curves drawn from it
    leave out failed and diverged runs that a report from the sweep folders would draw."""
    folder = Path(folder)
    missing = [name for name in DATA_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks {', '.join(missing)}: not a report folder written by "
                         "python -m analysis")
    frames = []
    for name in DATA_FILES:
        try:
            frame = pd.read_csv(folder / name, dtype=_TEXT_COLUMNS, float_precision="round_trip")
        except pd.errors.EmptyDataError:  # a sweep without records or timings
            frame = pd.DataFrame(columns=["sweep", "job", "split", "step", "loss"])
        lacking = _NEEDED.get(name, set()) - set(frame.columns)
        if lacking:
            raise ValueError(f"{folder / name} lacks the columns {', '.join(sorted(lacking))}: "
                             "not written by this version of python -m analysis")
        frames.append(frame)
    runs, metrics, speed = frames
    if runs.empty:
        raise ValueError(f"{folder / 'runs.csv'} holds no jobs")
    return runs, metrics, speed


def _labelled(speed, runs):
    """``speed`` with its runs' configuration labels (``config``)."""
    if speed.empty:
        return speed
    return speed.drop(columns=["config"], errors="ignore").merge(
        runs[["sweep", "job", "config"]], on=["sweep", "job"], how="left")


def merge_parts(parts):
    """(runs, metrics, speed) of a study run in parts: ``parts`` is a list of (source name,
    runs, metrics, speed), each from a report folder's tables (``read_tables``) or from sweep
    folders (``load_runs``...). Rows are labelled again over all parts together from their
    ``training_config``, so a configuration label means the same in every part and rows
    trained differently (another precision on another host, another recipe) are never pooled
    or paired.

    A job given twice (the same sweep folder, job and model, with the same results: a part's
    sweep folder beside its own tables) is an error, not a silent choice. Parts that ran on
    different machines into the same sweep path are different jobs: the later part's
    ``sweep`` is then qualified with its source, ``PATH [SOURCE]``."""
    lacking = [name for name, runs, _, _ in parts if "training_config" not in runs
               or runs["training_config"].isna().any()]
    if lacking:
        raise ValueError(f"{', '.join(lacking)}: runs.csv lacks training_config for some rows "
                         "(made by an older python -m analysis), so they cannot be labelled "
                         "together with other parts; make a report from it alone, or its "
                         "report again from its sweep folders where they still exist")
    seen, merged = {}, []
    for name, runs, metrics, speed in parts:
        keys = list(zip(runs["sweep"].astype(str), runs["job"].astype(str)))
        same = [k for k, result in zip(keys, _results(runs))
                if k in seen and seen[k][1] == result]
        if same:
            sweep, job = same[0]
            raise ValueError(f"job {job} of sweep {sweep} is in two parts ({seen[same[0]][0]} "
                             f"and {name}): give each part once")
        if any(k in seen for k in keys):  # another machine's jobs at the same path
            rename = {sweep: f"{sweep} [{name}]" for sweep, _ in keys}
            runs, metrics, speed = (f.assign(sweep=f["sweep"].astype(str).map(rename))
                                    if not f.empty else f for f in (runs, metrics, speed))
            keys = list(zip(runs["sweep"], runs["job"].astype(str)))
        seen.update({k: (name, r) for k, r in zip(keys, _results(runs))})
        merged.append((runs, metrics, speed))
    runs = label_runs(pd.concat([m[0] for m in merged], ignore_index=True))
    labels = runs.set_index(["sweep", "job"])[["config", "pos", "tokens"]]
    frames = []
    for index in (1, 2):  # metrics, speed: the runs' new labels
        present = [m[index] for m in merged if not m[index].empty]
        frame = pd.concat(present, ignore_index=True) if present else merged[0][index]
        if not frame.empty:
            keys = pd.MultiIndex.from_arrays([frame["sweep"].astype(str),
                                              frame["job"].astype(str)])
            for col in ("config", "pos", "tokens"):
                if col in frame:
                    values = labels[col].reindex(keys)
                    if values.isna().any():
                        raise ValueError(f"records of jobs missing from runs.csv: "
                                         f"{sorted(set(keys[values.isna().to_numpy()]))[:3]}")
                    frame[col] = values.to_numpy()
        frames.append(frame)
    return runs, frames[0], frames[1]


def _results(runs):
    """What identifies one job's outcome: its model and what it measured."""
    cols = [c for c in ("model_key", "status", "val_loss", "wall_time_total_s") if c in runs]
    return [tuple("" if pd.isna(v) else str(v) for v in row)
            for row in runs[cols].itertuples(index=False)]


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


def _report_md(sweep_dirs, runs, made, figures, target_loss, tables_dirs=(), live=()) -> str:
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
        "model, in one process; a model's speed-up is the median over its pairs. The table "
        "gives, per training configuration, batch size and number of new tokens, the median "
        "over models with a 95% percentile-bootstrap interval and the range. `timed_alone` is "
        "false where jobs ran in parallel (their timings shared the CPU). With `tokens=state_action` a new token is "
        "a step's action, generated after that step's state tokens from the data.",
        "", tables.to_markdown(made["kv_cache"]),
        "## Token layouts: state tokens beside action tokens", "",
        "`val_action_loss` is the validation loss of the action tokens a_1 .. a_{T-1} alone, "
        "the one figure that means the same whether or not each step's state tokens precede "
        "its action (`tokens=state_action`; with `tokens=action` it is the validation loss). "
        "Causal mask; mean over seeds with its 95% Student-t interval; `above_noise_floor` is "
        f"the distance to ln 5 = {tables.NOISE_FLOOR:.3f}, the entropy of the process's +-2 "
        "token noise, below which no model can go; `diff_vs_action` is paired by seed within "
        "the same configuration and encoding.", "",
        tables.to_markdown(made["tokens"]),
    ]
    for title, path in figures.items():
        if path is not None:
            parts += [f"### {title}", "", f"![{title}]({path.name})", ""]
    parts += ["## Cost", "", *cost(runs), ""]
    parts += ["## Jobs that did not complete", ""]
    status = made["status"]
    parts.append(tables.to_markdown(status) if not status.empty else "All jobs completed.\n")
    return "\n".join(parts)


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


def findings(made) -> list[str]:
    """Sentences stating what the numbers show, for fixed, pre-chosen cells only."""
    out = []
    pos = made["positional"]
    for config, rows in (pos.groupby("config", sort=True) if not pos.empty else []):
        rows = rows.set_index("pos")
        where = "" if config == "default" else f" ({config})"
        variants = [p for p in rows.index if p.startswith("sinusoidal")] if "rope" in rows.index else []
        for variant in variants:
            r = rows.loc[variant]
            d, ci = r["diff_vs_rope"], r["diff_vs_rope_ci95"]
            if np.isfinite(d):
                verdict = ("larger than its 95% interval, so the difference is resolved"
                           if np.isfinite(ci) and abs(d) > ci else
                           "not larger than its 95% interval: more seeds are needed to call it"
                           if np.isfinite(ci) else "measured on one seed, so it has no interval")
                winner = "RoPE" if d > 0 else variant
                out.append(f"{variant.capitalize()} minus RoPE validation loss{where}: {_pm(d, ci)} nats "
                           f"over {int(r['pairs'])} paired seed(s) ({winner} ahead); the "
                           f"difference is {verdict}.")
        shifts = sorted((c for c in rows if c.startswith("delta_shift_")),
                        key=lambda c: int(c.rsplit("_", 1)[1]))
        if shifts:
            last = shifts[-1]
            k = last.rsplit("_", 1)[1]
            deltas = ", ".join(f"{name} {rows.loc[name, last]:+.4f}" for name in rows.index
                               if np.isfinite(rows.loc[name, last]))
            out.append(f"Position shift{where}: the validation trajectories moved {k} steps "
                       f"later change the loss by {deltas} nats (0 for an encoding that sees "
                       "relative positions only).")
        beyond = sorted(c for c in rows if c.endswith("x_beyond"))
        if beyond and "loss_1x_fresh" in rows:
            col = beyond[-1]
            text = ", ".join(f"{name} {rows.loc[name, col]:.3f} (vs {rows.loc[name, 'loss_1x_fresh']:.3f})"
                             for name in rows.index if np.isfinite(rows.loc[name, col]))
            out.append(f"Unseen positions of {col.split('_')[1]}-length trajectories{where} "
                       f"(new positions and a new data regime; in brackets fresh trajectories "
                       f"of the training length): {text}.")
    audit = made["mask_audit"]
    if not audit.empty and {"causal", "none"} <= set(audit["mask"]):
        for config, rows in audit.groupby("config", sort=True):
            if not {"causal", "none"} <= set(rows["mask"]):
                continue
            where = "" if config == "default" else f" ({config})"
            for pos, a in rows.groupby("pos", sort=True):  # one sentence per encoding
                a = a.set_index("mask")
                if not {"causal", "none"} <= set(a.index):
                    continue
                tf = a.loc["none", "val_loss_teacher_forced"]
                honest = a.loc["none", "val_loss_prefix_only"]
                verdict = (
                    "the unmasked model reads the next token from its input instead of "
                    "predicting it, and that skill is useless when generating"
                    if a.loc["none", "cheating_gap"] > CHEATING_GAP else
                    f"the gap is below {CHEATING_GAP} nats, so this model has not learned to "
                    "exploit the future (yet)")
                out.append(
                    f"Without the causal mask (pos={pos}{where}) the teacher-forced validation "
                    f"loss is {tf:.3f} (causal: {a.loc['causal', 'val_loss_teacher_forced']:.3f}); "
                    f"when each position sees only its prefix it is {honest:.3f}: {verdict} "
                    f"(leakage {a.loc['none', 'leakage']:.3g} vs "
                    f"{a.loc['causal', 'leakage']:.3g}).")
    tok = made.get("tokens", pd.DataFrame())
    for row in (tok[tok["tokens"] != "action"].itertuples() if not tok.empty else []):
        where = "" if row.config == "default" else f", {row.config}"
        d, ci = row.diff_vs_action, row.diff_vs_action_ci95
        if not np.isfinite(d):
            continue
        verdict = ("larger than its 95% interval" if np.isfinite(ci) and abs(d) > ci else
                   "within its 95% interval: not resolved" if np.isfinite(ci) else
                   "from one seed, without an interval")
        ref = tok[(tok["config"] == row.config) & (tok["pos"] == row.pos)
                  & (tok["tokens"] == "action")]
        base = float(ref["val_action_loss_mean"].iloc[0]) if len(ref) else math.nan
        out.append(
            f"State tokens ({row.tokens}, pos={row.pos}{where}) change the action tokens' "
            f"validation loss by {_pm(d, ci)} nats over {int(row.pairs)} paired seed(s) "
            f"({verdict}): {row.val_action_loss_mean:.4f} vs {base:.4f} with action tokens "
            f"alone, {row.above_noise_floor:.4f} and {base - tables.NOISE_FLOOR:.4f} above the "
            f"noise floor ln 5 = {tables.NOISE_FLOOR:.3f}.")
    kv = made["kv_cache"]
    if "tokens" in kv and (kv["tokens"] == "action").any():  # the headline: action tokens
        kv = kv[kv["tokens"] == "action"]
    for config, cells in (kv.groupby("config", sort=True) if not kv.empty else []):
        if not cells["speedup_median"].notna().any():
            continue
        where = "" if config == "default" else f" ({config})"
        one = cells[cells["batch_size"] == cells["batch_size"].min()]
        row = one.loc[one["new_tokens"].idxmax()]  # the fixed cell: smallest batch, longest
        out.append(
            f"KV cache{where} at batch {int(row['batch_size'])}, {int(row['new_tokens'])} new "
            f"tokens: {row['speedup_median']:.2f}x (median over {int(row['models'])} model(s), "
            f"{tables.speedup_spread(row)}); "
            f"across all cells the median speed-up ranges {cells['speedup_median'].min():.2f}x-"
            f"{cells['speedup_median'].max():.2f}x. Cached decoding matched the full pass in "
            f"{row['cached_decode_matched']}; without a causal mask the two differ by "
            "construction." + ("" if cells["timed_alone"].all() else
                               " Some timings ran beside other jobs and share their CPU."))
    status = made["status"]
    if not status.empty:
        listed = ", ".join(f"job {r.job} ({r.status})" for r in status.itertuples())
        out.append(f"Not completed: {listed}.")
    return out or ["No completed runs to compare yet."]


def _pm(mean, half):
    return f"{mean:.4f}" if not np.isfinite(half) or math.isnan(half) else f"{mean:.4f} ± {half:.4f}"
