"""torch.hub entry points: ``torch.hub.load(repo, 'bitnet_resnet18', pretrained=True)``; ``hubconf.py`` is a shim.

Every entry takes ``pretrained=False, checkpoint_path=None, ternary=True, num_classes=None`` (plus keyword arguments
of ``create_model``):

- ``ternary=True`` gives the converted inference model (TernaryConv2d/TernaryLinear, packed weights);
  ``ternary=False`` the trainable Bit model (``bitnetcnn.convert_to_bit``), initialized from the pretrained weights
  when there are any, to fine-tune.
- ``pretrained=True`` loads the published weights: a file shipped inside the package (``bitnetcnn/pretrained/``)
  when small, else a URL with its sha256, downloaded once into ``$BITNETCNN_CACHE/hub`` (default
  ``~/.cache/bitnetcnn/hub``) and verified like ``torch.hub.load_state_dict_from_url``.
- ``checkpoint_path=`` loads any checkpoint file instead (bitnetcnn's format, the seed's zip, a state_dict).
- Other keyword arguments go to ``create_model`` without weights; with weights they must equal what the file
  holds (a ``ValueError`` says what to do otherwise): loading cannot change a trained model's architecture.

Each published weight is a frozen :class:`~bitnetcnn.checkpoint.pretrained_cfg.PretrainedCfg` (data set, input
size, normalization, accuracy, file, sha256, training commands); the loaded model carries it as
``model.pretrained_cfg``, and :func:`list_pretrained` lists them.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from bitnetcnn.atomic import replacing
from bitnetcnn.checkpoint import CheckpointError, load_checkpoint
from bitnetcnn.checkpoint.load import names_a_file
from bitnetcnn.checkpoint.format import file_sha256
from bitnetcnn.checkpoint.read import native_header
from bitnetcnn.checkpoint.pretrained_cfg import PretrainedCfg, model_pretrained_cfg
from bitnetcnn.settings import cache_root
from bitnetcnn.models import create_model, list_models
from bitnetcnn.models.registry import FINE_TUNABLE_ARGS, require_positive_int, same_model_arg
from bitnetcnn.models.classifier import new_classifier
from bitnetcnn.nn import convert_to_bit, convert_to_ternary, model_form
from bitnetcnn.pretrained import BITNET_MNIST, BITNET_MOBILENETV2_CIFAR100, BITNET_RESNET18_CIFAR100, PRETRAINED_DIR



class PretrainedWeightsUnavailable(RuntimeError):
    """No pretrained weights for an entry: none published yet, or a download that failed and no cached copy."""


@dataclass(frozen=True)
class HubEntry:
    name: str
    model: str  # registry name
    kwargs: Dict[str, object] = field(default_factory=dict)
    pretrained: Optional[PretrainedCfg] = None  # the published weight: file or url, sha256, metadata
    description: str = ""

    def __post_init__(self) -> None:
        if self.pretrained is not None and not self.pretrained.model:  # made by the deprecated Pretrained(...)
            object.__setattr__(self, "pretrained", dataclasses.replace(self.pretrained, model=self.model))


def Pretrained(file: Optional[str] = None, url: Optional[str] = None,  # noqa: N802 - the old class's name
               sha256: Optional[str] = None) -> Optional[PretrainedCfg]:
    """Deprecated (goes in 0.3): a published weight is a :class:`PretrainedCfg` with its metadata. This keeps
    ``HubEntry(..., Pretrained(file=..., sha256=...))`` working: the entry fills in its model."""
    warnings.warn("bitnetcnn.hub.Pretrained is deprecated: describe published weights with "
                  "bitnetcnn.PretrainedCfg(model=..., file=..., sha256=..., top1=..., ...)", DeprecationWarning,
                  stacklevel=2)
    if file is None and url is None:
        return None
    return PretrainedCfg(model="", file=file, url=url, sha256=sha256)


# The seed's entry names, then one per other registered model (below). Publishing weights = adding a PretrainedCfg.
SEED_ENTRIES = (
    HubEntry("bitnet_mnist", "bitnet_cnn", {}, BITNET_MNIST, "BitNetCNN for MNIST (1x28x28, 10 classes)"),
    HubEntry("bitnet_resnet18", "bit_resnet18", {}, BITNET_RESNET18_CIFAR100,
             "ResNet-18 for CIFAR-100 with ReLU (the seed's SiLU loses agreement when deployed in int8)"),
    HubEntry("bitnet_resnet50", "bit_resnet50", {"act": "silu"}, None, "ResNet-50 with SiLU"),
    HubEntry("bitnet_mobilenetv2", "bit_mobilenetv2", {"act_bits": 8}, BITNET_MOBILENETV2_CIFAR100,
             "MobileNetV2 x1.0 with ReLU6 and 8-bit activations at every point its int8 graph requantizes (the "
             "seed's x1.4 with SiLU deploys worse in int8)"),
    HubEntry("bitnet_convnextv2", "bit_convnextv2", {}, None, "ConvNeXt-V2"),
)


def entries() -> Dict[str, HubEntry]:
    """Entry name -> :class:`HubEntry`: the seed's names, then every registered model not covered by one."""
    out = {e.name: e for e in SEED_ENTRIES}
    covered = {e.model for e in SEED_ENTRIES}
    for name in list_models():
        if name not in covered and name not in out:
            out[name] = HubEntry(name, name)
    return out


