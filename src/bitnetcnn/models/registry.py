"""The model registry, in the manner of timm: ``@register_model`` builders, ``create_model(name)``, defaults."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import json
import typing
from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn

from bitnetcnn import normalization
from bitnetcnn.models.quant_spec import QUANT_ARGS, QuantSpec

CIFAR_MEAN, CIFAR_STD = normalization.CIFAR100  # an architecture's default input, until a checkpoint says otherwise
MNIST_MEAN, MNIST_STD = normalization.MNIST
# The largest side of the small inputs (28, 32, 64 px: MNIST, CIFAR, Tiny ImageNet) the architectures are built for:
# up to it a stem keeps more resolution than ImageNet's (stride 1, or 2x2 patches), each in its own way.
SMALL_INPUT_MAX = 64


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

    def input_size_for(self, model_args: dict) -> tuple[int, int, int]:
        """``(C, H, W)`` that a model built with ``model_args`` takes: its ``in_chans`` and ``img_size`` where given,
        else this architecture's default."""
        side = int(model_args.get("img_size", self.input_size[1]))
        return int(model_args.get("in_chans", self.input_size[0])), side, side


_REGISTRY: dict[str, ModelConfig] = {}


def register_model(fn: Optional[Callable] = None, **config) -> Callable:
    """Register a builder under its function name; keyword arguments fill its :class:`ModelConfig`.

    A builder takes ``num_classes``, ``in_chans`` and ``spec`` (a :class:`QuantSpec`: build each convolution and
    linear layer with ``spec.conv(...)`` / ``spec.linear(...)``, so one builder gives the ternary model and its
    full-precision twin), and its own keywords."""

    def wrap(builder: Callable) -> Callable:
        name = builder.__name__
        known = _REGISTRY.get(name)
        if known is not None and _origin(known.builder) != _origin(builder):  # the same one again: a re-run cell
            raise ValueError(f"model {name!r} is registered twice, by {_origin(known.builder)} and by "
                             f"{_origin(builder)}: give the new builder another name")
        params = inspect.signature(builder).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        lacking = [a for a in ("num_classes", "in_chans", "spec") if a not in params and not takes_any]
        if lacking:
            raise TypeError(f"register_model: the builder {name} must take the keyword argument(s) "
                            f"{', '.join(lacking)} (spec: a QuantSpec whose .conv() and .linear() build its layers)")
        summary = inspect.cleandoc(builder.__doc__ or "").split("\n\n")[0]  # the docstring's first paragraph
        _REGISTRY[name] = ModelConfig(name=name, builder=builder, description=" ".join(summary.replace("``", "").split()), **config)
        return builder

    return wrap(fn) if fn is not None else wrap


def _origin(builder: Callable) -> str:
    """Where a builder is defined: the same code registered again (a notebook cell run twice, a reloaded module)
    replaces its entry; another builder under a taken name is refused."""
    return f"{builder.__module__}.{builder.__qualname__}"


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
    scale_op: Optional[str] = None,
    pow2: Optional[bool] = None,
    act_bits: Optional[int] = None,
    fp_ends: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a registered model, ternary by default or full precision with ``quant='fp'``; ``scale_op``,
    ``pow2`` and ``act_bits`` left out take :class:`bitnetcnn.quant.TernaryQuant`'s defaults.

    The model remembers how it was built in ``model.model_args`` (a JSON-able dict): a checkpoint stores it, and
    ``create_model(**model.model_args)`` builds the same architecture again.
    """
    cfg = get_model_config(name)
    num_classes = cfg.num_classes if num_classes is None else require_positive_int("num_classes", num_classes)
    in_chans = cfg.input_size[0] if in_chans is None else require_positive_int("in_chans", in_chans)
    _check_kwargs(cfg, kwargs)
    if "act" in kwargs and kwargs["act"] is None:  # the blocks' "no activation" (a projection), for a whole model
        raise ValueError(f"act=None would build {name} without a nonlinearity, a linear model: name an activation "
                         "(relu, relu6, silu or gelu), or leave act out for the model's own")
    if "img_size" in kwargs:  # it picks the stem: 0, -224 or 2.5 would build the 32-px one without a word
        kwargs["img_size"] = require_positive_int("img_size", kwargs["img_size"])
    spec = QuantSpec(quant=quant, scale_op=scale_op, pow2=pow2, act_bits=act_bits, fp_ends=fp_ends)
    try:
        model = cfg.builder(num_classes=num_classes, in_chans=in_chans, spec=spec, **kwargs)
    except TypeError as e:  # an argument of the model class that the builder sets itself (resnet18's depths)
        if "multiple values for" not in str(e):
            raise
        raise ValueError(f"{name} sets {str(e).rpartition('argument ')[2]} itself (that is what makes it {name}): leave it "
                         "out, or pick another registered model") from None
    model.model_args = dict(name=name, num_classes=num_classes, in_chans=in_chans, **spec.to_dict(), **kwargs)
    model.model_config = cfg
    return model


# Arguments a trained model can be fine-tuned into (its weights carry over); every other one changes the
# architecture (layer shapes, activations, strides), which the weights do not fit.
FINE_TUNABLE_ARGS = frozenset(QUANT_ARGS + ("drop_rate", "drop_path_rate"))


def same_model_arg(a, b) -> bool:
    """Whether two values of a ``create_model`` argument are the same: a checkpoint's JSON header holds a tuple
    argument as a list, so (1, 2, 2) and [1, 2, 2] are."""
    try:
        return json.loads(json.dumps(a)) == json.loads(json.dumps(b))
    except (TypeError, ValueError):
        return a == b


def require_positive_int(what: str, value) -> int:
    """A count given by a user (CLI, header, hub): an int >= 1, not a float or bool that ``int()`` would bend."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    return value


def _check_kwargs(cfg: ModelConfig, kwargs: dict) -> None:
    """Unknown builder arguments: one line naming the valid ones (the builder's own TypeError reads like a bug).

    Builders that pass ``**kwargs`` on to their model class are checked against that class (their return type)."""
    params = dict(inspect.signature(cfg.builder).parameters)
    own = dict(params)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        try:
            built = typing.get_type_hints(cfg.builder).get("return")
        except Exception:  # an annotation that does not resolve: leave the check to the builder
            return
        if not inspect.isclass(built):
            return
        params.update(inspect.signature(built).parameters)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for n, p in inspect.signature(built).parameters.items()):
            return
    named = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD and n != "spec"}
    unknown = sorted(set(kwargs) - named)
    if unknown:
        # a class argument the builder computes itself (bit_convnextv2's depths and dims, from size) is refused
        sets = set(cfg.builder.__code__.co_varnames) - set(own)
        valid = sorted(n for n, p in params.items() if p.default is not inspect.Parameter.empty
                       and n not in ("num_classes", "in_chans", "spec") and n not in sets)
        raise ValueError(f"{cfg.name} has no argument {', '.join(map(repr, unknown))}; its arguments: "
                         f"{', '.join(valid)} (and num_classes, in_chans, quant, scale_op, pow2, act_bits, fp_ends)")
