"""A job's work, in stages: prepare its data -> train its model or reuse it -> evaluate -> summarise.

Jobs that differ only in inference settings (``cache``, ``logger``, ``eval``) share one trained
model in ``<sweep>/models/<key>/``, trained by the first of them under a lock.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig

from vla_ablate import evaluate, plots
from vla_ablate.config import (
    check_batch_fits,
    check_shifts,
    data_cache_dir,
    layout_of,
    tokenizer_of,
)
from vla_ablate.console import log
from vla_ablate.data.lerobot import read_lerobot
from vla_ablate.data.process import STATE_DIM, derived_seed, generate_dataset, split_indices
from vla_ablate.data.robot import RobotData
from vla_ablate.data.store import load_dataset, load_or_generate
from vla_ablate.data.tokenizer import Tokenizers
from vla_ablate.data.tokens import TokenLayout
from vla_ablate.errors import ConfigError, DataError
from vla_ablate.evaluations import run_evaluations
from vla_ablate.fileio import write_json
from vla_ablate.host import thread_count
from vla_ablate.locks import model_lock
from vla_ablate.loggers import Logger
from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.runfolder import (
    ATTENTION_MAPS_PNG,
    CHECKPOINTS,
    LAST,
    LOSS_CURVE_PNG,
    METRICS,
    MODELS,
    TOKENIZER,
    TRAIN_DONE,
    TRAINED_BY,
    MetricsFile,
    read_json,
)
from vla_ablate.training.checkpoint import load_checkpoint
from vla_ablate.training.loop import train
from vla_ablate.training.schedule import BatchSource


def execute(cfg, job, logger: Logger) -> dict:
    """Run the job ``job`` (``job.Job``) describes; returns its summary (also written)."""
    t_start = time.time()
    threads = thread_count(cfg)
    torch.set_num_threads(threads)
    log(f"precision {job.precision}: {job.precision_why}")
    layout = job.layout
    if layout.name != "action":
        log(f"tokens={layout.name}: each step is {', '.join(layout.state)} in {layout.bins} bins "
            f"each, then its action ({layout.per_step} tokens per step, vocabulary "
            f"{layout.vocab_size}); training loss over {layout.loss} tokens")
    shared = job.multirun and cfg.train.share_models
    train_dir = Path(HydraConfig.get().sweep.dir) / MODELS / job.key if shared else job.run_dir
    robot = None if job.robot is None else model_robot_data(job.robot, train_dir)
    train_actions, val_actions, batches = training_data(cfg, layout, job.data, robot)
    log(f"job {job.run_dir} | pos={cfg.pos.name} mask={cfg.mask.name} cache="
        f"{'on' if cfg.cache.enabled else 'off'} seed={cfg.seed} | {threads} threads, "
        f"{job.device}")
    result, trained_here = train_or_reuse(cfg, job, train_dir, batches, val_actions, logger,
                                          robot)
    summary = summarise(cfg, job, result, train_dir, trained_here, threads)
    if result["status"] == "completed" and cfg.eval.enabled:
        model = trained_model(cfg, job, train_dir)
        summary["num_parameters"] = model.num_parameters()
        if robot is not None:  # every evaluation reads the model's own tokenizer file
            robot = model_robot_data(robot, train_dir)
            val_actions = robot.val_windows()
        summary.update(run_evaluations(cfg, model, train_actions, val_actions, job.device,
                                       job.run_dir, job.precision, layout, title(cfg, job),
                                       robot))
        logger.log_images({"loss_curve": job.run_dir / LOSS_CURVE_PNG,
                           "attention_maps": job.run_dir / ATTENTION_MAPS_PNG})
    summary["wall_time_s"] = time.time() - t_start
    if summary["status"] == "diverged":
        log(f"run diverged at step {summary['diverged_step']}")
    else:
        log(f"done: val loss {summary['val_loss']:.4f} in {summary['wall_time_s']:.1f}s -> "
            f"{job.run_dir}")
    return summary


def train_or_reuse(cfg, job, train_dir: Path, batches, val_actions, logger,
                   robot: RobotData | None = None) -> tuple[dict, bool]:
    """(the training result, whether this job trained the model): trained here, under the
    model's lock, unless its folder holds a finished training. ``robot``: its tokenizers are
    saved beside the model (``TOKENIZER``) before it trains."""
    with model_lock(train_dir):
        done, trainer = train_dir / TRAIN_DONE, train_dir / TRAINED_BY
        train_now = not done.exists() or not _final_weights_readable(train_dir)
        # a job stopped while evaluating, re-run: the model is still its own training
        by = read_json(trainer)
        trained_here = train_now or (isinstance(by, dict) and by.get("job") == job.run_dir.name)
        logger.begin("train" if train_now else "evaluate")
        if train_now:
            write_json(trainer, {"job": job.run_dir.name})  # the job that trained it last
            if robot is not None:
                robot.tokenizers.save(train_dir / TOKENIZER)
            model = initial_model(cfg, job.model_args)
            log(f"training model {job.key} ({model.num_parameters():,} parameters) in "
                f"{train_dir}")
            result = train(model, job.model_args, batches, val_actions, cfg.train, train_dir,
                           job.device, cfg.seed, on_record=logger.log_metrics, log=log,
                           precision=job.precision, layout=job.layout).as_dict()
        else:
            result = json.loads(done.read_text())
            log(f"model {job.key} already trained in {train_dir} ({result['status']}"
                f"{', by this job in an earlier sitting' if trained_here else ''}); reusing it")
            for record in MetricsFile(train_dir).read():
                logger.log_metrics(record)
    return result, trained_here


def _final_weights_readable(train_dir: Path) -> bool:
    """Whether a finished training's last.pt reads back. If not, its training is resumed from
    the newest valid step checkpoint (resuming is exact: the same final weights), rather than
    evaluating other weights: best.pt holds the best validation step's, which the summary's
    losses do not describe."""
    if load_checkpoint(train_dir / CHECKPOINTS / LAST, log=log) is not None:
        return True
    log(f"warning: the trained model's last.pt in {train_dir} is unreadable; training it again "
        "from the newest valid checkpoint to the same final weights")
    (train_dir / TRAIN_DONE).unlink()
    return False


def summarise(cfg, job, result: dict, train_dir: Path, trained_here: bool, threads: int) -> dict:
    """The summary of a trained (or diverged) model, before its evaluations; draws its curve."""
    if train_dir != job.run_dir:
        shutil.copyfile(train_dir / METRICS, job.run_dir / METRICS)
    plots.loss_curve(MetricsFile(train_dir).read(), job.run_dir / LOSS_CURVE_PNG,
                     title=title(cfg, job))
    val_loss = result["val_loss"]
    return {
        "status": result["status"], **job.axes, "axes": job.axes,
        **({} if job.robot is None else {"data": "lerobot"}),
        "val_loss": val_loss, "val_perplexity": evaluate.perplexity(val_loss),
        # the one figure comparable across token layouts: the action tokens a_1..a_{T-1} alone
        "val_action_loss": (val_loss if job.layout.all_action_targets
                            else result.get("val_action_loss")),
        "train_loss": result["train_loss"], "best_val_loss": result["best_val_loss"],
        "steps": result["steps"], "train_time_s": result["train_time_s"],
        "train_tokens_per_s": result.get("tokens_per_s"), "diverged_step": result["diverged_step"],
        "resumed_from": result.get("resumed_from"), "trained_here": trained_here,
        "model_key": job.key, "training_config": job.training,
        "model_dir": str(train_dir), "threads": threads, "device": str(job.device),
        "precision": job.precision, "compiled": result.get("compiled"),
    }


def trained_model(cfg, job, train_dir: Path) -> DecoderOnlyTransformer:
    """The trained model (its last.pt), on the job's device, in eval mode."""
    state = load_checkpoint(train_dir / CHECKPOINTS / LAST, log=log)
    if state is None:
        raise RuntimeError(f"the trained model's last.pt in {train_dir} is unreadable")
    torch.manual_seed(cfg.seed)
    model = DecoderOnlyTransformer(**job.model_args)
    model.load_state_dict(state["model"])
    return model.to(job.device).eval()


