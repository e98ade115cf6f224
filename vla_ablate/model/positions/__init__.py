"""Positional encodings; every module in this package registers itself on import."""

import importlib
import pkgutil

from vla_ablate.model.positions.base import (
    POSITIONAL_ENCODINGS,
    PositionalEncoding,
    build_positional_encoding,
    register,
)

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

from vla_ablate.model.positions.rope import RotaryPositionalEmbedding, apply_rotary  # noqa: E402
from vla_ablate.model.positions.sinusoidal import sinusoidal_table  # noqa: E402

__all__ = [
    "POSITIONAL_ENCODINGS",
    "PositionalEncoding",
    "RotaryPositionalEmbedding",
    "apply_rotary",
    "build_positional_encoding",
    "register",
    "sinusoidal_table",
]
