"""One job of ``python -m vla_ablate``: resolve its settings once, bind its folder, run it, record it.

``run_job`` turns every failure into a status in ``summary.json`` (and, for a single run, an exit
code), so one bad job never stops the other jobs of a sweep. The work itself is
``pipeline.execute``; the bookkeeping around it is ``recorded``.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import sys
import time
import traceback
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from vla_ablate import pipeline
from vla_ablate.config import (
    data_cache_dir,
    is_lerobot,
    model_key,
    resolve_data_path,
    tokenizer_of,
    training_config,
    validate,
)
from vla_ablate.console import USAGE, error, log
from vla_ablate.data.hub import fetch
from vla_ablate.data.robot import RobotData
from vla_ablate.data.tokens import TokenLayout
from vla_ablate.errors import ConfigError, DataError
from vla_ablate.factory import model_args_from_config
from vla_ablate.host import pick_device
from vla_ablate.locks import job_folder_lock
from vla_ablate.loggers import Logger, make_logger
from vla_ablate.precision import resolve_precision
from vla_ablate.runfolder import (
    ATTEMPT,
    BINDING,
    CHECKPOINTS,
    ERROR_LOG,
    SUMMARY,
    bind_check,
    bind_folder,
    code_version,
    differences,
    json_text,
    read_json,
    record_file,
    restore_hydra_files,
    running_summary,
    unbind_folder,
    write_summary,
)
from vla_ablate.training.checkpoint import Checkpoints
from vla_ablate.training.signals import JobInterrupted, TrainingInterrupted, stop_on_signals
from vla_ablate.training.signals import signals_stop_the_job as stops_the_job

EXIT_CODES = {"completed": 0, "failed": 1, "bad_config": USAGE, "diverged": 3, "interrupted": 130}
# (an interrupted job exits with 128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM)
LAUNCH_ENV = "VLA_ABLATE_LAUNCH"  # one id per `python -m vla_ablate -m` (vla_ablate/sweep.py)
ARGV_ENV = "VLA_ABLATE_ARGV"  # the command line, for the resume hint in worker processes


@dataclass(frozen=True)
class Job:
    """A job's settings, resolved once: what every stage reads instead of re-deriving it."""

    run_dir: Path
    multirun: bool
    axes: dict
    device: torch.device
    precision: str
    precision_why: str
    layout: TokenLayout
    model_args: dict
    training: dict  # the training config the folder is bound to (config.training_config)
    key: str  # the model's name (config.model_key)
    data: dict | None = None  # the dataset file's content (data.path), read and checked
    robot: RobotData | None = None  # data=lerobot: the dataset, split and tokenized


def axes_of(cfg) -> dict:
    tokens = cfg.get("tokens")
    axes = {"pos": cfg.pos.name, "mask": cfg.mask.name,
            "cache": "on" if cfg.cache.enabled else "off", "seed": int(cfg.seed),
            "tokens": "action" if tokens is None else str(tokens.name)}
    if is_lerobot(cfg):  # the course's runs keep their axes (and summaries) as they were
        axes["tokenizer"] = tokenizer_of(cfg)["name"]
    return axes


def fetch_dataset(cfg) -> None:
    """``data.repo_id``: the Hub dataset fetched into the data cache (``data.hub``; a copy made
    before is reused) and ``data.root`` set to it; ``ConfigError`` (one line) where it cannot be
    had. Nothing for a local dataset or the course's data. After ``resolve_data_path``."""
    d = cfg.data
    if not is_lerobot(cfg) or d.repo_id is None:
        return
    try:
        d.root = str(Path(fetch(d.repo_id, data_cache_dir(cfg), log=log)).resolve())
    except DataError as err:
        raise ConfigError(str(err)) from None


