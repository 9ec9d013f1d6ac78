"""Building a model from a file's architecture and filling it: shared by the native and the seed readers.

The model is built on the meta device (no weights initialized) within a budget derived from the file, checked
against the file's tensors, then filled: plain tensors assigned, ternary layers built from their codes by
``TernaryConv2d.from_codes`` / ``TernaryLinear.from_codes``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from bitnetcnn.checkpoint import limits
from bitnetcnn.checkpoint.errors import CheckpointError
from bitnetcnn.messages import few, short
from bitnetcnn.models import create_model, get_model_config
from bitnetcnn.nn import BIT_LAYERS, TERNARY_LAYERS, TernaryConv2d, TernaryLinear
from bitnetcnn.nn.convert import replace_modules
from bitnetcnn.quant import TernaryQuant

# a power-of-two layer stores no float tensor of its own (int8 exponents, and often no bias): its header entry says
# its dtype where it is not float32 (bf16 layers beside float32 BatchNorms reloaded in float32, and failed)
LAYER_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64}


def bit_layer_mismatches(model: nn.Module, rebuilt: nn.Module, built: str) -> List[str]:
    """Where ``model``'s trainable Bit layers are not ``rebuilt``'s (the same names, each with the same config): the
    tensors would fit, but the file would load as another function (float layers where the model quantized, or
    another scale op), which shapes alone do not show."""
    ours = {n: m for n, m in model.named_modules() if isinstance(m, BIT_LAYERS)}
    coded = {n for n, m in model.named_modules() if isinstance(m, TERNARY_LAYERS)}
    theirs = {n: m for n, m in rebuilt.named_modules() if isinstance(m, BIT_LAYERS)}
    problems = []
    for name, layer in ours.items():
        other = theirs.get(name)
        if other is None:
            problems.append(f"layer {name!r} is a {type(layer).__name__} here but not in {built}")
        elif layer.quant != other.quant:
            problems.append(f"layer {name!r} quantizes with {layer.quant} here but {other.quant} in {built}")
    unquantized = [n for n in theirs if n not in ours and n not in coded]
    if unquantized:
        problems.append(f"layers {few(unquantized)} are Bit layers in {built} but not quantized here")
    return problems


def mismatches(model: nn.Module, plain: Dict[str, tuple], coded: Dict[str, tuple], given: str = "the file",
                built: Optional[str] = None) -> List[str]:
    """How the tensors ``plain`` (state_dict name -> shape) and coded ternary layers ``coded`` (name -> weight
    shape) of ``given`` differ from what ``model`` (built, in Bit form) has: empty when they fill it exactly."""
    arch = built or model.model_args["name"]
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    problems = []
    for name, shape in coded.items():
        layer = modules.get(name)
        if not isinstance(layer, BIT_LAYERS):
            problems.append(f"{arch} has no ternary-capable layer {name!r}")
            continue
        if tuple(layer.weight.shape) != tuple(shape):
            problems.append(f"layer {name!r} is {list(layer.weight.shape)} in {arch} but {list(shape)} in {given}")
        del expected[name + ".weight"]
        for suffix in (".scale", ".scale_exp"):  # one of them, [out_channels]
            if name + suffix in plain:
                expected[name + suffix] = (layer.weight.shape[0],)
    extra = [k for k in plain if k not in expected]
    missing = [k for k in expected if k not in plain]
    wrong = [f"{k} is {list(expected[k])} in {arch} but {list(s)} in {given}"
             for k, s in plain.items() if k in expected and tuple(expected[k]) != tuple(s)]
    if extra:
        problems.append(f"{given} has tensors {arch} lacks: {few(extra)}")
    if missing:
        problems.append(f"{given} lacks tensors {arch} has: {few(missing)}")
    if wrong:
        problems.append(few(wrong, 3))
    return problems


def build_model(path, args: dict, budget: Optional[Tuple[int, int]] = None) -> nn.Module:
    """``create_model(**args)`` without initializing the weights (on the meta device; loading fills them), stopped
    once it makes more than ``budget`` (tensors, elements)."""
    limits.check_args(path, args)
    args = dict(args)
    name = args.pop("name", None)
    if not isinstance(name, str):
        raise CheckpointError(path, "bad header: architecture args have no model name")
    try:
        get_model_config(name)
    except ValueError as e:
        raise CheckpointError(path, f"unknown architecture: {e}. A model of your own must be registered before its "
                                    "file loads: import the module whose @register_model defines it first") from None
    try:
        with torch.device("meta"), limits.construction_budget(*(budget or (1 << 62, 1 << 62))):
            return create_model(name, **args)
    except limits.BudgetExceeded as e:
        raise CheckpointError(path, f"wrong architecture: {name} with {short(args)} is larger than this file can hold: "
                    f"{e}") from None
    except Exception as e:
        raise CheckpointError(path, f"cannot build architecture {name!r} with {short(args)}: {type(e).__name__}: "
                    f"{short(str(e))}") from None


def assemble(path, model: nn.Module, tensors: Dict[str, torch.Tensor], codes: Dict[str, np.ndarray],
              ternary: Dict[str, dict]) -> nn.Module:
    """Fill the meta-device ``model``: load the plain tensors, then swap in the ternary layers built from codes."""
    own = set()
    for name in ternary:
        for suffix in (".scale", ".scale_exp", ".bias"):
            own.add(name + suffix)
    expected = model.state_dict()  # meta tensors: the types the model computes with
    # another float type is a model saved in it (bf16, mixed precision); integers for floats, or the reverse, are not
    wrong = [f"{k} is {str(v.dtype).removeprefix('torch.')} where {model.model_args['name']} has "
             f"{str(expected[k].dtype).removeprefix('torch.')}" for k, v in tensors.items()
             if k in expected and k not in own and v.is_floating_point() != expected[k].is_floating_point()]
    if wrong:
        raise CheckpointError(path, f"wrong tensor types: {few(wrong)}")
    try:
        result = model.load_state_dict({k: v for k, v in tensors.items() if k not in own}, strict=False, assign=True)
    except Exception as e:
        raise CheckpointError(path, f"wrong architecture: the tensors do not fit {model.model_args['name']}: {e}") from None
    if result.unexpected_keys:
        raise CheckpointError(path, f"wrong architecture: the file has tensors the model lacks: {few(result.unexpected_keys)}")
    allowed_missing = {f"{name}.{p}" for name in ternary for p in ("weight", "bias")}
    missing = [k for k in result.missing_keys if k not in allowed_missing]
    if missing:
        raise CheckpointError(path, f"wrong architecture: the file lacks tensors the model has: {few(missing)}")

    # a bf16 or fp16 model saved as such: its ternary layers are rebuilt in float32 and cast back to it
    floating = [t.dtype for t in tensors.values() if t.is_floating_point()]
    model_dtype = max(set(floating), key=floating.count) if floating else torch.float32

    def rule(name: str, module: nn.Module) -> Optional[nn.Module]:
        if name not in ternary:
            return None
        spec = ternary[name]
        layer_codes = torch.from_numpy(codes[name])
        if spec["pow2"]:
            exp = tensors.get(name + ".scale_exp")
            if exp is None or exp.dtype != torch.int8 or exp.shape != (layer_codes.shape[0],):
                raise CheckpointError(path, f"layer {name!r}: missing or malformed scale_exp")
            scale = torch.exp2(exp.float())
        else:
            scale = tensors.get(name + ".scale")
            if scale is None or not scale.is_floating_point() or scale.shape != (layer_codes.shape[0],):
                raise CheckpointError(path, f"layer {name!r}: missing or malformed scale")
        bias = tensors.get(name + ".bias")
        if (bias is None) != (module.bias is None) or (bias is not None and bias.shape != (layer_codes.shape[0],)):
            raise CheckpointError(path, f"wrong architecture: layer {name!r} bias does not match")
        try:
            quant = TernaryQuant(scale_op=spec["scale_op"], pow2=spec["pow2"],
                                 act_bits=getattr(module, "act_bits", None))
            layer_cls = TernaryConv2d if isinstance(module, nn.Conv2d) else TernaryLinear
            layer = layer_cls.from_codes(module, codes[name], scale, bias, quant)
            # a power-of-two layer's own dtype, else (files before it was recorded) the file's most common one
            dtype = (LAYER_DTYPES[spec["dtype"]] if "dtype" in spec else model_dtype) if spec["pow2"] else scale.dtype
            return layer if dtype == torch.float32 else layer.to(dtype)
        except Exception as e:
            raise CheckpointError(path, f"layer {name!r} cannot be built: {e}") from None

    model, count = replace_modules(model, rule, inplace=True)
    if count != len(ternary):
        raise CheckpointError(path, "wrong architecture: not every ternary layer of the file is in the model")
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(path, f"the file does not fill the model: {few(leftover)}")
    return model
