"""One job: config -> data -> (shared) training -> evaluation -> run folder.

``run_job`` is what ``python -m vla_ablate`` calls for every job of a run or sweep. It turns
every failure into a status in ``summary.json`` (and, for a single run, an exit code), so one
bad job never stops the other jobs of a sweep.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from vla_ablate import evaluate, plots, runfolder
from vla_ablate.config import ConfigError, check_batch_fits, check_shifts, validate
from vla_ablate.data import (
    STATE_DIM,
    DataError,
    derived_seed,
    generate_dataset,
    load_dataset,
    load_or_generate,
    split_indices,
)
from vla_ablate.fileio import write_json
from vla_ablate.loggers import CsvLogger, Logger, WandbLogger
from vla_ablate.model import build_model, model_args_from_config
from vla_ablate.optim import newton_schulz_precision
from vla_ablate.precision import resolve_precision
from vla_ablate.runfolder import (
    MetricsFile,
    bind_check,
    bind_folder,
    code_version,
    restore_hydra_files,
    running_summary,
    write_summary,
)
from vla_ablate.tokens import TokenLayout, layout_from_config
from vla_ablate.train import (
    BatchSource,
    TrainingInterrupted,
    load_checkpoint,
    stop_on_signals,
    train,
    use_compile_decode,
)

EXIT_CODES = {"completed": 0, "failed": 1, "bad_config": 2, "diverged": 3, "interrupted": 130}
# (an interrupted job exits with 128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM)
LAUNCH_ENV = "VLA_ABLATE_LAUNCH"  # one id per `python -m vla_ablate -m` (vla_ablate/sweep.py)
ARGV_ENV = "VLA_ABLATE_ARGV"  # the command line, for the resume hint in worker processes

# Keys that change how a model is trained; everything else (cache, logger, eval) is inference
# or bookkeeping, so jobs differing only there share one trained model.
_TRAINING_KEYS = ("seed", "data", "model", "pos", "mask", "tokens", "train")
_NOT_TRAINING = {"data": ("cache_dir",), "model": (),
                 "train": ("num_threads", "concurrent_jobs", "device", "share_models", "progress",
                           "compile", "checkpoint_minutes")}

_log = logging.getLogger("vla_ablate")


def log(message: str) -> None:
    """A progress message: on stderr as ``[vla_ablate] ...`` and in the job's vla_ablate.log."""
    _log.info(message)


def error(message: str) -> None:
    """A one-line error: on stderr as ``error: ...`` and in the job's vla_ablate.log."""
    _log.error(message)


def axes_of(cfg) -> dict:
    tokens = cfg.get("tokens")
    return {"pos": cfg.pos.name, "mask": cfg.mask.name,
            "cache": "on" if cfg.cache.enabled else "off", "seed": int(cfg.seed),
            "tokens": "action" if tokens is None else str(tokens.name)}


