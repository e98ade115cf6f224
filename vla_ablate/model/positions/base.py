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

    def __init__(self, dim: int, num_heads: int, max_seq_len: int, base: float = 10000.0,
                 token_std: float = 0.02):
        super().__init__()
        self.dim, self.num_heads, self.max_seq_len, self.base = dim, num_heads, max_seq_len, base
        self.token_std = token_std  # the token embeddings' init std: additive tables match it

    def add_to_embedding(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotary(self, input_pos: torch.Tensor):
        return None

    def attention_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool):
        """Additive (H, Tq, Tk) bias for queries at positions ``q_pos`` over keys at ``k_pos``."""
        return None


def build_positional_encoding(name: str, **kwargs) -> PositionalEncoding:
    if name not in POSITIONAL_ENCODINGS:
        known = ", ".join(sorted(POSITIONAL_ENCODINGS))
        raise ValueError(f"unknown positional encoding '{name}' (known: {known})")
    return POSITIONAL_ENCODINGS[name](**kwargs)
