"""The structured-config schema (registered with Hydra's ConfigStore) and the value checks.

The schema makes Hydra reject unknown keys and wrong types at composition; ``validate`` then
checks values that a type cannot express, before any work, with one clear line each.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from vla_ablate.console import log
from vla_ablate.data.hub import fetch
from vla_ablate.data.lerobot import feature, read_info
from vla_ablate.data.robot import robot_layout
from vla_ablate.data.tokenizer import KINDS
from vla_ablate.data.tokens import TokenLayout, layout_from_config
from vla_ablate.errors import ConfigError, DataError
from vla_ablate.factory import model_args_from_config
from vla_ablate.host import pick_device
from vla_ablate.optim import OPTIMIZERS, SCHEDULES, newton_schulz_precision
from vla_ablate.precision import PRECISIONS, resolve_precision


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic: the course's arm | lerobot: a LeRobot dataset
    num_trajectories: int = 10000
    seq_length: int = 50
    seed: int = 42
    train_split: float = 0.9
    path: str | None = None  # a dataset file to use instead of generating one
    cache_dir: str | None = None  # default: <launch dir>/outputs/datasets
    fresh_per_epoch: bool = True  # draw new training trajectories every epoch (generated data)
    vary_with_seed: bool = True  # training trajectories depend on `seed` (validation does not)
    # data=lerobot only (conf/data/lerobot.yaml; left out of the course's training config)
    root: str | None = None  # a local LeRobot dataset folder (holds meta/info.json)
    repo_id: str | None = None  # a Hub dataset (lerobot/pusht): fetched into cache_dir
    action_key: str = "action"
    state_key: str | None = "observation.state"
    window: int = 50  # steps per training sequence (consecutive steps of one episode)


@dataclass
class ModelConfig:
    dim: int = 256
    num_layers: int = 4
    num_heads: int = 8
    ff_hidden_dim: int = 1024
    max_seq_len: int = 200
    dropout: float = 0.0
    attn_impl: str = "manual"


@dataclass
class PosConfig:
    name: str = "rope"
    base: float = 10000.0
    amplitude: float | None = None  # sinusoidal only: None matches the token embeddings


@dataclass
class MaskConfig:
    name: str = "causal"


@dataclass
class TokensConfig:
    name: str = "action"  # action | state_action (vla_ablate/data/tokens.py)
    state: list[str] = field(default_factory=list)  # state values per step (state_action)
    bins: int = 128  # quantisation bins per state value
    loss: str = "all"  # the training objective: all tokens | action tokens only


@dataclass
class TokenizerConfig:
    name: str = "uniform"  # uniform | quantile (vla_ablate/data/tokenizer.py)
    bins: int = 256  # bins per action (and state) dimension


@dataclass
class CacheConfig:
    enabled: bool = True


@dataclass
class TrainConfig:
    steps: int = 2400
    batch_size: int = 64
    optimizer: str = "muon"  # muon (Muon for the blocks' matrices, AdamW for the rest) | adamw
    lr: float = 3e-3
    min_lr: float = 1e-4
    warmup_steps: int = 60
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay; training/schedule.py)
    decay_frac: float = 0.3  # wsd: the share of the steps after warmup spent decaying
    embed_lr: float | None = None  # AdamW's rate for the embeddings (None: lr; optim.py)
    head_lr: float | None = None  # AdamW's rate for the output head and the norms (None: lr)
    muon_momentum: float = 0.95
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 20
    eval_every: int = 100
    subset_eval_every: int = 20  # 0: off; loss on a fixed validation slice (steps-to-target)
    subset_eval_size: int = 256
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 5.0  # a resumable last.pt every N minutes of training (0: off)
    max_minutes: float = 0.0  # time budget for training (0: none); see training.budget.TimeBudget
    keep_checkpoints: int = 2  # step checkpoints kept besides last.pt and best.pt
    num_threads: int = 0  # 0: the job's share of the cores (host.thread_count)
    concurrent_jobs: int = 1  # jobs sharing this machine (joblib: its n_jobs is used instead)
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 where native) | fp32 | bf16 | fp16 (CUDA)
    compile: str = "auto"  # auto | on | off: torch.compile (training/compile.py)
    share_models: bool = True  # jobs differing only in inference settings share one model
    progress: bool = True


@dataclass
class EvalConfig:
    enabled: bool = True
    audit_trajectories: int = 128
    extrapolation_factors: list[int] = field(default_factory=lambda: [2, 4])
    extrapolation_trajectories: int = 256
    position_shifts: list[int] = field(default_factory=lambda: [50, 150])
    shift_trajectories: int = 256
    gen_prompt_len: int = 10
    gen_batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    gen_new_tokens: list[int] = field(default_factory=lambda: [50, 150])
    gen_repeats: int = 6  # timed pairs per cell, in ABBA order (evaluate.py)
    attention_maps: bool = True


@dataclass
class WandbConfig:
    mode: str = "offline"
    project: str = "vla-ablate"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    name: str = "csv"
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pos: PosConfig = field(default_factory=PosConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    tokenizer: TokenizerConfig | None = None  # data=lerobot: continuous values -> tokens
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    optimized_metric: str | None = None  # hparams_search: the summary key returned to Optuna


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)


def job_dir_name(override_dirname: str, num) -> str:
    """A sweep job's folder (``hydra.sweep.subdir``): its overrides, e.g. ``pos=rope,seed=1``.

    Slashes (in paths) become ``_`` so a job is one folder; a job without overrides is ``job0``;
    a name too long for a file system keeps its start and a hash of the rest.
    """
    name = str(override_dirname or "").replace("/", "_") or f"job{num}"
    if len(name.encode()) > 200:
        name = f"{name[:180]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


# Registered on import, not in register_configs: launchers resolve hydra.sweep.subdir in their
# worker processes, which import this module (through the task function) but not __main__.
if not OmegaConf.has_resolver("vla_job_dir"):
    OmegaConf.register_new_resolver("vla_job_dir", job_dir_name)


DATA_NAMES = ("synthetic", "lerobot")
# data=lerobot's keys: left out of the training config of the course's data (its folders and
# model keys stay valid), the course's keys left out of a LeRobot dataset's
LEROBOT_KEYS = ("root", "repo_id", "action_key", "state_key", "window")
_SYNTHETIC_ONLY = ("num_trajectories", "seq_length", "path", "fresh_per_epoch", "vary_with_seed")
DEFAULT_TOKENIZER = {"name": "uniform", "bins": 256}  # data=lerobot without a tokenizer group


def is_lerobot(cfg) -> bool:
    return cfg.data.get("name", "synthetic") == "lerobot"


def tokenizer_of(cfg) -> dict:
    """``tokenizer``'s name and bins for data=lerobot (uniform, 256 when none is chosen)."""
    t = cfg.get("tokenizer")
    return dict(DEFAULT_TOKENIZER) if t is None else {"name": str(t.name), "bins": int(t.bins)}


