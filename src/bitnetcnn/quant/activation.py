"""Symmetric absmax activation quantization (per tensor), with a straight-through estimator."""

from __future__ import annotations

import torch

ACT_BITS = (None, 8, 4)


def validate_act_bits(act_bits: int | None) -> int | None:
    if act_bits not in ACT_BITS:
        raise ValueError(f"unsupported act_bits {act_bits!r}: use None (off), 8 or 4")
    return act_bits


def act_qmax(bits: int) -> int:
    """Largest code of a symmetric signed ``bits``-bit grid: 127 for 8 bits, 7 for 4."""
    return (1 << (bits - 1)) - 1


def absmax_scale(x: torch.Tensor, bits: int, eps: float = 1e-8) -> torch.Tensor:
    """The step of the grid that just covers ``max|x|`` (a 0-dim tensor)."""
    # every dimension named: the ONNX exporter has no amax over all dimensions (an act-8 model's float export failed)
    return (x.detach().abs().amax(dim=list(range(x.dim()))).float() / act_qmax(bits)).clamp_min(eps)


def fake_quantize_activation(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``clamp(round(x / scale), -qmax, qmax) * scale`` forward, identity gradient backward."""
    qmax = act_qmax(bits)
    scale = scale.to(x.dtype)
    quantized = torch.clamp(torch.round(x.detach() / scale), -qmax, qmax) * scale
    if not (torch.is_grad_enabled() and x.requires_grad):
        return quantized  # exact grid values when no gradient is needed
    return x + (quantized - x).detach()
