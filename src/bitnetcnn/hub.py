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
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

from torch import nn

from bitnetcnn.checkpoint import load_checkpoint
from bitnetcnn.data.paths import cache_root
from bitnetcnn.models import create_model, list_models
from bitnetcnn.nn import BitLinear, TernaryConv2d, TernaryLinear, convert_to_bit, convert_to_ternary

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


class PretrainedWeightsUnavailable(RuntimeError):
    """No pretrained weights for an entry: none published yet, or a download that failed and no cached copy."""


@dataclass(frozen=True)
class Pretrained:
    """Where an entry's weights are: ``file`` inside ``bitnetcnn/pretrained/``, else ``url`` (+ ``sha256``)."""

    file: Optional[str] = None
    url: Optional[str] = None
    sha256: Optional[str] = None


@dataclass(frozen=True)
class HubEntry:
    name: str
    model: str  # registry name
    kwargs: Dict[str, object] = field(default_factory=dict)
    pretrained: Pretrained = Pretrained()
    description: str = ""


# The seed's entry names, then one per other registered model (below). Publishing weights = adding a Pretrained.
SEED_ENTRIES = (
    HubEntry("bitnet_mnist", "bitnet_cnn", {}, Pretrained(file="bitnet_mnist.bnc"),
             "BitNetCNN for MNIST (1x28x28, 10 classes)"),
    HubEntry("bitnet_resnet18", "bit_resnet18", {"act": "silu"}, Pretrained(),
             "ResNet-18 for CIFAR-100 with SiLU, the seed's configuration"),
    HubEntry("bitnet_resnet50", "bit_resnet50", {"act": "silu"}, Pretrained(), "ResNet-50 with SiLU"),
    HubEntry("bitnet_mobilenetv2", "bit_mobilenetv2", {"width_mult": 1.4, "act": "silu", "downsample_at": "expand"},
             Pretrained(),
             "MobileNetV2 x1.4 with SiLU, the seed's configuration"),
    HubEntry("bitnet_convnextv2", "bit_convnextv2", {}, Pretrained(), "ConvNeXt-V2"),
)


def entries() -> Dict[str, HubEntry]:
    """Entry name -> :class:`HubEntry`: the seed's names, then every registered model not covered by one."""
    out = {e.name: e for e in SEED_ENTRIES}
    covered = {e.model for e in SEED_ENTRIES}
    for name in list_models():
        if name not in covered and name not in out:
            out[name] = HubEntry(name, name)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_cache_dir() -> Path:
    """``$BITNETCNN_CACHE/hub`` (default ``~/.cache/bitnetcnn/hub``): where downloaded weights are kept."""
    return cache_root() / "hub"


def pretrained_path(entry: str, progress: bool = True) -> Path:
    """The local file holding ``entry``'s pretrained weights, downloading and verifying it if need be."""
    spec = entries()[entry].pretrained
    if spec.file:
        path = PRETRAINED_DIR / spec.file
        if path.is_file():
            if spec.sha256 and _sha256(path) != spec.sha256:
                raise PretrainedWeightsUnavailable(f"{path}: sha256 does not match the published one; reinstall bitnetcnn")
            return path
    if not spec.url:
        where = f" (expected at {PRETRAINED_DIR / spec.file})" if spec.file else ""
        raise PretrainedWeightsUnavailable(
            f"no pretrained weights yet for {entry!r}{where}. Train a model (see docs/training.md), save it with "
            "bitnetcnn.save_checkpoint, and load it with checkpoint_path=..., or use pretrained=False"
        )
    target = hub_cache_dir() / (spec.file or Path(spec.url).name)
    if target.is_file() and (not spec.sha256 or _sha256(target) == spec.sha256):
        return target
    _download(spec.url, target, spec.sha256, progress, entry)
    return target


