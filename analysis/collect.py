"""Sweep folders -> tidy DataFrames: one row per run, per logged step, per speed measurement."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pandas as pd
import yaml

from analysis.common import BINDING, METRICS, SUMMARY, SWEEP_JOBS, portable_text, sweep_names

AXES = ["pos", "mask", "cache", "seed", "tokens"]


def job_folders(sweep_dir) -> list[Path]:
    """Every job folder at any depth below ``sweep_dir`` (a folder with a ``.hydra`` subfolder).

    So ``outputs/multirun`` (every sweep, by date and time) works as well as one sweep. Job
    folders are named by their overrides (``pos=rope,seed=1``; older sweeps: ``0``, ``1``...).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no such sweep folder: {sweep_dir}")
    if (sweep_dir / ".hydra").is_dir():
        return [sweep_dir]  # a single run
    found = []
    for root, dirs, _files in os.walk(sweep_dir):
        if ".hydra" in dirs:
            found.append(Path(root))
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("models", "wandb",
                                                                             "checkpoints")]
    return sorted(found, key=lambda p: _job_order(p.relative_to(sweep_dir)))


def missing_jobs(sweep_dir, found: list[str]) -> list[str]:
    """The jobs the sweep's own list (``sweep_jobs.json``) names that have no job folder (deleted,
    or without ``.hydra/``): the report lists them instead of leaving them out silently."""
    listed = _read_json(Path(sweep_dir) / SWEEP_JOBS) or {}
    jobs = listed.get("jobs") if isinstance(listed.get("jobs"), list) else []
    return [str(j) for j in jobs if str(j) not in found]


def _axes_from_name(name: str) -> dict:
    """The axes a job folder's name (its overrides, ``pos=rope,seed=1``) gives."""
    pairs = dict(p.split("=", 1) for p in name.split(",") if "=" in p)
    return {k: (int(pairs[k]) if k == "seed" and pairs[k].isdigit() else pairs[k])
            for k in AXES if k in pairs}


def job_name(sweep_dir, job: Path) -> str:
    """A job's name in the tables: its folder relative to the sweep folder."""
    return "." if job == Path(sweep_dir) else job.relative_to(sweep_dir).as_posix()


def _job_order(rel: Path):
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in rel.parts)


def _read_json(path: Path):
    """A JSON object's content, or None for a file that is missing, unreadable or not an object
    (a summary or binding that is a list or a number is no summary)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: bad JSON or bytes that are not text
        return None
    return value if isinstance(value, dict) else None


def _object(value) -> dict:
    return value if isinstance(value, dict) else {}


def _scalars(group: dict) -> dict:
    """The keys of a summary group whose values fit one runs.csv cell (no dicts or lists)."""
    return {k: v for k, v in group.items()
            if v is None or isinstance(v, (str, bool, int, float))}


def _axes_from_hydra(job: Path) -> dict:
    """The ablation axes from Hydra's saved config, for jobs that wrote no summary."""
    try:
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    cache = (cfg.get("cache") or {}).get("enabled")
    return {"pos": (cfg.get("pos") or {}).get("name"), "mask": (cfg.get("mask") or {}).get("name"),
            "cache": None if cache is None else ("on" if cache else "off"), "seed": cfg.get("seed"),
            "tokens": (cfg.get("tokens") or {}).get("name", "action")}


