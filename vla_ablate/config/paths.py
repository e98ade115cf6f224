"""The dataset paths of a config made absolute, before anything compares or reads them."""

from __future__ import annotations

from pathlib import Path

from vla_ablate.console import log
from vla_ablate.data.hub import fetch
from vla_ablate.data.robot_config import is_lerobot
from vla_ablate.errors import ConfigError, DataError


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

