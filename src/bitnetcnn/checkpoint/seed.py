"""Files from elsewhere: the seed project's published ``.zip`` checkpoints and plain ``state_dict`` files.

The seed (qinhy/BitNetCNN) publishes a zip holding one ``torch.save`` file: ``{"model": state_dict, "acc_tern": x}``
or a bare state_dict. Each ternary layer has ``<name>.weight`` (int8 in {-1, 0, 1}, the float weight's shape) and
``<name>.scale`` (float, ``[O, 1, 1]`` or ``[O]``) and an optional ``<name>.bias``; everything else is an ordinary
state_dict. The registry's ``bitnet_cnn``, ``bit_resnet18(act='silu')`` and ``bit_mobilenetv2(width_mult=1.4,
act='silu', downsample_at='expand')`` use the seed's module names, so the mapping is: codes from ``.weight``,
``.scale`` flattened to ``[O]``, the rest key for key, into the converted (TernaryConv2d/TernaryLinear) model.

These files are read with ``torch.load(..., weights_only=True)``: PyTorch's restricted unpickler, which loads
tensors and plain containers only. bitnetcnn's own format needs no unpickling at all.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from bitnetcnn.checkpoint import limits
from bitnetcnn.checkpoint.assemble import assemble
from bitnetcnn.checkpoint.errors import CheckpointError
from bitnetcnn.checkpoint.format import HEADER_NAME, TENSORS_NAME
from bitnetcnn.checkpoint.limits import MAX_TENSOR_BYTES, read_source
from bitnetcnn.messages import few, short
from bitnetcnn.models import create_model, get_model_config
from bitnetcnn.nn import convert_to_ternary
from bitnetcnn.quant import DEFAULT_QUANT

SEED_ACT = "silu"
_MOBILENET_WIDTHS = (1.4, 1.0, 0.5, 0.75, 1.3, 2.0)


LIGHTNING_KEY = b"pytorch-lightning_version"  # a key of every Lightning checkpoint's top-level dict


def _torch_load(path, data: bytes) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # PyTorch's advice (rerun with weights_only=False) would run the file's code: never pass it on
        what = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise CheckpointError(path, f"holds Python objects other than tensors{f' ({what.group(1)})' if what else ''}, "
                              "and bitnetcnn will not unpickle them (that can run arbitrary code): save a "
                              "state_dict (torch.save(model.state_dict(), path)) or use bitnetcnn.save_checkpoint"
                              ) from None
    except Exception as e:
        raise CheckpointError(path, f"not a readable checkpoint (torch.load failed: {type(e).__name__}: "
                              f"{short(str(e).splitlines()[0] if str(e) else '')})") from None


def _unwrap(path, obj: Any) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The state_dict inside ``obj`` and the other (scalar) entries next to it."""
    extra: dict = {}
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                extra = {k: v for k, v in obj.items() if k != key and isinstance(v, (int, float, str, bool))}
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                        for k, v in obj.items()):
        raise CheckpointError(path, "does not hold a state_dict (a dict of tensors)")
    return dict(obj), extra


