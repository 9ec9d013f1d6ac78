"""What a weight says about itself, as one frozen object: ``model.pretrained_cfg``.

In the manner of torchvision's ``Weights`` and timm's ``pretrained_cfg``: what to build, what the inputs must look
like (size, normalization, classes), how well it does on the test set, which file it is, and how it was made. The
deploy and eval commands read the input size, normalization and data set from it, so they need not guess them
from the architecture's registry defaults.

A checkpoint's header stores it under ``pretrained_cfg`` (written by ``save_checkpoint`` from what it knows; files
written before that section existed get it derived from their other header fields). Published weights declare the
complete object, file size and sha256 included, in ``bitnetcnn/pretrained/__init__.py``; ``bitnetcnn.list_pretrained()`` lists them.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

import torch
from torch import nn

from bitnetcnn import class_names

__all__ = [
    "PretrainedCfg", "TrainingStep", "from_header", "input_normalization", "input_size_of", "model_pretrained_cfg",
]


@dataclass(frozen=True)
class TrainingStep:
    """One command of a recipe, in the order the commands ran, with its wall time and the machine it ran on."""

    command: str
    wall_time_s: Optional[float] = None
    hardware: Optional[str] = None


@dataclass(frozen=True)
class PretrainedCfg:
    """One weight and its metadata. ``create_model(model, **model_kwargs)`` builds its architecture."""

    model: str  # registry name
    model_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    tag: Optional[str] = None  # which weight of the entry, e.g. "mnist"
    hub_entry: Optional[str] = None
    dataset: Optional[str] = None
    input_size: Optional[Tuple[int, ...]] = None  # (C, H, W)
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    num_classes: Optional[int] = None
    class_names: Optional[Tuple[str, ...]] = None
    top1: Optional[float] = None  # on the test set, as a fraction
    top5: Optional[float] = None
    test_images: Optional[int] = None  # how many images top1/top5 were measured on
    file: Optional[str] = None  # inside bitnetcnn/pretrained/ when shipped
    url: Optional[str] = None
    file_size: Optional[int] = None  # bytes
    sha256: Optional[str] = None
    training: Tuple[TrainingStep, ...] = ()  # the commands, in order
    licence: Optional[str] = None

    def __post_init__(self) -> None:
        # Frozen all the way down: sequences become tuples, the kwargs a read-only copy.
        fix = object.__setattr__
        fix(self, "model_kwargs", MappingProxyType(dict(self.model_kwargs or {})))
        for name in ("input_size", "mean", "std", "class_names"):
            value = getattr(self, name)
            if value is not None:
                fix(self, name, tuple(value))
        fix(self, "training", tuple(s if isinstance(s, TrainingStep) else TrainingStep(**s) if isinstance(s, dict)
                                    else TrainingStep(str(s)) for s in self.training))
        n = self.test_images
        counted = isinstance(n, int) and not isinstance(n, bool) and n > 0
        for name in ("top1", "top5"):  # a share of n images, k / n: not a float32 metric's 0.9962999820709229
            value = getattr(self, name)
            if isinstance(value, float) and math.isfinite(value):
                fix(self, name, round(value * n) / n if counted else round(value, 6))

    def __reduce__(self):
        # the read-only kwargs view cannot be pickled itself: rebuild from plain values (pickle, copy, deepcopy)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["model_kwargs"] = dict(self.model_kwargs)
        return _rebuild, (type(self), values)

    @property
    def name(self) -> str:
        """``<hub entry or model>.<tag>``, as timm names its pretrained weights."""
        base = self.hub_entry or self.model
        return f"{base}.{self.tag}" if self.tag else base

    def derived(self, **changes) -> "PretrainedCfg":
        """The metadata of a model made from these weights that computes otherwise (a new classifier, power-of-two
        scales): its inputs and training history stay; the published file's identity (tag, hub entry, file, url,
        size, sha256) and the accuracy measured on it go, so neither the model nor an export of it claims them."""
        return replace(self, tag=None, hub_entry=None, file=None, url=None, file_size=None, sha256=None, top1=None,
                       top5=None, test_images=None, **changes)

    @property
    def command(self) -> Optional[str]:
        """The last training command: the one that made these weights."""
        return self.training[-1].command if self.training else None

    def transforms(self) -> nn.Module:
        """The preprocessing these weights expect, as torchvision's ``weights.transforms()``: a PIL image or an
        image tensor in, the normalized input of ``input_size`` out (:class:`bitnetcnn.preprocess.Preprocess`)."""
        missing = [name for name in ("input_size", "mean", "std") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{self.name} does not record its {', '.join(missing)}, so its preprocessing is unknown: "
                             "normalize its inputs as its data set's were in training")
        from bitnetcnn.preprocess import Preprocess

        return Preprocess(self.input_size, self.mean, self.std)

    def to_dict(self) -> dict:
        """JSON-able: lists for tuples, a plain dict for the kwargs (what the checkpoint header stores)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["model_kwargs"] = dict(self.model_kwargs)
        out["training"] = [asdict(s) for s in self.training]
        for name in ("input_size", "mean", "std", "class_names"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "PretrainedCfg":
        """The object a header's ``pretrained_cfg`` section describes; ``ValueError`` says what is malformed.
        Fields this version does not know (written by a newer one) are left out."""
        if not isinstance(data, dict):
            raise ValueError("bad pretrained_cfg: not an object")
        data = {k: v for k, v in data.items() if k in _VALID}
        if not isinstance(data.get("model"), str):
            raise ValueError("bad pretrained_cfg: model must be a registry name")
        for name, value in data.items():
            check, what = _VALID[name]
            if value is not None and not check(value):
                raise ValueError(f"bad pretrained_cfg: {name} must be {what}, not {value!r:.80}")
        return cls(**data)


def _rebuild(cls, values: dict) -> "PretrainedCfg":
    return cls(**values)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_step(s: Any) -> bool:
    return (isinstance(s, dict) and set(s) <= {"command", "wall_time_s", "hardware"}
            and isinstance(s.get("command"), str)
            and (s.get("wall_time_s") is None or _is_number(s["wall_time_s"]))
            and (s.get("hardware") is None or isinstance(s["hardware"], str)))


_TEXT = (lambda v: isinstance(v, str), "a string")
_COUNT = (lambda v: _is_int(v) and v >= 0, "a count")
_FRACTION = (lambda v: _is_number(v) and 0 <= v <= 1, "a fraction in [0, 1]")
# field -> (check of a value that is not None, what it must be)
_VALID = {
    "model": _TEXT,
    "model_kwargs": (lambda v: isinstance(v, dict), "an object"),
    "tag": _TEXT, "hub_entry": _TEXT, "dataset": _TEXT, "file": _TEXT, "url": _TEXT, "licence": _TEXT,
    "sha256": (lambda v: isinstance(v, str) and len(v) == 64, "64 hex digits"),
    "input_size": (lambda v: isinstance(v, list) and len(v) == 3 and all(_is_int(x) and x > 0 for x in v),
                   "[C, H, W]"),
    "mean": (lambda v: isinstance(v, list) and len(v) > 0 and all(_is_number(x) for x in v), "a list of numbers"),
    "std": (lambda v: isinstance(v, list) and len(v) > 0 and all(_is_number(x) and x > 0 for x in v),
            "a list of positive numbers"),
    "num_classes": _COUNT, "test_images": _COUNT, "file_size": _COUNT,
    "class_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "top1": _FRACTION, "top5": _FRACTION,
    "training": (lambda v: isinstance(v, list) and all(_is_step(s) for s in v),
                 "a list of {command, wall_time_s, hardware}"),
}


def _lineage(meta: dict) -> list:
    """The commands of a multi-stage recipe, oldest first: the ``init`` chain that ``--init`` records, then ours."""
    steps, init, seen = [], meta.get("init"), 0
    while isinstance(init, dict) and seen < 64:
        if isinstance(init.get("command"), str):
            steps.insert(0, {"command": init["command"]})
        init, seen = init.get("init"), seen + 1
    return steps


def from_header(header: dict) -> PretrainedCfg:
    """The ``pretrained_cfg`` of a checkpoint header: its own section, else derived from the older fields; a
    built-in data set's class names where the file names the data set but not its classes.

    ``save_checkpoint`` calls this on the header it has just built (so the section holds what the file knew when
    written); metadata keys ``tag``, ``hub_entry``, ``licence``, ``test_images`` and ``training`` (a list of
    ``{command, wall_time_s, hardware}``, oldest first) fill the fields the other header fields cannot.
    """
    arch = header["architecture"]
    if "pretrained_cfg" in header:
        cfg = PretrainedCfg.from_dict(header["pretrained_cfg"])
        if cfg.model != arch["name"]:
            raise ValueError(f"bad pretrained_cfg: model {cfg.model!r} is not the architecture {arch['name']!r}")
        args = {k: v for k, v in arch["args"].items() if k != "name"}
        if dict(cfg.model_kwargs) != args or cfg.num_classes not in (None, header.get("num_classes")):
            differ = sorted(k for k in set(args) | set(cfg.model_kwargs) if args.get(k) != cfg.model_kwargs.get(k))
            raise ValueError(f"bad pretrained_cfg: its model_kwargs or num_classes are not the architecture's "
                             f"({', '.join(differ) or 'num_classes'} differ)")
        classes = cfg.num_classes if cfg.num_classes is not None else header.get("num_classes")
        if not _names_every_class(cfg.class_names, classes):  # save_checkpoint never writes such names
            raise ValueError(f"bad pretrained_cfg: {len(cfg.class_names)} class names for a model of {classes} classes")
        return _with_known_class_names(cfg)
    metrics = header.get("metrics") if isinstance(header.get("metrics"), dict) else {}
    meta = header.get("metadata") if isinstance(header.get("metadata"), dict) else {}
    inputs = header.get("input") if isinstance(header.get("input"), dict) else {}
    top1, top5 = metrics.get("accuracy"), None
    for key in ("ternary_eval", "float_eval"):  # top-5 of the evaluation whose top-1 is the recorded accuracy
        ev = metrics.get(key)
        if isinstance(ev, dict) and top1 is not None and ev.get("top1") == top1:
            top5 = ev.get("top5")
            break
    training = meta.get("training")
    if training is None:
        training = _lineage(meta) + ([{"command": metrics["command"]}] if isinstance(metrics.get("command"), str)
                                     else [])
    data = {
        "model": arch["name"],
        "model_kwargs": {k: v for k, v in arch["args"].items() if k != "name"},
        "tag": meta.get("tag"),
        "hub_entry": meta.get("hub_entry"),
        "dataset": metrics.get("dataset"),
        "input_size": inputs.get("size"),
        "mean": inputs.get("mean"),
        "std": inputs.get("std"),
        "num_classes": header.get("num_classes"),
        "class_names": header.get("class_names"),
        "top1": top1,
        "top5": top5,
        "test_images": meta.get("test_images"),
        "training": training,
        "licence": meta.get("licence"),
    }
    if isinstance(data["class_names"], list) and not _names_every_class(data["class_names"], data["num_classes"]):
        data["class_names"] = None  # names that do not fit the classes name none of them
    # Older files and free-form metadata may hold anything there: keep what fits, leave the rest unknown.
    return _with_known_class_names(PretrainedCfg.from_dict({k: v for k, v in data.items()
                                                            if v is None or _VALID[k][0](v)}))


def _names_every_class(names, classes) -> bool:
    """Whether ``names`` (if any) name each of ``classes`` (if known): ``predict`` indexes them by the model's output,
    and names that do not fit failed on the first image. (Inputs that do not fit the model are left to ``eval``, which
    says how to repair files written before they were checked.)"""
    return names is None or classes is None or len(names) == classes


def _with_known_class_names(cfg: PretrainedCfg) -> PretrainedCfg:
    """``cfg`` with its data set's class names where it records none (files saved before they were kept): without
    them a model trained on MNIST would score on Fashion-MNIST (the same size, channels and number of classes)
    unchallenged, and ``predict`` could only number its classes."""
    names = class_names.BY_DATASET.get(cfg.dataset) if cfg.class_names is None else None
    if names is None or cfg.num_classes not in (None, len(names)):
        return cfg
    return replace(cfg, class_names=names)


def model_pretrained_cfg(model: nn.Module) -> Optional[PretrainedCfg]:
    """``model.pretrained_cfg`` when the model has one (loaded from a checkpoint or through torch.hub)."""
    cfg = getattr(model, "pretrained_cfg", None)
    return cfg if isinstance(cfg, PretrainedCfg) else None


def input_normalization(model: nn.Module) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """``(mean, std)`` the model's inputs are normalized with: its weights' own, else the registry's default where
    it has a value for each of the model's channels (a ``bitnet_cnn`` built for 3-channel images has none: MNIST's
    one value would normalize its images wrongly)."""
    cfg = model_pretrained_cfg(model)
    if cfg is not None and cfg.mean is not None and cfg.std is not None:
        return cfg.mean, cfg.std
    config = getattr(model, "model_config", None)
    if config is None:
        return None
    channels = getattr(model, "model_args", {}).get("in_chans", len(config.mean))
    return (tuple(config.mean), tuple(config.std)) if len(config.mean) == channels else None


def input_dtype_of(model: nn.Module) -> torch.dtype:
    """The floating dtype ``model`` computes in (its first floating parameter or buffer's; float32 if none): a bf16
    checkpoint loads as bf16, and its normalized inputs must be cast to match."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def input_device_of(model: nn.Module) -> torch.device:
    """The device ``model``'s inputs go to: its first parameter's or buffer's (the CPU if it has none)."""
    return next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device


def input_size_of(model: nn.Module, input_size: Optional[tuple] = None) -> tuple[int, int, int]:
    """``(C, H, W)``: the given size, else the weights' own (``model.pretrained_cfg``), else the registry's default
    for the model's architecture. A given size other than the weights' own warns: the model was measured at its
    own, and a graph built at another says the other in its metadata."""
    weights = model_pretrained_cfg(model)
    if input_size is not None:
        size = tuple(int(v) for v in input_size)
        if len(size) != 3:
            raise ValueError(f"input_size must be (C, H, W), got {input_size!r}")
        if weights is not None and weights.input_size is not None and size != tuple(weights.input_size):
            warnings.warn(f"input_size {list(size)} is not the {list(weights.input_size)} these weights were trained "
                          "and measured at: their accuracy does not carry over; leave input_size out to use theirs",
                          UserWarning, stacklevel=3)
        return size
    if weights is not None and weights.input_size is not None:
        return tuple(weights.input_size)
    cfg = getattr(model, "model_config", None)
    if cfg is not None:
        return cfg.input_size_for(getattr(model, "model_args", None) or {})
    raise ValueError(
        f"{type(model).__name__} does not say its input size (no model_config): pass input_size=(C, H, W)"
    )
