"""Reading a checkpoint: every size checked before anything is inflated, built or decoded; one error type."""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from bitnetcnn.checkpoint import limits, pretrained_cfg, ternary_codec
from bitnetcnn.checkpoint.assemble import assemble, build_model, mismatches
from bitnetcnn.checkpoint.errors import CheckpointError
from bitnetcnn.checkpoint.format import (HEADER_NAME, MAX_HEADER_BYTES, TENSORS_NAME, TERNARY_PREFIX, PathLike,
                                         is_bitnetcnn_checkpoint)
from bitnetcnn.checkpoint.header import check_header
from bitnetcnn.checkpoint.limits import MAX_TENSOR_BYTES, read_source
from bitnetcnn.messages import few, short
from bitnetcnn.models.registry import same_model_arg
from bitnetcnn.nn import BIT_LAYERS


def _open_zip(path, data: bytes) -> zipfile.ZipFile:
    limits.check_zip_entries(path, data)
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except Exception as e:
        raise CheckpointError(path, f"the file is truncated or damaged (not a readable zip: {e}); copy or download it "
                    "again") from None
    for info in infos:
        limits.check_inflated_size(path, info, MAX_TENSOR_BYTES)
    return z


def _open_entry(path, z: zipfile.ZipFile, name: str, limit: int):
    """``(info, stream)`` of entry ``name``, its declared size checked first (nothing inflated yet)."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise CheckpointError(path, f"the zip holds no {name!r}") from None
    limits.check_inflated_size(path, info, limit)
    try:
        return info, z.open(info)
    except Exception as e:  # BadZipFile, NotImplementedError (compression), ...
        raise CheckpointError(path, f"cannot read {name!r} from the zip (truncated or corrupted?): {e}") from None


def _read_entry(path, z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    info, stream = _open_entry(path, z, name, limit)
    return limits.read_exactly(path, stream, info.file_size, repr(name))


def read_checkpoint_header(path: PathLike) -> dict:
    """The JSON header of a checkpoint (architecture, metrics, ...) without reading or checking its tensors."""
    name, data = read_source(path)
    return _header_of(name, _open_zip(name, data))


def native_header(path: PathLike) -> Optional[dict]:
    """The header of a bitnetcnn checkpoint, or None for a file of another kind (the seed's zip, a state dict),
    told apart by the zip's directory alone. A bitnetcnn file with a damaged header raises CheckpointError."""
    return read_checkpoint_header(path) if is_bitnetcnn_checkpoint(path) else None


def _header_of(path, z: zipfile.ZipFile) -> dict:
    raw = _read_entry(path, z, HEADER_NAME, MAX_HEADER_BYTES)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(path, f"header {HEADER_NAME} is not valid JSON: {e}") from None
    return check_header(path, header)


def _check_request(path, header: dict, model_name: Optional[str], model_kwargs: dict) -> None:
    """A bitnetcnn file fixes its architecture: refuse a ``model_name`` or arguments that it contradicts."""
    arch = header["architecture"]
    if model_name is not None and model_name != arch["name"]:
        raise CheckpointError(path, f"holds a {arch['name']} model, not the {model_name} asked for (model_name=)")
    differ = []
    for key, value in model_kwargs.items():
        if key not in arch["args"]:
            differ.append(f"{key}={short(repr(value))} (the file's model does not set {key})")
        elif not same_model_arg(value, arch["args"][key]):
            differ.append(f"{key}={short(repr(value))} (the file's model has {key}={short(repr(arch['args'][key]))})")
    if differ:
        raise CheckpointError(path, f"the file's {arch['name']} model cannot be built with {', '.join(differ)}: a bitnetcnn "
                    "checkpoint fixes its architecture, so drop these arguments")


def _tensor_layout(path, z: zipfile.ZipFile, header: dict) -> Tuple[Dict[str, tuple], int]:
    """``({name: (dtype, shape, nbytes)}, compressed size)`` of tensors.safetensors from its first bytes only, its
    sizes checked against the zip entry and the header before anything else is inflated."""
    declared = header["tensors"]["bytes"]
    info, stream = _open_entry(path, z, TENSORS_NAME, MAX_TENSOR_BYTES)
    if info.file_size != declared:
        raise CheckpointError(path, f"{TENSORS_NAME} is {info.file_size:,} bytes in the zip but {declared:,} in the header: "
                    "damaged or crafted")
    return limits.safetensors_layout(path, stream, info.file_size, MAX_HEADER_BYTES)[1], info.compress_size


def _stored_tensors(path, z: zipfile.ZipFile, header: dict) -> Dict[str, torch.Tensor]:
    """The tensors, inflated (at most the entry's checked size) and checked against the header's sha256."""
    meta = header["tensors"]
    blob = _read_entry(path, z, TENSORS_NAME, MAX_TENSOR_BYTES)
    if len(blob) != meta["bytes"] or hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise CheckpointError(path, f"sha256 of {TENSORS_NAME} does not match the header: the tensors were changed or "
                    "corrupted after saving")
    try:
        from safetensors.torch import load as st_load

        return st_load(blob)
    except Exception as e:
        raise CheckpointError(path, f"{TENSORS_NAME} is not a valid safetensors file: {e}") from None


def _decode(path, header: dict, tensors: Dict[str, torch.Tensor]) -> Optional[Dict[str, np.ndarray]]:
    """Pop the coded ternary arrays out of ``tensors`` and decode them."""
    arrays = {k[len(TERNARY_PREFIX):]: tensors.pop(k).numpy() for k in list(tensors) if k.startswith(TERNARY_PREFIX)}
    if not header["quantization"]["ternary_layers"]:
        return None
    coding = header["ternary_coding"]
    _coded_shapes(path, header)
    try:
        return ternary_codec.decode_ternary(arrays, coding)
    except (ValueError, IndexError, TypeError, OverflowError, MemoryError) as e:
        raise CheckpointError(path, f"ternary weights cannot be decoded: {e}") from None


def _checked_parts(path, data: bytes) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """The header and the stored tensors (coded ternary arrays included), every size checked first."""
    z = _open_zip(path, data)
    header = _header_of(path, z)
    _tensor_layout(path, z, header)
    return header, _stored_tensors(path, z, header)


def load_native(path, data: bytes, model_name: Optional[str] = None, **model_kwargs) -> nn.Module:
    """The model a bitnetcnn checkpoint holds (``data``: the file's bytes), every size checked before it is used;
    ``model_name`` and ``model_kwargs``, when given, must agree with the file."""
    z = _open_zip(path, data)
    header = _header_of(path, z)
    if model_name is not None or model_kwargs:
        _check_request(path, header, model_name, model_kwargs)
    ternary = header["quantization"]["ternary_layers"]
    layout = _tensor_layout(path, z, header)  # declared sizes only: nothing inflated, built or decoded yet
    model = _build_for(path, header, *layout)  # budgeted by the file, then checked against its tensors
    tensors = _stored_tensors(path, z, header)
    codes = _decode(path, header, tensors)
    model = assemble(path, model, tensors, codes or {}, ternary)
    model.checkpoint_header = header
    try:
        model.pretrained_cfg = pretrained_cfg.from_header(header)
    except ValueError as e:
        raise CheckpointError(path, str(e)) from None
    return model.eval()


def _coded_shapes(path, header: dict) -> Dict[str, Tuple[int, ...]]:
    """Layer name -> weight shape of the coded ternary layers, as the header declares them."""
    layers = (header.get("ternary_coding") or {}).get("layers", [])
    if [spec.get("name") for spec in layers] != list(header["quantization"]["ternary_layers"]):
        raise CheckpointError(path, "bad header: the coded ternary layers are not the ternary layers")
    shapes = {}
    for spec in layers:
        shape = spec.get("shape")
        if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and 0 <= d < 1 << 31 for d in shape):
            raise CheckpointError(path, f"bad header: bad shape for ternary layer {spec['name']!r}")
        shapes[spec["name"]] = tuple(shape)
    return shapes


