"""Packing ternary codes into bytes: 2 bits per code (4 a byte) or base 3 (5 a byte, 1.6 bits per code).

Both take any number of codes; the caller keeps the count (the weight's shape) to unpack.
"""

from __future__ import annotations

import numpy as np
import torch

_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)


def _ternary_flat(codes) -> torch.Tensor:
    """``codes`` flat, checked to be -1, 0 or 1 before any cast (int8 would wrap 255 to -1, and truncate 0.7 to 0)."""
    flat = torch.as_tensor(codes).detach().reshape(-1)
    if flat.numel() and (flat.min() < -1 or flat.max() > 1 or (flat.is_floating_point()
                                                               and not torch.equal(flat, flat.round()))):
        raise ValueError("ternary packing needs codes in {-1, 0, 1}")
    return flat


def _digits(codes: torch.Tensor, group: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Codes -1/0/1 as digits 0/1/2, flat, padded with zeros to a multiple of ``group``, one row per byte."""
    flat = (_ternary_flat(codes).to(torch.int8) + 1).to(dtype)
    pad = (-flat.numel()) % group
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.reshape(-1, group)


def pack_2bit(codes: torch.Tensor) -> torch.Tensor:
    """Four codes a byte, lowest bits first: a uint8 tensor of ``ceil(n / 4)`` bytes."""
    # numpy, uint8 throughout: several times faster than torch's small-integer ops (loading a checkpoint packs
    # every layer)
    flat = _ternary_flat(codes).cpu().to(torch.int8).numpy()
    digits = flat.astype(np.uint8) + np.uint8(1)  # -1/0/1 -> 0/1/2
    pad = (-digits.size) % 4
    if pad:
        digits = np.concatenate([digits, np.zeros(pad, np.uint8)])
    d = digits.reshape(-1, 4)
    return torch.from_numpy(d[:, 0] | (d[:, 1] << 2) | (d[:, 2] << 4) | (d[:, 3] << 6))


def unpack_2bit(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_2bit`: the first ``numel`` codes as int8."""
    p = packed.to(torch.uint8)
    digits = torch.stack([p & 3, (p >> 2) & 3, (p >> 4) & 3, p >> 6], dim=1)
    return digits.reshape(-1)[:numel].view(torch.int8) - 1


def pack_base3(codes: torch.Tensor) -> torch.Tensor:
    """Five codes a byte as a base-3 number (3**5 = 243 <= 256): a uint8 tensor of ``ceil(n / 5)`` bytes."""
    digits = _digits(codes.cpu(), 5)
    return (digits * _POW3).sum(dim=1).to(torch.uint8)


def unpack_base3(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_base3`: the first ``numel`` codes as int8."""
    pow3 = _POW3.to(packed.device)
    digits = (packed.to(torch.int32).unsqueeze(1) // pow3) % 3
    return (digits.reshape(-1)[:numel] - 1).to(torch.int8)
