"""The checkpoint file's layout: one zip holding a JSON header and the tensors in safetensors form. No pickle anywhere.

``bitnetcnn.json``       what to build and how it was made: architecture and arguments, classes, input size and
                         normalization, quantization settings and which layers are ternary, metrics, versions, and
                         the sha256 of ``tensors.safetensors`` (built and checked in :mod:`bitnetcnn.checkpoint.header`)
``tensors.safetensors``  every state_dict tensor except the ternary layers' ``weight_packed``, plus the entropy-coded
                         ternary codes under ``__ternary__.*`` (see :mod:`bitnetcnn.checkpoint.ternary_codec`)

:mod:`bitnetcnn.checkpoint.write` writes it; :mod:`bitnetcnn.checkpoint.read` checks the zip's CRCs, the sha256, the
header's structure, the architecture against the tensors, and the coded stream's own consistency, and whatever is
wrong comes out as :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from typing import Optional, Union

import torch
from torch import nn

FORMAT = "bitnetcnn.checkpoint"
FORMAT_VERSION = 1
HEADER_NAME = "bitnetcnn.json"
TENSORS_NAME = "tensors.safetensors"
TERNARY_PREFIX = "__ternary__."
MAX_HEADER_BYTES = 4 << 20  # a 4 MiB JSON of empty lists parses to ~100 MB of Python objects; real headers: < 100 kB
PathLike = Union[str, os.PathLike]


def file_sha256(path: PathLike) -> str:
    """The sha256 of a file's bytes: what a published weight declares, and how a run names the files it learned from."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_bitnetcnn_checkpoint(source: Union[bytes, PathLike]) -> bool:
    """Whether the bytes, or the file at a path, are a bitnetcnn checkpoint (a zip holding our header). For a path
    only the zip's directory is read, not the file."""
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as z:
            return HEADER_NAME in z.namelist()
    except Exception:
        return False


def ternary_layer(bit: nn.Module, codes, scale: torch.Tensor, bias: Optional[torch.Tensor], pow2: bool,
                  scale_op: str) -> nn.Module:
    """Deprecated (goes in 0.3): ``TernaryConv2d.from_codes`` / ``TernaryLinear.from_codes`` build the layer."""
    import warnings

    from bitnetcnn.nn import TernaryConv2d, TernaryLinear
    from bitnetcnn.quant import TernaryQuant

    warnings.warn("bitnetcnn.checkpoint.format.ternary_layer is deprecated: use TernaryConv2d.from_codes or "
                  "TernaryLinear.from_codes", DeprecationWarning, stacklevel=2)
    quant = TernaryQuant(scale_op=scale_op, pow2=bool(pow2), act_bits=getattr(bit, "act_bits", None))
    cls = TernaryConv2d if isinstance(bit, nn.Conv2d) else TernaryLinear
    return cls.from_codes(bit, codes, scale, bias, quant)


# Moved when this module was split into header, write and read; the old import path works until 0.3.
MOVED = {
    "build_header": "header",
    "save_checkpoint": "write",
    "read_checkpoint_header": "read",
    "native_header": "read",
    "load_native": "read",
    "checkpoint_size_report": "read",
}


def __getattr__(name: str):
    if name in MOVED:
        import importlib
        import warnings

        where = f"bitnetcnn.checkpoint.{MOVED[name]}"
        warnings.warn(f"bitnetcnn.checkpoint.format.{name} moved to {where}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(where), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
