"""A layer with an input quantizer computes on the integer codes of its input, exactly, as an int8 runtime does.

Why: on the dequantized input the layer rounds each product and partial sum, and in a network of 8-bit layers those
errors flip the next layer's rounding ties; the published MobileNetV2 computed that way predicted otherwise than in
float64, and than onnxruntime's exact int8 graph, on 0.9% of the CIFAR-100 test images. On codes: 0%. The converted
layer and the Bit layer in evaluation both compute this way, so they compute the same function; where a gradient is
asked for (training through an evaluation-mode model, saliency maps, adversarial inputs) it comes from the
fake-quantized float path, whose values are the same up to that rounding.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def sums_exact(x: Tensor, fan_in: int) -> bool:
    """Whether sums of codes are exact in ``x``'s dtype: float64 always, float32 up to 2**24, and a sum holds at most
    ``fan_in`` x 127 (8-bit codes times ternary ones: float32 is exact up to about 132,000 inputs an output). Not
    under autocast, which would sum the codes in float16 (it overflows past 65504), nor for an empty batch."""
    if x.numel() == 0:
        return False
    if not torch.jit.is_scripting():
        if _autocast_on(x):
            return False
    if x.dtype == torch.float64:
        return True
    return x.dtype == torch.float32 and fan_in * 127 <= 2 ** 24


@torch.jit.unused
def _autocast_on(x: Tensor) -> bool:
    """Whether autocast is on for ``x``'s device (TorchScript's ``is_autocast_enabled`` asks of CUDA alone)."""
    return torch.is_autocast_enabled(x.device.type)


def rescaled(sums: Tensor, step: Tensor, scale: Tensor, bias: Optional[Tensor], channel_dim: int) -> Tensor:
    """``sums`` (of codes) times each output channel's ``step * scale``, plus the bias: the layer's output."""
    shape = [1] * sums.dim()
    shape[channel_dim] = -1
    y = sums * (step.to(sums.dtype) * scale.to(sums.dtype)).reshape(shape)
    return y if bias is None else y + bias.to(sums.dtype).reshape(shape)


def with_gradient_of(exact: Tensor, approx: Tensor) -> Tensor:
    """``exact``'s values (bit for bit: ``approx - approx.detach()`` is 0) with ``approx``'s gradient."""
    return exact.detach() + (approx - approx.detach())
