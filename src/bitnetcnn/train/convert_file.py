"""Conversion of a saved model, outside a training run (``bitnetcnn convert``): a run's ``last.ckpt`` or a Bit
checkpoint to a converted ``.bnc`` that keeps the run's recipe and test figures."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from bitnetcnn.checkpoint import load_checkpoint, save_checkpoint
from bitnetcnn.checkpoint.format import is_bitnetcnn_checkpoint
from bitnetcnn.checkpoint.read import native_header
from bitnetcnn.checkpoint.seed import LIGHTNING_KEY
from bitnetcnn.data.catalog import get_dataset_spec
from bitnetcnn.models.quant_spec import QUANT_ARGS
from bitnetcnn.nn import convert_to_ternary, model_form
from bitnetcnn.train.run_folder import read_run_record

ACCURACY_KEYS = ("accuracy", "float_eval", "ternary_eval", "test_images")  # what a converted file's header measured

def run_model(path: Path) -> nn.Module:
    """The Bit model of a run's ``last.ckpt`` (Lightning), as it stood when saved; a clear error for another file."""
    from bitnetcnn.train.module import BitClassifier

    try:
        if Path(path).is_file() and not zipfile.is_zipfile(path):  # torch says "Invalid argument", or runs on
            raise ValueError("cut short or damaged: its zip archive cannot be read")  # about "an internal error"
        return BitClassifier.load_from_checkpoint(path, map_location="cpu").model
    except FileNotFoundError:
        raise
    except Exception as e:  # damaged (torch's unpickler then advises weights_only=False: never), or foreign
        if isinstance(e, pickle.UnpicklingError):
            reason = "damaged, or not a PyTorch checkpoint"
        else:
            reason = " ".join(str(e).split())[:160]
        raise ValueError(f"{path} is not a readable last.ckpt of a `bitnetcnn train` run ({reason}); convert a "
                         "run's last.ckpt or a bitnetcnn checkpoint (.bnc)") from None


