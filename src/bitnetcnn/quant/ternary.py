"""Ternary codes, dequantization and fake quantization with a straight-through estimator."""

from __future__ import annotations

import torch

from bitnetcnn.quant.scale import channel_scale, pow2_scale

STE_MODES = ("identity", "clipped")


def ternary_codes(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(round(W / s), -1, 1)`` as int8: each weight becomes -1, 0 or +1."""
    return torch.round(weight.detach() / scale).clamp_(-1, 1).to(torch.int8)


def ternary_quantize(
    weight: torch.Tensor, scale_op: str = "median", pow2: bool = False
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
    """``codes * scale`` as a float weight; the one place where the two meet, for training and inference alike."""
    dtype = dtype or scale.dtype
    return codes.to(dtype) * scale.to(dtype)


def fake_quantize_weight(
    weight: torch.Tensor,
    scale_op: str = "median",
    pow2: bool = False,
    ste: str = "identity",
    clip: float = 1.5,
) -> torch.Tensor:
    """Forward: the ternary weight ``q * s``. Backward: the gradient goes to the latent float weight.

    ``ste='identity'`` passes it everywhere; ``ste='clipped'`` zeroes it where ``|W| > clip * s``, so weights far
    outside the ternary range stop drifting.
    """
    if ste not in STE_MODES:
        raise ValueError(f"unknown ste {ste!r}: choose one of {', '.join(map(repr, STE_MODES))}")
    codes, scale = ternary_quantize(weight, scale_op, pow2)
    quantized = dequantize(codes, scale, weight.dtype)
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return quantized  # bit-identical to the converted layer's weight
    passthrough = weight
    if ste == "clipped":
        exact_scale = channel_scale(weight, scale_op)
        passthrough = torch.where(weight.detach().abs() <= clip * exact_scale, weight, weight.detach())
    return passthrough + (quantized - passthrough).detach()
