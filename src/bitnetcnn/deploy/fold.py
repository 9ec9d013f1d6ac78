"""BatchNorm folding: an eval-mode BatchNorm after a convolution becomes part of that convolution's scale and bias.

For a ternary convolution ``y = conv(x, codes) * s + b`` followed by ``BN(y) = (y - mean) * g / sqrt(var + eps) + beta``
the fold is exact: ``s' = s * f`` and ``b' = (b - mean) * f + beta`` with ``f = g / sqrt(var + eps)``. Where ``f`` is
negative the channel's codes change sign and ``s'`` stays positive, so the folded layer is again codes in
{-1, 0, 1} times a positive per-channel scale, which is what an int8 backend wants. Power-of-two layers lose their
power-of-two form in the fold (the BN factor is arbitrary), which costs nothing on a float-scale backend.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from bitnetcnn.nn import TernaryConv2d
from bitnetcnn.nn.batchnorm import bn_factors, conv_bn_pairs, fold_ternary_affine
from bitnetcnn.quant.precision import wide_dtype

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every BatchNorm2d that directly follows a convolution is folded into it.

    "Directly follows" means the two are children of one module, consecutive in an ``nn.Sequential`` (``ConvNormAct``,
    ``nn.Sequential(conv, bn, ...)``) or, where torch.fx traces the forward, the BatchNorm the only reader of the
    convolution's output (torchvision's ``BasicBlock``: ``nn.batchnorm.conv_bn_pairs``); the BatchNorm is replaced by
    ``nn.Identity``. Ternary convolutions fold
    into their per-channel scale and bias, float ``nn.Conv2d`` into their weight and bias. The input model is not
    changed; the result is in eval mode.
    """
    model = copy.deepcopy(model).eval()
    for parent, first, second in list(conv_bn_pairs(model)):
        folded = _fold(parent._modules[first], parent._modules[second])
        if folded is not None:
            parent._modules[first] = folded
            parent._modules[second] = nn.Identity()
    return model


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.BatchNorm2d) -> Optional[nn.Module]:
    if isinstance(conv, TernaryConv2d):
        return _fold_ternary(conv, bn)
    if type(conv) is nn.Conv2d:
        return _fold_float(conv, bn)
    return None


def _fold_ternary(conv: TernaryConv2d, bn: nn.BatchNorm2d) -> Optional[TernaryConv2d]:
    if conv.out_channels != bn.num_features:
        return None
    scale, bias, sign = fold_ternary_affine(conv.channel_scale(), conv.bias, bn)
    codes = conv.codes() * sign.to(torch.int8).view(-1, *([1] * (len(conv.weight_shape) - 1)))
    wide = wide_dtype(conv.weight.dtype)  # a float64 layer's scale is not rounded to float32
    folded = TernaryConv2d(
        codes, scale.to(wide), bias.to(wide), conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode,
        pow2=False, scale_op=conv.scale_op, act_quant=copy.deepcopy(conv.act_quant),
    )
    return folded.to(conv.weight.device, conv.weight.dtype)  # the model's dtype: a float64 model ran into float32


def _fold_float(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Optional[nn.Conv2d]:
    """A float convolution (a --fp-ends stem) with ``bn`` folded in: ``torch.nn.utils.fusion.fuse_conv_bn_eval``'s
    arithmetic, in float64 with the same ``bn_factors`` as the ternary layers, so both fold alike."""
    if conv.out_channels != bn.num_features:
        return None
    f, shift = bn_factors(bn)
    folded = copy.deepcopy(conv)
    weight = conv.weight.detach().double() * f.view(-1, 1, 1, 1)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(f)
    folded.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    folded.bias = nn.Parameter((bias * f + shift).to(conv.weight.dtype), requires_grad=False)
    return folded
