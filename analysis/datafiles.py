"""A report's data files (runs.csv, metrics.csv, speed.csv): the per-job data written beside
the report, so that it can be made again without the sweep folders (``python -m analysis
--from-tables DIR``), read back, and merged over the parts of a study run in parts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.collect import label_runs
from analysis.common import portable_text, sweep_names
from analysis.tables import trained_models

DATA_FILES = ("runs.csv", "metrics.csv", "speed.csv")
_METRIC_COLUMNS = ["step", "split", "loss", "objective_loss", "action_loss", "elapsed_s",
                   "tokens_per_s", "job", "sweep", "config", "pos", "mask", "cache", "seed",
                   "tokens", "model_key", "status"]


def write_data_files(out, runs, metrics, speed) -> None:
    """``DATA_FILES`` in the folder ``out``; metrics.csv keeps one job's records per trained
    model (jobs sharing a model share its curves)."""
    out = Path(out)
    runs, metrics, speed = portable(runs.drop(columns=["folder"], errors="ignore"), metrics,
                                    speed)
    runs.to_csv(out / "runs.csv", index=False)
    models = set(zip(trained_models(runs)["sweep"], trained_models(runs)["job"]))
    kept = metrics[[(s, j) in models for s, j in zip(metrics["sweep"], metrics["job"])]]
    kept[[c for c in _METRIC_COLUMNS if c in kept]].to_csv(out / "metrics.csv", index=False)
    speed.to_csv(out / "speed.csv", index=False)


# columns that are names, whatever they look like (a job folder "0", a seed-like label)
_TEXT_COLUMNS = {c: str for c in ("sweep", "job", "path", "config", "config_without_tokens",
                                  "pos", "mask", "cache", "tokens", "model_key", "status",
                                  "split", "precision", "training_config", "data",
                                  "tokenizer", "action_error_dims",
                                  "action_error_greedy_per_dim",
                                  "action_error_expected_per_dim",
                                  "action_error_round_trip_per_dim")}
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
    return portable(runs, metrics, speed)


def portable(runs, metrics, speed):
    """The frames with no machine's absolute path: ``sweep`` the sweep folder's name
    (``common.sweep_names``), ``path`` NAME/JOB, and the paths in ``overrides`` and ``error``
    relative to the sweep folder. Tables written before this read the same way."""
    names = sweep_names(pd.concat([f["sweep"].astype(str) for f in (runs, metrics, speed)
                                   if "sweep" in f]).unique())
    if all(k == v for k, v in names.items()):
        return runs, metrics, speed
    runs = runs.copy()
    old = runs["sweep"].astype(str)
    runs["sweep"] = old.map(names)
    runs["path"] = [s if j == "." else f"{s}/{j}" for s, j in zip(runs["sweep"], runs["job"])]
    for col in ("overrides", "error"):
        if col in runs:
            runs[col] = [portable_text(t, o, n) for t, o, n in zip(runs[col], old, runs["sweep"])]
    metrics, speed = (f.assign(sweep=f["sweep"].astype(str).map(names)) if "sweep" in f else f
                      for f in (metrics, speed))
    return runs, metrics, speed


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
    merged = _distinct_parts(parts)
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


def _distinct_parts(parts):
    """``parts`` as (runs, metrics, speed), refusing a job given twice and qualifying the
    ``sweep`` of another machine's jobs at the same path (``merge_parts``)."""
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
            runs, metrics, speed = (_renamed(f, rename) for f in (runs, metrics, speed))
            keys = list(zip(runs["sweep"], runs["job"].astype(str)))
        seen.update({k: (name, r) for k, r in zip(keys, _results(runs))})
        merged.append((runs, metrics, speed))
    return merged


def _results(runs):
    """What identifies one job's outcome: its model and what it measured."""
    cols = [c for c in ("model_key", "status", "val_loss", "wall_time_total_s") if c in runs]
    return [tuple("" if pd.isna(v) else str(v) for v in row)
            for row in runs[cols].itertuples(index=False)]


def _renamed(frame, rename: dict):
    """``frame`` with its ``sweep`` names renamed and its ``path`` (NAME/JOB) made again."""
    if frame.empty:
        return frame
    frame = frame.assign(sweep=frame["sweep"].astype(str).map(rename))
    if "path" in frame and "job" in frame:
        frame["path"] = [s if j == "." else f"{s}/{j}"
                         for s, j in zip(frame["sweep"], frame["job"].astype(str))]
    return frame
