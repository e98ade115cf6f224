"""Learned absolute position embeddings (GPT-2 style): one trained vector per position.

Positions never seen in training keep their random initialisation, which is what the length
extrapolation evaluation exposes.
"""

from torch import nn

from vla_ablate.model.positions.base import PositionalEncoding, register


@register("learned")
class LearnedPositionalEmbedding(PositionalEncoding):
    def __init__(self, dim, num_heads, max_seq_len, base=10000.0):
        super().__init__(dim, num_heads, max_seq_len, base)
        self.embedding = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def add_to_embedding(self, x, input_pos):
        return x + self.embedding(input_pos)