def list_pretrained() -> List[PretrainedCfg]:
    """The published weights, one :class:`PretrainedCfg` each (what ``pretrained=True`` loads)."""
    return [e.pretrained for e in entries().values() if e.pretrained is not None]


def catalogue(pattern: str = "*") -> str:
    """What ``bitnetcnn models`` prints: the architectures (``create_model`` names) and the hub entries matching the
    ``fnmatch`` pattern, each entry with its published weight's data set, accuracy and size, or none yet: what a user
    can build and what they can load, without reading the code (timm's ``list_models(pretrained=True)``)."""
    from bitnetcnn.models import get_model_config

    archs = list_models(pattern)
    hub = {name: e for name, e in entries().items() if fnmatch.fnmatchcase(name, pattern)}
    if not archs and not hub:
        raise ValueError(f"no architecture or hub entry matches {pattern!r}; there are {', '.join(list_models())} "
                         f"and the hub entries {', '.join(entries())}")
    lines = []
    if archs:
        lines.append("architectures (create_model(NAME); summary, export and bench take them untrained):")
        for name in archs:
            cfg = get_model_config(name)
            sides = ", ".join(map(str, cfg.input_sizes))
            lines.append(f"  {name:<16} {'x'.join(map(str, cfg.input_size)):<8} built for {sides} px, "
                         f"{cfg.num_classes} classes by default. {cfg.description}")
    if hub:
        lines.append("hub entries (torch.hub.load(REPO, NAME, pretrained=True); eval, predict, summary, export and "
                     "bench take the published ones by NAME):")
        for name, e in hub.items():
            w = e.pretrained
            if w is None or w.top1 is None:
                weights = "no published weights yet"
            else:
                size = f", {w.file_size / 2**20:.2f} MiB" if w.file_size else ""
                top5 = f" / {w.top5:.2%} top-5" if w.top5 is not None else ""
                weights = f"{w.dataset}: {w.top1:.2%} top-1{top5} on {w.test_images} test images{size}"
            lines.append(f"  {name:<20} {e.model:<16} {weights}" + (f". {e.description}" if e.description else ""))
    return "\n".join(lines)


def hub_cache_dir() -> Path:
    """``$BITNETCNN_CACHE/hub`` (default ``~/.cache/bitnetcnn/hub``): where downloaded weights are kept."""
    return cache_root() / "hub"


