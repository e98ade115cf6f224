"""The one interface every positional encoding implements, and the registry behind ``pos=...``.

An encoding can act at three places, and implements only the hooks it needs:

- ``add_to_embedding``: added to the token embeddings (sinusoidal, learned);
- ``rotary``: (cos, sin) tables that rotate queries and keys inside attention (RoPE);
- ``attention_bias``: an additive (H, Tq, Tk) bias on the attention scores (ALiBi).

Positions are always absolute token positions (``input_pos``), so a KV-cached decode step at
position t sees exactly what the full forward pass saw at t.

Adding an encoding: a new module in this package that subclasses ``PositionalEncoding`` and is
decorated with ``@register("name")``, plus ``conf/pos/name.yaml``.
"""

from __future__ import annotations

import torch
from torch import nn

POSITIONAL_ENCODINGS: dict[str, type[PositionalEncoding]] = {}


def register(name: str):
    def wrap(cls):
        cls.name = name
        POSITIONAL_ENCODINGS[name] = cls
        return cls

    return wrap


class PositionalEncoding(nn.Module):
    name = "base"

    def __init__(self, dim: int, num_heads: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        self.dim, self.num_heads, self.max_seq_len, self.base = dim, num_heads, max_seq_len, base

    def add_to_embedding(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotary(self, input_pos: torch.Tensor):
        return None

    def attention_bias(self, q_pos: torch.Tensor, num_keys: int, causal: bool):
        """Additive (H, Tq, num_keys) bias for queries at ``q_pos`` over keys 0..num_keys-1."""
        return None


def build_positional_encoding(name: str, **kwargs) -> PositionalEncoding:
    if name not in POSITIONAL_ENCODINGS:
        known = ", ".join(sorted(POSITIONAL_ENCODINGS))
        raise ValueError(f"unknown positional encoding '{name}' (known: {known})")
    return POSITIONAL_ENCODINGS[name](**kwargs)