def title(cfg, job) -> str:
    tokens = job.axes["tokens"]
    return (f"pos={cfg.pos.name} mask={cfg.mask.name} seed={cfg.seed}"
            + ("" if tokens == "action" else f" tokens={tokens}")
            + (f" tokenizer={job.axes['tokenizer']}" if "tokenizer" in job.axes else ""))


def training_data(cfg, layout: TokenLayout, data: dict | None = None,
                  robot: RobotData | None = None):
    """(first-epoch training sequences, validation sequences, the ``BatchSource`` of every
    step): functions of the data settings and ``seed`` alone, never of the model's settings,
    so that pos=rope and pos=sinusoidal at one seed train and validate on the same tokens.
    ``data``: the file's content where the job read it already; ``robot``: a LeRobot
    dataset's windows (fresh offsets every epoch, fixed validation windows)."""
    if robot is not None:
        first = robot.train_windows(0)
        return first, robot.val_windows(), BatchSource(first, cfg.train.batch_size, cfg.seed,
                                                       robot.train_windows)
    train_actions, val_actions, fresh = load_data(cfg, layout, data)
    return train_actions, val_actions, BatchSource(train_actions, cfg.train.batch_size,
                                                   cfg.seed, fresh)


def initial_model(cfg, model_args: dict) -> DecoderOnlyTransformer:
    """The untrained model: initialised from ``seed`` alone, so models that differ only in
    their positional encoding start from the same weights in every shared parameter."""
    torch.manual_seed(cfg.seed)
    return DecoderOnlyTransformer(**model_args)