def _download(url: str, target: Path, sha256: Optional[str], progress: bool, entry: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
            shutil.copyfileobj(response, out)
        if sha256 and _sha256(Path(tmp)) != sha256:
            raise PretrainedWeightsUnavailable(f"{url}: the download's sha256 does not match {sha256}; not kept")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PretrainedWeightsUnavailable(
            f"cannot download the pretrained weights of {entry!r} from {url} ({e}) and there is no cached copy at "
            f"{target}. Download the file by hand to that path (or set BITNETCNN_CACHE), or pass checkpoint_path="
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _last_linear(model: nn.Module) -> Optional[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, TernaryLinear))]
    return names[-1] if names else None


def _new_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the last linear layer by a fresh one with ``num_classes`` outputs (to fine-tune on new classes)."""
    name = _last_linear(model)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier to resize")
    old = model.get_submodule(name)
    if isinstance(old, BitLinear):
        new = BitLinear(old.in_features, num_classes, old.bias is not None, **{
            k: v for k, v in old.quant_kwargs().items()})
    else:
        new = nn.Linear(old.in_features, num_classes, old.bias is not None)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new.to(next(old.parameters()).device))
    if isinstance(getattr(model, "model_args", None), dict):
        model.model_args = {**model.model_args, "num_classes": num_classes}
    return model


def load(entry: str, pretrained: bool = False, checkpoint_path=None, ternary: bool = True,
         num_classes: Optional[int] = None, progress: bool = True, **kwargs) -> nn.Module:
    """What every entry point does; see the module docstring."""
    table = entries()
    if entry not in table:
        raise ValueError(f"unknown hub entry {entry!r}; entries: {', '.join(table)}")
    spec = table[entry]
    if not pretrained and checkpoint_path is None:
        args = {**spec.kwargs, **kwargs}
        model = create_model(spec.model, num_classes=num_classes, **args)
        return convert_to_ternary(model.eval()) if ternary and args.get("quant", "ternary") == "ternary" else model
    path = checkpoint_path if checkpoint_path is not None else pretrained_path(entry, progress)
    model = load_checkpoint(path, model_name=spec.model, **{**spec.kwargs, **kwargs})
    built = getattr(model, "model_args", {}).get("name")
    if built != spec.model:
        raise ValueError(f"{path} holds a {built} model, not the {spec.model} of hub entry {entry!r}")
    is_ternary = any(isinstance(m, (TernaryConv2d, TernaryLinear)) for m in model.modules())
    header = getattr(model, "checkpoint_header", None)
    if is_ternary and not ternary:
        model = convert_to_bit(model)
    elif not is_ternary and ternary:
        if getattr(model, "model_args", {}).get("quant") == "fp":
            raise ValueError(f"{path} holds a full-precision model; load it with ternary=False")
        model = convert_to_ternary(model)
    if num_classes is not None and num_classes != model.model_args.get("num_classes"):
        if ternary:
            raise ValueError(f"num_classes={num_classes} differs from the checkpoint's "
                             f"{model.model_args.get('num_classes')}: a new classifier must be trained, so load "
                             "with ternary=False, fine-tune, then convert")
        model = _new_classifier(model, num_classes)
    if header is not None:
        model.checkpoint_header = header
    return model.eval()


def _entrypoint(entry: HubEntry) -> Callable[..., nn.Module]:
    def fn(pretrained: bool = False, checkpoint_path=None, ternary: bool = True, num_classes: Optional[int] = None,
           **kwargs) -> nn.Module:
        return load(entry.name, pretrained, checkpoint_path, ternary, num_classes, **kwargs)

    weights = "pretrained weights available" if entry.pretrained.file or entry.pretrained.url else "no weights yet"
    args = ", ".join(f"{k}={v!r}" for k, v in entry.kwargs.items())
    fn.__name__ = fn.__qualname__ = entry.name
    fn.__doc__ = (
        f"{entry.description or entry.model}: ``create_model({entry.model!r}{', ' + args if args else ''})`` "
        f"({weights}).\n\n    pretrained=False, checkpoint_path=None, ternary=True (converted; False: trainable "
        "Bit model), num_classes=None; other keyword arguments go to create_model."
    )
    return fn


def entrypoints() -> Dict[str, Callable[..., nn.Module]]:
    """Entry name -> the function torch.hub calls (what ``hubconf.py`` exposes)."""
    return {name: _entrypoint(e) for name, e in entries().items()}
