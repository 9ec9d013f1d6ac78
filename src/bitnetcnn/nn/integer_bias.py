"""Biases on an int8 runtime's int32 grid, so that a converted 8-bit-activation model computes the runtime's function.

A model whose activations are 8-bit at every point the int8 graph requantizes is an integer function, but a chaotic
one: a value that rounds one way in one implementation and the other way in another (a difference of a millionth
of a step) moves a code in the next layer, which moves more codes after it, until the two differ as much as
independent quantization noise would. onnxruntime's rounding of the biases to int32 is such a difference; with each
bias on that grid already, the runtime and the PyTorch model compute the same integers (docs/deploy.md has the
measurements). A half-precision bias cannot hold that grid (its own step is coarser), so it keeps its trained value:
snapped and rounded back, it would move by a whole step of its own instead.

The snap moves each bias by at most half a step of ``input scale * weight scale / 64`` (a few millionths of the
activations). In a chaotic 8-bit network that still moves logits as much as quantization noise does (on a random
network up to 13% of the largest one), a trained one's accuracy by about a tenth of a point (the MobileNetV2
published until 2026-12-02: 53.78% as trained, 53.68% snapped; docs/deploy.md), and the snapped model is the one
the runtime computes; layers without an 8-bit activation quantizer with a measured scale are left as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from bitnetcnn.nn.act_quant import int8_scale
from bitnetcnn.nn.batchnorm import bn_factors, conv_bn_pairs, fold_ternary_affine
from bitnetcnn.nn.ternary import TERNARY_LAYERS, TernaryConv2d
from bitnetcnn.quant.integer import int32_bias_step, snap_to_grid


@torch.no_grad()
def snap_biases_to_int32_grid(model: nn.Module) -> int:
    """Move the biases of ``model``'s ternary layers with 8-bit inputs onto the int32 grid an int8 runtime gives
    them, in place; returns how many layers moved. A BatchNorm after a convolution (which deployment folds into it)
    takes the move in its ``bias`` (its running mean where it has none), so that the folded bias lands on the folded
    layer's grid."""
    followed = set()
    count = 0
    for parent, first, second in conv_bn_pairs(model):
        conv, bn = parent._modules[first], parent._modules[second]
        scale = int8_scale(getattr(conv, "act_quant", None))
        if not isinstance(conv, TernaryConv2d) or not scale or conv.out_channels != bn.num_features:
            continue  # not a pair deploy.fold_batchnorm folds, or no 8-bit input
        followed.add(id(conv))  # its own bias is not the one deployment uses: the folded one is
        if _half(bn.running_mean if bn.bias is None else bn.bias):  # none that can hold the grid
            continue
        folded_scale, bias, _ = fold_ternary_affine(conv.channel_scale(), conv.bias, bn)  # as deployment folds
        moved = snap_to_grid(bias, int32_bias_step(torch.tensor(scale), folded_scale)) - bias
        if bn.bias is not None:
            bn.bias.copy_((bn.bias.double() + moved.to(bn.bias.device)).to(bn.bias.dtype))
        else:  # affine=False: the folded shift is -mean * f, so the mean takes the move
            f, _ = bn_factors(bn)
            bn.running_mean.copy_((bn.running_mean.double() - moved.to(f.device) / f).to(bn.running_mean.dtype))
        count += 1
    for layer in model.modules():
        if isinstance(layer, TERNARY_LAYERS) and id(layer) not in followed and layer.bias is not None:
            if _half(layer.bias):
                continue
            scale = int8_scale(layer.act_quant)
            if scale:
                step = int32_bias_step(torch.tensor(scale), layer.channel_scale())
                layer.bias.copy_(snap_to_grid(layer.bias, step.to(layer.bias.device)).to(layer.bias.dtype))
                count += 1
    return count


def _half(bias: torch.Tensor) -> bool:
    return bias.dtype in (torch.float16, torch.bfloat16)
