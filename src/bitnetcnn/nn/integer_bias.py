"""Biases on an int8 runtime's int32 grid, so that a converted 8-bit-activation model computes the runtime's function.

A model whose activations are 8-bit at every point the int8 graph requantizes is an integer function, but a chaotic
one: a value that rounds one way in one implementation and the other way in another (a difference of a millionth
of a step) moves a code in the next layer, which moves more codes after it, until the two differ as much as
independent quantization noise would. onnxruntime's rounding of the biases to int32 is such a difference; with each
bias on that grid already, the runtime and the PyTorch model compute the same integers (docs/deploy.md has the
measurements).

The snap moves each bias by at most half a step of ``input scale * weight scale / 64`` (a few millionths of the
activations), so the converted model's accuracy does not move; layers without an 8-bit activation quantizer with a
measured scale are left as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from bitnetcnn.nn.act_quant import ActQuantizer
from bitnetcnn.nn.batchnorm import bn_factors, conv_bn_pairs
from bitnetcnn.nn.ternary import TernaryConv2d, TernaryLinear
from bitnetcnn.quant.integer import int32_bias_step, snap_to_grid


def _input_scale(layer: nn.Module):
    """The layer's 8-bit activation scale, or None where it has none (float activations, 4 bits, never run)."""
    quantizer = getattr(layer, "act_quant", None)
    if isinstance(quantizer, ActQuantizer) and quantizer.bits == 8 and float(quantizer.running_scale) > 0:
        return quantizer.running_scale
    return None


@torch.no_grad()
def snap_biases_to_int32_grid(model: nn.Module) -> int:
    """Move the biases of ``model``'s ternary layers with 8-bit inputs onto the int32 grid an int8 runtime gives
    them, in place; returns how many layers moved. A BatchNorm after a convolution (which deployment folds into it)
    takes the move in its ``bias``, so that the folded bias lands on the folded layer's grid."""
    followed = set()
    count = 0
    for parent, first, second in conv_bn_pairs(model):
        conv, bn = parent._modules[first], parent._modules[second]
        scale = _input_scale(conv)
        if not isinstance(conv, TernaryConv2d) or scale is None or bn.bias is None:
            continue
        followed.add(id(conv))
        f, shift = bn_factors(bn)
        folded = conv.channel_scale().double() * f
        folded = torch.where(folded == 0, torch.ones_like(folded), folded.abs())  # as deploy.fold_batchnorm does
        bias = (conv.bias.double() * f if conv.bias is not None else 0) + shift
        moved = snap_to_grid(bias, int32_bias_step(scale, folded)) - bias
        bn.bias.copy_((bn.bias.double() + moved).to(bn.bias.dtype))
        count += 1
    for layer in model.modules():
        if isinstance(layer, (TernaryConv2d, TernaryLinear)) and id(layer) not in followed and layer.bias is not None:
            scale = _input_scale(layer)
            if scale is not None:
                step = int32_bias_step(scale, layer.channel_scale())
                layer.bias.copy_(snap_to_grid(layer.bias, step).to(layer.bias.dtype))
                count += 1
    return count
