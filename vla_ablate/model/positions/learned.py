"""Learned absolute position embeddings (GPT-2 style): one trained vector per position.

Positions never seen in training keep their random initialisation, which is what the length
extrapolation evaluation exposes.
"""

from torch import nn

from vla_ablate.model.positions.base import PositionalEncoding, register


@register("learned")
class LearnedPositionalEmbedding(PositionalEncoding):
    def __init__(self, dim, num_heads, max_seq_len, base=10000.0, token_std=0.02):
        super().__init__(dim, num_heads, max_seq_len, base, token_std)
        self.embedding = nn.Embedding(max_seq_len, dim)
        # the token embeddings' std: a position change weighs as much as a token change
        nn.init.normal_(self.embedding.weight, std=token_std)

    def add_to_embedding(self, x, input_pos):
        return x + self.embedding(input_pos)