def load_data(cfg, layout: TokenLayout | None = None, data: dict | None = None):
    """(first-epoch training sequences, validation sequences, epoch -> sequences or None).

    The sequences are the token layout's (``tokens``): the action tokens themselves with
    ``tokens=action``, each step's state tokens and action with ``tokens=state_action``.

    Validation is always the fixed split of the dataset (``data.seed`` or ``data.path``), so
    every seed of a study is scored on the same trajectories. Generated training trajectories
    vary with ``seed`` when ``data.vary_with_seed`` (so a study's seeds cover the data too), and
    are drawn afresh every epoch when ``data.fresh_per_epoch``. A file is used as it is, for
    every epoch. ``data``: the file's content where the job read it already (``read_file``).
    """
    d = cfg.data
    layout = layout_of(cfg) if layout is None else layout
    if data is None:
        data = read_file(cfg, layout) if d.path is not None else generated(cfg)
    try:
        train_idx, val_idx = split_indices(len(data["actions"]), d.train_split)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_batch_fits(cfg.train.batch_size, len(train_idx))
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


def read_robot(cfg, layout: TokenLayout) -> RobotData:
    """The LeRobot dataset ``data.root``, split, tokenized and checked against the training and
    evaluation settings (every problem a ``ConfigError``: the job reads it before its folder
    is bound)."""
    d, e = cfg.data, cfg.eval
    try:
        episodes = read_lerobot(d.root, d.action_key, d.state_key if layout.state else None)
        # data.root as resolve_data_path left it (absolute; a repo_id's fetched copy): the
        # tokenizer file beside the model records it, for sample and check_cache
        robot = RobotData.build(episodes, layout, d.window, d.train_split, d.seed, cfg.seed,
                                tokenizer_of(cfg)["name"],
                                dataset={"root": str(d.root), "repo_id": d.repo_id})
        if e.enabled:  # a rollout's states come from one episode
            robot.rollouts(e.gen_prompt_len, max(e.gen_new_tokens))
    except DataError as err:
        raise ConfigError(str(err)) from None
    windows = len(robot.train_windows(0))
    if cfg.train.batch_size > windows:
        raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) exceeds the {windows} "
                          f"training windows of data.window={d.window} steps in {d.root}")
    short_train, short_val = robot.skipped()
    tok = tokenizer_of(cfg)
    log(f"loaded {len(episodes.actions)} episodes ({episodes.frames} frames, LeRobot "
        f"{episodes.version}) from {d.root}: {len(robot.train)} for training, {len(robot.val)} "
        f"for validation (by episode); {windows} training windows of {d.window} steps each "
        f"epoch, {len(robot.val_rows(d.window))} validation windows; {layout.actions} action "
        f"tokens{f' after {len(layout.state)} state tokens' if layout.state else ''} a step, "
        f"{tok['name']} tokenizer of {tok['bins']} bins fitted on the training episodes")
    if short_train or short_val:
        log(f"skipped (not padded): {short_train} training and {short_val} validation episodes "
            f"shorter than data.window={d.window} steps")
    return robot


