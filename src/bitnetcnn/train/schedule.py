"""Learning-rate schedule and parameter groups."""

from __future__ import annotations

import functools
import math

from torch import Tensor, nn

# Peak learning rate when none is given, per optimizer; AdamW's trains the demo in 4 epochs (README). The one home
# of these numbers: the settings, the Lightning module and the command line's help read them here.
DEFAULT_LR = {"adamw": 1e-2, "sgd": 0.1}


def peak_lr(lr: float | None, optimizer: str) -> float | None:
    """The peak rate a run trains at: ``lr``, or where none was given (None) its optimizer's default."""
    return lr if lr is not None else DEFAULT_LR.get(optimizer)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_factor: float = 0.0) -> float:
    """Factor of the base learning rate: linear warm-up, then a cosine down to ``min_factor``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: none on normalization parameters, biases and scales (all of them 0-d or 1-d)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_ema(decay: float):
    """An ``AveragedModel`` average: an EMA whose decay ramps up as ``(1 + n) / (10 + n)`` before reaching ``decay``.

    Without the ramp the average keeps the first steps' batch-norm statistics for thousands of steps (the running
    variance starts at 1 and falls by 10-50x early on), and the averaged model scores near chance. The ramp is
    TensorFlow's ``ExponentialMovingAverage(num_updates=...)``; timm's ModelEmaV3 ramps too, by another formula. A partial of a module-level function, not a closure: ``--strategy ddp_spawn`` pickles it.
    """
    return functools.partial(_ramped_ema, decay=decay)


def _ramped_ema(averaged: Tensor, current: Tensor, num_averaged: Tensor, decay: float) -> Tensor:
    d = min(decay, (1.0 + float(num_averaged)) / (10.0 + float(num_averaged)))
    return averaged * d + current * (1.0 - d)
