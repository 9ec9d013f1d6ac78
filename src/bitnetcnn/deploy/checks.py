"""What can be deployed: a converted model whose layers all map onto ONNX operators; clear refusals otherwise."""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from bitnetcnn.messages import few
from bitnetcnn.nn import BIT_LAYERS, TERNARY_LAYERS, ActQuantizer
from bitnetcnn.nn.act_quant import unset_quantizers

__all__ = ["NotDeployableError", "check_deployable", "ternary_layers"]

# Leaf modules whose export to ONNX is known (torch.onnx maps them to standard operators).
_KNOWN_LEAVES = (
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm, nn.Identity, nn.Dropout,
    nn.Dropout2d, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Mish, nn.Softmax,
    ActQuantizer,
)
# Packages whose modules this library exports itself (the architectures in bitnetcnn.models, StochasticDepth).
_KNOWN_PACKAGES = ("bitnetcnn.", "torchvision.ops.")


class NotDeployableError(ValueError):
    """The model cannot be deployed or exported; the message says why and what to do."""


def ternary_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The converted layers (``TernaryConv2d``/``TernaryLinear``) by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, TERNARY_LAYERS)}


def check_deployable(model: nn.Module, int8: bool = False) -> None:
    """Raise :class:`NotDeployableError` unless ``model`` is a converted model that the deploy path can map.

    Refused: a model with Bit layers (the training form), one without any ternary layer, a layer of a kind the
    exporter does not know, a BatchNorm without running statistics (its eval output depends on the batch), and, for
    ``int8``, activation quantizers other than 8 bits (an int8 tensor cannot hold a 4-bit grid's clamping exactly,
    so the deployed model would not compute what the model does).
    """
    if not isinstance(model, nn.Module):
        raise NotDeployableError(f"expected a torch.nn.Module, got {type(model).__name__}")
    bit = [name for name, m in model.named_modules() if isinstance(m, BIT_LAYERS)]
    if bit:
        raise NotDeployableError(
            f"{type(model).__name__} is not converted: it has {len(bit)} Bit layer(s) (training form), e.g. "
            f"{bit[0]!r}. Run model = bitnetcnn.convert_to_ternary(model) first (or `bitnetcnn convert` on a "
            "checkpoint), then deploy or export the converted model."
        )
    if not ternary_layers(model):
        raise NotDeployableError(
            f"{type(model).__name__} has no TernaryConv2d/TernaryLinear layer, so it is not a converted ternary "
            "model. Build it with bitnetcnn.create_model(...) (or bitnetcnn.bitify(model)), train it, and run "
            "bitnetcnn.convert_to_ternary(model) before deploying."
        )
    for name, m in model.named_modules():
        if isinstance(m, TERNARY_LAYERS) or (len(m._modules) and not _has_own_state(m)):
            continue  # converted layers, and containers whose children are checked one by one
        if isinstance(m, _KNOWN_LEAVES) or type(m).__module__.startswith(_KNOWN_PACKAGES):
            continue
        raise NotDeployableError(
            f"layer {name!r} ({type(m).__module__}.{type(m).__qualname__}) cannot be mapped for deployment: the "
            "exporter knows torch.nn's standard layers, bitnetcnn's ternary layers and architectures. Replace it by "
            "standard layers, or keep it out of the deployed part of the model."
        )
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            raise NotDeployableError(
                f"BatchNorm {name!r} keeps no running statistics (track_running_stats=False), so in eval mode it "
                "normalizes each batch by that batch's own mean and variance: an image's output would depend on the "
                "images beside it. Train the model with track_running_stats=True BatchNorms to deploy it."
            )
    if int8:
        for name, m in model.named_modules():
            if isinstance(m, ActQuantizer) and m.bits != 8:
                raise NotDeployableError(
                    f"layer {name!r} quantizes activations to {m.bits} bits; the int8 path maps only 8-bit "
                    "activation quantizers exactly. Export the float ONNX model instead (without --int8)."
                )
    unset = unset_quantizers(model)
    if unset:  # each batch's own absmax: no fixed graph computes it
        raise NotDeployableError(
            f"{len(unset)} activation quantizer{'s' * (len(unset) != 1)} ({few(unset, 1)}) never saw a training "
            "batch, so each takes its scale from the batch it is given. Run training-mode batches through the Bit "
            "model (model.train(); model(images)) or train it, then convert_to_ternary and deploy."
        )


def _has_own_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or any(
        b is not None for b in m._buffers.values()
    )


def example_input(size: tuple[int, int, int], batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
