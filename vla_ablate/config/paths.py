"""The dataset paths of a config made absolute, before anything compares or reads them."""

from __future__ import annotations

from pathlib import Path

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
