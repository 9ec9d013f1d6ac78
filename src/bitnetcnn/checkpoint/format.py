"""The checkpoint file: one zip holding a JSON header and the tensors in safetensors form. No pickle anywhere.

``bitnetcnn.json``       what to build and how it was made: architecture and arguments, classes, input size and
                         normalization, quantization settings and which layers are ternary, metrics, versions, and
                         the sha256 of ``tensors.safetensors``
``tensors.safetensors``  every state_dict tensor except the ternary layers' ``weight_packed``, plus the entropy-coded
                         ternary codes under ``__ternary__.*`` (see :mod:`bitnetcnn.checkpoint.ternary_codec`)

Reading checks the zip's CRCs, the sha256, the header's structure, the architecture against the tensors, and the
coded stream's own consistency; whatever is wrong comes out as :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from bitnetcnn import normalization
from bitnetcnn.atomic import replacing
from bitnetcnn.checkpoint import limits, pretrained_cfg, ternary_codec
from bitnetcnn.checkpoint.assemble import LAYER_DTYPES, assemble, bit_layer_mismatches, build_model, mismatches
from bitnetcnn.checkpoint.errors import CheckpointError
from bitnetcnn.checkpoint.limits import MAX_TENSOR_BYTES, read_source
from bitnetcnn.messages import few, short
from bitnetcnn.models import create_model, get_model_config
from bitnetcnn.models.quant_spec import QUANT_ARGS
from bitnetcnn.models.registry import same_model_arg
from bitnetcnn.nn import BIT_LAYERS, TERNARY_LAYERS, TernaryConv2d, TernaryLinear, model_form
from bitnetcnn.version import __version__

FORMAT = "bitnetcnn.checkpoint"
FORMAT_VERSION = 1
HEADER_NAME = "bitnetcnn.json"
TENSORS_NAME = "tensors.safetensors"
TERNARY_PREFIX = "__ternary__."
MAX_HEADER_BYTES = 4 << 20  # a 4 MiB JSON of empty lists parses to ~100 MB of Python objects; real headers: < 100 kB
PathLike = Union[str, os.PathLike]


def _jsonable(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serializable (plain dicts, lists, str, numbers): {e}") from None


def _input_metadata(model: nn.Module, args: dict, cfg, metadata: dict) -> dict:
    """What the model's inputs are (``size``, ``mean``, ``std``, ``class_names``; ``dataset`` put in ``metadata``):
    ``metadata``'s (``None``: not recorded, or the default), else the weights' own where ``metadata`` names no other
    data set (``model.pretrained_cfg``: a loaded model saved again keeps its data set's normalization and names; one
    fine-tuned on another data set must not), else the named data set's normalization where bitnetcnn knows it, else
    the registry's for the model's channels and side (with a warning where another data set is named). Refused when
    the channels disagree, since such a file would normalize, calibrate and export wrongly."""
    own = pretrained_cfg.model_pretrained_cfg(model)
    if own is not None and own.dataset is not None:
        metadata.setdefault("dataset", own.dataset)
    if own is not None and metadata.get("dataset") != own.dataset:
        own = None  # saved as trained on another data set: its inputs and labels are that one's, not these weights'

    def pick(key: str, own_value, default):
        if key in metadata:
            value = metadata.pop(key)
            return default if value is None else value
        return own_value if own_value is not None else default

    size = [int(v) for v in pick("input_size", own and own.input_size, cfg.input_size_for(args))]
    dataset = metadata.get("dataset")
    default_mean, default_std = normalization.BY_DATASET.get(dataset, (cfg.mean, cfg.std))
    if (dataset is not None and dataset not in normalization.BY_DATASET and metadata.get("mean") is None
            and (own is None or own.mean is None)):
        warnings.warn(f"save_checkpoint: metadata names the data set {dataset!r} but no 'mean' and 'std', so the file "
                      f"records {args['name']}'s defaults (mean {list(cfg.mean)}, std {list(cfg.std)}), which "
                      "prediction, export and calibration will normalize with: pass the data set's own",
                      UserWarning, stacklevel=4)
    mean = [float(v) for v in pick("mean", own and own.mean, default_mean)]
    std = [float(v) for v in pick("std", own and own.std, default_std)]
    names = pick("class_names", own and own.class_names, None)
    channels = args.get("in_chans", size[0])
    if len(size) != 3 or size[0] != channels or len(mean) != channels or len(std) != channels:
        where = (" (its pretrained_cfg's, which a file written before these were checked may hold from the registry)"
                 if own is not None and own.input_size is not None and own.input_size[0] != channels else "")
        raise ValueError(
            f"{args['name']} takes {channels}-channel images but the inputs to record are {size} with mean {mean} "
            f"and std {std}{where}: pass the data set's metadata={{'input_size': [{channels}, H, W], 'mean': [...], "
            f"'std': [...]}} ({channels} values each)")
    classes = args.get("num_classes", cfg.num_classes)
    if names is not None and len(names) != classes:
        raise ValueError(f"{args['name']} predicts {classes} classes but the class names to record are {len(names)}: "
                         "pass metadata={'class_names': [...]} with one name a class (or None)")
    return {"size": size, "mean": mean, "std": std, "class_names": list(names) if names is not None else None}


def _pow2_dtype(layer: nn.Module) -> dict:
    """``{"dtype": name}`` for a power-of-two layer (its exponents do not say it; float32 too, which a file without
    the key would read as its most common dtype: a float32 layer among bf16 BatchNorms came back bf16), else nothing."""
    return {"dtype": str(layer.weight.dtype).removeprefix("torch.")} if layer.pow2 else {}


def build_header(model: nn.Module, metadata: Optional[dict] = None) -> dict:
    """The JSON header for ``model`` (without the tensor hash and the ternary coding, which saving adds)."""
    args = getattr(model, "model_args", None)
    if not isinstance(args, dict) or "name" not in args:
        raise ValueError(
            f"{type(model).__name__} has no model_args: save_checkpoint stores how to rebuild the model from the "
            "registry, so build it with bitnetcnn.create_model(...) (conversions keep model_args)"
        )
    args = _jsonable(args, "model.model_args")
    metadata = _jsonable(dict(metadata or {}), "metadata")
    cfg = getattr(model, "model_config", None)
    if cfg is None:
        cfg = get_model_config(args["name"])
    ternary_layers = {
        name: {"pow2": bool(m.pow2), "scale_op": m.scale_op, **_pow2_dtype(m)}
        for name, m in model.named_modules()
        if isinstance(m, TERNARY_LAYERS)
    }
    bit_layers = [name for name, m in model.named_modules() if isinstance(m, BIT_LAYERS)]
    inputs = _input_metadata(model, args, cfg, metadata)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "architecture": {"name": args["name"], "args": args},
        "form": model_form(model),
        "num_classes": args.get("num_classes", cfg.num_classes),
        "class_names": inputs.pop("class_names"),
        "input": inputs,
        "quantization": {
            **{k: args.get(k) for k in QUANT_ARGS},
            "ternary_layers": ternary_layers,
            "bit_layers": bit_layers,
        },
        "metrics": {
            k: metadata.get(k) for k in ("dataset", "accuracy", "float_eval", "ternary_eval", "command") if k in metadata
        },
        "metadata": metadata,
    }
    header["pretrained_cfg"] = pretrained_cfg.from_header(header).to_dict()  # the weight's own metadata
    return header


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
    header = build_header(model, metadata)
    _check_rebuilds(model, header)
    data, coding = _tensor_bytes(model, header["quantization"]["ternary_layers"])
    header["ternary_coding"] = coding
    header["tensors"] = {"file": TENSORS_NAME, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    head = json.dumps(header, indent=1, sort_keys=False).encode()
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError(f"the checkpoint header would be {len(head):,} bytes, over the {MAX_HEADER_BYTES:,} that "
                         "load_checkpoint reads: keep metadata (class_names, ...) smaller")
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, zipfile.ZipFile(tmp, "w") as z:
        z.writestr(_entry(HEADER_NAME), head, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        z.writestr(_entry(TENSORS_NAME), data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return path


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
    problems = problems or bit_layer_mismatches(model, rebuilt, "create_model(**model_args)")
    if problems:
        raise ValueError(f"the model no longer matches its model_args {short(header['architecture']['args'])}, so "
                         f"the file could not be loaded: {'; '.join(problems)}. If a layer was replaced (e.g. a new "
                         "head), build the model with create_model(...) arguments that make it (e.g. num_classes=) "
                         "and load the weights into that, or update model.model_args to match")


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
        for key, arr in arrays.items():
            tensors[TERNARY_PREFIX + key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8).copy())
    return save(tensors), coding


# ----------------------------------------------------------------------------------------------------- reading


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


def _check_header(path, header: Any) -> dict:
    def need(cond: bool, reason: str) -> None:
        if not cond:
            raise CheckpointError(path, f"bad header: {reason}")

    need(isinstance(header, dict), "not a JSON object")
    need(header.get("format") == FORMAT, f"format is {header.get('format')!r}, not {FORMAT!r}")
    version = header.get("format_version")
    need(isinstance(version, int), "no format_version")
    need(version <= FORMAT_VERSION, f"format_version {version} is newer than this library reads ({FORMAT_VERSION}); "
         "upgrade bitnetcnn")
    arch = header.get("architecture")
    need(isinstance(arch, dict) and isinstance(arch.get("name"), str) and isinstance(arch.get("args"), dict),
         "architecture must have a name and args")
    need(header.get("form") in ("ternary", "bit", "float"), f"unknown form {header.get('form')!r}")
    quant = header.get("quantization")
    need(isinstance(quant, dict) and isinstance(quant.get("ternary_layers"), dict), "no quantization.ternary_layers")
    for name, spec in quant["ternary_layers"].items():
        need(isinstance(spec, dict) and isinstance(spec.get("pow2"), bool) and isinstance(spec.get("scale_op"), str)
             and spec.get("dtype", "float32") in LAYER_DTYPES, f"bad ternary layer entry {name!r}")
    tensors = header.get("tensors")
    need(isinstance(tensors, dict) and tensors.get("file") == TENSORS_NAME and isinstance(tensors.get("sha256"), str)
         and isinstance(tensors.get("bytes"), int), "bad tensors entry")
    coding = header.get("ternary_coding")
    need(isinstance(coding, dict) if quant["ternary_layers"] else coding is None,
         "ternary layers and ternary coding disagree")
    if isinstance(coding, dict):
        need(isinstance(coding.get("layers"), list) and all(isinstance(x, dict) for x in coding["layers"]),
             "bad ternary_coding.layers")
    return header


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
    return _check_header(path, header)


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


def ternary_layer(bit: nn.Module, codes, scale: torch.Tensor, bias: Optional[torch.Tensor], pow2: bool,
                  scale_op: str) -> nn.Module:
    """Deprecated (goes in 0.3): ``TernaryConv2d.from_codes`` / ``TernaryLinear.from_codes`` build the layer."""
    import warnings

    from bitnetcnn.quant import TernaryQuant

    warnings.warn("bitnetcnn.checkpoint.format.ternary_layer is deprecated: use TernaryConv2d.from_codes or "
                  "TernaryLinear.from_codes", DeprecationWarning, stacklevel=2)
    quant = TernaryQuant(scale_op=scale_op, pow2=bool(pow2), act_bits=getattr(bit, "act_bits", None))
    cls = TernaryConv2d if isinstance(bit, nn.Conv2d) else TernaryLinear
    return cls.from_codes(bit, codes, scale, bias, quant)