class JobInterrupted(BaseException):
    """SIGTERM while a job is outside its training loop (loading data, evaluating). A
    BaseException, as KeyboardInterrupt is: the ``except Exception`` that reads a damaged cache
    or checkpoint as unusable must not take a stop for damage."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum} (no training step in progress)")
        self.signum = signum


@contextmanager
def signals_stop_the_job(stop: dict):
    """Within ``stop_on_signals`` (``stop``), which holds a SIGTERM or Ctrl-C back until the job
    is recorded: around the job's work, SIGTERM raises ``JobInterrupted`` and Ctrl-C does what it
    did before (``KeyboardInterrupt``), so the job stops where it is. (The training loop installs
    its own handlers for its steps, which save a checkpoint first, and puts these back.) A
    signal held back just before the block is raised on entering it."""

    def on_sigterm(signum, _frame):
        raise JobInterrupted(signum)

    found, held = stop["found"], {}  # found is empty outside the main thread: signals left alone
    if signal.SIGTERM in found:
        held[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_sigterm)
    if signal.SIGINT in found:  # None: a handler not set from Python, which can't be put back
        before = found[signal.SIGINT]
        held[signal.SIGINT] = signal.signal(
            signal.SIGINT, signal.default_int_handler if before is None else before)
    try:
        if stop["signum"] is not None:
            signum, stop["signum"] = stop["signum"], None
            signal.raise_signal(signum)
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)


def run_job(cfg) -> dict:
    """Run one job; never raises for a job's own failure (except Ctrl-C, which stops a sweep)."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    axes = axes_of(cfg)
    if cfg.data.path is not None:  # bound to the file, not to a path relative to the cwd
        cfg.data.path = str(Path(cfg.data.path).resolve())
    try:  # before anything is written: a bad config or another folder's settings
        validate(cfg)
        training = training_config(cfg)
        bind_check(run_dir, training)
    except ConfigError as err:
        return refuse(run_dir, axes, err, multirun)
    if multirun and (done := completed_before(run_dir)) is not None:
        restore_hydra_files(run_dir)  # the folder keeps describing the launch that ran it
        return done
    bind_folder(run_dir, training)
    earlier = _earlier_wall_time(run_dir)  # earlier sittings in this folder (a resumed run)
    stamp = {"launch_id": os.environ.get(LAUNCH_ENV), **code_version()}
    # the earlier sittings' time stays on record should this one be killed (kill -9)
    write_summary(run_dir, {**running_summary(axes), **stamp, "wall_time_total_s": earlier})
    t0 = time.time()
    logger: Logger = Logger()
    status, summary, message, signum = "failed", {}, None, None
    # a SIGTERM or Ctrl-C stops the job's work at once (signals_stop_the_job); one that comes
    # while the job is being classified or recorded waits for the record
    with stop_on_signals() as stop:
        try:
            with signals_stop_the_job(stop):
                logger = make_logger(cfg, run_dir, hc, axes)
                summary = execute(cfg, run_dir, multirun, logger)
            status = summary["status"]
        except ConfigError as err:
            status, message = "bad_config", str(err)
            error(str(err))
        except (TrainingInterrupted, JobInterrupted) as err:  # JobInterrupted: SIGTERM outside
            status, message, signum = "interrupted", str(err), err.signum  # the training loop
            log(f"{err}; to resume: {resume_command(hc, run_dir, multirun)}")
        except KeyboardInterrupt:  # Ctrl-C outside the training loop (data, evaluation)
            status, message, signum = "interrupted", "interrupted by Ctrl-C", signal.SIGINT
            log(f"interrupted; to resume: {resume_command(hc, run_dir, multirun)}")
        except Exception as err:  # noqa: BLE001 - recorded as the job's status
            message = f"{type(err).__name__}: {err}".splitlines()[0]
            (run_dir / "error.log").write_text(traceback.format_exc())
            error(f"{message} (traceback in {run_dir / 'error.log'})")
        finally:
            code = 128 + signum if status == "interrupted" else EXIT_CODES.get(status, 1)
            summary = {**summary, **stamp}
            if "training_config" not in summary:  # so the analysis labels a failed job like the rest
                try:
                    summary["training_config"] = training_config(cfg)
                except Exception:  # noqa: BLE001 - a config too broken to describe
                    pass
            if status != "completed":
                summary = {**summary, "status": "failed" if status == "bad_config" else status,
                           **axes, "axes": axes, "error": message or summary.get("error"),
                           "wall_time_s": time.time() - t0}
            summary["wall_time_total_s"] = earlier + (time.time() - t0)  # every sitting
            write_summary(run_dir, summary)
            logger.log_summary(summary)
            logger.finish(exit_code=code)
            if status == "interrupted":
                stop["signum"] = None  # it exits 128 + signum below
    if status == "interrupted":
        sys.exit(128 + signum)  # stops a sweep too; the checkpoint is saved
    if code and not multirun:
        sys.exit(code)
    return summary


def _trained_by(trainer: Path) -> str | None:
    """The job folder name ``trained_by.json`` holds (None where no job of this version wrote one)."""
    try:
        return json.loads(trainer.read_text()).get("job")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _earlier_wall_time(run_dir: Path) -> float:
    """The wall time earlier sittings spent in this folder (0 for a new one)."""
    try:
        before = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 0.0
    value = before.get("wall_time_total_s", before.get("wall_time_s"))
    return float(value) if isinstance(value, (int, float)) else 0.0


