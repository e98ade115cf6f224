"""RMSNorm: a_i / sqrt(mean(a^2) + eps) * g_i, computed in float32 and cast back."""

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 so that the mean of squares neither underflows nor overflows in bf16/fp16
        x32 = x if x.dtype == torch.float32 else x.float()
        out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale.float()
        return out if out.dtype == x.dtype else out.to(x.dtype)
