"""The dataset paths of a config made absolute, before anything compares or reads them."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from vla_ablate.data.robot_config import is_lerobot
from vla_ablate.errors import ConfigError


def resolve_data_path(cfg) -> None:
    """``data.path`` (and ``data.root``) made absolute: a folder is bound to the file, not to a
    path relative to the working directory (the job and the sweep's checks compare the same
    value). Downloads nothing: a ``data.repo_id`` is fetched by the job (``job.fetch_dataset``),
    which sets ``data.root`` to the copy."""
    d = cfg.data
    if d.path is not None:
        d.path = str(Path(d.path).resolve())
    if not is_lerobot(cfg):
        return
    if d.repo_id is not None and d.root is not None:
        raise ConfigError("give data.root or data.repo_id, not both")
    if d.root is not None:
        d.root = str(Path(d.root).resolve())


def data_cache_dir(cfg) -> Path:
    """``data.cache_dir``, or its default: ``outputs/datasets`` under the launch folder (Hydra's
    runtime cwd where Hydra runs, else the working directory). Generated data and Hub copies
    both go there."""
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir)
    base = Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()
    return base / "outputs" / "datasets"
