"""Per-output-channel scales of a weight tensor, and their power-of-two form."""

from __future__ import annotations

import warnings

import torch

from bitnetcnn.messages import few

EPS = 1e-8  # floor of a scale: an all-zero channel gets codes 0 instead of NaN


def _median(flat: torch.Tensor) -> torch.Tensor:
    return flat.median(dim=1).values


def _mean(flat: torch.Tensor) -> torch.Tensor:
    return flat.mean(dim=1)


# 'median' is the seed's default: it ignores the long tail of |W|; with codes round(W / s), about three quarters of
# the weights of a bell-shaped channel are non-zero (the threshold is half the median).
DEFAULT_SCALE_OP = "median"
_SCALE_FNS = {DEFAULT_SCALE_OP: _median, "mean": _mean}
SCALE_OPS = tuple(_SCALE_FNS)


def validate_scale_op(scale_op: str) -> str:
    """Deprecated (goes in 0.3): :class:`bitnetcnn.quant.TernaryQuant` validates its settings when it is made."""
    warnings.warn("validate_scale_op is deprecated: TernaryQuant(scale_op=...) validates it", DeprecationWarning,
                  stacklevel=2)
    if scale_op not in SCALE_OPS:
        raise ValueError(f"unknown scale_op {scale_op!r}: choose one of {', '.join(map(repr, SCALE_OPS))}")
    return scale_op


def channel_scale(weight: torch.Tensor, scale_op: str = DEFAULT_SCALE_OP, eps: float = EPS) -> torch.Tensor:
    """``op(|W|)`` over every dim but dim 0 (the output channel), shaped ``[O, 1, ...]`` to broadcast against W."""
    try:
        op = _SCALE_FNS[scale_op]
    except KeyError:
        raise ValueError(f"unknown scale_op {scale_op!r}: choose one of {', '.join(map(repr, SCALE_OPS))}") from None
    s = op(weight.detach().abs().reshape(weight.shape[0], -1)).clamp_min(eps)
    return s.reshape((weight.shape[0],) + (1,) * (weight.dim() - 1))


def _nearest_exponent(scale: torch.Tensor) -> torch.Tensor:
    return torch.round(torch.log2(scale.float())).clamp(-128, 127)


def pow2_exponent(scale: torch.Tensor) -> torch.Tensor:
    """The integer ``e`` with ``2**e`` nearest to ``scale`` in log space, as int8 (scales live in 2**-128..2**127).
    A scale that is not a finite positive number (NaN or infinite weights) has none: an error, not exponent 0."""
    bad = ~(torch.isfinite(scale) & (scale > 0))
    if bool(bad.any()):
        channels = bad.reshape(-1).nonzero().reshape(-1).tolist()
        raise ValueError(f"{len(channels)} channel(s) ({few(channels)}) have the scale "
                         f"{scale.reshape(-1)[channels[0]].item()}, which no power of two stands for: their weights "
                         "are not finite (a training run that diverged)")
    return _nearest_exponent(scale).to(torch.int8)


def pow2_scale(scale: torch.Tensor) -> torch.Tensor:
    """``2 ** round(log2(scale))`` in the dtype of ``scale``: multiplying by it is a shift on integer hardware. A
    scale that is NaN or infinite stays so (a weight gone NaN gives NaN outputs, as without power-of-two scales)."""
    return torch.where(torch.isfinite(scale), torch.exp2(_nearest_exponent(scale).to(scale.dtype)), scale)
