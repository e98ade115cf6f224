"""Multi-head self-attention written out, with an SDPA twin and a preallocated KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vla_ablate.model.linear import Linear
from vla_ablate.model.positions.rope import RotaryPositionalEmbedding, apply_rotary

ATTN_IMPLS = ("manual", "sdpa")


class KVCache(nn.Module):
    """Fixed-shape key/value buffers of (B, H, max_len, D), written at explicit positions.

    ``update`` stores the new keys/values at ``input_pos`` and returns the filled prefix
    [0, end), so decoding attends over exactly the tokens seen so far and never recomputes them.
    """

    def __init__(self, batch_size, num_heads, max_len, head_dim, dtype=torch.float32,
                 device=None):
        super().__init__()
        shape = (batch_size, num_heads, max_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device),
                             persistent=False)

    def update(self, input_pos: torch.Tensor, end: int, k: torch.Tensor, v: torch.Tensor):
        self.k_cache.index_copy_(2, input_pos, k)
        self.v_cache.index_copy_(2, input_pos, v)
        return self.k_cache[:, :, :end], self.v_cache[:, :, :end]


class CausalSelfAttention(nn.Module):
    """scores = Q K^T / sqrt(d) + M, softmax, times V; M is added before the softmax.

    Used alone, with the course's call ``CausalSelfAttention(dim, num_heads, dropout=0.1)`` and
    ``forward(x)`` or ``forward(x, mask)``, it is the assignment's module: causal, and it rotates
    q and k with its own RoPE tables (``max_seq_len`` positions, ``rope_base``). ``mask`` is the
    course's (T, T) keep-mask, 1 (or True) where a query may look and 0 where it may not, as
    ``torch.tril(torch.ones(T, T))``; a float mask holding negative values (-inf) is taken as
    additive instead.

    Inside ``DecoderOnlyTransformer`` the model's positional encoding owns positions: its blocks
    are built with ``own_rope=False`` and every call names ``rotary`` (RoPE's tables or None),
    ``attn_mask`` (the additive M, with any ALiBi bias) and ``is_causal``, so nothing here
    guesses. ``is_causal=None`` means causal unless a mask is given.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.1, attn_impl: str = "manual",
                 own_rope: bool = True, max_seq_len: int = 2048, rope_base: float = 10000.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got '{attn_impl}'")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.attn_impl = attn_impl
        self.dropout = dropout
        self.qkv = Linear(dim, 3 * dim)
        self.out_proj = Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)
        # tables only (non-persistent buffers): checkpoints hold the same keys with or without it
        self.rope = (RotaryPositionalEmbedding(self.head_dim, max_seq_len, rope_base)
                     if own_rope else None)
        self.kv_cache: KVCache | None = None
        self.last_attn: torch.Tensor | None = None  # (B, H, Tq, Tk) when weights are requested

    def forward(self, x, mask=None, *, rotary=None, attn_mask=None, is_causal=None,
                input_pos=None, end=None, need_weights=False):
        B, T, C = x.shape
        H, D = self.num_heads, self.head_dim
        if mask is not None:
            if attn_mask is not None:
                raise ValueError("pass either mask (the course's 0/1 mask) or attn_mask, not both")
            attn_mask = additive_mask(mask, x.dtype)
        if is_causal is None:  # nobody said: the assignment's attention is causal
            is_causal = attn_mask is None
        if rotary is None and self.rope is not None:
            rotary = self._own_rotary(T, input_pos, x.device)
        qkv = self.qkv(x).view(B, T, 3 * H, D)
        qk, v = qkv[:, :, : 2 * H], qkv[:, :, 2 * H :]
        if rotary is not None:  # rotate q and k at absolute positions *before* caching keys
            cos, sin = rotary
            qk = apply_rotary(qk, cos[:, None], sin[:, None])
        q = qk[:, :, :H].transpose(1, 2)  # (B, nh, T, hs)
        k = qk[:, :, H:].transpose(1, 2)  # (B, nh, T, hs)
        v = v.transpose(1, 2)  # (B, nh, T, hs)
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, end, k, v)  # (B, nh, end, hs)
        dropout_p = self.dropout if self.training else 0.0
        if self.attn_impl == "sdpa" and not need_weights:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal and attn_mask is None,
            )
        else:
            y = self._manual(q, k, v, attn_mask, is_causal, dropout_p, need_weights)
        y = self.out_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
        return self.resid_dropout(y) if dropout_p else y

    def _own_rotary(self, T, input_pos, device):
        if input_pos is None:
            input_pos = torch.arange(T, device=device)
        if int(input_pos[-1]) >= self.rope.max_seq_len:
            raise ValueError(f"position {int(input_pos[-1])} is beyond the attention's RoPE "
                             f"tables (max_seq_len={self.rope.max_seq_len})")
        return self.rope.rotary(input_pos)

    def _manual(self, q, k, v, attn_mask, is_causal, dropout_p, need_weights):
        # in place on the fresh product: fewer passes over the (B, nh, Tq, Tk) scores (the
        # product's backward needs q and k, not the product, so autograd allows it)
        scores = (q @ k.transpose(-2, -1)).mul_(1.0 / math.sqrt(self.head_dim))
        if is_causal and attn_mask is None:
            scores = scores.masked_fill_(causal_forbidden(*scores.shape[-2:], scores.device),
                                         float("-inf"))
        elif attn_mask is not None:
            scores = scores + attn_mask
        weights = torch.softmax(scores, dim=-1)
        if need_weights:
            self.last_attn = weights.detach()
        if dropout_p:
            weights = F.dropout(weights, p=dropout_p)
        return weights @ v  # (B, nh, Tq, hs)


def causal_forbidden(tq: int, tk: int, device=None) -> torch.Tensor:
    """(tq, tk) booleans, True where a query at the last tq of tk positions may not look."""
    return torch.ones(tq, tk, dtype=torch.bool, device=device).triu(diagonal=tk - tq + 1)


def causal_mask(tq: int, tk: int, device=None) -> torch.Tensor:
    """Additive (tq, tk) mask for queries at the last tq of tk positions: 0 allowed, -inf not."""
    return torch.zeros(tq, tk, device=device).masked_fill(causal_forbidden(tq, tk, device),
                                                          float("-inf"))


def additive_mask(mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The course's keep-mask (nonzero or True: may attend) as the additive M: 0 or -inf.

    A float mask that already holds negative values (0 / -inf) is additive and passes through.
    """
    if mask.is_floating_point() and bool((mask < 0).any()):
        return mask.to(dtype)
    keep = mask if mask.dtype == torch.bool else mask != 0
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep,
                                                                                float("-inf"))
