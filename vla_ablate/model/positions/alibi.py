"""ALiBi (Press et al.): a per-head linear penalty on the query-key distance, no embeddings.

Head h uses slope 2^(-8h/H), h = 1..H. Without a causal mask the penalty is symmetric,
-slope * |m - n|.
"""

import torch

from vla_ablate.model.positions.base import PositionalEncoding, register


@register("alibi")
class ALiBi(PositionalEncoding):
    def __init__(self, dim, num_heads, max_seq_len, base=10000.0, token_std=0.02):
        super().__init__(dim, num_heads, max_seq_len, base, token_std)
        slopes = 2.0 ** (-8.0 * torch.arange(1, num_heads + 1, dtype=torch.float32) / num_heads)
        self.register_buffer("slopes", slopes, persistent=False)

    def attention_bias(self, q_pos, k_pos, causal):
        dist = (q_pos[:, None] - k_pos[None, :]).float()  # (Tq, Tk)
        dist = dist.clamp(min=0) if causal else dist.abs()
        return -self.slopes[:, None, None] * dist  # (H, Tq, Tk)