def sequence_steps(cfg) -> int:
    """Steps per training sequence: ``data.window`` for a LeRobot dataset, else
    ``data.seq_length``."""
    return cfg.data.window if is_lerobot(cfg) else cfg.data.seq_length


def resolve_data_path(cfg) -> None:
    """``data.path`` (and ``data.root``) made absolute: a folder is bound to the file, not to a
    path relative to the working directory (the job and the sweep's checks compare the same
    value). ``data.repo_id``: fetched into the data cache (``data.hub``), ``data.root`` set to
    the copy; ``ConfigError`` (one line) where it cannot be had."""
    d = cfg.data
    if d.path is not None:
        d.path = str(Path(d.path).resolve())
    if not is_lerobot(cfg):
        return
    if d.repo_id is not None and d.root is not None:
        raise ConfigError("give data.root or data.repo_id, not both")
    if d.repo_id is not None:
        cache_dir = Path(d.cache_dir) if d.cache_dir else Path.cwd() / "outputs" / "datasets"
        try:
            d.root = str(fetch(d.repo_id, cache_dir, log=log))
        except DataError as err:
            raise ConfigError(str(err)) from None
    if d.root is not None:
        d.root = str(Path(d.root).resolve())


def check_batch_fits(batch_size: int, n_train: int) -> None:
    if batch_size > n_train:
        raise ConfigError(
            f"train.batch_size ({batch_size}) exceeds the {n_train} training trajectories"
        )