def completed_before(run_dir: Path) -> dict | None:
    """A sweep job whose folder already holds a completed run: its summary, so that re-running a
    sweep command on its folder completes only what is missing (a single run in a folder is
    re-evaluated instead, see README). The folder is bound to the same training config
    (``bind_check`` checked it), and its name holds the job's overrides."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("status") != "completed":
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
    if not restore_hydra_files(run_dir) and not (run_dir / "summary.json").exists():
        write_summary(run_dir, summary)  # a new folder: let the analysis list the failure
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


def make_logger(cfg, run_dir, hc, axes) -> Logger:
    name = cfg.logger.name
    if name == "csv":
        return CsvLogger(run_dir)
    if name == "wandb":
        group = "single" if hc.mode != RunMode.MULTIRUN else _sweep_id(hc)
        tags = [f"{k}={v}" for k, v in axes.items()]
        config = {**OmegaConf.to_container(cfg, resolve=True), **code_version()}
        return WandbLogger(run_dir, cfg.logger.wandb, config, group, tags, name=run_name(axes),
                           log=log)
    return Logger()


def run_name(axes: dict) -> str:
    """A run's name from its axes, e.g. ``rope-causal-on-s1`` (``...-s1-state_action``)."""
    name = f"{axes['pos']}-{axes['mask']}-{axes['cache']}-s{axes['seed']}"
    return name if axes.get("tokens", "action") == "action" else f"{name}-{axes['tokens']}"


def _sweep_id(hc) -> str:
    folder = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else hc.run.dir
    return "-".join(Path(folder).parts[-2:])


