"""Ternary codes, dequantization and fake quantization with a straight-through estimator."""

from __future__ import annotations

import numpy as np
import torch

from bitnetcnn.quant.precision import at_least_float32
from bitnetcnn.quant.scale import DEFAULT_SCALE_OP, channel_scale, pow2_scale

DEFAULT_STE = "identity"
STE_MODES = (DEFAULT_STE, "clipped")
DEFAULT_STE_CLIP = 1.5


def ternary_codes(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(round(W / s), -1, 1)`` as int8: each weight becomes -1, 0 or +1."""
    return torch.round(weight.detach() / scale).clamp_(-1, 1).to(torch.int8)


def ternary_quantize(
    weight: torch.Tensor, scale_op: str = DEFAULT_SCALE_OP, pow2: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (int8) and the per-channel scale that multiplies them.

    With ``pow2`` the codes are still taken against the exact scale, and only the scale is rounded to a power of
    two: the codes then do not depend on the scale's format.
    """
    scale = channel_scale(weight, scale_op)
    codes = ternary_codes(weight, scale)
    if pow2:
        scale = pow2_scale(scale)
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``codes * scale`` as a float weight, the weight a converted layer computes with (and fake quantization forward).

    float32 on the CPU goes through numpy, which multiplies int8 by float32 several times faster than torch does
    (loading a ResNet-18 checkpoint is mostly this); both round ``float32(code) * scale`` once, so the values are
    the same.
    """
    dtype = dtype or scale.dtype
    if (dtype == torch.float32 and codes.device.type == "cpu" and scale.device.type == "cpu"
            and not codes.requires_grad and not scale.requires_grad and scale.dtype == torch.float32):
        return torch.from_numpy(np.multiply(codes.numpy(), scale.detach().numpy(), dtype=np.float32))
    return codes.to(dtype) * scale.to(dtype)


def latent_weight(codes: torch.Tensor, scale: torch.Tensor, scale_op: str = DEFAULT_SCALE_OP) -> torch.Tensor:
    """A float weight that :func:`ternary_quantize` maps back to these ``codes`` and ``scale`` (``[O]`` or
    broadcastable), so a converted layer made trainable again starts from the function it computed.

    ``codes * scale`` does that for 'median' (at most half a channel's codes are 0 after median quantization), not
    for 'mean': there ``mean|codes * s| = s * nonzero fraction``, so each channel is stretched by ``numel / nonzeros``
    (the codes survive: ``round(code * stretch)`` clamps back to the code).
    """
    scale = scale.reshape((codes.shape[0],) + (1,) * (codes.dim() - 1))
    scale = at_least_float32(scale)  # float64 scales stay float64
    weight = codes.to(scale.dtype) * scale
    if scale_op == "mean":
        flat = codes.reshape(codes.shape[0], -1)
        stretch = flat.shape[1] / flat.ne(0).sum(dim=1).clamp_min(1).to(weight.dtype)
        weight = weight * stretch.reshape(scale.shape)
    return weight


def fake_quantize_weight(
    weight: torch.Tensor,
    scale_op: str = DEFAULT_SCALE_OP,
    pow2: bool = False,
    ste: str = DEFAULT_STE,
    clip: float = DEFAULT_STE_CLIP,
) -> torch.Tensor:
    """Forward: the ternary weight ``q * s``. Backward: the gradient goes to the latent float weight.

    ``ste='identity'`` passes it everywhere; ``ste='clipped'`` zeroes it where ``|W| > clip * s``, so weights far
    outside the ternary range stop drifting. (Layers call :func:`fake_quantize_weight_unchecked` with a config that
    was validated when it was made.)
    """
    if ste not in STE_MODES:
        raise ValueError(f"unknown ste {ste!r}: choose one of {', '.join(map(repr, STE_MODES))}")
    return fake_quantize_weight_unchecked(weight, scale_op, pow2, ste, clip)


def fake_quantize_weight_unchecked(weight: torch.Tensor, scale_op: str, pow2: bool, ste: str,
                                   clip: float) -> torch.Tensor:
    codes, scale = ternary_quantize(weight, scale_op, pow2)
    quantized = dequantize(codes, scale, weight.dtype)
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return quantized  # bit-identical to the converted layer's weight
    passthrough = weight
    if ste == "clipped":
        exact_scale = channel_scale(weight, scale_op)
        passthrough = torch.where(weight.detach().abs() <= clip * exact_scale, weight, weight.detach())
    # exactly the ternary weight forward (``w + (q - w)`` rounds off the grid where |w| > 2s), w's gradient backward
    return quantized + (passthrough - passthrough.detach())
