"""Which BatchNorm follows which convolution, and the affine map it is in eval mode: shared by BN folding
(deployment) and by the integer-bias snap of 8-bit-activation models (conversion)."""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Optional, Tuple

import torch
from torch import nn


def foldable_bn(module: Optional[nn.Module]) -> bool:
    """An eval-mode BatchNorm2d with running statistics (a fixed per-channel affine map)."""
    return (
        type(module) is nn.BatchNorm2d
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    )


def conv_bn_pairs(model: nn.Module) -> Iterator[Tuple[nn.Module, str, str]]:
    """``(parent, conv name, bn name)`` for every foldable BatchNorm2d that directly follows another module of the
    same parent: in an ``nn.Sequential`` that runs its modules in order (``ConvNormAct``, ``nn.Sequential(conv, bn,
    ...)``; not a subclass with a forward of its own, which may take another order), or by the data flow of
    the model's forward where torch.fx traces it (torchvision's ``BasicBlock`` keeps ``conv1`` and ``bn1`` as
    attributes; unfolded, its ternary weights could not be deployed in int8), the first module's output read by the
    BatchNorm alone. The caller checks the first.

    Neither module may be used twice (registered under two names, or called twice by the forward): folding changes
    the module for every use, and a convolution shared by two branches, each with its own BatchNorm, computed
    another function once both were folded into it, without a word."""
    graph = _layer_graph(model)
    uses = _uses(model, graph)
    seen = set()
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward:
            continue  # a subclass with a forward of its own: its data flow (below) says which module feeds which
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            if foldable_bn(parent._modules[second]):
                seen.add((id(parent), first, second))
                if _used_once(uses, parent, first, second):
                    yield parent, first, second
    for parent, first, second in _traced_pairs(model, graph):
        if (id(parent), first, second) not in seen and _used_once(uses, parent, first, second):
            yield parent, first, second


def _uses(model: nn.Module, graph) -> Counter:
    """How often each module (by ``id``) is used: the names it is registered under, or the calls of the traced
    forward where those are more."""
    registered = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    if graph is None:
        return registered
    called = Counter(id(model.get_submodule(n.target)) for n in graph.nodes if n.op == "call_module")
    return registered | called  # the larger of the two counts


def _used_once(uses: Counter, parent: nn.Module, first: str, second: str) -> bool:
    return uses[id(parent._modules[first])] == 1 and uses[id(parent._modules[second])] == 1


class _LayerTracer(torch.fx.Tracer):
    """Traces to the layers: a convolution or a layer holding an activation quantizer (a TernaryLinear's forward
    branches on its input, which torch.fx cannot trace: the whole trace failed, and no BatchNorm was folded), or a
    module without children, is one node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (hasattr(m, "kernel_size") or hasattr(m, "act_quant") or not any(m.children())
                or super().is_leaf_module(m, qualname))


def _layer_graph(model: nn.Module):
    """The forward traced to its layers by torch.fx, or None where it does not trace (Python control flow on
    tensors)."""
    try:
        return _LayerTracer().trace(model)
    except Exception:  # noqa: BLE001 - any failure to trace only means no pairs from the data flow
        return None


def _traced_pairs(model: nn.Module, graph) -> list:
    """The pairs the data flow of the traced forward gives; none without a trace."""
    if graph is None:
        return []
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        source = node.args[0]
        if source.op != "call_module" or len(source.users) != 1:
            continue
        parent_name, _, second = node.target.rpartition(".")
        source_parent, _, first = source.target.rpartition(".")
        if parent_name != source_parent or not foldable_bn(model.get_submodule(node.target)):
            continue
        pairs.append((model.get_submodule(parent_name) if parent_name else model, first, second))
    return pairs


def bn_factors(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``f`` and ``beta - mean * f`` in float64 (one rounding at the end, not two): ``BN(y) = y * f + shift``."""
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    f = gamma / torch.sqrt(var + bn.eps)
    return f, beta - mean * f


def fold_ternary_affine(channel_scale: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.BatchNorm2d):
    """``(scale, bias, sign)`` in float64 of a ternary convolution (``codes * channel_scale + bias``) with ``bn``
    folded in: ``scale`` is positive (the codes of a channel whose ``sign`` is -1 flip; a channel BN multiplies by 0
    gets scale 1 and, from the caller, codes 0: it is the constant ``bias``)."""
    f, shift = bn_factors(bn)
    scale = channel_scale.detach().double() * f
    folded_bias = (bias.detach().double() * f if bias is not None else 0) + shift
    sign = torch.sign(scale)
    return torch.where(sign == 0, torch.ones_like(scale), scale.abs()), folded_bias, sign
