"""Which BatchNorm follows which convolution, and the affine map it is in eval mode: shared by BN folding
(deployment) and by the integer-bias snap of 8-bit-activation models (conversion)."""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import nn


def foldable_bn(module: Optional[nn.Module]) -> bool:
    """An eval-mode BatchNorm2d with running statistics (a fixed per-channel affine map)."""
    return (
        type(module) is nn.BatchNorm2d
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    )


def conv_bn_pairs(model: nn.Module) -> Iterator[Tuple[nn.Sequential, str, str]]:
    """``(parent, conv name, bn name)`` for every foldable BatchNorm2d that directly follows another module in an
    ``nn.Sequential`` (``ConvNormAct`` and any plain ``nn.Sequential(conv, bn, ...)``); the caller checks the first."""
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            if foldable_bn(parent._modules[second]):
                yield parent, first, second


def bn_factors(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``f`` and ``beta - mean * f`` in float64 (one rounding at the end, not two): ``BN(y) = y * f + shift``."""
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    f = gamma / torch.sqrt(var + bn.eps)
    return f, beta - mean * f


def fold_ternary_affine(channel_scale: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.BatchNorm2d):
    """``(scale, bias, sign)`` in float64 of a ternary convolution (``codes * channel_scale + bias``) with ``bn``
    folded in: ``scale`` is positive (the codes of a channel whose ``sign`` is -1 flip; a channel BN multiplies by 0
    gets scale 1 and, from the caller, codes 0: it is the constant ``bias``)."""
    f, shift = bn_factors(bn)
    scale = channel_scale.detach().double() * f
    folded_bias = (bias.detach().double() * f if bias is not None else 0) + shift
    sign = torch.sign(scale)
    return torch.where(sign == 0, torch.ones_like(scale), scale.abs()), folded_bias, sign
