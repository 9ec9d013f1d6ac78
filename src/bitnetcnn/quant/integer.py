"""The integer grids of an int8 runtime (onnxruntime's QDQ convention), as pure functions on tensors.

A ternary layer runs on int8 hardware as ``codes * CODE_GAIN`` (s8) with the weight scale ``s / CODE_GAIN``; its bias
becomes int32 on the grid ``input scale * weight scale``. A model with 8-bit activations at every point the runtime
requantizes computes the runtime's integer function only if its biases lie on those grids as well (see
:mod:`bitnetcnn.nn.integer_bias` for why that matters).
"""

from __future__ import annotations

import torch

# The int8 weight holds codes * 64 with scale s / 64: the same weight exactly (64 is a power of two), but the int32
# bias, whose step onnxruntime fixes at input scale * weight scale, gets a 64x finer grid. 64 is the most that
# keeps u8 * s8 pair sums (255 * 64 * 2 = 32640) inside int16, so AVX2 kernels without VNNI never saturate.
CODE_GAIN = 64


def int32_bias_step(input_scale: torch.Tensor, channel_scale: torch.Tensor) -> torch.Tensor:
    """The int32 bias grid ``[O]`` of a layer, computed as onnxruntime does (float32 products), in float64."""
    weight_step = channel_scale.detach().float() / CODE_GAIN  # exact: CODE_GAIN is a power of two
    return (input_scale.detach().float() * weight_step).double()


def snap_to_grid(value: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``value`` rounded to the nearest multiple of ``step`` (float64; ties to even, as numpy's ``round``)."""
    return torch.round(value.double() / step) * step
