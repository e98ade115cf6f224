"""Fixed sinusoidal embeddings (Vaswani et al.), added to the token embeddings.

PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d)), times an amplitude ``a``.

The amplitude puts positions and tokens on an equal footing at initialisation. Token embeddings
start at std s = 0.02, so swapping a token for another changes the first block's input by an RMS
of s * sqrt(2). Moving a token one position changes it by a * rms(PE[p+1] - PE[p]), and pair i
of the table contributes |e^{i w_i (p+1)} - e^{i w_i p}|^2 = 4 sin^2(w_i / 2) whatever p is, so

    rms(PE[p+1] - PE[p]) = sqrt(sum_i 4 sin^2(w_i / 2) / d)        (0.17 for d=256, base 1e4)

and ``a = s * sqrt(2) / rms(PE[p+1] - PE[p])`` makes the two changes equal (a = 0.17 here).
At unit amplitude (a = 1, the original paper's table without its sqrt(d) embedding scale) a
one-position move outweighs a token swap about 6x and the table's norm is about 35x the
embedding's, so an ablation would measure the scale mismatch as much as the encoding. The
derivation and the measured before/after are in docs/rope.md; ``pos.amplitude=1.0`` restores
the unit table.
"""

import math

import torch

from vla_ablate.model.positions.base import PositionalEncoding, register


def sinusoidal_table(max_seq_len: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    pos = torch.arange(max_seq_len, dtype=torch.float64)[:, None]
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(max_seq_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table.float()


def one_step_rms(dim: int, base: float = 10000.0) -> float:
    """RMS over the dimensions of PE[p+1] - PE[p] for the unit table (the same for every p)."""
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return math.sqrt((4 * torch.sin(inv_freq / 2) ** 2).sum().item() / dim)


def matched_amplitude(dim: int, base: float = 10000.0, token_std: float = 0.02) -> float:
    """The amplitude at which a one-position move changes the input as much as a token swap."""
    return token_std * math.sqrt(2) / one_step_rms(dim, base)


@register("sinusoidal")
class SinusoidalPositionalEncoding(PositionalEncoding):
    def __init__(self, dim, num_heads, max_seq_len, base=10000.0, token_std=0.02, amplitude=None):
        super().__init__(dim, num_heads, max_seq_len, base, token_std)
        self.amplitude = (matched_amplitude(dim, base, token_std) if amplitude is None
                          else float(amplitude))
        table = sinusoidal_table(max_seq_len, dim, base) * self.amplitude
        self.register_buffer("table", table, persistent=False)

    def add_to_embedding(self, x, input_pos):
        return x + self.table[input_pos].to(x.dtype)
