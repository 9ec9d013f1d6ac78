"""Writing a checkpoint: the header, the tensors and the coded ternary weights, in one zip replaced atomically."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from bitnetcnn.atomic import replacing
from bitnetcnn.checkpoint import ternary_codec
from bitnetcnn.checkpoint.assemble import bit_layer_mismatches, mismatches
from bitnetcnn.checkpoint.format import HEADER_NAME, MAX_HEADER_BYTES, TENSORS_NAME, TERNARY_PREFIX, PathLike
from bitnetcnn.checkpoint.header import build_header
from bitnetcnn.checkpoint.limits import deflated_past_ratio
from bitnetcnn.messages import few, short
from bitnetcnn.models import create_model


def save_checkpoint(model: nn.Module, path: PathLike, metadata: Optional[dict] = None) -> Path:
    """Write ``model`` to ``path`` (a zip; ``.bnc`` or ``.zip`` by convention) and return the path.

    ``model`` is a registry model (``bitnetcnn.create_model``) in any form: converted (``convert_to_ternary`` or
    ``convert_to_ternary_p2``; its ternary weights are entropy-coded, about 1.2-1.6 bits each), trainable Bit, or
    full precision (``quant='fp'``). ``metadata`` is a JSON-able dict; the keys ``dataset``, ``accuracy``,
    ``float_eval``, ``ternary_eval`` and ``command`` (how the model was trained) become the header's metrics,
    ``class_names``, ``input_size``, ``mean`` and ``std`` override the model's own ``pretrained_cfg`` (a loaded
    model keeps its data set's), then the registry's; the rest is kept as is.
    """
    path = Path(path)
    if any(t.is_meta for t in model.state_dict().values()):
        raise ValueError("the model is on the meta device, which holds shapes and no values, so there is nothing to "
                         "save: materialize it first (model.to_empty(device='cpu'), then load_state_dict)")
    header = build_header(model, metadata)
    _check_rebuilds(model, header)
    data, coding = _tensor_bytes(model, header["quantization"]["ternary_layers"])
    header["ternary_coding"] = coding
    header["tensors"] = {"file": TENSORS_NAME, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    head = json.dumps(header, indent=1, sort_keys=False).encode()
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError(f"the checkpoint header would be {len(head):,} bytes, over the {MAX_HEADER_BYTES:,} that "
                         "load_checkpoint reads: keep metadata (class_names, ...) smaller")
    entries = {HEADER_NAME: head, TENSORS_NAME: data}
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        dense = _write_zip(tmp, entries, stored=set())
        if dense:  # load_checkpoint would refuse them as a decompression bomb: uncompressed, they load
            _write_zip(tmp, entries, stored=dense)
    return path


def _write_zip(path: Path, entries: Dict[str, bytes], stored: set) -> set:
    """Write ``entries`` to the zip ``path``, deflated but for ``stored``; returns the names of the deflated ones
    that inflate past the ratio load_checkpoint accepts (3 MB of repeated metadata, a zeroed float model)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in entries.items():
            if name in stored:
                z.writestr(_entry(name), blob, compress_type=zipfile.ZIP_STORED)
            else:
                z.writestr(_entry(name), blob, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        return {info.filename for info in z.infolist() if deflated_past_ratio(info)}


def _check_rebuilds(model: nn.Module, header: dict) -> None:
    """Refuse to write a file that load_checkpoint would refuse: the model must be what its model_args build."""
    ternary = header["quantization"]["ternary_layers"]
    modules = dict(model.named_modules())
    stale = [name for name in ternary if not modules[name].weight_is_current()]
    if stale:
        raise ValueError(f"layers {few(stale)} compute with weights that are no longer their codes * scale (edited in "
                         "place), so the file would hold another function than the model computes: call "
                         "refresh_weight() on them (or load_state_dict) first")
    coded = {name: tuple(modules[name].weight_shape) for name in ternary}
    skip = {f"{name}.weight_packed" for name in ternary}
    plain = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in skip}
    args = dict(header["architecture"]["args"])
    try:
        with torch.device("meta"):
            rebuilt = create_model(args.pop("name"), **args)
    except Exception as e:
        raise ValueError(f"model.model_args do not build a model ({type(e).__name__}: {e}); save a model made by "
                         "bitnetcnn.create_model") from None
    problems = mismatches(rebuilt, plain, coded, "the model", "create_model(**model_args)")
    training = [] if problems else bit_layer_mismatches(model, rebuilt, "create_model(**model_args)")
    if problems or training:
        shown = (problems or training)[:3]
        more = len(problems or training) - len(shown)  # one a layer: a message of every layer ran to kilobytes
        advice = ("If a layer was replaced (e.g. a new head), build the model with create_model(...) arguments that "
                  "make it (e.g. num_classes=) and load the weights into that, or update model.model_args to match")
        if training:  # Bit layers set to train otherwise than the builder's (bitify(..., ste='clipped'))
            advice = ("Its Bit layers train with settings create_model does not give them: save the converted model "
                      "(convert_to_ternary(model)), which computes the same, or the state_dict to go on training")
        raise ValueError(f"the model no longer matches its model_args {short(header['architecture']['args'])}, so "
                         f"the file could not be loaded: {'; '.join(shown)}{f'; and {more} more' if more else ''}. "
                         f"{advice}")


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # fixed: the same model gives the same bytes
    info.external_attr = 0o644 << 16
    return info


def _tensor_bytes(model: nn.Module, ternary_layers: Dict[str, dict]) -> Tuple[bytes, Optional[dict]]:
    from safetensors.torch import save

    state = model.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    coded: List[Tuple[str, np.ndarray]] = []
    modules = dict(model.named_modules())
    for name in ternary_layers:
        coded.append((name, modules[name].codes().cpu().numpy()))
    skip = {f"{name}.weight_packed" for name in ternary_layers}
    for key, value in state.items():
        if key in skip:
            continue
        if key.startswith(TERNARY_PREFIX):
            raise ValueError(f"state_dict key {key!r} clashes with the checkpoint's reserved prefix")
        tensors[key] = value.detach().cpu().contiguous().clone()
    coding = None
    if coded:
        arrays, coding = ternary_codec.encode_ternary(coded)
        try:  # what load_checkpoint will check: a file it refuses is not written
            ternary_codec.check_budget(sum(c.size for _, c in coded), sum(a.nbytes for a in arrays.values()))
        except ValueError as e:
            raise ValueError(f"the model's ternary codes are almost all zero, and load_checkpoint refuses so few "
                             f"coded bytes for so many weights as a crafted file ({e}): save its state_dict "
                             "instead (safetensors.torch.save_file)") from None
        for key, arr in arrays.items():
            tensors[TERNARY_PREFIX + key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8).copy())
    return save(tensors), coding
