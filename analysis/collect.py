"""Sweep folders -> tidy DataFrames: one row per run, per logged step, per speed measurement."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pandas as pd
import yaml

AXES = ["pos", "mask", "cache", "seed"]


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


def job_name(sweep_dir, job: Path) -> str:
    """A job's name in the tables: its folder relative to the sweep folder."""
    return "." if job == Path(sweep_dir) else job.relative_to(sweep_dir).as_posix()


def _job_order(rel: Path):
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in rel.parts)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _axes_from_hydra(job: Path) -> dict:
    """The ablation axes from Hydra's saved config, for jobs that wrote no summary."""
    try:
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    cache = (cfg.get("cache") or {}).get("enabled")
    return {"pos": (cfg.get("pos") or {}).get("name"), "mask": (cfg.get("mask") or {}).get("name"),
            "cache": None if cache is None else ("on" if cache else "off"), "seed": cfg.get("seed")}


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


def load_runs(sweep_dirs) -> pd.DataFrame:
    rows = []
    for sweep in _as_list(sweep_dirs):
        for job in job_folders(sweep):
            summary = _read_json(job / "summary.json")
            s = summary or {}
            row = {"sweep": str(sweep), "job": job_name(sweep, job), "path": str(job),
                   "status": _status(summary),
                   **_axes_from_hydra(job), **{k: s[k] for k in AXES if k in s},
                   "overrides": _overrides(job)}
            for key in ("val_loss", "val_perplexity", "train_loss", "best_val_loss", "steps",
                        "wall_time_s", "train_time_s", "train_tokens_per_s", "diverged_step",
                        "model_key", "trained_here", "num_parameters", "error"):
                row[key] = s.get(key)
            for key, value in (s.get("mask_audit") or {}).items():
                row[f"audit_{key}"] = value
            for key, value in (s.get("extrapolation") or {}).items():
                row[f"extrap_{key}"] = value
            consistency = (s.get("kv_cache") or {}).get("consistency") or {}
            row["kv_matches"] = consistency.get("matches")
            row["kv_max_logit_diff"] = consistency.get("max_logit_diff")
            rows.append(row)
    return pd.DataFrame(rows)


def load_metrics(sweep_dirs) -> pd.DataFrame:
    frames = []
    runs = load_runs(sweep_dirs)
    for run in runs.itertuples():
        path = Path(run.path) / "metrics.jsonl"
        if not path.exists():
            continue
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if records:
            df = pd.DataFrame(records)
            for key in ("job", "sweep", *AXES, "model_key", "status"):
                df[key] = getattr(run, key)
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["step", "split", "loss", "job", "sweep", *AXES])


def load_speed(sweep_dirs) -> pd.DataFrame:
    rows = []
    for sweep in _as_list(sweep_dirs):
        for job in job_folders(sweep):
            s = _read_json(job / "summary.json") or {}
            for r in (s.get("kv_cache") or {}).get("speed") or []:
                rows.append({"job": job_name(sweep, job), "sweep": str(sweep),
                             **{k: s.get(k) for k in AXES},
                             **r})
    return pd.DataFrame(rows)


def _as_list(dirs):
    return [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
