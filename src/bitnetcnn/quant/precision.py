"""The dtype quantization arithmetic runs in: float32 at least.

bf16 and fp16 are widened (a half-precision mean of |W| or activation step rounds, and a step of 1e-8 rounds to 0);
float32 and float64 stay (a float64 model's scales are not rounded through float32). Training, conversion, folding
and the converted layers all widen through here, so they compute the same codes and scales.
"""

import torch

__all__ = ["at_least_float32", "wide_dtype"]


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` widened to float32 at least."""
    return torch.promote_types(dtype, torch.float32)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` cast to :func:`wide_dtype` of its dtype (itself when it is float32 or float64)."""
    return t.to(wide_dtype(t.dtype))
