"""The training loss and accuracy of the epoch so far, as sums that last.ckpt keeps.

Lightning's own epoch means start from nothing when a run resumes: the row of an epoch interrupted inside
(SIGTERM, a ``--save-every`` checkpoint before a kill) averaged the batches after the resume only. These sums travel
in the checkpoint, so the resumed epoch's means are the uninterrupted epoch's."""

from __future__ import annotations

from typing import Optional

import torch

CHECKPOINT_KEY = "train_epoch_sums"


class EpochMeans:
    """Per process: the sums of loss x images, right answers x images and images of the current epoch, kept on the
    training device (adding a step's waits for nothing)."""

    def __init__(self) -> None:
        self.epoch = -1
        self._sums: Optional[torch.Tensor] = None  # float64 [loss * images, accuracy * images, images]

    def add(self, epoch: int, loss: torch.Tensor, accuracy: torch.Tensor, images: int) -> None:
        """One step's mean loss and accuracy over its ``images``; a new epoch starts the sums again."""
        step = torch.stack([loss.detach().double(), accuracy.detach().double(),
                            torch.ones_like(loss, dtype=torch.float64)]) * images
        if epoch != self.epoch or self._sums is None:
            self.epoch, self._sums = epoch, step
        else:
            self._sums = self._sums.to(step.device) + step  # restored sums come on the CPU

    def totals(self, strategy) -> torch.Tensor:
        """Every process's sums added up, on the CPU. A collective: every process of the run calls it."""
        sums = self._sums if self._sums is not None else torch.zeros(3, dtype=torch.float64)
        return strategy.reduce(sums.to(strategy.root_device, copy=True), reduce_op="sum").cpu()

    def means(self, strategy) -> dict[str, Optional[float]]:
        """``train_loss`` and ``train_acc`` of the epoch over every process's images (None before any step)."""
        loss, right, images = self.totals(strategy).tolist()
        if not images:
            return {"train_loss": None, "train_acc": None}
        return {"train_loss": loss / images, "train_acc": right / images}

    def state(self, strategy) -> dict:
        """What last.ckpt keeps: the epoch and the run's sums (every process's, added up)."""
        return {"epoch": self.epoch, "sums": self.totals(strategy).tolist()}

    def restore(self, state: Optional[dict], first_process: bool) -> None:
        """The saved sums, held by the first process (the others start from zero: :meth:`totals` adds them up).
        Checkpoints written before the sums were kept have none: the resumed epoch then averages its last batches."""
        if not state:
            return
        self.epoch = int(state["epoch"])
        sums = torch.tensor(state["sums"], dtype=torch.float64)
        self._sums = sums if first_process else torch.zeros_like(sums)
