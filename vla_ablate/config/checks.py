"""The value checks: ``validate`` refuses, before any work and with one clear line, the first
value that cannot work (a type the schema cannot express: ranges, lengths, combinations), and
returns the config's token layout.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from vla_ablate.data.robot_config import check_lerobot, is_lerobot, lerobot_layout
from vla_ablate.data.tokens import TokenLayout, layout_from_config
from vla_ablate.errors import ConfigError
from vla_ablate.factory import model_args_from_config
from vla_ablate.optim import OPTIMIZERS, SCHEDULES
from vla_ablate.precision import PRECISIONS

DATA_NAMES = ("synthetic", "lerobot")


def sequence_steps(cfg) -> int:
    """Steps per training sequence: ``data.window`` for a LeRobot dataset, else
    ``data.seq_length``."""
    return cfg.data.window if is_lerobot(cfg) else cfg.data.seq_length


def check_batch_fits(batch_size: int, n_train: int) -> None:
    if batch_size > n_train:
        raise ConfigError(
            f"train.batch_size ({batch_size}) exceeds the {n_train} training trajectories"
        )


def layout_of(cfg: Any) -> TokenLayout:
    """The config's token layout; a bad ``tokens`` group is a ``ConfigError``. A LeRobot
    dataset's comes from its ``meta/info.json`` (its action and state widths)."""
    if is_lerobot(cfg):
        return lerobot_layout(cfg)
    try:
        return layout_from_config(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


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
        return check_lerobot(cfg)
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
