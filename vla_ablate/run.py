"""One job: config -> data -> (shared) training -> evaluation -> run folder.

``run_job`` is what ``python -m vla_ablate`` calls for every job of a run or sweep. It turns
every failure into a status in ``summary.json`` (and, for a single run, an exit code), so one
bad job never stops the other jobs of a sweep.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
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
from vla_ablate.config import ConfigError, check_batch_fits, validate
from vla_ablate.data import (
    DataError,
    derived_seed,
    generate_dataset,
    load_dataset,
    load_or_generate,
    split_indices,
)
from vla_ablate.loggers import CsvLogger, Logger, WandbLogger
from vla_ablate.model import build_model, model_args_from_config
from vla_ablate.precision import resolve_precision
from vla_ablate.runfolder import MetricsFile, running_summary, write_summary
from vla_ablate.train import BatchSource, TrainingInterrupted, load_checkpoint, train

EXIT_CODES = {"completed": 0, "failed": 1, "bad_config": 2, "diverged": 3, "interrupted": 130}
# (an interrupted job exits with 128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM)
FAILED_JOBS: list[str] = []  # jobs of this process that did not complete (for the exit code)

# Keys that change how a model is trained; everything else (cache, logger, eval) is inference
# or bookkeeping, so jobs differing only there share one trained model.
_TRAINING_KEYS = ("seed", "data", "model", "pos", "mask", "train")
_NOT_TRAINING = {"data": ("cache_dir",), "model": (),
                 "train": ("num_threads", "concurrent_jobs", "device", "share_models", "progress",
                           "compile")}


def log(message: str) -> None:
    print(f"[vla_ablate] {message}", file=sys.stderr, flush=True)


def axes_of(cfg) -> dict:
    return {"pos": cfg.pos.name, "mask": cfg.mask.name,
            "cache": "on" if cfg.cache.enabled else "off", "seed": int(cfg.seed)}


def run_job(cfg) -> dict:
    """Run one job; never raises for a job's own failure (except Ctrl-C, which stops a sweep)."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    axes = axes_of(cfg)
    write_summary(run_dir, running_summary(axes))
    t0 = time.time()
    logger: Logger = Logger()
    status, summary, error, signum = "failed", {}, None, None
    try:
        validate(cfg)
        if cfg.data.path is not None:
            cfg.data.path = str(Path(cfg.data.path).resolve())
        logger = make_logger(cfg, run_dir, hc, axes)
        summary = execute(cfg, run_dir, multirun, logger)
        status = summary["status"]
    except ConfigError as err:
        status, error = "bad_config", str(err)
        print(f"error: {err}", file=sys.stderr, flush=True)
    except TrainingInterrupted as err:
        status, error, signum = "interrupted", str(err), err.signum
        log(f"{err}; run the same command again to resume")
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (data, evaluation)
        status, error, signum = "interrupted", "interrupted by Ctrl-C", signal.SIGINT
        log("interrupted; run the same command again to resume")
    except Exception as err:  # noqa: BLE001 - recorded as the job's status
        error = f"{type(err).__name__}: {err}".splitlines()[0]
        (run_dir / "error.log").write_text(traceback.format_exc())
        print(f"error: {error} (traceback in {run_dir / 'error.log'})", file=sys.stderr, flush=True)
    finally:
        code = EXIT_CODES.get(status, 1)
        if status != "completed":
            summary = {**summary, "status": "failed" if status == "bad_config" else status,
                       **axes, "axes": axes, "error": error or summary.get("error"),
                       "wall_time_s": time.time() - t0}
            write_summary(run_dir, summary)
            FAILED_JOBS.append(str(run_dir))
        logger.log_summary(summary)
        logger.finish(exit_code=code)
    if status == "interrupted":
        sys.exit(128 + signum)  # stops a sweep too; the checkpoint is saved
    if code and not multirun:
        sys.exit(code)
    return summary