def cached_weights_path(url: str, file: Optional[str], sha256: Optional[str]) -> Path:
    """Where a download is kept: ``hub/FILE`` when its sha256 is known (a copy that fails it is downloaded again);
    without one, in a folder named from the URL, so two weights of the same file name from different addresses
    (a republished ``.../v2/model.bnc``) never pass for each other."""
    name = file or Path(urllib.parse.urlparse(url).path).name
    if sha256:
        return hub_cache_dir() / name
    return hub_cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def pretrained_path(entry: str, progress: bool = True) -> Path:
    """The local file holding ``entry``'s pretrained weights, downloading and verifying it if need be."""
    spec = entries()[entry].pretrained
    if spec is not None and spec.file:
        path = PRETRAINED_DIR / spec.file
        if path.is_file():
            if spec.sha256 and file_sha256(path) != spec.sha256:
                raise PretrainedWeightsUnavailable(f"{path}: sha256 does not match the published one; reinstall bitnetcnn")
            return path
    if spec is None:
        raise PretrainedWeightsUnavailable(
            f"no pretrained weights yet for {entry!r}. Train a model (see docs/training.md), save it with "
            "bitnetcnn.save_checkpoint, and load it with checkpoint_path=..., or use pretrained=False"
        )
    if not spec.url:  # declared, shipped inside the package, and not there
        raise PretrainedWeightsUnavailable(
            f"the pretrained weights of {entry!r} ({spec.name}) should be at {PRETRAINED_DIR / spec.file}, which "
            "is missing: this installation of bitnetcnn is incomplete; reinstall it")
    target = cached_weights_path(spec.url, spec.file, spec.sha256)
    cached = target.is_file()
    if cached and (not spec.sha256 or file_sha256(target) == spec.sha256):
        return target
    _download(spec.url, target, spec.sha256, progress, entry, stale=cached)  # a cached copy here failed its hash
    return target


def _download(url: str, target: Path, sha256: Optional[str], progress: bool, entry: str, stale: bool = False) -> None:
    if progress:  # as torch.hub says it
        print(f'Downloading: "{url}" to {target}', file=sys.stderr)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # a cache path that is a file, or not writable: said below
        with replacing(target) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
                shutil.copyfileobj(response, out)
                length = response.headers.get("Content-Length")
                if length is not None and out.tell() != int(length):  # a server that closed early raises nothing
                    raise ValueError(f"the download was cut off at {out.tell():,} of {int(length):,} bytes; not kept")
            if sha256 and file_sha256(tmp) != sha256:
                raise ValueError(f"the download's sha256 does not match {sha256}; not kept")
    except (urllib.error.URLError, OSError, ValueError) as e:
        cached = (f"the cached copy at {target} does not match the published sha256" if stale else
                  f"there is no cached copy at {target}")
        raise PretrainedWeightsUnavailable(
            f"cannot download the pretrained weights of {entry!r} from {url} ({e}) and {cached}. Download the file "
            "by hand to that path (or set BITNETCNN_CACHE), or pass checkpoint_path="
        ) from None


# The flags of bitnetcnn train that set the fine-tunable arguments (FINE_TUNABLE_ARGS), for the advice
_TRAIN_FLAGS = {"act_bits": "--act-bits", "pow2": "--pow2", "scale_op": "--scale-op", "fp_ends": "--fp-ends",
                "quant": "--quant"}


def _changes_the_model(held: dict, key: str, value) -> bool:
    """Whether ``create_model`` keyword ``key`` (not recorded in the file) builds another model than the saved one:
    the builders take their defaults from the architecture's class, so build both (on the meta device: no weights)
    and compare their module trees."""
    try:
        with torch.device("meta"):
            saved = create_model(**held)
            asked = create_model(**{**held, key: value})
    except Exception:  # noqa: BLE001  (an argument the architecture does not take)
        return True
    shapes = lambda m: [(k, tuple(v.shape)) for k, v in m.state_dict().items()]  # noqa: E731
    return repr(saved) != repr(asked) or shapes(saved) != shapes(asked)