def _read_foreign(path, data: bytes) -> Tuple[Dict[str, torch.Tensor], dict]:
    """A seed zip (one torch.save file inside a plain zip) or any torch.save file."""
    if not data:
        raise CheckpointError(path, "the file is empty (0 bytes); copy or download it again")
    if LIGHTNING_KEY in data:
        run = str(Path(path).parent) if path else "RUN"
        best = Path(run) / "best_ternary.bnc"
        best_note = f"the run's best model is {best}" if best.is_file() else f"there is no {best} beside it"
        if not zipfile.is_zipfile(io.BytesIO(data)):  # cut short: the zip's directory, at its end, is gone
            raise CheckpointError(path, f"a Lightning training checkpoint, cut short or damaged (a zip without a "
                                  f"readable directory): neither `bitnetcnn convert` nor --resume can read it; "
                                  f"{best_note}")
        raise CheckpointError(path, f"this is a Lightning training checkpoint of a run, which resumes it (--resume "
                              f"--out {run}); {best_note}, and a Bit run's checkpoint becomes a model file with "
                              f"`bitnetcnn convert {path or 'RUN/last.ckpt'}`")
    limits.check_zip_entries(path, data)
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = [i for i in z.infolist() if not i.is_dir()]
    except Exception as e:
        if data[:4] == b"PK\x03\x04":  # a zip's first bytes, but its directory (at the end) is unreadable
            raise CheckpointError(path, f"the file is truncated or damaged (a zip without a readable directory: "
                                  f"{short(str(e), 80)}); copy or download it again") from None
        if data[:1] != b"\x80":  # a pickle (PyTorch's legacy format) starts with its protocol opcode
            raise CheckpointError(path, "not a checkpoint: neither bitnetcnn's format, a zip, nor a torch.save "
                                  "file") from None
        z, names = None, []
    if z is not None and len(names) == 1 and "/" not in names[0].filename:
        info = names[0]
        limits.check_inflated_size(path, info, MAX_TENSOR_BYTES)
        try:
            inner = z.read(info)
        except Exception as e:
            raise CheckpointError(path, f"cannot read {info.filename!r} from the zip (truncated or damaged?): "
                                  f"{short(str(e), 120)}") from None
        if inner[:2] != b"PK" and inner[:1] != b"\x80":  # neither torch.save's zip nor its legacy pickle
            raise CheckpointError(path, f"a zip holding one file, {info.filename!r}, which is not a torch.save file: "
                                  "not a checkpoint")
        state, extra = _unwrap(path, _torch_load(path, inner))
        extra.setdefault("source_name", info.filename)
        return state, extra
    if z is not None and not any(n.filename.endswith("/data.pkl") for n in names):  # torch.save's zip has one
        entries = [n.filename for n in names]
        if TENSORS_NAME in entries or HEADER_NAME in entries:
            raise CheckpointError(path, f"a damaged bitnetcnn checkpoint (its zip holds {few(entries)}, not "
                                  f"{HEADER_NAME} and {TENSORS_NAME}): copy or download it again")
        raise CheckpointError(path, f"a zip that is neither a bitnetcnn checkpoint nor a torch.save file: it holds "
                              f"{few(entries)}")
    return _unwrap(path, _torch_load(path, data))


