"""A trained model's identity: the training config a run folder is bound to, and the model key
(a readable name plus a hash of it) under which jobs that differ only in inference settings share
one model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from vla_ablate.data.lerobot import read_info
from vla_ablate.data.robot_config import is_lerobot, tokenizer_of
from vla_ablate.errors import ConfigError, DataError
from vla_ablate.host import pick_device
from vla_ablate.optim import newton_schulz_precision, own_rate
from vla_ablate.precision import resolve_precision

# data=lerobot's keys: left out of the training config of the course's data (its folders and
# model keys stay valid), the course's keys left out of a LeRobot dataset's
LEROBOT_KEYS = ("root", "repo_id", "action_key", "state_key", "window")
_SYNTHETIC_ONLY = ("num_trajectories", "seq_length", "path", "fresh_per_epoch", "vary_with_seed")

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
        if own_rate(train.get(key), train.get("lr")) is None:
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
    folder), what it holds (``_contents``), the columns read, the window and the split; the
    course's keys do not apply, nor ``state_key`` where the tokens are actions only (never read
    there)."""
    d = OmegaConf.to_container(cfg.data, resolve=True)
    if d.get("repo_id") is not None:
        d["root"] = None  # the data cache's copy: wherever the cache lies, the same data
    if cfg.tokens.name == "action":
        d.pop("state_key", None)
    data = {k: v for k, v in d.items() if k not in ("cache_dir", *_SYNTHETIC_ONLY)}
    return {**data, **_contents(cfg.data.root)}


# what meta/info.json says a dataset holds: a dataset changed in place (episodes added) splits
# its episodes differently, so it must not reuse a model trained on the former contents
_CONTENTS = ("codebase_version", "total_episodes", "total_frames")


def _contents(root) -> dict:
    """``_CONTENTS`` from ``root``'s ``meta/info.json``; nothing where it cannot be read (then
    ``validate`` or the job refuses the dataset, and no model is trained or reused)."""
    if root is None:
        return {}
    try:
        info = read_info(Path(root))
    except DataError:
        return {}
    return {key: info[key] for key in _CONTENTS if key in info}


def model_key(cfg, training: dict | None = None) -> str:
    """A readable, unique name for everything that determines a trained model (``training``:
    ``training_config(cfg)`` when the caller has it already)."""
    training = training_config(cfg) if training is None else training
    digest = hashlib.sha256(json.dumps(training, sort_keys=True).encode())
    return f"{cfg.pos.name}-{cfg.mask.name}-seed{cfg.seed}-{digest.hexdigest()[:10]}"
