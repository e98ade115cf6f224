"""What ``data=lerobot``'s config means: whether a config names a LeRobot dataset, its tokenizer,
its token layout (read from the dataset's ``meta/info.json``) and its own keys' checks.

Reads a composed Hydra config (as ``tokens.layout_from_config`` does); knows nothing of the
schema in ``vla_ablate/config/``, which imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vla_ablate.data.lerobot import feature, read_info
from vla_ablate.data.robot import robot_layout
from vla_ablate.data.tokenizer import KINDS
from vla_ablate.data.tokens import TokenLayout
from vla_ablate.errors import ConfigError, DataError

DEFAULT_TOKENIZER = {"name": "uniform", "bins": 256}  # data=lerobot without a tokenizer group


def is_lerobot(cfg) -> bool:
    return cfg.data.get("name", "synthetic") == "lerobot"


def tokenizer_of(cfg) -> dict:
    """``tokenizer``'s name and bins for data=lerobot (uniform, 256 when none is chosen)."""
    t = cfg.get("tokenizer")
    return dict(DEFAULT_TOKENIZER) if t is None else {"name": str(t.name), "bins": int(t.bins)}


def lerobot_layout(cfg: Any) -> TokenLayout:
    """A LeRobot dataset's token layout: its action (and state) widths from ``meta/info.json``;
    ``ConfigError`` (one line) where the config or the dataset cannot give one."""
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


def check_lerobot(cfg: Any) -> None:
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
