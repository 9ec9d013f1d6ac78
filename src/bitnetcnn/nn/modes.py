"""Evaluation mode for a while: code that runs a caller's model once (a prediction, a summary, a check) must not
leave it in another mode than it found it in."""

from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """``model`` in eval mode inside the block, each submodule's own mode back after it: a training loop that
    predicts or summarizes between steps would otherwise train on with BatchNorm frozen and dropout off."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