def execute(cfg, run_dir: Path, multirun: bool, logger: Logger) -> dict:
    t_start = time.time()
    threads = thread_count(cfg)
    torch.set_num_threads(threads)
    device = pick_device(cfg.train.device)
    try:
        precision, why = resolve_precision(cfg.train.precision, device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    log(f"precision {precision}: {why}")
    layout = layout_from_config(cfg)
    if layout.name != "action":
        log(f"tokens={layout.name}: each step is {', '.join(layout.state)} in {layout.bins} bins "
            f"each, then its action ({layout.per_step} tokens per step, vocabulary "
            f"{layout.vocab_size}); training loss over {layout.loss} tokens")
    train_actions, val_actions, fresh = load_data(cfg, layout)
    model_args = model_args_from_config(cfg)
    training = training_config(cfg)
    key = model_key(cfg, training)
    shared = multirun and cfg.train.share_models
    train_dir = Path(HydraConfig.get().sweep.dir) / "models" / key if shared else run_dir
    log(f"job {run_dir} | pos={cfg.pos.name} mask={cfg.mask.name} cache="
        f"{'on' if cfg.cache.enabled else 'off'} seed={cfg.seed} | {threads} threads, {device}")

    with model_lock(train_dir):
        done = train_dir / "train_done.json"
        trainer = train_dir / "trained_by.json"  # the job that trained it last (finished it)
        train_now = not done.exists()
        # a job stopped while evaluating, re-run: the model is still its own training
        trained_here = train_now or _trained_by(trainer) == run_dir.name
        if train_now:
            write_json(trainer, {"job": run_dir.name})
            torch.manual_seed(cfg.seed)
            model = build_model(cfg)
            log(f"training model {key} ({model.num_parameters():,} parameters) in {train_dir}")
            batches = BatchSource(train_actions, cfg.train.batch_size, cfg.seed, fresh)
            result = train(model, model_args, batches, val_actions, cfg.train, train_dir, device,
                           cfg.seed, on_record=logger.log_metrics, log=log,
                           precision=precision, layout=layout).as_dict()
        else:
            result = json.loads(done.read_text())
            log(f"model {key} already trained in {train_dir} ({result['status']}"
                f"{', by this job in an earlier sitting' if trained_here else ''}); reusing it")
            for record in MetricsFile(train_dir).read():
                logger.log_metrics(record)
    records = MetricsFile(train_dir).read()
    if train_dir != run_dir:
        shutil.copyfile(train_dir / "metrics.jsonl", run_dir / "metrics.jsonl")

    summary = {
        "status": result["status"], **axes_of(cfg), "axes": axes_of(cfg),
        "val_loss": result["val_loss"], "val_perplexity": evaluate.perplexity(result["val_loss"]),
        # the one figure comparable across token layouts: the action tokens a_1..a_{T-1} alone
        "val_action_loss": (result["val_loss"] if layout.name == "action"
                            else result.get("val_action_loss")),
        "train_loss": result["train_loss"], "best_val_loss": result["best_val_loss"],
        "steps": result["steps"], "train_time_s": result["train_time_s"],
        "train_tokens_per_s": result.get("tokens_per_s"), "diverged_step": result["diverged_step"],
        "resumed_from": result.get("resumed_from"), "trained_here": trained_here,
        "model_key": key, "training_config": training,
        "model_dir": str(train_dir), "threads": threads, "device": str(device),
        "precision": precision, "compiled": result.get("compiled"),
    }
    plots.loss_curve(records, run_dir / "loss_curve.png", title=_title(cfg))
    if result["status"] == "completed" and cfg.eval.enabled:
        state = load_checkpoint(train_dir / "checkpoints" / "last.pt", log=log)
        if state is None:
            raise RuntimeError(f"the trained model's last.pt in {train_dir} is unreadable")
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
        model.load_state_dict(state["model"])
        model.to(device).eval()
        summary["num_parameters"] = model.num_parameters()
        summary.update(run_evaluations(cfg, model, train_actions, val_actions, device, run_dir,
                                       precision, layout))
        logger.log_images({"loss_curve": run_dir / "loss_curve.png",
                           "attention_maps": run_dir / "attention_maps.png"})
    summary["wall_time_s"] = time.time() - t_start
    write_summary(run_dir, summary)
    if summary["status"] == "diverged":
        log(f"run diverged at step {summary['diverged_step']}")
    else:
        log(f"done: val loss {summary['val_loss']:.4f} in {summary['wall_time_s']:.1f}s -> {run_dir}")
    return summary


def run_evaluations(cfg, model, seen_actions, val_actions, device, run_dir, precision,
                    layout: TokenLayout) -> dict:
    """The per-run evaluations, counted in steps and scored on action tokens in every layout."""
    e = cfg.eval
    log(f"evaluating in {precision}: mask audit, position shift, extrapolation, KV cache")
    out = {
        "mask_audit": evaluate.mask_audit(model, seen_actions, val_actions, device,
                                          e.audit_trajectories, precision, layout),
        "position_shift": evaluate.position_shift(model, val_actions[: e.shift_trajectories],
                                                  list(e.position_shifts), device, precision,
                                                  layout),
        "extrapolation": evaluate.extrapolation(model, cfg.data.seed, cfg.data.seq_length,
                                                list(e.extrapolation_factors),
                                                e.extrapolation_trajectories, device, precision,
                                                layout),
    }
    gen_model = evaluate.generation_model(model, precision,
                                          compile_decode=use_compile_decode(cfg.train.compile,
                                                                            device))
    prompts, given, new = consistency_inputs(cfg, layout, val_actions)
    first = None if given is None else given[:4, :new]
    out["kv_cache"] = {
        "consistency": evaluate.kv_cache_consistency(gen_model, prompts[:4], new, device,
                                                     given=first),
        "precision": precision,
        # both sides on this model in this process, alternated: a paired ratio per model
        "speed": evaluate.paired_generation_speed(gen_model, prompts, list(e.gen_batch_sizes),
                                                  list(e.gen_new_tokens), e.gen_repeats, device,
                                                  given=given),
        "concurrent_jobs": jobs_at_once(cfg),
    }
    if e.attention_maps:  # over steps: with state tokens, the rows that predict the actions
        maps = [layout.step_attention(m[0])
                for m in model.attention_maps(val_actions[:1].to(device))]
        what = "" if layout.name == "action" else " (rows: the query predicting each action)"
        plots.attention_maps(maps, run_dir / "attention_maps.png",
                             title=f"{_title(cfg)}: attention on one validation trajectory{what}")
        runfolder.write_attention_maps(run_dir, maps, layout.actions_of(val_actions[0]))
    return out


def consistency_inputs(cfg, layout: TokenLayout, val_seqs):
    """(prompts, given, new steps) of the KV-cache evaluations; the consistency check uses the
    first 4 prompts (and their given states) over ``new`` steps."""
    new = min(20, cfg.model.max_seq_len - cfg.eval.gen_prompt_len)
    return (*rollout_inputs(cfg, layout, val_seqs, new), new)


def rollout_inputs(cfg, layout: TokenLayout, val_seqs, new: int):
    """(prompts, given) for the KV-cache evaluations: 8 prompts of ``eval.gen_prompt_len``
    steps and, for a state_action layout, the state tokens of every step to generate.

    Action tokens alone: the validation trajectories' first steps, nothing given. With state
    tokens the rollout needs the states of every generated step, so it runs on fresh
    trajectories of the process long enough for the longest generation.
    """
    e = cfg.eval
    if layout.name == "action":
        return val_seqs[:8, : e.gen_prompt_len], None
    steps = e.gen_prompt_len + max([*e.gen_new_tokens, new])
    data = generate_dataset(8, steps, derived_seed(cfg.data.seed, "rollout"), progress=False)
    seqs = layout.sequences(data["states"], data["actions"])
    return (seqs[:, : layout.positions(e.gen_prompt_len)],
            layout.given(data["states"])[:, e.gen_prompt_len :])


def _title(cfg) -> str:
    tokens = axes_of(cfg)["tokens"]
    return (f"pos={cfg.pos.name} mask={cfg.mask.name} seed={cfg.seed}"
            + ("" if tokens == "action" else f" tokens={tokens}"))


def load_data(cfg, layout: TokenLayout | None = None):
    """(first-epoch training sequences, validation sequences, epoch -> sequences or None).

    The sequences are the token layout's (``tokens``): the action tokens themselves with
    ``tokens=action``, each step's state tokens and action with ``tokens=state_action``.

    Validation is always the fixed split of the dataset (``data.seed`` or ``data.path``), so
    every seed of a study is scored on the same trajectories. Generated training trajectories
    vary with ``seed`` when ``data.vary_with_seed`` (so a study's seeds cover the data too), and
    are drawn afresh every epoch when ``data.fresh_per_epoch``. A file is used as it is, for
    every epoch.
    """
    d = cfg.data
    if d.path is not None:
        try:
            data = load_dataset(d.path)
        except DataError as err:
            raise ConfigError(str(err)) from None
        n, length = data["actions"].shape
        if length < 2 or length > cfg.model.max_seq_len:
            raise ConfigError(f"{d.path} holds trajectories of {length} steps; need "
                              f"2..model.max_seq_len ({cfg.model.max_seq_len})")
        check_shifts(cfg, length, f"{d.path} holds trajectories of {length} steps: ")
        if layout_from_config(cfg).state and data["states"].shape[-1] != STATE_DIM:
            raise ConfigError(f"{d.path} holds states of {data['states'].shape[-1]} values; "
                              f"tokens=state_action needs the course's {STATE_DIM} (7 joint "
                              "angles, then the end effector's x, y, z)")
        log(f"loaded {n} trajectories of {length} steps from {d.path} "
            "(data.num_trajectories and data.seq_length do not apply)")
    else:
        cache_dir = d.cache_dir or Path(HydraConfig.get().runtime.cwd) / "outputs" / "datasets"
        data = load_or_generate(cache_dir, d.num_trajectories, d.seq_length, d.seed, log=log)
        n = d.num_trajectories
    try:
        train_idx, val_idx = split_indices(n, d.train_split)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_batch_fits(cfg.train.batch_size, len(train_idx))
    layout = layout_from_config(cfg) if layout is None else layout
    seqs = layout.sequences(data["states"], data["actions"])
    if d.path is not None:
        if d.fresh_per_epoch or d.vary_with_seed:
            log(f"training on the {len(train_idx)} trajectories of {d.path} in every epoch "
                "(data.fresh_per_epoch and data.vary_with_seed apply to generated data only)")
        return seqs[train_idx], seqs[val_idx], None

    def draw(epoch):
        seed = (derived_seed(d.seed, "train", int(cfg.seed), epoch) if d.vary_with_seed
                else derived_seed(d.seed, "train-epoch", epoch))
        fresh = generate_dataset(len(train_idx), data["actions"].shape[1], seed, progress=False)
        return layout.sequences(fresh["states"], fresh["actions"])

    first = draw(0) if d.vary_with_seed else seqs[train_idx]
    return first, seqs[val_idx], draw if d.fresh_per_epoch else None


def training_config(cfg) -> dict:
    """Everything that determines a trained model; a run folder is bound to it.

    ``train.precision`` is recorded as this host resolves it (``auto`` is bf16 on one machine and
    fp32 on another), so models trained in different precisions never share a folder or a row;
    so is Muon's Newton-Schulz precision where it is float32 (``train.muon_newton_schulz``).
    """
    parts = {}
    for key in _TRAINING_KEYS:
        if key == "tokens":
            # left out for tokens=action: the sequence every model before the tokens group was
            # trained on, so their folders and model keys stay valid
            if cfg.get("tokens") is not None and cfg.tokens.name != "action":
                parts[key] = OmegaConf.to_container(cfg.tokens, resolve=True)
            continue
        value = OmegaConf.to_container(cfg[key], resolve=True) if key != "seed" else cfg.seed
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _NOT_TRAINING.get(key, ())}
        parts[key] = value
    try:
        device = pick_device(cfg.train.device)
        parts["train"]["precision"] = resolve_precision(cfg.train.precision, device)[0]
        if parts["train"].get("optimizer") == "muon" and newton_schulz_precision(device) == "fp32":
            # Float32Muon (vla_ablate/optim.py): recorded only here, where it differs from
            # torch.optim.Muon's bf16, so that the keys of models trained before stay valid
            parts["train"]["muon_newton_schulz"] = "fp32"
    except (ValueError, ConfigError):
        pass  # validate() reports a precision or device that cannot be used
    return parts


