"""Rotary position embedding (RoFormer): rotate pairs of query/key dimensions by position.

Dimension i of the first half is paired with dimension i + D/2 (the "rotate half" layout); pair
i turns by angle m * theta_i at position m, theta_i = base^(-2i/D). Because both q and k are
rotated, q_m . k_n depends on m - n only (docs/rope.md).
"""

import torch

from vla_ablate.model.positions.base import PositionalEncoding, register


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the last dimension of ``x`` by angle tables that broadcast against its first half.

    ``x`` (B, H, T, D) takes (T, D/2) tables; (B, T, H, D) takes (T, 1, D/2).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


@register("rope")
class RotaryPositionalEmbedding(PositionalEncoding):
    """RoPE over head dimension ``dim`` (the course's call: ``(dim, max_seq_len, base)``).

    ``forward(q, k, input_pos=None)`` rotates (B, H, T, D) tensors at positions ``input_pos``
    (default 0..T-1). Inside the model the tables come from ``rotary(input_pos)``.
    """

    def __init__(self, dim: int, max_seq_len: int = 2048, base: float = 10000.0, num_heads=None,
                 token_std: float = 0.02):
        # ``dim`` is the head dimension in the course's call; inside the model the registry
        # passes the model width with ``num_heads``, and each head is rotated alike.
        num_heads = num_heads or 1
        super().__init__(dim, num_heads, max_seq_len, base, token_std)
        head_dim = dim // num_heads
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        self.head_dim = head_dim
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        self.register_buffer("cos_table", angles.cos().float(), persistent=False)  # (L, D/2)
        self.register_buffer("sin_table", angles.sin().float(), persistent=False)

    def rotary(self, input_pos):
        return self.cos_table[input_pos], self.sin_table[input_pos]

    def forward(self, q, k, input_pos=None):
        if input_pos is None:
            input_pos = torch.arange(q.shape[-2], device=q.device)
        cos, sin = self.rotary(input_pos)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