def _refuse_what_the_file_cannot_honour(path, held: dict, kwargs: dict) -> None:
    """A saved model has one architecture and quantization: keyword arguments that differ from it are refused, not
    silently ignored (``act_bits=8`` on a float-activation checkpoint would otherwise give a model without any
    activation quantizer)."""
    name = held.get("name")
    try:  # an argument no model of this architecture takes, or a value none accepts: create_model's own words
        with torch.device("meta"):
            create_model(**{**held, **kwargs})
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot load {path} with {', '.join(f'{k}={v!r}' for k, v in kwargs.items())}: {err}") from None
    for key, value in kwargs.items():
        if same_model_arg(value, held[key]) if key in held else not _changes_the_model(held, key, value):
            continue
        has = f"has {key}={held[key]!r}" if key in held else f"was built without {key}={value!r}"
        option = f"--model-kwargs '{json.dumps({key: value}, default=str)}'"
        flag = _TRAIN_FLAGS.get(key)
        if flag is not None:
            option = flag if value is True else f"without {flag}" if value in (False, None) else f"{flag} {value}"
        if key in FINE_TUNABLE_ARGS:
            todo = (f"Load it without {key}=, or load with ternary=False and fine-tune it with the new setting "
                    f"(bitnetcnn train --model {name} --init {path} {option} ...)")
        else:
            todo = (f"Load it without {key}=; a model with {key}={value!r} is another architecture, which these "
                    f"weights do not fit: train it from scratch (pretrained=False, or bitnetcnn train --model {name} "
                    f"{option} ...)")
        raise ValueError(f"{key}={value!r} cannot be honoured: the saved {name} model in {path} {has}, and loading "
                         f"weights does not change a trained model's architecture or quantization. {todo}")


def _load_other_format(path, spec: HubEntry, kwargs: dict) -> nn.Module:
    """A seed zip or a state_dict, built with the entry's arguments (those of the weights published for it) and the
    caller's; where the entry's own do not fit the file (the seed's MobileNetV2 has float activations, the entry's
    published weights 8-bit ones), with the caller's alone, as the file's format infers the rest."""
    args = {**spec.kwargs, **kwargs}
    try:
        return load_checkpoint(path, model_name=spec.model, **args)
    except CheckpointError as error:
        first = error
    if not set(spec.kwargs) <= set(kwargs):  # the entry added arguments of its own: try the caller's alone
        try:
            return load_checkpoint(path, model_name=spec.model, **kwargs)
        except CheckpointError:
            pass
    # the file against the entry's arguments (what the caller asked for), and what to do: a state dict does not
    # say which arguments built the model that saved it
    tried = ", ".join(f"{k}={v!r}" for k, v in args.items()) or "no arguments"
    added = ", ".join(k for k in spec.kwargs if k not in kwargs)
    defaults = f" ({added}: the entry's default), and without the entry's defaults" if added else ""
    raise CheckpointError(first.path, f"{first.reason} [built as {spec.model} with {tried}{defaults}: a state dict "
                                      "does not record its architecture; pass the create_model keywords of the model "
                                      "that saved it]") from None


