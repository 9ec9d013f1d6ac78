"""Stopping a run whose loss or weights are no longer finite, before it saves anything of that epoch."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch


def logged_metric(trainer: L.Trainer, name: str) -> float | None:
    for key in (f"{name}_epoch", name):
        value = trainer.callback_metrics.get(key)
        if value is not None:
            return float(value)
    return None


class TrainingDiverged(ArithmeticError):
    """The training loss or the weights became inf or nan: the run stops before it saves anything of that epoch."""


def stop_if_diverged(trainer: L.Trainer, pl_module: L.LightningModule, train_loss: float | None) -> None:
    """Raised here, before the epoch's checkpoint callback runs: last.ckpt and the best model stay finite."""
    finite = train_loss is None or math.isfinite(train_loss)
    # one device synchronization for all the weights, not one per tensor
    finite = finite and bool(torch.stack([torch.isfinite(p).all() for p in pl_module.parameters()]).all())
    if not finite:
        lr = f"{trainer.optimizers[0].param_groups[0]['lr']:.3g}" if trainer.optimizers else "?"
        saved = [name for name in ("last.ckpt", "best_ternary.bnc") if (Path(trainer.default_root_dir) / name).exists()]
        kept = f"{' and '.join(saved)} keep{'s' * (len(saved) == 1)} the last finite weights" if saved else \
            "nothing was saved"
        what = "the weights are not finite" if train_loss is None else f"the loss is {train_loss}"
        raise TrainingDiverged(f"training diverged in epoch {trainer.current_epoch}: {what} (learning rate {lr}); "
                               f"{kept}. Lower --lr (or raise --warmup-epochs) and start a new run")