def model_key(cfg, training: dict | None = None) -> str:
    """A readable, unique name for everything that determines a trained model (``training``:
    ``training_config(cfg)`` when the caller has it already)."""
    training = training_config(cfg) if training is None else training
    digest = hashlib.sha256(json.dumps(training, sort_keys=True).encode())
    return f"{cfg.pos.name}-{cfg.mask.name}-seed{cfg.seed}-{digest.hexdigest()[:10]}"


@contextmanager
def model_lock(folder: Path):
    """An exclusive file lock, so parallel jobs never train the same model twice.

    ``flock`` works on local disks and on NFS (Linux maps it to NFS byte-range locks). Where the
    file system refuses it (Lustre mounted without ``-o flock``, some FUSE and SMB mounts:
    ENOSYS, ENOTSUP, ENOLCK...), a lock folder created with ``mkdir`` (atomic there too) stands
    in, with a warning; one left by a job that died on this host is removed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another job that is training the model in {folder}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                raise
            log(f"warning: file locks are not supported in {folder} ({os.strerror(err.errno)}); "
                "using a lock folder instead")
            with _lock_folder(folder / ".lock.d"):
                yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_NO_FLOCK = {errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}


@contextmanager
def _lock_folder(path: Path, poll_s: float = 1.0):
    owner = f"{socket.gethostname()} {os.getpid()}"
    waiting = False
    while True:
        try:
            path.mkdir()
            (path / "owner").write_text(owner)
            break
        except FileExistsError:
            if _stale(path):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if not waiting:
                log(f"waiting for another job that is training the model in {path.parent}")
                waiting = True
            time.sleep(poll_s)
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stale(path: Path) -> bool:
    """A lock folder whose owner was a process on this host that no longer exists."""
    try:
        host, pid = (path / "owner").read_text().split()
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
        return False
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False


def jobs_at_once(cfg) -> int | None:
    """How many jobs share this machine at once: joblib's ``n_jobs``, else
    ``train.concurrent_jobs``; None under submitit (a cluster allocation, or every job at once
    with submitit_local), where it is not known here."""
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs") or -1
        return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    if "submitit" in target:
        return None
    return int(cfg.train.concurrent_jobs)


def thread_count(cfg) -> int:
    """train.num_threads, else this job's share of the cores: ``cpus_per_task`` under submitit
    (the allocation), else the cores divided among the jobs that run at the same time, fewer
    where ``OMP_NUM_THREADS`` asks for fewer."""
    if cfg.train.num_threads:
        return cfg.train.num_threads
    launcher = HydraConfig.get().launcher
    if "submitit" in str(launcher.get("_target_", "")):
        return int(launcher.get("cpus_per_task") or 1)
    share = max(1, (os.cpu_count() or 1) // jobs_at_once(cfg))
    omp = omp_num_threads()
    return min(share, omp) if omp else share


def omp_num_threads() -> int | None:
    """``OMP_NUM_THREADS``'s first level ("4" and "4,2" give 4), or None where it is unset; a
    value that is not a positive number is ignored with a warning, as OpenMP and torch do."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    first = value.split(",")[0].strip()
    if first.isascii() and first.isdigit() and int(first) > 0:
        return int(first)
    log(f"warning: OMP_NUM_THREADS={value!r} is not a positive number of threads; ignored")
    return None


def pick_device(name: str) -> torch.device:
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"train.device={name} but CUDA is not available")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")