def make_logger(cfg, run_dir, hc, axes) -> Logger:
    name = cfg.logger.name
    if name == "csv":
        return CsvLogger(run_dir)
    if name == "wandb":
        group = "single" if hc.mode != RunMode.MULTIRUN else _sweep_id(hc)
        tags = [f"{k}={v}" for k, v in axes.items()]
        return WandbLogger(run_dir, cfg.logger.wandb, OmegaConf.to_container(cfg, resolve=True),
                           group, tags, name=f"{_sweep_id(hc)}-{run_dir.name}")
    return Logger()


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
    train_actions, val_actions, fresh = load_data(cfg)
    model_args = model_args_from_config(cfg)
    key = model_key(cfg)
    shared = multirun and cfg.train.share_models
    train_dir = Path(HydraConfig.get().sweep.dir) / "models" / key if shared else run_dir
    log(f"job {run_dir} | pos={cfg.pos.name} mask={cfg.mask.name} cache="
        f"{'on' if cfg.cache.enabled else 'off'} seed={cfg.seed} | {threads} threads, {device}")

    with model_lock(train_dir):
        done = train_dir / "train_done.json"
        trained_here = not done.exists()
        if trained_here:
            torch.manual_seed(cfg.seed)
            model = build_model(cfg)
            log(f"training model {key} ({model.num_parameters():,} parameters) in {train_dir}")
            batches = BatchSource(train_actions, cfg.train.batch_size, cfg.seed, fresh)
            result = train(model, model_args, batches, val_actions, cfg.train, train_dir, device,
                           cfg.seed, on_record=logger.log_metrics, log=log,
                           precision=precision).as_dict()
        else:
            result = json.loads(done.read_text())
            log(f"model {key} already trained in {train_dir} ({result['status']}); reusing it")
            for record in MetricsFile(train_dir).read():
                logger.log_metrics(record)
    records = MetricsFile(train_dir).read()
    if train_dir != run_dir:
        shutil.copyfile(train_dir / "metrics.jsonl", run_dir / "metrics.jsonl")

    summary = {
        "status": result["status"], **axes_of(cfg), "axes": axes_of(cfg),
        "val_loss": result["val_loss"], "val_perplexity": evaluate.perplexity(result["val_loss"]),
        "train_loss": result["train_loss"], "best_val_loss": result["best_val_loss"],
        "steps": result["steps"], "train_time_s": result["train_time_s"],
        "train_tokens_per_s": result.get("tokens_per_s"), "diverged_step": result["diverged_step"],
        "resumed_from": result.get("resumed_from"), "trained_here": trained_here,
        "model_key": key, "training_config": training_config(cfg),
        "model_dir": str(train_dir), "threads": threads, "device": str(device),
        "precision": precision,
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
                                       precision))
        logger.log_images({"loss_curve": run_dir / "loss_curve.png",
                           "attention_maps": run_dir / "attention_maps.png"})
    summary["wall_time_s"] = time.time() - t_start
    write_summary(run_dir, summary)
    if summary["status"] == "diverged":
        log(f"run diverged at step {summary['diverged_step']}")
    else:
        log(f"done: val loss {summary['val_loss']:.4f} in {summary['wall_time_s']:.1f}s -> {run_dir}")
    return summary