def resolve(cfg, run_dir: Path, multirun: bool) -> Job:
    """Fetch a Hub dataset, check ``cfg`` and resolve device, precision, layout and model once
    (``ConfigError``)."""
    fetch_dataset(cfg)
    layout = validate(cfg)
    device = pick_device(cfg.train.device)
    try:
        precision, why = resolve_precision(cfg.train.precision, device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    training = training_config(cfg, device, precision)
    # a data file is read and checked here, before the folder is bound (a bad file binds nothing)
    data = pipeline.read_file(cfg, layout) if cfg.data.path is not None else None
    robot = pipeline.read_robot(cfg, layout) if is_lerobot(cfg) else None
    return Job(run_dir, multirun, axes_of(cfg), device, precision, why, layout,
               model_args_from_config(cfg, layout), training, model_key(cfg, training), data,
               robot)


def run_job(cfg) -> dict:
    """Run one job; never raises for a job's own failure (except Ctrl-C, which stops a sweep)."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    with ExitStack() as held:
        try:  # before anything is written: a bad config or data file, another folder's settings
            resolve_data_path(cfg)
            job = resolve(cfg, run_dir, multirun)
            bind_check(run_dir, job.training)
            check_unbound_model(run_dir, job)
            held.enter_context(job_folder_lock(run_dir))  # one process per folder
        except ConfigError as err:
            return refuse(run_dir, axes_of(cfg), err, multirun)
        if multirun and (done := completed_before(run_dir)) is not None:
            restore_hydra_files(run_dir)  # the folder keeps describing the launch that ran it
            return done
        was_bound = (run_dir / BINDING).exists()
        bind_folder(run_dir, job.training)
        record = {}
        try:
            with recorded(cfg, job, hc) as record:
                record["logger"] = make_logger(cfg, run_dir, hc, job.axes)
                record["summary"] = pipeline.execute(cfg, job, record["logger"])
        finally:
            if not was_bound and not trained_anything(run_dir, record.get("summary") or {}):
                unbind_folder(run_dir)  # a failed attempt that trained nothing binds nothing
    if record["code"] and not multirun:
        sys.exit(record["code"])
    return record["summary"]


def trained_anything(run_dir: Path, summary: dict) -> bool:
    """Whether a job got as far as a training result (its own checkpoints, or a summary with the
    model's steps): its folder then stays bound to the settings it was trained with."""
    folder = run_dir / CHECKPOINTS
    return "steps" in summary or (folder.is_dir() and any(folder.iterdir()))


def check_unbound_model(run_dir: Path, job: Job) -> None:
    """A folder without ``training_config.json`` (written by an older version) that holds a
    model: its checkpoint's own ``model_args`` must be the job's, or the job would label that
    model's numbers with other settings (``ConfigError``)."""
    if (run_dir / BINDING).exists() or not (run_dir / CHECKPOINTS).is_dir():
        return
    state = Checkpoints(run_dir / CHECKPOINTS, keep=0, log=log).latest_valid()
    if state is None:
        return
    diff = differences(state["model_args"], job.model_args)
    if diff:
        raise ConfigError(f"{run_dir} holds a model trained with other settings (its checkpoint's "
                          f"model_args: {', '.join(diff[:6])}) and no {BINDING} (an older "
                          "version's folder); repeat its settings, or give a new folder "
                          "(hydra.run.dir=...)")


@contextmanager
def recorded(cfg, job: Job, hc):
    """Around a job's work: a ``running`` summary first, then whatever happens, the final one.

    The work fills ``record["summary"]`` (and ``record["logger"]``); a failure becomes a status
    (``failed``, ``bad_config``: exit 2, ``interrupted``: exit 128 + the signal) with a one-line
    message, and an unexpected error's traceback goes to ``error.log``. A SIGTERM or Ctrl-C
    stops the work at once; one that comes while the job is recorded waits for the record, and
    an interrupted job then exits (which stops a sweep too; the checkpoint is saved).

    A folder whose summary says ``completed`` keeps it until this attempt completes too: the
    attempt's ``running`` and final records go to ``last_attempt.json`` beside it. A record that
    cannot be written (a full disk) is one line on stderr, never a traceback.
    """
    run_dir = job.run_dir
    earlier = _earlier_wall_time(run_dir)  # earlier sittings in this folder (a resumed run)
    kept = (read_json(run_dir / SUMMARY) or {}).get("status") == "completed"
    stamp = {"launch_id": os.environ.get(LAUNCH_ENV), **code_version()}
    # the earlier sittings' time stays on record should this one be killed (kill -9)
    _write_record(run_dir, {**running_summary(job.axes), **stamp, "wall_time_total_s": earlier},
                  kept)
    t0 = time.time()
    record = {"logger": Logger(), "summary": {}, "code": 1}
    status, message, signum = "failed", None, None
    with stop_on_signals() as stop:
        try:
            with stops_the_job(stop):
                yield record
            status = record["summary"]["status"]
        except ConfigError as err:
            status, message = "bad_config", str(err)
            error(str(err))
        except (TrainingInterrupted, JobInterrupted) as err:  # JobInterrupted: SIGTERM outside
            status, message, signum = "interrupted", str(err), err.signum  # the training loop
            log(f"{err}; to resume: {resume_command(hc, run_dir, job.multirun)}")
        except KeyboardInterrupt:  # Ctrl-C outside the training loop (data, evaluation)
            status, message, signum = "interrupted", "interrupted by Ctrl-C", signal.SIGINT
            log(f"interrupted; to resume: {resume_command(hc, run_dir, job.multirun)}")
        except Exception as err:  # noqa: BLE001 - recorded as the job's status
            message = f"{type(err).__name__}: {err}".splitlines()[0]
            why = record_file(run_dir / ERROR_LOG, traceback.format_exc().encode())
            error(f"{message} (traceback in {run_dir / ERROR_LOG})" if why is None else
                  f"{message} (its traceback could not be written: {why})")
        finally:
            record["code"] = (128 + signum if status == "interrupted"
                              else EXIT_CODES.get(status, 1))
            summary = _final_summary(cfg, job, record["summary"], stamp, status, message,
                                     time.time() - t0, earlier)
            record["summary"] = summary
            _write_record(run_dir, summary, kept)
            try:
                record["logger"].log_summary(summary)
                record["logger"].finish(exit_code=record["code"])
            except OSError as err:  # a full disk: the summary above is the record
                error(f"the logger could not record the job ({err.strerror or err})")
            if status == "interrupted":
                stop["signum"] = None  # it exits 128 + signum below
    if status == "interrupted":
        sys.exit(128 + signum)


def _write_record(run_dir: Path, summary: dict, keep_completed: bool) -> None:
    """Write ``summary`` to summary.json, or beside a completed run's summary (``ATTEMPT``) where
    ``keep_completed`` and this attempt has not completed."""
    target = run_dir / SUMMARY
    if keep_completed and summary.get("status") != "completed":
        target = run_dir / ATTEMPT
        if summary.get("status") != "running":
            log(f"{run_dir / SUMMARY} keeps the completed run's results; this attempt "
                f"({summary.get('status')}) is recorded in {target}")
    elif (run_dir / ATTEMPT).exists():
        (run_dir / ATTEMPT).unlink()
    why = record_file(target, json_text(summary))
    if why is not None:
        error(f"could not record the job's status in {target} ({why})")


def _final_summary(cfg, job: Job, summary: dict, stamp: dict, status: str, message, seconds,
                   earlier: float) -> dict:
    summary = {**summary, **stamp}
    if "training_config" not in summary:  # so the analysis labels a failed job like the rest
        summary["training_config"] = job.training
    if "tokenizer" in job.axes:  # data=lerobot: its axes name the tokenizer
        summary.setdefault("data", "lerobot")
    if status != "completed":
        summary = {**summary, "status": "failed" if status == "bad_config" else status,
                   **job.axes, "axes": job.axes, "error": message or summary.get("error"),
                   "wall_time_s": seconds}
    summary["wall_time_total_s"] = earlier + seconds  # every sitting
    return summary


def _earlier_wall_time(run_dir: Path) -> float:
    """The wall time earlier sittings spent in this folder (0 for a new one)."""
    before = read_json(run_dir / SUMMARY)
    if not isinstance(before, dict):
        return 0.0
    value = before.get("wall_time_total_s", before.get("wall_time_s"))
    return float(value) if isinstance(value, (int, float)) else 0.0


def completed_before(run_dir: Path) -> dict | None:
    """A sweep job whose folder already holds a completed run: its summary, so that re-running a
    sweep command on its folder completes only what is missing (a single run in a folder is
    re-evaluated instead, see docs/running.md). The folder is bound to the same training config
    (``bind_check`` checked it), and its name holds the job's overrides."""
    summary = read_json(run_dir / SUMMARY)
    if not isinstance(summary, dict) or summary.get("status") != "completed":
        return None
    log(f"job {run_dir} completed before (commit {summary.get('git_commit') or 'unknown'}); "
        "skipping it (delete its summary.json to run it again)")
    return summary


def objective(cfg, summary: dict):
    """What the job returns to Hydra's sweeper: the summary, or with ``optimized_metric`` (an
    Optuna search, ``hparams_search=...``) that key's value; a job without a finite value
    returns +inf, the worst a minimising search can see."""
    key = cfg.get("optimized_metric")
    if not key:
        return summary
    value = summary.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def refuse(run_dir: Path, axes: dict, err: ConfigError, multirun: bool) -> dict:
    """A job that cannot run in this folder: one line, exit 2, the folder's results untouched.

    Hydra rewrote ``.hydra/`` before the job started; a folder bound to another training
    config gets its own files back.
    """
    error(str(err))
    summary = {"status": "failed", **axes, "axes": axes, "error": str(err),
               "launch_id": os.environ.get(LAUNCH_ENV)}
    if not restore_hydra_files(run_dir) and not (run_dir / SUMMARY).exists():
        write_summary(run_dir, summary)  # a new folder: let the analysis list the failure
    elif multirun:  # the folder keeps its results; the sweep's exit status counts the refusal
        record_file(run_dir / ATTEMPT, json_text(summary))
    if not multirun:
        sys.exit(EXIT_CODES["bad_config"])
    return summary


def resume_command(hc, run_dir: Path, multirun: bool) -> str:
    """The exact command that resumes this run or sweep (also with time-stamped folders)."""
    argv = json.loads(os.environ.get(ARGV_ENV, "null") or "null")
    if argv is None:  # not started by `python -m vla_ablate` (tests, the compose API)
        argv = (["-m"] if multirun else []) + list(hc.overrides.task)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = Path(hc.sweep.dir if multirun else run_dir).resolve()
    kept = [a for a in argv if not a.startswith((f"{key}=", f"+{key}=", f"++{key}="))]
    return shlex.join(["python", "-m", "vla_ablate", *kept, f"{key}={folder}"])
