"""``--init``: a run that starts from a trained model's weights, refused when the checkpoint was built for another
network, and recorded in the new checkpoint's header so a multi-stage recipe reads back from the final model."""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from bitnetcnn.checkpoint import CheckpointError, load_checkpoint
from bitnetcnn.checkpoint.format import file_sha256, is_bitnetcnn_checkpoint
from bitnetcnn.checkpoint.read import native_header
from bitnetcnn.checkpoint.pretrained_cfg import from_header
from bitnetcnn.messages import few
from bitnetcnn.models.classifier import classifier_name
from bitnetcnn.models.registry import FINE_TUNABLE_ARGS, same_model_arg
from bitnetcnn.nn import ActQuantizer, model_form
from bitnetcnn.quant.activation import act_qmax
from bitnetcnn.train.recorded_command import command_with_note, teacher_note
from bitnetcnn.train.settings import SettingsError


def _check_init_args(model: torch.nn.Module, args: dict, path: str, image_folder: bool = False) -> None:
    """Refuse an --init checkpoint built for another model, input channels or architecture, including arguments
    that keep the tensor shapes (the activation, where the stride sits): those weights would load without error
    into a different network."""
    ours = model.model_args
    identity = ("name", "num_classes", "in_chans")
    for key in ("name", "in_chans"):  # num_classes may differ: the classifier then starts afresh (load_init_weights)
        if key in args and args[key] != ours[key]:
            hint = "; an image folder is read with --img-channels 1 or 3" if key == "in_chans" and image_folder else ""
            if key == "name":
                hint = f"; add --model {args[key]} to fine-tune it"
            raise SettingsError(f"--init {path} has {key}={args[key]!r} but this run needs {key}={ours[key]!r} "
                                f"(model {ours['name']} on the chosen data set{hint})")
    defaults = {name: p.default for name, p in inspect.signature(type(model)).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for key in sorted((set(args) | set(ours)) - FINE_TUNABLE_ARGS - set(identity)):
        theirs, mine = (a.get(key, defaults.get(key)) for a in (args, ours))
        if not same_model_arg(theirs, mine):
            fits = (f"--img-size {theirs}" if key == "img_size" and image_folder else
                    "its own data set's size" if key == "img_size" else f"--model-kwargs '{json.dumps({key: theirs})}'")
            raise SettingsError(f"--init {path} was built with {key}={theirs!r} but this run builds {key}={mine!r}: "
                                f"train with {fits} to fine-tune it")


def load_init_weights(model: torch.nn.Module, path: str, class_names=None, image_folder: bool = False) -> None:
    """``path``'s weights into ``model`` (checked to be its architecture). On other classes than the file's (another
    count, or ``class_names`` that differ from those it records) the classifier starts afresh."""
    ours = model.model_args
    if is_bitnetcnn_checkpoint(path):  # it names its architecture, which must be this run's
        source = load_checkpoint(path)
        _check_init_args(model, getattr(source, "model_args", {}), path, image_folder)
    else:  # the seed's zip or a state dict: read into this run's architecture (the quantization is the run's)
        architecture = {k: v for k, v in ours.items() if k != "name" and k not in FINE_TUNABLE_ARGS}
        try:
            source = load_checkpoint(path, model_name=ours["name"], **architecture)
        except CheckpointError as e:  # tensors that do not fit: name the first; anything else as the loader says
            lines = [line.strip() for line in str(e).strip().splitlines()]
            detail = next((line for line in lines if line.startswith(("size mismatch", "Missing", "Unexpected"))),
                          None)
            if detail is None:
                raise
            raise SettingsError(f"--init {path} does not fit {ours['name']} with this run's arguments: "
                                f"{detail}") from None
    from bitnetcnn.nn import convert_to_bit

    if model_form(source) == "ternary":  # a converted file: latent codes * scale, the
        source = convert_to_bit(source)  # start of a ternary run and of a float one (--quant fp) alike
    saved = source.state_dict()
    state = saved
    other = _other_classes(source, ours["num_classes"], class_names)
    if other:  # transfer learning: all but the classifier
        head = classifier_name(model)
        state = {k: v for k, v in saved.items() if not k.startswith(f"{head}.")}
        print(f"note: --init {path} {other}: its classifier ({head}) starts afresh, every other layer from the file",
              file=sys.stderr)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # tensors of other shapes: another width or depth (a seed zip read as it was built)
        # torch lists one line a tensor after its heading; the first is where the model starts to differ
        lines = [line.strip() for line in str(e).strip().splitlines()[1:] if line.strip()] or [str(e).strip()]
        more = f" (and {len(lines) - 1} more tensors)" if len(lines) > 1 else ""
        raise SettingsError(f"--init {path} does not fit {ours['name']} with this run's arguments: "
                            f"{lines[0]}{more}") from None
    # Activation quantizers this run adds (--act-bits on a float-activation checkpoint) start unset and take their
    # scale from the first batches: quantization-aware fine-tuning of a trained model.
    # Quantizers the checkpoint has and this run drops (an --act-bits 8 model fine-tuned with float activations)
    # leave their running scales unused.
    new_quantizers = {f"{name}.running_scale" for name, m in model.named_modules() if isinstance(m, ActQuantizer)}
    dropped = {f"{name}.running_scale" for name, m in source.named_modules() if isinstance(m, ActQuantizer)}
    fresh = new_quantizers | (saved.keys() - state.keys())  # and a new classifier's weights
    missing = [k for k in result.missing_keys if k not in fresh]
    unexpected = [k for k in result.unexpected_keys if k not in dropped]
    if missing or unexpected:
        raise SettingsError(f"--init {path} does not fit {ours['name']}: missing {few(missing) or 'nothing'}, "
                            f"unexpected {few(unexpected) or 'nothing'}")
    _rescale_to_own_bits(model, source)


def _other_classes(source: torch.nn.Module, num_classes: int, class_names) -> str | None:
    """How the file's classes differ from the run's, or None where they are the same (as far as both say)."""
    theirs = getattr(source, "model_args", {}).get("num_classes")
    if theirs is not None and theirs != num_classes:
        return f"predicts {theirs} classes and this run {num_classes}"
    cfg = getattr(source, "pretrained_cfg", None)
    names = getattr(cfg, "class_names", None)
    if names and class_names and tuple(names) != tuple(class_names):
        differ = next(f"{a!r} where this run has {b!r}" for a, b in zip(names, class_names) if a != b)
        return f"names its classes otherwise than this run ({differ}, ...)"
    return None


def _rescale_to_own_bits(model: torch.nn.Module, source: torch.nn.Module) -> None:
    """Activation scales loaded from quantizers of other bits (``--init`` of an 8-bit checkpoint with
    ``--act-bits 4``) are steps of another grid: an 8-bit step on a 4-bit grid clips at a sixteenth of the range
    the model saw. Each is rescaled to keep its range (``absmax = step * qmax``)."""
    theirs = {name: m.bits for name, m in source.named_modules() if isinstance(m, ActQuantizer)}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, ActQuantizer) and theirs.get(name, m.bits) != m.bits:
                m.running_scale.mul_(act_qmax(theirs[name]) / act_qmax(m.bits))