def run_evaluations(cfg, model, seen_actions, val_actions, device, run_dir, precision) -> dict:
    e = cfg.eval
    log(f"evaluating in {precision}: mask audit, position shift, extrapolation, KV cache")
    out = {
        "mask_audit": evaluate.mask_audit(model, seen_actions, val_actions, device,
                                          e.audit_trajectories, precision),
        "position_shift": evaluate.position_shift(model, val_actions[: e.shift_trajectories],
                                                  list(e.position_shifts), device, precision),
        "extrapolation": evaluate.extrapolation(model, cfg.data.seed, cfg.data.seq_length,
                                                list(e.extrapolation_factors),
                                                e.extrapolation_trajectories, device, precision),
    }
    gen_model = evaluate.generation_model(model, precision)
    prompts = val_actions[:8, : e.gen_prompt_len]
    new = min(20, cfg.model.max_seq_len - e.gen_prompt_len)
    out["kv_cache"] = {
        "consistency": evaluate.kv_cache_consistency(gen_model, prompts[:4], new, device),
        "precision": precision,
        # both sides on this model in this process, alternated: a paired ratio per model
        "speed": evaluate.paired_generation_speed(gen_model, prompts, list(e.gen_batch_sizes),
                                                  list(e.gen_new_tokens), e.gen_repeats, device),
        "concurrent_jobs": _concurrent_jobs(cfg),
    }
    if e.attention_maps:
        maps = model.attention_maps(val_actions[:1].to(device))
        plots.attention_maps([m[0] for m in maps], run_dir / "attention_maps.png",
                             title=f"{_title(cfg)}: attention on one validation trajectory")
        runfolder.write_attention_maps(run_dir, [m[0] for m in maps], val_actions[0])
    return out


def _concurrent_jobs(cfg) -> int:
    """How many jobs this launcher runs at once (timings taken beside others share the CPU)."""
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs") or -1
        return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    return int(cfg.train.concurrent_jobs)


def _title(cfg) -> str:
    return f"pos={cfg.pos.name} mask={cfg.mask.name} seed={cfg.seed}"


def load_data(cfg):
    """(first-epoch training actions, validation actions, epoch -> actions callable or None).

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
            raise ConfigError(f"{d.path} holds sequences of {length} tokens; need 2..model.max_seq_len")
    else:
        cache_dir = d.cache_dir or Path(HydraConfig.get().runtime.cwd) / "outputs" / "datasets"
        data = load_or_generate(cache_dir, d.num_trajectories, d.seq_length, d.seed, log=log)
        n = d.num_trajectories
    try:
        train_idx, val_idx = split_indices(n, d.train_split)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_batch_fits(cfg.train.batch_size, len(train_idx))
    actions = data["actions"]
    if d.path is not None:
        if d.fresh_per_epoch or d.vary_with_seed:
            log(f"training on the {len(train_idx)} trajectories of {d.path} in every epoch "
                "(data.fresh_per_epoch and data.vary_with_seed apply to generated data only)")
        return actions[train_idx], actions[val_idx], None

    def draw(epoch):
        seed = (derived_seed(d.seed, "train", int(cfg.seed), epoch) if d.vary_with_seed
                else derived_seed(d.seed, "train-epoch", epoch))
        return generate_dataset(len(train_idx), actions.shape[1], seed, progress=False)["actions"]

    first = draw(0) if d.vary_with_seed else actions[train_idx]
    return first, actions[val_idx], draw if d.fresh_per_epoch else None


def training_config(cfg) -> dict:
    """Everything that changes how a model is trained (``seed`` included), as plain values."""
    parts = {}
    for key in _TRAINING_KEYS:
        value = OmegaConf.to_container(cfg[key], resolve=True) if key != "seed" else cfg.seed
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _NOT_TRAINING.get(key, ())}
        parts[key] = value
    return parts


def model_key(cfg) -> str:
    """A readable, unique name for everything that determines a trained model."""
    digest = hashlib.sha256(json.dumps(training_config(cfg), sort_keys=True).encode())
    return f"{cfg.pos.name}-{cfg.mask.name}-seed{cfg.seed}-{digest.hexdigest()[:10]}"


@contextmanager
def model_lock(folder: Path):
    """An exclusive file lock, so parallel jobs never train the same model twice."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another job that is training the model in {folder}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def thread_count(cfg) -> int:
    """train.num_threads, else the cores divided among the jobs that run at the same time."""
    if cfg.train.num_threads:
        return cfg.train.num_threads
    cores = os.cpu_count() or 1
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs") or -1
        n_jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
        return max(1, cores // n_jobs)
    if "submitit" in target:
        return int(launcher.get("cpus_per_task") or 1)
    return max(1, cores // cfg.train.concurrent_jobs)


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

