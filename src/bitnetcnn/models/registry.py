"""The model registry, in the manner of timm: ``@register_model`` builders, ``create_model(name)``, defaults."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn

from bitnetcnn.models.layers import QuantSpec

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


@dataclass(frozen=True)
class ModelConfig:
    """What the data, hub, checkpoint and CLI code need to know about an architecture, declared once."""

    name: str
    builder: Callable[..., nn.Module] = field(repr=False)
    input_size: tuple[int, int, int] = (3, 32, 32)
    input_sizes: tuple[int, ...] = (32, 64)  # image sides it is designed for
    num_classes: int = 100
    mean: tuple[float, ...] = CIFAR_MEAN
    std: tuple[float, ...] = CIFAR_STD
    description: str = ""


_REGISTRY: dict[str, ModelConfig] = {}


def register_model(fn: Optional[Callable] = None, **config) -> Callable:
    """Register a builder under its function name; keyword arguments fill its :class:`ModelConfig`."""

    def wrap(builder: Callable) -> Callable:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelConfig(name=name, builder=builder, description=doc[0] if doc else "", **config)
        return builder

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names, sorted, filtered by an ``fnmatch`` pattern."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_model_config(name: str) -> ModelConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}") from None


def create_model(
    name: str,
    num_classes: Optional[int] = None,
    in_chans: Optional[int] = None,
    *,
    quant: str = "ternary",
    scale_op: str = "median",
    pow2: bool = False,
    act_bits: Optional[int] = None,
    fp_ends: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a registered model, ternary by default or full precision with ``quant='fp'``.

    The model remembers how it was built in ``model.model_args`` (a JSON-able dict): a checkpoint stores it, and
    ``create_model(**model.model_args)`` builds the same architecture again.
    """
    cfg = get_model_config(name)
    num_classes = cfg.num_classes if num_classes is None else int(num_classes)
    in_chans = cfg.input_size[0] if in_chans is None else int(in_chans)
    spec = QuantSpec(quant=quant, scale_op=scale_op, pow2=pow2, act_bits=act_bits, fp_ends=fp_ends)
    model = cfg.builder(num_classes=num_classes, in_chans=in_chans, spec=spec, **kwargs)
    model.model_args = dict(name=name, num_classes=num_classes, in_chans=in_chans, **spec.to_dict(), **kwargs)
    model.model_config = cfg
    return model
