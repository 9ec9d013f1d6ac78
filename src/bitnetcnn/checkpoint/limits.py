"""Bounds on the work that reading an untrusted checkpoint may do, checked before the work is done.

A checkpoint is a few megabytes that could claim gigabytes: a zip entry that inflates 1000:1, architecture
arguments that build a huge model, a coded layer that decodes to far more weights than it could hold. Each size
is checked against what the file itself can plausibly hold before anything is inflated, built or decoded:

- an entry's inflated size against its compressed size (real weights deflate at most about 2:1; a bomb 1000:1);
- the safetensors tensors, declared in its first bytes, against the entry's size and then against the model;
- the number of zip entries before ``zipfile`` parses them;
- the model's construction against the number of tensors in the file (:func:`construction_budget` stops it);
- the architecture's arguments against sane bounds (:func:`check_args`).
"""

from __future__ import annotations

import json
import math
import os
import threading
import zipfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Tuple

import torch.nn.modules.module as module_hooks

from bitnetcnn.checkpoint.errors import CheckpointError

MAX_TENSOR_BYTES = 8 << 30  # no entry of any checkpoint inflates beyond this
MAX_DEFLATE_RATIO = 32  # inflated/compressed; real tensors: 1.04-1.73 (every registry model and form), deflate: 1032
RATIO_SLACK = 1 << 20  # small entries may compress better (a header, a BatchNorm-only state)
MAX_ZIP_ENTRIES = 10_000  # bitnetcnn's format has 2; torch.save: one a tensor (a ResNet-50 state_dict: 320)
MAX_ARG = 1 << 20  # largest number in the architecture's arguments (channels, classes, depths)
MAX_ARG_ITEMS = 64  # longest list or dict in them
MAX_ARG_DEPTH = 4
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def check_zip_entries(path, data: bytes) -> None:
    """Refuse a zip whose directory lists more entries than any checkpoint has, before ``zipfile`` parses them all
    (65,000 empty entries take seconds); the count is in the end record, the file's last bytes."""
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - (1 << 16) - 22))
    if at < 0 or at + 22 > len(data):
        return  # not a zip, or a damaged one: zipfile says which
    count = int.from_bytes(data[at + 10 : at + 12], "little")
    if count > MAX_ZIP_ENTRIES:
        raise CheckpointError(path, f"the zip lists {count:,} entries, more than a checkpoint has (at most "
                              f"{MAX_ZIP_ENTRIES:,} read): damaged or crafted")


def _mb(n: int) -> str:
    return f"{n:,} bytes" if n < 1 << 20 else f"{n / (1 << 20):,.1f} MiB"


def deflated_past_ratio(info: zipfile.ZipInfo) -> bool:
    """Whether a zip entry inflates more than any checkpoint's does (a decompression bomb; ``save_checkpoint``
    stores such an entry uncompressed)."""
    return info.file_size > info.compress_size * MAX_DEFLATE_RATIO + RATIO_SLACK


def check_inflated_size(path, info: zipfile.ZipInfo, limit: int) -> None:
    """Refuse a zip entry whose declared size exceeds ``limit`` or what its compressed bytes can plausibly give."""
    if info.file_size > limit:
        raise CheckpointError(path, f"zip entry {info.filename!r} declares {_mb(info.file_size)}, more than the "
                              f"{_mb(limit)} a checkpoint's {info.filename!r} may have: the file is damaged or crafted")
    if deflated_past_ratio(info):
        raise CheckpointError(path, f"zip entry {info.filename!r} declares {_mb(info.file_size)} from "
                              f"{_mb(info.compress_size)} compressed (over {MAX_DEFLATE_RATIO}:1; trained checkpoints "
                              "deflate 1.04-1.73:1): a decompression bomb or a damaged file; not inflated")


def read_exactly(path, stream, n: int, what: str) -> bytes:
    """``n`` bytes of ``stream`` (a zip entry; inflating stops at ``n``), or a one-line error."""
    try:
        data = stream.read(n)
    except Exception as e:  # zlib.error, BadZipFile (CRC), EOFError, ...
        raise CheckpointError(path, f"cannot read {what} from the zip (truncated or corrupted?): {e}") from None
    if len(data) != n:
        raise CheckpointError(path, f"{what} is truncated ({len(data):,} of {n:,} bytes)")
    return data


