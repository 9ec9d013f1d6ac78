"""Symmetric absmax activation quantization (per tensor), with a straight-through estimator."""

from __future__ import annotations

import torch

from bitnetcnn.quant.precision import wide_dtype

ACT_BITS = (None, 8, 4)


def validate_act_bits(act_bits: int | None) -> int | None:
    if act_bits not in ACT_BITS or not (act_bits is None or type(act_bits) is int):  # 8.0 or True: not a bit count
        raise ValueError(f"unsupported act_bits {act_bits!r}: use None (off), 8 or 4")
    return act_bits


def act_qmax(bits: int) -> int:
    """Largest code of a symmetric signed ``bits``-bit grid: 127 for 8 bits, 7 for 4."""
    return (1 << (bits - 1)) - 1


def absmax_scale(x: torch.Tensor, bits: int, eps: float = 1e-8) -> torch.Tensor:
    """The step of the grid that just covers ``max|x|`` (a 0-dim tensor)."""
    # every dimension named: the ONNX exporter has no amax over all dimensions (an act-8 model's float export failed)
    return (x.detach().abs().amax(dim=list(range(x.dim()))).float() / act_qmax(bits)).clamp_min(eps)


def activation_codes(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``clamp(round(x / scale), -qmax, qmax)``: the integers of ``x`` on the grid of step ``scale``, as floats.

    The grid arithmetic runs in float32 at least (a float16 step of 1e-8 would round to 0 and turn zeros into NaN);
    the codes come back in that wider dtype, no gradient."""
    qmax = act_qmax(bits)
    wide = wide_dtype(x.dtype)
    return torch.clamp(torch.round(x.detach().to(wide) / scale.to(wide)), -qmax, qmax)


def fake_quantize_activation(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``activation_codes(x, scale, bits) * scale`` forward, identity gradient backward, in ``x``'s dtype."""
    wide = wide_dtype(x.dtype)
    quantized = (activation_codes(x, scale, bits) * scale.to(wide)).to(x.dtype)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return quantized  # exact grid values when no gradient is needed
    return quantized + (x - x.detach())  # exactly the grid values forward (x + (q - x) rounds), x's gradient
