"""``--time-budget``: a run sized to a window of wall time (a GPU lent for minutes, a CPU machine for a night).

Epoch 0 is timed, then the run takes the epochs that fit and its learning-rate schedule ends with them."""

from __future__ import annotations

import time

import lightning as L
import torch


def epochs_within(budget_s: float, elapsed_s: float, epoch_s: float, validation_s: float, val_every: int,
                  most: int) -> int:
    """How many epochs a run that has finished its first one (``elapsed_s`` of wall time so far) may take in all to
    end within ``budget_s``: each further epoch costs ``epoch_s`` and each validation ``validation_s`` (every
    ``val_every`` epochs and the last one, as ``ValidateEvery`` runs them). At least 1 (the epoch already run), at
    most ``most``."""
    epochs = 1
    while epochs < most:
        more = epochs  # further epochs if one more is taken
        validations = sum(1 for e in range(1, more + 1) if (e + 1) % val_every == 0 or e == more)
        if elapsed_s + more * epoch_s + validations * validation_s > budget_s:
            break
        epochs += 1
    return epochs


def _synchronized_time(pl_module: L.LightningModule) -> float:
    """The wall clock once the device has run what was queued: where a GPU step ends, not where it was launched."""
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)
    return time.perf_counter()


class FitToTimeBudget(L.Callback):
    """Sizes a run to a wall-time budget (``--time-budget``). The first epoch is timed: its second half for the
    step time (past compilation and warm-up), its validation (``ValidateEvery(first=True)``) for the cost of one.
    The run then takes as many epochs as fit, at most ``--epochs``, with the learning-rate schedule fitted to them
    (``BitClassifier.fit_schedule``). Decided once, at the end of epoch 0, and handed to ``decided(epochs)``, which
    writes it to args.json: a resume continues that run as if it had been given ``--epochs``."""

    SAFETY = 0.95  # of the time left: steps vary, and the last epoch must end before the budget does

    def __init__(self, budget_s: float, elapsed, val_every: int, decided) -> None:
        self.budget_s = budget_s
        self.elapsed = elapsed  # the run's wall time so far, across resumes
        self.val_every = val_every
        self.decided = decided
        self._first_batch: int | None = None
        self._mark: tuple[int, float] | None = None  # (batch, time) where the timed steps start
        self._last: tuple[int, float] | None = None  # (batch, time) where the epoch's last step ended

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch != 0:
            return
        if self._first_batch is None:  # the first step in this process compiles and warms up: never timed
            self._first_batch = batch_idx
        if self._mark is None and batch_idx > self._first_batch and batch_idx >= trainer.num_training_batches // 2:
            self._mark = (batch_idx, _synchronized_time(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 0 and batch_idx == trainer.num_training_batches - 1:
            self._last = (batch_idx, _synchronized_time(pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != 0 or trainer.sanity_checking:
            return
        elapsed = self.elapsed()
        if self._last is None:  # resumed after epoch 0's last step: nothing timed here, so the epoch as a whole
            epoch_s, validation_s = elapsed, 0.0
        else:
            validation_s = time.perf_counter() - self._last[1]
            if self._mark is not None:
                step_s = (self._last[1] - self._mark[1]) / (self._last[0] - self._mark[0] + 1)
            else:  # too few steps in this process to leave out the first: the epoch so far, all its steps
                step_s = (elapsed - validation_s) / (self._last[0] + 1)
            epoch_s = step_s * trainer.num_training_batches
        left = (self.budget_s - elapsed) * self.SAFETY
        most = trainer.max_epochs
        epochs = epochs_within(elapsed + left, elapsed, epoch_s, validation_s, self.val_every, most)
        epochs = trainer.strategy.broadcast(epochs, src=0)  # every process takes the first one's decision
        trainer.fit_loop.max_epochs = epochs
        pl_module.fit_schedule(epochs)
        self.decided(epochs)
        if trainer.is_global_zero:
            length = f"{epochs} epoch{'s' * (epochs != 1)}" + (" (the most --epochs allows)" if epochs == most else "")
            print(f"\ntime budget {self.budget_s / 60:.1f} min: {elapsed / 60:.1f} min for epoch 0; an epoch takes "
                  f"{epoch_s:.1f} s and a validation {validation_s:.1f} s, so the run takes {length}")