def safetensors_layout(path, stream, size: int, max_header: int) -> Tuple[bytes, Dict[str, Tuple[str, tuple, int]]]:
    """Read just the safetensors header from ``stream`` (an entry of ``size`` bytes) and check it against ``size``.

    Returns the bytes read and ``{name: (dtype, shape, nbytes)}``; the tensors must tile the rest of the entry
    exactly, so what the header declares is what inflating the entry will cost.
    """
    what = "the safetensors header"
    if size < 8:
        raise CheckpointError(path, f"tensors.safetensors is {size} bytes, too short for a safetensors file")
    first = read_exactly(path, stream, 8, what)
    n = int.from_bytes(first, "little")
    if n > min(size - 8, max_header):
        raise CheckpointError(path, f"{what} declares {_mb(n)} in a {_mb(size)} tensors.safetensors (at most "
                              f"{_mb(max_header)}): damaged or crafted")
    raw = read_exactly(path, stream, n, what)
    try:
        table = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(path, f"{what} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(table, dict):
        raise CheckpointError(path, f"{what} is not a JSON object")
    layout: Dict[str, Tuple[str, tuple, int]] = {}
    spans = []
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(dtype, str) or dtype not in DTYPE_BYTES or not isinstance(shape, list) or len(shape) > 8
                or not all(type(d) is int and 0 <= d < 1 << 40 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)):
            raise CheckpointError(path, f"{what}: bad entry for {name[:100]!r}")
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise CheckpointError(path, f"{what}: {name[:100]!r} is {dtype}{shape} ({nbytes:,} bytes) but spans "
                                  f"{offsets[1] - offsets[0]:,} bytes")
        layout[name] = (dtype, tuple(shape), nbytes)
        spans.append((offsets[0], offsets[1]))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise CheckpointError(path, f"{what}: the tensors overlap or leave gaps (at byte {start:,})")
        end = stop
    if 8 + n + end != size:
        raise CheckpointError(path, f"{what} declares {_mb(end)} of tensors but the entry holds "
                              f"{_mb(max(size - 8 - n, 0))}")
    return first + raw, layout


def check_args(path, args: Any, depth: int = 0) -> None:
    """Refuse architecture arguments outside sane bounds (huge numbers, long lists, deep nesting) before building."""
    if depth > MAX_ARG_DEPTH:
        raise CheckpointError(path, "bad header: architecture args are nested too deeply")
    if isinstance(args, bool) or args is None:
        return
    if isinstance(args, (int, float)):
        if not math.isfinite(args) or abs(args) > MAX_ARG:
            raise CheckpointError(path, f"bad header: architecture argument {str(args)[:40]} is out of range "
                                  f"(at most {MAX_ARG:,})")
        return
    if isinstance(args, str):
        if len(args) > 256:
            raise CheckpointError(path, "bad header: an architecture argument is a string of over 256 characters")
        return
    if isinstance(args, (list, dict)):
        if len(args) > MAX_ARG_ITEMS:
            raise CheckpointError(path, f"bad header: an architecture argument has {len(args):,} items (at most "
                                  f"{MAX_ARG_ITEMS})")
        for key in args if isinstance(args, dict) else ():
            check_args(path, key, depth + 1)
        for value in args.values() if isinstance(args, dict) else args:
            check_args(path, value, depth + 1)
        return
    raise CheckpointError(path, f"bad header: architecture argument of type {type(args).__name__}")


class BudgetExceeded(Exception):
    """Raised inside a model's constructor when it creates more than :func:`construction_budget` allows."""


@contextmanager
def construction_budget(tensors: int, numel: int) -> Iterator[None]:
    """Stop building a model (in this thread) once it registers more than ``tensors`` parameters and buffers, more
    than ``numel`` elements in them, or more than ``4 * tensors`` modules.

    A model built from a file's arguments can only be right if its tensors are the file's; a budget from the file
    stops a crafted ``depths=[20000, 1, 1]`` after a few hundred modules instead of 30 s and 1.8 GB later.
    """
    me = threading.get_ident()
    count = {"tensors": 0, "numel": 0, "modules": 0}
    # a tensor registered again counts once (bitify puts the float layer's own weight into its Bit layer); kept
    # alive while building so that no id is reused
    seen: Dict[int, Any] = {}

    def tensor(module, name, value):
        if threading.get_ident() != me or value is None or id(value) in seen:
            return None
        seen[id(value)] = value
        count["tensors"] += 1
        count["numel"] += value.numel()
        if count["tensors"] > tensors or count["numel"] > numel:
            raise BudgetExceeded(f"building it makes more than {tensors:,} tensors or {numel:,} elements")
        return None

    def submodule(module, name, value):
        if threading.get_ident() == me:
            count["modules"] += 1
            if count["modules"] > 4 * tensors:
                raise BudgetExceeded(f"building it makes more than {4 * tensors:,} modules")
        return None

    handles = [module_hooks.register_module_parameter_registration_hook(tensor),
               module_hooks.register_module_buffer_registration_hook(tensor),
               module_hooks.register_module_module_registration_hook(submodule)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def read_source(source) -> Tuple[Optional[str], bytes]:
    """``(name, bytes)`` of a path, an open file or bytes: the whole file, read once."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return None, bytes(source)
    if hasattr(source, "read"):  # TemporaryFile()'s name is its descriptor's number: no name to give
        name = getattr(source, "name", None)
        return (name if isinstance(name, str) else None), source.read()
    path = os.fspath(source)
    if os.path.isdir(path):
        best = os.path.join(path, "best_ternary.bnc")
        hint = f": a run folder? its model is {best}" if os.path.isfile(best) else ", not a checkpoint file"
        raise CheckpointError(path, f"is a folder{hint}")
    try:
        with open(path, "rb") as f:
            return path, f.read()
    except OSError as e:
        raise CheckpointError(path, f"cannot read the file: {e.strerror or e}") from None