def _build_for(path, header: dict, table: Dict[str, tuple], compressed: int) -> nn.Module:
    """The header's architecture on the meta device, built within what the file can hold (its tensors and
    coded weights), and refused unless its tensors are exactly the file's: checked before anything is inflated."""
    coded = _coded_shapes(path, header)
    plain = {k: v[1] for k, v in table.items() if not k.startswith(TERNARY_PREFIX)}
    weights = sum(math.prod(s) for s in coded.values())
    coded_bytes = sum(v[2] for k, v in table.items() if k.startswith(TERNARY_PREFIX))
    try:  # the coded bytes as stored (compressed): inflated ones could be a run of a repeated value
        ternary_codec.check_budget(weights, min(coded_bytes, compressed))
    except ValueError as e:
        raise CheckpointError(path, f"ternary weights: {e}") from None
    budget = (2 * (len(plain) + len(coded)) + 64, 2 * (sum(math.prod(s) for s in plain.values()) + weights) + (1 << 20))
    model = build_model(path, header["architecture"]["args"], budget)
    problems = mismatches(model, plain, coded)
    if problems:
        raise CheckpointError(path, f"wrong architecture: {'; '.join(problems)}")
    quantization = header["quantization"]
    if "bit_layers" in quantization:  # every file since the header recorded them
        declared = set(quantization["bit_layers"] or ()) | set(quantization["ternary_layers"])
        built = {n for n, m in model.named_modules() if isinstance(m, BIT_LAYERS)}
        if declared != built:
            raise CheckpointError(path, f"its quantized layers ({few(sorted(declared)) or 'none'}) are not the ones "
                                        f"its architecture builds ({few(sorted(built)) or 'none'}): it would load "
                                        "as another function; rebuild the model it was saved from and load the "
                                        "weights into it with load_state_dict")
    return model


def checkpoint_size_report(path: PathLike) -> dict:
    """Bytes of each part of a checkpoint and bits per ternary weight (for docs and benchmarks); reads the file
    once."""
    name, data = read_source(path)
    header, tensors = _checked_parts(name, data)
    coded = sum(v.numel() for k, v in tensors.items() if k.startswith(TERNARY_PREFIX))
    other = sum(v.numel() * v.element_size() for k, v in tensors.items() if not k.startswith(TERNARY_PREFIX))
    codes = _decode(name, header, tensors)
    weights = sum(math.prod(c.shape) for c in (codes or {}).values())
    return {
        "file_bytes": len(data),
        "ternary_weights": weights,
        "ternary_coded_bytes": coded,
        "bits_per_ternary_weight": coded * 8 / weights if weights else None,
        "other_tensor_bytes": other,
    }