def model_robot_data(robot: RobotData, train_dir: Path) -> RobotData:
    """``robot`` tokenized by the tokenizers saved beside the model in ``train_dir`` where
    there are (a model is always read with the bins it was trained on), else as it is."""
    path = train_dir / TOKENIZER
    if not path.exists():
        return robot
    try:
        saved = Tokenizers.load(path)
    except DataError as err:
        raise RuntimeError(str(err)) from None
    if saved.same_as(robot.tokenizers):
        return robot
    log(f"the model in {train_dir} was trained with other bins than this dataset now gives; "
        f"using its own ({path})")
    return RobotData.build(robot.episodes, robot.layout, robot.window, 0.5, robot.data_seed,
                           robot.seed, saved.kind, tokenizers=saved, split=(robot.train,
                                                                            robot.val))


def generated(cfg) -> dict:
    """The generated dataset of ``data.*``, from the data cache (made there if missing)."""
    d = cfg.data
    return load_or_generate(data_cache_dir(cfg), d.num_trajectories, d.seq_length, d.seed, log=log)


def read_file(cfg, layout: TokenLayout) -> dict:
    """The dataset file ``data.path``, checked against the model, the layout and the split (every
    problem a ``ConfigError``: the job reads it before its folder is bound)."""
    d = cfg.data
    try:
        data = load_dataset(d.path)
    except DataError as err:
        raise ConfigError(str(err)) from None
    n, length = data["actions"].shape
    if length < 2 or length > cfg.model.max_seq_len:
        raise ConfigError(f"{d.path} holds trajectories of {length} steps; need "
                          f"2..model.max_seq_len ({cfg.model.max_seq_len})")
    check_shifts(cfg, length, f"{d.path} holds trajectories of {length} steps: ", layout)
    if layout.state and data["states"].shape[-1] != STATE_DIM:
        raise ConfigError(f"{d.path} holds states of {data['states'].shape[-1]} values; "
                          f"tokens=state_action needs the course's {STATE_DIM} (7 joint "
                          "angles, then the end effector's x, y, z)")
    if layout.state and not torch.isfinite(data["states"]).all():  # their bins would be garbage
        raise ConfigError(f"{d.path} holds states that are NaN or infinite; tokens=state_action "
                          "quantises every state value")
    try:
        train_idx, _ = split_indices(n, d.train_split)
    except ValueError as err:
        raise ConfigError(f"{d.path}: {err}") from None
    check_batch_fits(cfg.train.batch_size, len(train_idx))
    log(f"loaded {n} trajectories of {length} steps from {d.path} "
        "(data.num_trajectories and data.seq_length do not apply)")
    return data