def _overrides(job: Path) -> str:
    try:
        return " ".join(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return ""


def _status(summary) -> str:
    if summary is None:
        return "missing"  # started (Hydra wrote .hydra/) but never wrote a summary
    status = summary.get("status", "unknown")
    if status == "running" and summary.get("host") == socket.gethostname():
        try:
            os.kill(int(summary["pid"]), 0)
        except (OSError, KeyError, ValueError, TypeError):
            return "crashed"  # its process is gone without a final status
    return status


def _training_config(job: Path, summary: dict) -> dict:
    """What the job's model was trained with, minus the seed: from summary.json (written by the
    run itself when it ends), else from the folder's binding (written when the job starts, so
    a running job's config is the resolved one too, e.g. ``train.precision=bf16`` where Hydra's
    file says ``auto``), else, for a job that wrote neither, from Hydra's saved config."""
    config = summary.get("training_config")
    if not isinstance(config, dict):
        binding = _read_json(job / BINDING)
        config = binding.get("training") if isinstance(binding, dict) else None
    if not isinstance(config, dict):
        try:
            config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        tokens = config.get("tokens") or {}
        config = {k: dict(config.get(k) or {}) for k in ("data", "model", "pos", "mask", "train")}
        for group, keys in _BOOKKEEPING.items():  # what run.py leaves out of a training config
            for key in keys:
                config[group].pop(key, None)
        if tokens.get("name", "action") != "action":  # run.py leaves tokens=action out
            config["tokens"] = dict(tokens)
    pos = config.get("pos") or {}
    if pos.get("name") == "sinusoidal" and "amplitude" not in pos:
        config["pos"] = {**pos, "amplitude": 1.0}  # written before the matched amplitude
    return {k: v for k, v in config.items() if k != "seed"}


# keys of Hydra's config that do not change training (vla_ablate/config/identity.py,
# _NOT_TRAINING); the analysis reads run folders only, so it keeps its own copy for jobs without training_config
_BOOKKEEPING = {"data": ("cache_dir",),
                "train": ("num_threads", "concurrent_jobs", "device", "share_models", "progress",
                          "compile", "checkpoint_minutes")}


def _flatten(tree, prefix="") -> dict:
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else value
    return out


def config_labels(configs: list[dict], with_tokens: bool = True, without=()) -> list[str]:
    """A short label per training configuration: the keys that differ among ``configs``.

    The pos and mask groups are table axes of their own (see ``pos_labels``) and never part of
    this label; identical configurations share a label ("default" when nothing differs). The
    token layout appears as one key, ``tokens=<label>`` (``tokens_labels``), where layouts
    differ; ``with_tokens=False`` leaves it out (the token-layout table's pairing).
    ``without``: names of keys left out wherever they sit, with all below them (``tokenizer``:
    the tokenizer table's pairing, whether the tokenizer is a group of its own or a key of
    another one).
    """
    tokens = tokens_labels(configs, without)
    # a LeRobot dataset's state column is read by the state_action layout alone (and recorded
    # only there): part of the layout, so left out with it
    layout_keys = ("pos.", "mask.", "tokens.") + (() if with_tokens else ("data.state_key",))
    flat = [{k: v for k, v in _flatten(c).items() if not k.startswith(layout_keys)
             and not set(k.split(".")) & set(without)}
            | ({"tokens": t} if with_tokens else {}) for c, t in zip(configs, tokens)]
    return _differing(flat)


def pos_labels(configs: list[dict]) -> list[str]:
    """The encoding's name, plus its settings where runs of that encoding differ in them:
    ``sinusoidal(amplitude=1.0)`` beside ``sinusoidal(amplitude=None)``, plain ``rope``."""
    return _group_labels([c.get("pos") or {} for c in configs], None)


def tokens_labels(configs: list[dict], without=()) -> list[str]:
    """The token layout's name (``action`` where a config has none), plus its settings where
    runs of that layout differ in them: ``state_action(loss=action)`` beside
    ``state_action(loss=all)``, plain ``state_action`` when all agree; settings named in
    ``without`` left out."""
    return _group_labels([{k: v for k, v in (c.get("tokens") or {}).items() if k not in without}
                          for c in configs], "action")


def tokenizer_labels(configs: list[dict], names: list) -> list[str]:
    """Each run's tokenizer ``names`` (its summary's, ``uniform``), plus the tokenizer settings
    in which runs of that name differ, wherever the config holds them (any key named
    ``tokenizer``, with all below it): ``uniform(tokenizer.bins=128)`` beside
    ``uniform(tokenizer.bins=256)``, plain ``uniform`` when all agree."""
    flat = [{k: v for k, v in _flatten(c).items() if "tokenizer" in k.split(".")}
            for c in configs]
    labels = [None] * len(flat)
    for name in set(names):
        idx = [i for i, n in enumerate(names) if n == name]
        for i, extra in zip(idx, _differing([flat[i] for i in idx])):
            labels[i] = name if extra == "default" else f"{name}({extra})"
    return labels


def _group_labels(groups: list[dict], default_name) -> list[str]:
    """One config group per run -> its ``name``, plus the settings in which runs of that name
    differ, e.g. ``name(key=value)``."""
    flat = [_flatten(g) for g in groups]
    names = [f.get("name", default_name) for f in flat]
    labels = [None] * len(flat)
    for name in set(names):
        idx = [i for i, n in enumerate(names) if n == name]
        group = [{k: v for k, v in flat[i].items() if k != "name"} for i in idx]
        for i, extra in zip(idx, _differing(group)):
            labels[i] = name if extra == "default" else f"{name}({extra})"
    return labels


def _differing(flat: list[dict]) -> list[str]:
    keys = sorted({k for f in flat for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    return [",".join(f"{k}={f.get(k)}" for k in varying) or "default" for f in flat]


def load_runs(sweep_dirs) -> pd.DataFrame:
    """One row per job. ``config`` labels the training configuration (everything that changes
    training except the seed and the pos/mask axes), so that tables never average runs that
    were trained differently."""
    rows, configs = [], []
    names = _names(sweep_dirs)
    for sweep in _as_list(sweep_dirs):
        name, where = names[str(Path(sweep).resolve())], str(Path(sweep).resolve())
        for job in job_folders(sweep):
            summary = _read_json(job / SUMMARY)
            s = summary or {}
            configs.append(_training_config(job, s))
            jname = job_name(sweep, job)
            # sweep and path relative (the sweep folder's name): tables read the same anywhere;
            # ``folder`` (never written to a data file) is where this machine reads the job
            row = {"sweep": name, "job": jname, "path": name if jname == "." else f"{name}/{jname}",
                   "status": _status(summary),
                   **_axes_from_hydra(job), **{k: s[k] for k in AXES if k in s},
                   "overrides": portable_text(_overrides(job), where, name)}
            row["tokens"] = row.get("tokens") or "action"
            # the action tokens' loss: the one figure comparable across token layouts (with
            # tokens=action it is val_loss; runs from before the tokens group have only that)
            row["val_action_loss"] = s.get("val_action_loss", s.get("val_loss")
                                           if row["tokens"] == "action" else None)
            for key in ("val_loss", "val_perplexity", "train_loss", "best_val_loss", "steps",
                        "wall_time_s", "wall_time_total_s", "train_time_s", "train_tokens_per_s", "diverged_step",
                        "model_key", "trained_here", "num_parameters", "precision", "error",
                        "git_commit"):
                row[key] = s.get(key)
            data = configs[-1].get("data") or {}
            row["data_varies_with_seed"] = bool(data.get("vary_with_seed")) and not data.get("path")
            # one name per figure: the summary's own keys (scalars alone: a cell holds one)
            for group in ("mask_audit", "position_shift", "extrapolation"):
                row.update(_scalars(_object(s.get(group))))
            row.update(_action_error(s))
            kv = _object(s.get("kv_cache"))
            consistency = _object(kv.get("consistency"))
            row["kv_matches"] = consistency.get("matches")
            # the greedy decodes parted at a near-tie (matches held within the tolerance)
            row["kv_greedy_tie"] = consistency.get("greedy_tie", False)
            row["kv_max_logit_diff"] = consistency.get("max_logit_diff")
            row["kv_concurrent_jobs"] = kv.get("concurrent_jobs")
            row["error"] = portable_text(row["error"], where, name)
            row["folder"] = str(job)
            rows.append(row)
        for missing in missing_jobs(sweep, [r["job"] for r in rows if r["sweep"] == name]):
            configs.append({})
            rows.append({"sweep": name, "job": missing, "path": f"{name}/{missing}",
                         "status": "missing", "tokens": "action", **_axes_from_name(missing),
                         "overrides": missing.replace(",", " "),
                         "folder": str(Path(sweep) / missing)})
    runs = pd.DataFrame(rows)
    if not runs.empty:
        # what each row's labels are made from, kept so that rows read at different times (a
        # study's parts, merged from their committed tables) can be labelled together again
        runs["training_config"] = [json.dumps(c, sort_keys=True) for c in configs]
        runs = label_runs(runs)
    return runs


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``config``, ``config_without_tokens``, ``pos`` and ``tokens`` labelled
    from its ``training_config`` column (JSON), over all its rows together: rows from several
    sweeps or parts get one set of labels, and rows trained differently (another precision,
    another recipe) never share one."""
    configs = [json.loads(c) for c in runs["training_config"]]
    # rows without a config (a job listed by its sweep whose folder is gone) take no part in
    # the labelling, or every key would look varied between them and the rest
    known = [i for i, c in enumerate(configs) if c]
    kept = [configs[i] for i in known]

    def spread(labels, default):
        out = [default] * len(configs)
        for i, label in zip(known, labels):
            out[i] = label
        return out

    runs = runs.drop(columns=["config", "config_without_tokens"], errors="ignore")
    runs.insert(3, "config", spread(config_labels(kept), "n/a"))
    # the configuration apart from the token layout: rows the tokens table pairs up
    runs.insert(4, "config_without_tokens", spread(config_labels(kept, with_tokens=False),
                                                   "n/a"))
    labels = spread(pos_labels(kept), None)  # jobs without a config keep their summary's name
    runs["pos"] = [label or pos for label, pos in zip(labels, runs["pos"])]
    tokens = spread(tokens_labels(kept), None)
    runs["tokens"] = [label or tok for label, tok in zip(tokens, runs["tokens"])]
    return runs


def _action_error(summary: dict) -> dict:
    """The action error of a run on continuous actions (``data=lerobot``), as columns: the
    mean absolute error of the greedy and the expected-value decode on the validation episodes,
    in the data's units, and the tokenizer's round-trip error on the same steps (what binning
    alone costs), each with its per-dimension values as JSON. Nothing for the course's runs,
    whose summaries have no ``action_error``: their runs.csv stays as it was."""
    error = _object(summary.get("action_error"))
    if not error:
        return {}
    axes = _object(summary.get("axes"))
    row = {"data": summary.get("data"), "tokenizer": summary.get("tokenizer", axes.get("tokenizer"))}
    for kind in ACTION_ERRORS:
        part = _object(error.get(kind))
        row[f"action_error_{kind}"] = part.get("mean")
        row[f"action_error_{kind}_per_dim"] = json.dumps(part.get("per_dim"))
    row["action_error_dims"] = json.dumps(error.get("dims"))
    row["action_error_episodes"] = error.get("episodes")
    row["action_error_steps"] = error.get("steps")
    return row


# summary.json's action_error: two decodes of the model's prediction and the tokenizer's floor
ACTION_ERRORS = ("greedy", "expected", "round_trip")


def load_metrics(sweep_dirs, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every logged record of every job; ``runs`` (``load_runs``'s frame) when already read.

    ``loss`` of a validation record is the action tokens' loss where the run logged one
    (``action_loss``, tokens=state_action), so curves and steps-to-target compare across token
    layouts; the training objective's is kept as ``objective_loss``."""
    frames = []
    runs = load_runs(sweep_dirs) if runs is None else runs
    for run in runs.itertuples():
        path = Path(getattr(run, "folder", run.path)) / METRICS
        if not path.exists():
            continue
        records = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):  # a line of valid JSON that is no record: skipped
                records.append(record)
        if records:
            df = pd.DataFrame(records)
            if "action_loss" in df:  # tokens=state_action: the comparable figure is "loss"
                df["objective_loss"] = df["loss"]
                df["loss"] = df["action_loss"].where(df["action_loss"].notna(), df["loss"])
            for key in ("job", "sweep", "config", *AXES, "model_key", "status"):
                df[key] = getattr(run, key)
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["step", "split", "loss", "job", "sweep", *AXES])


def load_speed(sweep_dirs) -> pd.DataFrame:
    """One row per job and (batch size, new tokens): its paired cached/uncached timing."""
    rows = []
    names = _names(sweep_dirs)
    for sweep in _as_list(sweep_dirs):
        for job in job_folders(sweep):
            s = _read_json(job / SUMMARY) or {}
            kv = _object(s.get("kv_cache"))
            for r in kv.get("speed") or []:
                if not isinstance(r, dict) or "speedup" not in r:
                    continue  # an unpaired measurement from an older version: not comparable
                if "pairs" in r:  # every timed pair (order and both times), as JSON text
                    r = {**r, "pairs": json.dumps(r["pairs"])}
                rows.append({"job": job_name(sweep, job),
                             "sweep": names[str(Path(sweep).resolve())],
                             "model_key": s.get("model_key"), "precision": kv.get("precision"),
                             "concurrent_jobs": kv.get("concurrent_jobs"),
                             **{k: s.get(k) for k in AXES}, "tokens": s.get("tokens", "action"),
                             **r})
    return pd.DataFrame(rows)


def _names(sweep_dirs) -> dict:
    """Resolved sweep folder -> its name in the tables (``common.sweep_names``)."""
    return sweep_names(str(Path(d).resolve()) for d in _as_list(sweep_dirs))


def _as_list(dirs):
    return [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
