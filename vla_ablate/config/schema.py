"""The structured-config schema, registered with Hydra's ConfigStore as ``schema``
(``conf/config.yaml`` names it), and a sweep job's folder name.

The schema makes Hydra reject unknown keys and wrong types at composition; ``checks.validate``
then checks the values a type cannot express.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


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
    steps: int = 1200
    batch_size: int = 64
    optimizer: str = "muon"  # muon (Muon for the blocks' matrices, AdamW for the rest) | adamw
    lr: float = 3.4e-3  # Muon's (and AdamW's where embed_lr/head_lr are None)
    min_lr: float = 0.0
    warmup_steps: int = 30
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay; training/schedule.py)
    decay_frac: float = 0.3  # wsd: the share of the steps after warmup spent decaying
    embed_lr: float | None = 4.1e-2  # AdamW's rate for the embeddings (None: lr; optim.py)
    head_lr: float | None = 3.9e-3  # AdamW's rate for the output head and the norms (None: lr)
    muon_momentum: float = 0.9
    weight_decay: float = 0.0
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

