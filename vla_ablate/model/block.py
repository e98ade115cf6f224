"""The pre-norm Transformer block and its SwiGLU feed-forward."""

import torch.nn.functional as F
from torch import nn

from vla_ablate.model.attention import CausalSelfAttention
from vla_ablate.model.linear import Linear
from vla_ablate.model.norm import RMSNorm


class FeedForward(nn.Module):
    """SwiGLU (Shazeer, 2020): three matrices, down(silu(gate(x)) * up(x)), as in Llama."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.1):
        super().__init__()
        self.gate = Linear(dim, hidden_dim)
        self.up = Linear(dim, hidden_dim)
        self.down = Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        y = self.down(F.silu(self.gate(x)) * self.up(x))
        return self.dropout(y) if self.training and self.dropout.p else y


class TransformerBlock(nn.Module):
    """x + attention(norm1(x)), then + feed_forward(norm2(x)) (pre-norm).

    Alone (the course's ``forward(x, mask=None)``) its attention is causal with its own RoPE;
    ``DecoderOnlyTransformer`` builds it with ``own_rope=False`` and passes the attention's
    keywords (``rotary``, ``attn_mask``, ``is_causal``, ...) through ``attn_kwargs``.
    """

    def __init__(self, dim, num_heads, ff_hidden_dim, dropout=0.1, attn_impl="manual",
                 own_rope=True, max_seq_len=2048):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attention = CausalSelfAttention(dim, num_heads, dropout, attn_impl,
                                             own_rope=own_rope, max_seq_len=max_seq_len)
        self.norm2 = RMSNorm(dim)
        self.feed_forward = FeedForward(dim, ff_hidden_dim, dropout)

    def forward(self, x, mask=None, **attn_kwargs):
        x = x + self.attention(self.norm1(x), mask, **attn_kwargs)
        return x + self.feed_forward(self.norm2(x))