def load(entry: str, pretrained: bool = False, checkpoint_path=None, ternary: bool = True,
         num_classes: Optional[int] = None, progress: bool = True, **kwargs) -> nn.Module:
    """What every entry point does; see the module docstring."""
    table = entries()
    if entry not in table:
        raise ValueError(f"unknown hub entry {entry!r}; entries: {', '.join(table)}")
    spec = table[entry]
    pretrained = _pretrained_flag(entry, spec, pretrained)
    if not (isinstance(ternary, (bool, int)) and ternary in (0, 1)):  # "False" is truthy: it gave the converted model
        raise ValueError(f"ternary={ternary!r}: {entry!r} takes ternary=True (the converted model) or False (the "
                         "trainable Bit model)")
    if num_classes is not None:  # before any weights load: True, "5" or -3 failed inside torch's layer builders
        require_positive_int("num_classes", num_classes)
    if not pretrained and checkpoint_path is None:
        args = {**spec.kwargs, **kwargs}
        model = create_model(spec.model, num_classes=num_classes, **args)
        return convert_to_ternary(model.eval()) if ternary and args.get("quant", "ternary") == "ternary" else model
    path = checkpoint_path if checkpoint_path is not None else pretrained_path(entry, progress)
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):  # not "a state dict ... its architecture"
        load_checkpoint(path)  # names the file and why it cannot be read
    if hasattr(path, "read"):  # an open file, read once: its format is told apart first, and a retry read nothing
        path = path.read()
    named = path if isinstance(path, (str, os.PathLike)) else "the checkpoint given"  # not megabytes of bytes
    header = native_header(path)  # None: a seed zip or a state dict
    if header is not None:
        # The file says what it is: the entry's default kwargs do not apply, the caller's must match it.
        built = header["architecture"]["name"]
        if built != spec.model:
            raise ValueError(f"{named} holds a {built} model, not the {spec.model} of hub entry {entry!r}")
        _refuse_what_the_file_cannot_honour(named, header["architecture"]["args"], kwargs)
        model = load_checkpoint(path)
    else:  # a seed zip or a state_dict: the kwargs say how to build the model the tensors go into
        model = _load_other_format(path, spec, kwargs)
        built = getattr(model, "model_args", {}).get("name")
        if built != spec.model:
            raise ValueError(f"{named} holds a {built} model, not the {spec.model} of hub entry {entry!r}")
        _refuse_what_the_file_cannot_honour(named, model.model_args, kwargs)
    is_ternary = model_form(model) == "ternary"
    header = getattr(model, "checkpoint_header", None)
    # The published weight's registry object is the complete one (file size, sha256, every training command);
    # a checkpoint_path file carries what its header says.
    cfg = spec.pretrained if checkpoint_path is None else model_pretrained_cfg(model)
    if is_ternary and not ternary:
        model = convert_to_bit(model)
    elif not is_ternary and ternary:
        if getattr(model, "model_args", {}).get("quant") == "fp":
            raise ValueError(f"{named} holds a full-precision model; load it with ternary=False")
        model = convert_to_ternary(model)
    if num_classes is not None and num_classes != model.model_args.get("num_classes"):
        if ternary:
            raise ValueError(f"num_classes={num_classes} differs from the checkpoint's "
                             f"{model.model_args.get('num_classes')}: a new classifier must be trained, so load "
                             "with ternary=False, fine-tune, then convert")
        model = new_classifier(model, num_classes)
        header = None  # the file's header describes its own classifier, no longer this model's
        vars(model).pop("checkpoint_header", None)
        if cfg is not None:  # same inputs, new untrained classes: the file's figures and identity no longer apply
            cfg = cfg.derived(dataset=None, num_classes=num_classes, class_names=None,
                              model_kwargs={**cfg.model_kwargs, "num_classes": num_classes})
    if header is not None:
        model.checkpoint_header = header
    if cfg is not None:
        model.pretrained_cfg = cfg
    return model.eval()


def _pretrained_flag(entry: str, spec: HubEntry, pretrained) -> bool:
    """``pretrained`` as a bool: ``True``/``False`` (or 1/0), or the tag of the entry's published weight (``"mnist"``,
    ``"cifar100"``); a file path or another tag is refused, not taken for ``True`` (which would load the published
    weight in its place)."""
    if isinstance(pretrained, (bool, int)) and pretrained in (0, 1):
        return bool(pretrained)
    published = spec.pretrained
    if isinstance(pretrained, str) and published is not None and pretrained in (published.tag, published.name):
        return True
    tags = f"its published weight's tag is {published.tag!r}" if published is not None else "it has no published weight"
    raise ValueError(f"pretrained={pretrained!r}: {entry!r} takes pretrained=True or False ({tags}); load a file of "
                     "your own with checkpoint_path=")


