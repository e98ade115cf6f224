"""Fixed sinusoidal embeddings (Vaswani et al.), added to the token embeddings.

PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d)).
"""

import torch

from vla_ablate.model.positions.base import PositionalEncoding, register


def sinusoidal_table(max_seq_len: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    pos = torch.arange(max_seq_len, dtype=torch.float64)[:, None]
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(max_seq_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table.float()


@register("sinusoidal")
class SinusoidalPositionalEncoding(PositionalEncoding):
    def __init__(self, dim, num_heads, max_seq_len, base=10000.0):
        super().__init__(dim, num_heads, max_seq_len, base)
        self.register_buffer("table", sinusoidal_table(max_seq_len, dim, base), persistent=False)

    def add_to_embedding(self, x, input_pos):
        return x + self.table[input_pos].to(x.dtype)
