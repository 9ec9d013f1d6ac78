"""The checkpoint's JSON header: built from a model when saving, its structure checked when reading."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from bitnetcnn import normalization
from bitnetcnn.checkpoint import pretrained_cfg
from bitnetcnn.checkpoint.assemble import LAYER_DTYPES
from bitnetcnn.checkpoint.errors import CheckpointError
from bitnetcnn.checkpoint.format import FORMAT, FORMAT_VERSION, TENSORS_NAME
from bitnetcnn.models import get_model_config
from bitnetcnn.models.quant_spec import QUANT_ARGS
from bitnetcnn.nn import BIT_LAYERS, TERNARY_LAYERS, model_form
from bitnetcnn.version import __version__


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
            "registry, so build it with bitnetcnn.create_model(...) (conversions keep model_args). A model of your "
            "own (bitnetcnn.bitify(torchvision.models.resnet18(...))): register a builder that makes it "
            "(@bitnetcnn.register_model; it takes num_classes, in_chans and spec, and bitifies with "
            "quant=spec.config when spec.ternary) and create_model it, or save its state_dict "
            "(safetensors.torch.save_file / torch.save) and load that into the same bitify(...) and "
            "convert_to_ternary(...) of the float model"
        )
    args = _jsonable(args, "model.model_args")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict (e.g. {{'dataset': 'cifar100', 'accuracy': 0.7856}}), not "
                        f"{type(metadata).__name__} {metadata!r:.60}")
    metadata = _jsonable(dict(metadata or {}), "metadata")
    accuracy = metadata.get("accuracy")
    if accuracy is not None and not (type(accuracy) in (int, float) and 0 <= accuracy <= 1):
        percent = type(accuracy) in (int, float) and 1 < accuracy <= 100
        hint = f" (a percentage? pass {accuracy / 100:g})" if percent else ""
        raise ValueError(f"metadata accuracy must be the fraction of test images classified right, in [0, 1], not "
                         f"{accuracy!r}{hint}: the weight's pretrained_cfg.top1 and eval's check read it so")
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


def check_header(path, header: Any) -> dict:
    def need(cond: bool, reason: str) -> None:
        if not cond:
            raise CheckpointError(path, f"bad header: {reason}")

    need(isinstance(header, dict), "not a JSON object")
    need(header.get("format") == FORMAT, f"format is {header.get('format')!r}, not {FORMAT!r}")
    version = header.get("format_version")
    need(type(version) is int and version >= 1, f"format_version {version!r} is not a version number")
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
             and isinstance(spec.get("dtype", "float32"), str) and spec.get("dtype", "float32") in LAYER_DTYPES,
             f"bad ternary layer entry {name!r}")
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
