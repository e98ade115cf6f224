"""A bias-free linear layer that stores its matrix as (in_features, out_features).

``nn.Linear`` keeps W as (out, in) and computes x @ W.T. For one token at a time (cached
decoding) the product is a matrix-vector product that reads every weight once per token, and
x @ W over (in, out) matrices measured faster there than ``F.linear`` over (out, in) ones, with
training unchanged (``benchmarks/linear_layout.py``; the figures: docs/benchmarks.md,
"Generation").
"""

import torch
from torch import nn


class Linear(nn.Module):
    """y = x @ weight, with ``weight`` of shape (in_features, out_features)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