def _entrypoint(entry: HubEntry) -> Callable[..., nn.Module]:
    def fn(pretrained: bool = False, checkpoint_path=None, ternary: bool = True, num_classes: Optional[int] = None,
           **kwargs) -> nn.Module:
        return load(entry.name, pretrained, checkpoint_path, ternary, num_classes, **kwargs)

    weights = f"pretrained weights {entry.pretrained.name}" if entry.pretrained is not None else "no weights yet"
    args = ", ".join(f"{k}={v!r}" for k, v in entry.kwargs.items())
    fn.__name__ = fn.__qualname__ = entry.name
    fn.__doc__ = (
        f"{entry.description or entry.model}: ``create_model({entry.model!r}{', ' + args if args else ''})`` "
        f"({weights}).\n\n    pretrained=False, checkpoint_path=None, ternary=True (converted; False: trainable "
        "Bit model), num_classes=None; other keyword arguments go to create_model (with weights: they must match "
        "the file)."
    )
    return fn


def entrypoints() -> Dict[str, Callable[..., nn.Module]]:
    """Entry name -> the function torch.hub calls (what ``hubconf.py`` exposes)."""
    return {name: _entrypoint(e) for name, e in entries().items()}


# A model on the command line: a file, a published weight by its hub entry name, or (for some commands) a registry
# name; each command turns its argument into one of them here, refusing anything else with the names it could be.


def model_argument(text: str, registry_names: bool, takes: Optional[str] = None) -> str:
    """``text`` as the command reads it: a file as it is; a published weight's hub entry name as the package's file
    (``bitnetcnn eval bitnet_resnet18`` reproduces its published figures); a registry name as it is, where the
    command takes one. Anything else is refused with the names it could have been, or, for a command that takes
    files only, with what it ``takes``."""
    if not text.strip():
        raise ValueError("an empty model argument: give a checkpoint file or a published weight's name")
    if text.startswith("~"):  # as the shell does not in --flag=~/x, nor Python's open
        text = os.path.expanduser(text)
    found = published_file(text)
    registry = list_models() if registry_names else []
    if text in registry and not names_a_file(text):  # a folder of that name (a run folder) is no model file
        return text
    if found != text or Path(text).exists():  # a folder: the command's own error says what it needs
        return found
    if takes is not None:  # `convert`: a published name is its file (which convert refuses as converted already)
        raise ValueError(f"{text!r} is not a file: give {takes}")
    published = [w.hub_entry for w in list_pretrained()]
    if text in entries():  # a hub entry whose weights are not trained yet: "did you mean" would miss the point
        raise ValueError(f"{text} has no published weights yet (bitnetcnn models lists which do): published weights: "
                         f"{', '.join(published)}; or train one with bitnetcnn train --model "
                         f"{entries()[text].model} and give its best_ternary.bnc")
    close = difflib.get_close_matches(text, published + registry, n=1, cutoff=0.4)
    raise ValueError(f"{text!r} is not a file{', a registry name' if registry else ''} or a published weight"
                     f"{f' (did you mean {close[0]}?)' if close else ''}: published weights: {', '.join(published)}"
                     + (f"; registry names: {', '.join(registry)}" if registry else ""))


def weight_argument(text: str) -> str:
    """``--init``/``--teacher``: a published weight's name as its file, and a name without a suffix that is neither
    (a misspelt hub name) refused with the names; a file path as it is (the run's checks name a missing one)."""
    if not text.strip():
        return text  # the settings refuse it, naming the flag
    text = os.path.expanduser(text)  # as the shell does not in --init=~/x
    return published_file(text) if Path(text).suffix else model_argument(text, registry_names=False)


def published_file(text: str) -> str:
    """A published weight's hub entry name as the package's file; anything else as it is (train's own checks name
    a missing file)."""
    if Path(text).is_file() or text not in [w.hub_entry for w in list_pretrained()]:
        return text
    return str(pretrained_path(text))