def _is_run_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a Lightning checkpoint (a torch.save zip whose pickle names Lightning's version), by its
    content: a run's ``last.ckpt`` copied to ``run1.pt`` is one, a ``.bnc`` saved as ``m.ckpt`` is not."""
    try:
        with zipfile.ZipFile(path) as z:
            pickles = [n for n in z.namelist() if n.endswith("/data.pkl")]
            return len(pickles) == 1 and LIGHTNING_KEY in z.read(pickles[0])
    except (zipfile.BadZipFile, OSError):
        return False


def default_converted_path(src: Path, pow2: bool = False) -> Path:
    """Where ``bitnetcnn convert`` writes without ``-o``: beside the input, ``.ternary.bnc`` (``.ternary-pow2.bnc``
    with power-of-two scales, so the two conversions of one file do not replace each other)."""
    return src.with_suffix(".ternary-pow2.bnc" if pow2 else ".ternary.bnc")


def convert_file(path: str, output: Optional[str] = None, pow2: bool = False, force: bool = False) -> Path:
    """A run's ``last.ckpt`` (Lightning) or a checkpoint of a Bit model, converted and saved in our format.

    The output never replaces the input (a run's ``last.ckpt`` is what ``--resume`` needs, a Bit file holds the
    latent weights), nor another existing file unless ``force``."""
    src = Path(path)
    out = Path(output) if output else default_converted_path(src, pow2)
    if out.exists() and src.exists() and os.path.samefile(out, src):
        raise ValueError(f"{out} is the file being converted: writing over it would lose it (a last.ckpt's "
                         "optimizer state, a Bit model's latent weights); give -o another file")
    if out.exists() and not force:
        raise ValueError(f"{out} exists: give -o another file, or --force to replace it")
    if out.exists() and out.suffix.lower() != ".bnc":  # a run's args.json, a last.ckpt: --resume needs them
        raise ValueError(f"{out} exists and is not a .bnc file: --force replaces an earlier converted checkpoint, "
                         "not a file of another kind (a run's args.json or last.ckpt, say); give -o another file")
    meta = {}
    lightning = not is_bitnetcnn_checkpoint(src) and (_is_run_checkpoint(src) or src.suffix == ".ckpt")
    if lightning:
        model = run_model(src)
        _refuse_float(model, src, pow2)
        saved = torch.load(src, map_location="cpu", mmap=True, weights_only=True)
        meta = _run_metadata(src.parent, pow2, saved.get("global_step"), model)
        meta.update(_recipe(saved, meta.get("command")))  # the checkpoint's own, wherever it lies
    else:  # its inputs, names and data set travel through model.pretrained_cfg (save_checkpoint reads it)
        model = load_checkpoint(src)
        _refuse_float(model, src, pow2)
        if pow2 and model_form(model) != "bit":
            raise ValueError(f"{src} is already converted, its scales fixed: --pow2 rounds them when a Bit model is "
                             "converted, so convert the run's last.ckpt (or a Bit checkpoint) with --pow2")
        header = getattr(model, "checkpoint_header", {}) or {}
        meta = dict(header.get("metadata", {}), **{k: v for k, v in header.get("metrics", {}).items()})
        if pow2 and not model.model_args.get("pow2"):  # other scales, another function: to be measured again
            for key in ACCURACY_KEYS:
                meta.pop(key, None)
    # a .bnc converted before is saved again as it is
    ternary = model.eval() if model_form(model) != "bit" else convert_to_ternary(model.eval(), pow2=pow2)
    save_checkpoint(ternary, out, meta)
    return out


def _refuse_float(model: nn.Module, src: Path, pow2: bool) -> None:
    if getattr(model, "model_args", {}).get("quant") == "fp":
        raise ValueError(f"{src} holds a full-precision model (--quant fp): it has no ternary layers to convert"
                         f"{' nor scales to round' if pow2 else ''}; it is usable as it is (a run's best_ternary.bnc "
                         "holds its best model, a teacher for --kd)")


# the settings of args.json that the model built from them records in model_args (under these names)
_BUILT_FROM = {"model": "name", **{key: key for key in QUANT_ARGS}}


def _run_metadata(run: Path, pow2: bool, step: Optional[int], model: nn.Module) -> dict:
    """What a run folder says about its model: data set, inputs and class names, command and the last accuracies,
    where they measured this model: a checkpoint of the run's last ``step`` (not one written inside an epoch, nor
    by a run extended since) with the same scales (a run with ``--ema`` saves and validates its average). A folder
    whose ``args.json`` built another model (a checkpoint moved there) lends it nothing: a warning says so."""
    meta: dict = {}
    args = _run_record(run / "args.json")
    built = getattr(model, "model_args", {})
    other = [k for k, name in _BUILT_FROM.items() if k in args and name in built and args[k] != built[name]]
    if other:
        warnings.warn(f"{run / 'args.json'} is not the run of this checkpoint ({', '.join(other)} differ: "
                      f"{', '.join(f'{args[k]!r} there, {built[_BUILT_FROM[k]]!r} here' for k in other)}): its data "
                      "set, command and accuracy are left out of the converted file", UserWarning, stacklevel=3)
        return {}
    meta.update(_run_inputs(run, args))
    results = _run_record(run / "results.json")
    if results:
        meta["command"] = results.get("command")
        same_scales = not pow2 or args.get("pow2")  # a run trained with --pow2 validated power-of-two scales
        if same_scales and step is not None and results.get("step") == step:
            meta["accuracy"] = results.get("ternary_acc")
            meta["float_eval"] = {"top1": results.get("float_acc")}
            meta["ternary_eval"] = {"top1": results.get("ternary_acc")}
            meta["test_images"] = results.get("test_images")  # a run with --limit-eval measured fewer
    return {k: v for k, v in meta.items() if v is not None}


def _recipe(saved: dict, command: Optional[str]) -> dict:
    """What a run's ``last.ckpt`` (``saved``) records of its recipe (RunRecorder's state): the stages before it
    (``--init``'s ``init`` and ``training``) and this one up to the checkpoint, as its best_ternary.bnc records
    them (a run saved before they were kept records none)."""
    state = (saved.get("callbacks") or {}).get("RunRecorder")
    if not state:
        return {}
    lineage = state.get("lineage") or {}
    step = {"command": command or state.get("command"), "wall_time_s": round(state.get("elapsed", 0.0), 1),
            "hardware": state.get("hardware")}
    return {**lineage, "training": [*lineage.get("training", []), step]}


def _run_record(path: Path) -> dict:
    """A run folder's ``args.json`` or ``results.json``; {} where there is none, and where it is damaged (a copy cut
    short) with a warning: the model converts all the same, without what the file would have told."""
    if not path.exists():
        return {}
    try:
        return read_run_record(path)
    except (OSError, ValueError) as e:
        warnings.warn(f"{path} is damaged ({e}): what it records of the run is left out of the converted file",
                      UserWarning, stacklevel=4)
        return {}


def _run_inputs(run: Path, args: dict) -> dict:
    """The data set and inputs a run trained on: as its best_ternary.bnc records them (image folders' class names
    included; where its args.json is damaged, all there is), else as its data set's spec says."""
    header = native_header(run / "best_ternary.bnc") if (run / "best_ternary.bnc").exists() else None
    if header is not None:
        inputs = header.get("input", {})
        found = {"dataset": args.get("dataset") or (header.get("metadata") or {}).get("dataset"),
                 "input_size": inputs.get("size"), "mean": inputs.get("mean"), "std": inputs.get("std"),
                 "class_names": header.get("class_names")}
        return {k: v for k, v in found.items() if v is not None}
    if not args.get("dataset"):
        return {}
    spec = get_dataset_spec(args["dataset"], int(args.get("img_size") or 64),
                            in_chans=int(args.get("img_channels") or 3))
    # the run's own --mean/--std (or its --init's), as it normalized every image it trained on
    return {"dataset": args["dataset"], **spec.normalized_by(args.get("mean"), args.get("std")).input_metadata()}
