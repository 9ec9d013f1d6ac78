"""A model's classifier, the last linear layer: found and replaced by a fresh one, to fine-tune on new classes (the
hub's ``num_classes=``, ``bitnetcnn train --init`` of a file trained on other classes)."""

from __future__ import annotations

from typing import Optional

from torch import nn

from bitnetcnn.nn import BitLinear, TernaryLinear


def classifier_name(model: nn.Module) -> Optional[str]:
    """The qualified name of the last linear layer (``fc``, ``head``, ``classifier.1``), or None."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, TernaryLinear))]
    return names[-1] if names else None


def new_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the last linear layer by a fresh one with ``num_classes`` outputs (to fine-tune on new classes)."""
    name = classifier_name(model)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier to resize")
    old = model.get_submodule(name)
    if not isinstance(old, (BitLinear, nn.Linear)):  # a converted TernaryLinear: packed codes, nothing to train
        raise ValueError(f"{type(model).__name__}'s classifier {name!r} is a {type(old).__name__}, which does not "
                         "train: make the model trainable first (bitnetcnn.convert_to_bit(model)), then resize it")
    if isinstance(old, BitLinear):
        new = BitLinear(old.in_features, num_classes, old.bias is not None, quant=old.quant)
    else:
        new = nn.Linear(old.in_features, num_classes, old.bias is not None)
    parent, _, child = name.rpartition(".")
    # the old layer's device and dtype: a float32 head in a bf16 or float64 model failed at its first batch
    setattr(model.get_submodule(parent) if parent else model, child,
            new.to(device=old.weight.device, dtype=old.weight.dtype))
    if isinstance(getattr(model, "model_args", None), dict):
        model.model_args = {**model.model_args, "num_classes": num_classes}
    return model