def layout_of(cfg: Any) -> TokenLayout:
    """The config's token layout; a bad ``tokens`` group is a ``ConfigError``. A LeRobot
    dataset's comes from its ``meta/info.json`` (its action and state widths)."""
    if is_lerobot(cfg):
        return _robot_layout(cfg)
    try:
        return layout_from_config(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _robot_layout(cfg: Any) -> TokenLayout:
    d, t = cfg.data, cfg.tokens
    if t.name not in ("action", "state_action"):
        raise ConfigError(f"tokens must be action or state_action, got '{t.name}'")
    if d.root is None:
        raise ConfigError("data=lerobot needs data.root=DIR (a local dataset) or "
                          "data.repo_id=OWNER/NAME (a Hub dataset)")
    root = Path(d.root)
    if not root.is_dir():
        raise ConfigError(f"data.root does not exist or is not a folder: {d.root}")
    try:
        info = read_info(root)
        width, _ = feature(info, d.action_key, root)
        states = None
        if t.name == "state_action":
            if not d.state_key:
                raise ConfigError("tokens=state_action needs data.state_key (the state column)")
            states = feature(info, d.state_key, root)[1]
    except DataError as err:
        raise ConfigError(str(err)) from None
    return robot_layout(width, states, tokenizer_of(cfg)["bins"], str(t.loss))


def check_shifts(cfg: Any, seq_length: int, source: str = "",
                 layout: TokenLayout | None = None) -> None:
    """``eval.position_shifts`` must keep every input position of a shifted trajectory of
    ``seq_length`` steps within the model (``source``: where that length comes from)."""
    layout = layout_of(cfg) if layout is None else layout
    last = layout.last_input_step(seq_length + max(cfg.eval.position_shifts, default=0))
    if cfg.eval.enabled and last >= cfg.model.max_seq_len:
        raise ConfigError(f"{source}eval.position_shifts need steps up to {last}, beyond "
                          f"model.max_seq_len ({cfg.model.max_seq_len})")


def validate(cfg: Any) -> TokenLayout:
    """Raise ``ConfigError`` for the first value that cannot work; returns the token layout."""
    d, m, t, e = cfg.data, cfg.model, cfg.train, cfg.eval
    positive = {
        "data.num_trajectories": d.num_trajectories, "model.dim": m.dim,
        "model.num_layers": m.num_layers, "model.num_heads": m.num_heads,
        "model.ff_hidden_dim": m.ff_hidden_dim, "model.max_seq_len": m.max_seq_len,
        "train.steps": t.steps, "train.batch_size": t.batch_size, "train.log_every": t.log_every,
        "train.eval_every": t.eval_every, "train.checkpoint_every": t.checkpoint_every,
        "train.concurrent_jobs": t.concurrent_jobs,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    checks = [
        (t.optimizer in OPTIMIZERS,
         f"train.optimizer must be {' or '.join(OPTIMIZERS)}, got '{t.optimizer}'"),
        (0 < t.lr < math.inf, f"train.lr must be > 0 and finite, got {t.lr}"),
        (0 <= t.min_lr <= t.lr, f"train.min_lr must lie in [0, train.lr], got {t.min_lr}"),
        (t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}"),
        (t.schedule in SCHEDULES,
         f"train.schedule must be {' or '.join(SCHEDULES)}, got '{t.schedule}'"),
        (0 < t.decay_frac <= 1, f"train.decay_frac must lie in (0, 1], got {t.decay_frac}"),
        (t.embed_lr is None or 0 < t.embed_lr < math.inf,
         f"train.embed_lr must be > 0 and finite (or null: train.lr), got {t.embed_lr}"),
        (t.head_lr is None or 0 < t.head_lr < math.inf,
         f"train.head_lr must be > 0 and finite (or null: train.lr), got {t.head_lr}"),
        (0 <= t.muon_momentum < 1, f"train.muon_momentum must lie in [0, 1), got {t.muon_momentum}"),
        (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
        (t.grad_clip > 0, f"train.grad_clip must be > 0, got {t.grad_clip}"),
        (t.subset_eval_every >= 0,
         f"train.subset_eval_every must be >= 0, got {t.subset_eval_every}"),
        (t.subset_eval_size > 0, f"train.subset_eval_size must be > 0, got {t.subset_eval_size}"),
        (t.checkpoint_minutes >= 0,
         f"train.checkpoint_minutes must be >= 0, got {t.checkpoint_minutes}"),
        (t.max_minutes >= 0, f"train.max_minutes must be >= 0, got {t.max_minutes}"),
        (cfg.pos.base > 0, f"pos.base must be > 0, got {cfg.pos.base}"),
        (t.keep_checkpoints >= 0, f"train.keep_checkpoints must be >= 0, got {t.keep_checkpoints}"),
        (t.num_threads >= 0, f"train.num_threads must be >= 0, got {t.num_threads}"),
        (t.device in ("auto", "cpu", "cuda", "mps") or t.device.startswith("cuda:"),
         f"train.device must be auto, cpu, cuda or mps, got '{t.device}'"),
        (t.precision in PRECISIONS,
         f"train.precision must be {', '.join(PRECISIONS)}, got '{t.precision}'"),
        (t.compile in ("auto", "on", "off"),
         f"train.compile must be auto, on or off, got '{t.compile}'"),
        (0 <= m.dropout < 1, f"model.dropout must lie in [0, 1), got {m.dropout}"),
        (d.name in DATA_NAMES, f"data must be {' or '.join(DATA_NAMES)}, got '{d.name}'"),
        (d.seq_length >= 2, f"data.seq_length must be >= 2, got {d.seq_length}"),
        (is_lerobot(cfg) or d.seq_length <= m.max_seq_len,
         f"data.seq_length ({d.seq_length}) exceeds model.max_seq_len ({m.max_seq_len})"),
        (0 < d.train_split < 1, f"data.train_split must lie in (0, 1), got {d.train_split}"),
        (cfg.logger.name in ("csv", "wandb", "none"),
         f"logger must be csv, wandb or none, got '{cfg.logger.name}'"),
        (cfg.logger.wandb.mode in ("offline", "online", "disabled"),
         f"logger.wandb.mode must be offline, online or disabled, got '{cfg.logger.wandb.mode}'"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _check_data(cfg)
    layout = layout_of(cfg)
    if e.enabled:
        _check_eval(cfg, layout)
    try:
        model_args_from_config(cfg, layout)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return layout


def _check_data(cfg: Any) -> None:
    d, t = cfg.data, cfg.train
    if is_lerobot(cfg):
        return _check_lerobot(cfg)
    if cfg.get("tokenizer") is not None:
        raise ConfigError(f"tokenizer={cfg.tokenizer.name} applies to data=lerobot (continuous "
                          "actions); the course's data are action tokens already")
    for key in ("root", "repo_id"):
        if d.get(key) is not None:
            raise ConfigError(f"data.{key} applies to data=lerobot, not to the course's data")
    if d.path is None:
        n_train = int(d.num_trajectories * d.train_split)
        if n_train < 1 or n_train >= d.num_trajectories:
            raise ConfigError(
                f"data.num_trajectories={d.num_trajectories} with data.train_split={d.train_split} "
                "leaves an empty train or validation split"
            )
        check_batch_fits(t.batch_size, n_train)
    else:
        path = Path(d.path)
        if not path.is_file():
            raise ConfigError(f"data.path does not exist or is not a file: {d.path}")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"data.path is not readable: {d.path}")


def _check_lerobot(cfg: Any) -> None:
    """data=lerobot's own keys (the dataset itself is read and checked by the job)."""
    d, m = cfg.data, cfg.model
    tok = tokenizer_of(cfg)
    checks = [
        (d.path is None, "data.path applies to the course's data; data=lerobot reads data.root"),
        (d.window >= 2, f"data.window must be >= 2, got {d.window}"),
        (d.window <= m.max_seq_len,
         f"data.window ({d.window}) exceeds model.max_seq_len ({m.max_seq_len})"),
        (0 < d.train_split < 1, f"data.train_split must lie in (0, 1), got {d.train_split}"),
        (tok["name"] in KINDS, f"tokenizer must be {' or '.join(KINDS)}, got '{tok['name']}'"),
        (tok["bins"] >= 2, f"tokenizer.bins must be >= 2, got {tok['bins']}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _check_eval(cfg: Any, layout: TokenLayout) -> None:
    """The evaluations' lengths, in steps (a step is the layout's tokens per step)."""
    m, e = cfg.model, cfg.eval
    for key in ("audit_trajectories", "shift_trajectories", "extrapolation_trajectories",
                "gen_repeats"):  # zero would leave an evaluation without anything to measure
        if e[key] < 1:
            raise ConfigError(f"eval.{key} must be >= 1, got {e[key]} (eval.enabled=false "
                              "skips the evaluations)")
    for key in ("gen_batch_sizes", "gen_new_tokens"):  # a speed row of no work is no result
        if any(v < 1 for v in e[key]):
            raise ConfigError(f"eval.{key} must all be >= 1, got {list(e[key])}")
    steps = sequence_steps(cfg)
    longest = steps * max(e.extrapolation_factors, default=1)
    if longest > m.max_seq_len:
        raise ConfigError(
            f"eval.extrapolation_factors need trajectories of {longest} steps, beyond "
            f"model.max_seq_len ({m.max_seq_len})"
        )
    check_shifts(cfg, steps, layout=layout)
    if any(k < 0 for k in e.position_shifts):
        raise ConfigError(f"eval.position_shifts must be >= 0, got {list(e.position_shifts)}")
    gen_len = e.gen_prompt_len + max(e.gen_new_tokens, default=0)
    if gen_len > m.max_seq_len:
        raise ConfigError(
            f"eval.gen_prompt_len + eval.gen_new_tokens need {gen_len} steps, beyond "
            f"model.max_seq_len ({m.max_seq_len})"
        )
    if not 1 <= e.gen_prompt_len <= steps:
        key = "data.window" if is_lerobot(cfg) else "data.seq_length"
        raise ConfigError(f"eval.gen_prompt_len must lie in [1, {key}], got {e.gen_prompt_len}")


# Keys that change how a model is trained; everything else (cache, logger, eval) is inference
# or bookkeeping, so jobs differing only there share one trained model.
_TRAINING_KEYS = ("seed", "data", "model", "pos", "mask", "tokens", "train")
# recipe keys added after models were trained without them: left out of a training
# configuration where they hold the value that reproduces those models' training, so their
# folders and model keys stay valid (decay_frac means nothing under the cosine)
_LEGACY_TRAIN = {"schedule": "cosine", "embed_lr": None, "head_lr": None, "muon_momentum": 0.95}
_NOT_TRAINING = {"data": ("cache_dir", "name", *LEROBOT_KEYS), "model": (),
                 "train": ("num_threads", "concurrent_jobs", "device", "share_models", "progress",
                           "compile", "checkpoint_minutes")}


def _without_legacy(train: dict) -> dict:
    """``train`` less the recipe keys that hold their ``_LEGACY_TRAIN`` values."""
    legacy = dict(_LEGACY_TRAIN)
    for key in ("embed_lr", "head_lr"):  # a rate equal to lr trains as null does
        if train.get(key) == train.get("lr"):
            legacy[key] = train.get(key)
    if train.get("schedule", "cosine") == "cosine":
        legacy["decay_frac"] = train.get("decay_frac")
    return {k: v for k, v in train.items() if k not in legacy or v != legacy[k]}


def training_config(cfg, device=None, precision: str | None = None) -> dict:
    """Everything that determines a trained model; a run folder is bound to it.

    ``train.precision`` is recorded as this host resolves it (``auto`` is bf16 on one machine and
    fp32 on another), so models trained in different precisions never share a folder or a row;
    so is Muon's Newton-Schulz precision where it is float32 (``train.muon_newton_schulz``).
    ``device`` and ``precision``: as the job resolved them (else resolved here, where a device
    or precision that cannot be used is left for ``validate`` or the job to report).
    """
    parts = {}
    for key in _TRAINING_KEYS:
        if key == "data" and is_lerobot(cfg):
            parts[key] = _lerobot_data(cfg)
            continue
        if key == "tokens" and is_lerobot(cfg):
            parts[key] = {"name": str(cfg.tokens.name), "loss": str(cfg.tokens.loss)}
            parts["tokenizer"] = tokenizer_of(cfg)
            continue
        if key == "tokens":
            # left out for tokens=action: the sequence every model before the tokens group was
            # trained on, so their folders and model keys stay valid
            if cfg.get("tokens") is not None and cfg.tokens.name != "action":
                parts[key] = OmegaConf.to_container(cfg.tokens, resolve=True)
            continue
        value = OmegaConf.to_container(cfg[key], resolve=True) if key != "seed" else cfg.seed
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _NOT_TRAINING.get(key, ())}
        if key == "train":
            value = _without_legacy(value)
        parts[key] = value
    try:
        device = pick_device(cfg.train.device) if device is None else device
        parts["train"]["precision"] = (resolve_precision(cfg.train.precision, device)[0]
                                       if precision is None else precision)
        if parts["train"].get("optimizer") == "muon" and newton_schulz_precision(device) == "fp32":
            # Float32Muon (vla_ablate/optim.py): recorded only here, where it differs from
            # torch.optim.Muon's bf16, so that the keys of models trained before stay valid
            parts["train"]["muon_newton_schulz"] = "fp32"
    except (ValueError, ConfigError):
        pass  # validate() reports a precision or device that cannot be used
    return parts


def _lerobot_data(cfg) -> dict:
    """A LeRobot dataset's part of the training config: where it is (``repo_id``, else the
    folder), the columns, the window and the split; the course's keys do not apply."""
    d = OmegaConf.to_container(cfg.data, resolve=True)
    if d.get("repo_id") is not None:
        d["root"] = None  # the data cache's copy: wherever the cache lies, the same data
    return {k: v for k, v in d.items() if k not in ("cache_dir", *_SYNTHETIC_ONLY)}


def model_key(cfg, training: dict | None = None) -> str:
    """A readable, unique name for everything that determines a trained model (``training``:
    ``training_config(cfg)`` when the caller has it already)."""
    training = training_config(cfg) if training is None else training
    digest = hashlib.sha256(json.dumps(training, sort_keys=True).encode())
    return f"{cfg.pos.name}-{cfg.mask.name}-seed{cfg.seed}-{digest.hexdigest()[:10]}"
