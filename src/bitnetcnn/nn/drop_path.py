"""Stochastic depth (Huang et al., 2016): drop a residual branch for whole samples while training.

The project's own, so that importing a model does not import torchvision; it draws and scales exactly as
``torchvision.ops.StochasticDepth(p, "row")`` (tests/test_layers.py compares them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DropPath(nn.Module):
    """Zero the branch of each sample with probability ``p`` while training and scale the kept ones by 1/(1-p)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop path probability must be in [0, 1], not {p!r}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        if keep > 0.0:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