def is_seed_state(state: Dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` has the seed's ternary layout (int8 weights next to a scale)."""
    return any(k.endswith(".weight") and v.dtype == torch.int8 and k[:-7] + ".scale" in state
               for k, v in state.items())


def infer_seed_architecture(state: Dict[str, torch.Tensor], filename: str = "") -> Tuple[str, dict]:
    """``(model name, create_model keyword arguments)`` for a seed state_dict, from its keys and shapes."""
    head = [k for k, v in state.items() if v.dtype == torch.int8 and v.dim() == 2]
    stem = state.get("stem.conv.weight")
    if not head or stem is None:
        raise ValueError("no stem.conv and no linear classifier: not a seed BitNetCNN/ResNet/MobileNetV2")
    kwargs: dict = {"num_classes": int(state[head[-1]].shape[0]), "in_chans": int(stem.shape[1])}
    if any(k.startswith("stage1.") for k in state):
        return "bitnet_cnn", kwargs
    if any(k.startswith("layer1.") for k in state):
        kwargs["act"] = SEED_ACT
        if any(".conv_reduce." in k for k in state):
            return "bit_resnet50", kwargs
        blocks = {m.group(1) for k in state for m in [re.match(r"layer3\.(\d+)\.", k)] if m}
        return ("bit_resnet18" if len(blocks) <= 2 else "bit_resnet34"), kwargs
    if any(k.startswith("features.") for k in state):
        kwargs["act"] = SEED_ACT
        match = re.search(r"_x(\d)(\d+)_", Path(filename).name)
        widths = ([float(f"{match.group(1)}.{match.group(2)}")] if match else []) + list(_MOBILENET_WIDTHS)
        stem_out = int(stem.shape[0])
        for w in widths:
            if _mobilenet_stem(w) == stem_out:
                # the seed strides the 1x1 expansion of a downsampling block, not its depthwise convolution
                kwargs.update(width_mult=w, downsample_at="expand")
                return "bit_mobilenetv2", kwargs
        raise ValueError(f"MobileNetV2 stem of {stem_out} channels matches no width_mult in {widths}")
    raise ValueError("unknown seed architecture")


def _mobilenet_stem(width: float) -> int:
    with torch.device("meta"):
        m = create_model("bit_mobilenetv2", width_mult=width, act=SEED_ACT)
    return int(m.stem.conv.weight.shape[0])


def seed_to_ternary(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, np.ndarray]]:
    """Split a seed state_dict into the converted layout's plain tensors and the codes of each ternary layer."""
    tensors: Dict[str, torch.Tensor] = {}
    codes: Dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.dtype == torch.int8 and key[:-7] + ".scale" in state:
            name = key[:-7]
            if value.numel() and (value.min() < -1 or value.max() > 1):
                raise ValueError(f"{key} holds values outside {{-1, 0, 1}}")
            codes[name] = value.contiguous().numpy()
    for key, value in state.items():
        name = key.rsplit(".", 1)[0]
        if name in codes and key.endswith(".weight"):
            continue
        if name in codes and key.endswith(".scale"):
            if value.numel() != codes[name].shape[0]:
                raise ValueError(f"{key} has {value.numel()} values for {codes[name].shape[0]} output channels")
            value = value.reshape(-1).float()
        tensors[key] = value
    return tensors, codes


def load_seed_checkpoint(path, model_name: Optional[str] = None, **model_kwargs) -> nn.Module:
    """A seed checkpoint (``.zip`` as published, or its inner ``.pt``) as the converted registry model.

    The architecture is inferred from the keys and shapes (``model_name`` and ``model_kwargs`` override it); the
    result is in eval mode, with ``model.checkpoint_header`` describing the source.
    """
    name, data = read_source(path)
    state, extra = _read_foreign(name, data)
    if not is_seed_state(state):
        raise CheckpointError(name, "not a seed checkpoint (no int8 '<layer>.weight' with a '<layer>.scale')")
    return _load_seed_state(name, state, extra, model_name, model_kwargs)


def _load_seed_state(name, state, extra, model_name, model_kwargs) -> nn.Module:
    source = extra.get("source_name", Path(name).name if name else "")
    try:
        inferred, kwargs = infer_seed_architecture(state, source)
    except ValueError as e:
        if model_name is None:
            raise CheckpointError(name, f"cannot tell the seed architecture ({e}); pass model_name=") from None
        inferred, kwargs = model_name, {}
    if model_name is not None and model_name != inferred:
        kwargs = {k: v for k, v in kwargs.items() if k in ("num_classes", "in_chans")}
    kwargs.update(model_kwargs)
    model_name = model_name or inferred
    try:
        get_model_config(model_name)
    except ValueError as e:  # names the close ones and every registered model
        raise CheckpointError(name, str(e)) from None
    try:
        tensors, codes = seed_to_ternary(state)
    except ValueError as e:
        raise CheckpointError(name, f"bad seed tensors: {e}") from None
    try:
        with torch.device("meta"):
            model = create_model(model_name, **kwargs)
    except Exception as e:
        raise CheckpointError(name, f"cannot build {model_name} with {kwargs}: {e}") from None
    modules = dict(model.named_modules())
    for layer, c in codes.items():
        target = modules.get(layer)
        if target is None or not hasattr(target, "weight") or tuple(target.weight.shape) != c.shape:
            raise CheckpointError(name, f"wrong architecture: {model_name} has no layer {layer!r} of shape "
                                  f"{list(c.shape)}")
    ternary = {layer: {"pow2": False, "scale_op": getattr(modules[layer], "scale_op", DEFAULT_QUANT.scale_op)}
               for layer in codes}
    model = assemble(name, model, tensors, codes, ternary)
    accuracy = extra.get("acc_tern")
    claimed = re.search(r"acc@(\d+(?:\.\d+)?)", source)
    model.checkpoint_header = {
        "format": "seed",
        "source": source,
        "architecture": {"name": model_name, "args": getattr(model, "model_args", {})},
        "metrics": {"accuracy": float(accuracy) if isinstance(accuracy, (int, float)) else None,
                    "accuracy_in_name": float(claimed.group(1)) / 100 if claimed else None},
    }
    return model.eval()


def load_foreign(name, data: bytes, model_name: Optional[str] = None, **model_kwargs) -> nn.Module:
    """What :func:`bitnetcnn.load_checkpoint` does with a file that is not in bitnetcnn's format."""
    state, extra = _read_foreign(name, data)
    if is_seed_state(state):
        return _load_seed_state(name, state, extra, model_name, model_kwargs)
    if model_name is None:
        raise CheckpointError(name, "is a plain state_dict, which does not say its architecture: load it with "
                              "bitnetcnn.load_checkpoint(path, model_name=..., **the create_model arguments it was "
                              "built with), and save_checkpoint it for the command line, which then reads them")
    return load_state_dict_into(name, state, model_name, **model_kwargs)


def load_state_dict_into(name, state: Dict[str, torch.Tensor], model_name: str, **model_kwargs) -> nn.Module:
    """``create_model(model_name, **model_kwargs)`` loaded with ``state`` (float/Bit or converted layout)."""
    try:
        model = create_model(model_name, **model_kwargs)
    except Exception as e:
        raise CheckpointError(name, f"cannot build {model_name} with {model_kwargs}: {e}") from None
    if any(k.endswith(".weight_packed") for k in state):
        model = convert_to_ternary(model, pow2=any(k.endswith(".scale_exp") for k in state))
    try:
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise CheckpointError(name, f"wrong architecture: the state_dict does not fit {model_name}: "
                              f"{str(e)[:500]}") from None
    return model.eval()
