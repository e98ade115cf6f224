"""A run's configuration, one job per module:

- ``schema``: the structured-config dataclasses (Hydra's ConfigStore ``schema``) and a sweep
  job's folder name;
- ``paths``: the dataset paths made absolute;
- ``checks``: ``validate`` and the value checks, the token layout of a config;
- ``identity``: the training config a run folder is bound to and the model key.

``data=lerobot``'s own pieces (``is_lerobot``, ``tokenizer_of``, its layout and checks) live in
``vla_ablate/data/robot_config.py``. The names other modules use are re-exported here; importing
the package registers the ``vla_job_dir`` resolver (``schema``).
"""

from vla_ablate.config.checks import (
    DATA_NAMES,
    check_batch_fits,
    check_shifts,
    layout_of,
    sequence_steps,
    validate,
)
from vla_ablate.config.identity import LEROBOT_KEYS, model_key, training_config
from vla_ablate.config.paths import data_cache_dir, resolve_data_path
from vla_ablate.config.schema import (
    CacheConfig,
    Config,
    DataConfig,
    EvalConfig,
    LoggerConfig,
    MaskConfig,
    ModelConfig,
    PosConfig,
    TokenizerConfig,
    TokensConfig,
    TrainConfig,
    WandbConfig,
    job_dir_name,
    register_configs,
)
from vla_ablate.data.robot_config import DEFAULT_TOKENIZER, is_lerobot, tokenizer_of
from vla_ablate.errors import ConfigError

__all__ = [
    "DATA_NAMES", "DEFAULT_TOKENIZER", "LEROBOT_KEYS", "CacheConfig", "Config", "ConfigError",
    "DataConfig", "EvalConfig", "LoggerConfig", "MaskConfig", "ModelConfig", "PosConfig",
    "TokenizerConfig", "TokensConfig", "TrainConfig", "WandbConfig", "check_batch_fits",
    "check_shifts", "data_cache_dir", "is_lerobot", "job_dir_name", "layout_of", "model_key",
    "register_configs", "resolve_data_path", "sequence_steps", "tokenizer_of", "training_config", "validate",
]