def _recorded(path: str) -> tuple[dict, list[dict], dict]:
    """A file a run learned from (``--init`` or a teacher), as its header records it (read once): its name, sha256
    (a hub name's file is replaced when its weight is republished), accuracy and command; the steps that trained it;
    and its metadata. A file without a header (the seed's zip, a state dict) records no recipe."""
    header = native_header(path)
    meta = (header or {}).get("metadata") or {}
    record = {"file": Path(path).name, "sha256": file_sha256(path), "accuracy": meta.get("accuracy"),
              "command": meta.get("command")}
    steps = [asdict(step) for step in from_header(header).training] if header is not None else []
    return record, steps, meta


def init_normalization(path: str, channels: int) -> Optional[tuple[list[float], list[float]]]:
    """The mean and std ``path``'s model was trained on, where its header records them for ``channels`` channels
    (the seed's files and state dicts record none)."""
    header = native_header(path) if Path(path).is_file() else None
    cfg = from_header(header) if header is not None else None
    if cfg is None or cfg.mean is None or cfg.std is None or len(cfg.mean) != channels:
        return None
    return [float(v) for v in cfg.mean], [float(v) for v in cfg.std]


def init_metadata(path: str) -> dict:
    """What a fine-tune started from, for its checkpoint's header:

    - ``init``: the file (``_recorded``) and, recursively, what that one started from, so a multi-stage recipe can
      be rerun from the header alone;
    - ``training``: the recipe's earlier commands with their wall times and hardware (RunRecorder appends this
      run's).
    """
    lineage, steps, meta = _recorded(path)
    if meta.get("init"):
        lineage["init"] = meta["init"]
    return {"init": lineage, "training": steps}


def teacher_metadata(paths: list[str], training: list[dict]) -> dict:
    """What a distillation learned from, for its checkpoint's header:

    - ``teachers``: each teacher's file (``_recorded``). A hub name (``--teacher bitnet_resnet18``) reads the weight
      published then; once another replaces it, the hash still says which one taught;
    - ``training``: ``training`` (the recipe so far: ``--init``'s) after the steps that made each teacher, the last
      of them noting the teacher it made; a step already there (a teacher that shares stages with ``--init``) is
      not repeated, but takes the note. The recipe then reruns from the header alone, the teacher's training first.
    """
    def key(step: dict) -> tuple:  # the same step, with or without a note
        return step["command"].partition("  # ")[0], step.get("wall_time_s"), step.get("hardware")

    teachers, steps, notes = [], [], {}
    for path in paths:
        teacher, own, _ = _recorded(path)
        teachers.append(teacher)
        if own:
            notes.setdefault(key(own[-1]), []).append(teacher_note(teacher["file"], teacher["sha256"]))
        steps += own

    def noted(step: dict) -> dict:  # a step that made a teacher says so, wherever it is kept (--init's copy too)
        for note in notes.get(key(step), []):
            if note not in step["command"]:
                step = dict(step, command=command_with_note(step["command"], note))
        return step

    seen = {key(step) for step in training}
    first = [step for step in steps if key(step) not in seen and not seen.add(key(step))]
    return {"teachers": teachers, "training": [noted(step) for step in [*first, *training]]}
