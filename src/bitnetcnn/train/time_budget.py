"""``--time-budget``: a run sized to a window of wall time (a GPU lent for minutes, a CPU machine for a night).

Epoch 0 is timed, then the run takes the epochs that fit and its learning-rate schedule ends with them."""

from __future__ import annotations

import time

import lightning as L
import torch


def epochs_within(budget_s: float, elapsed_s: float, epoch_s: float, validation_s: float, val_every: int,
                  most: int, done: int = 1) -> int:
    """How many epochs in all a run that has finished ``done`` of them (``elapsed_s`` of wall time so far) may take
    to end within ``budget_s``: each further epoch costs ``epoch_s`` and each validation ``validation_s`` (every
    ``val_every`` epochs and the last one, as ``ValidateEvery`` runs them). At least ``done``, at most ``most``."""
    epochs = done
    while epochs < most:
        candidate = epochs + 1
        further = range(done, candidate)  # the epochs still to run if the run takes ``candidate``
        validations = sum(1 for e in further if (e + 1) % val_every == 0 or e == candidate - 1)
        if elapsed_s + len(further) * epoch_s + validations * validation_s > budget_s:
            break
        epochs = candidate
    return epochs


def _synchronized_time(pl_module: L.LightningModule) -> float:
    """The wall clock once the device has run what was queued: where a GPU step ends, not where it was launched."""
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)
    return time.perf_counter()


class FitToTimeBudget(L.Callback):
    """Sizes a run to a wall-time budget (``--time-budget``): it takes as many epochs as fit, at most ``--epochs``,
    with the learning-rate schedule fitted to them (``BitClassifier.fit_schedule``).

    - At the end of epoch 0 it decides from the step time of the epoch's second half (past compilation and
      warm-up) and the cost of its validation (``ValidateEvery(first=True)`` validates it).
    - At the end of epoch 1 a run of ``REFINE_FROM`` epochs or more decides again from that epoch's whole cost,
      the epoch-end work (checkpoint, metrics, plot) included, which epoch 0 could not time: on a GPU it can be a
      tenth of a short epoch. The cosine has barely begun (with a one-epoch warm-up, 97% of its peak or more),
      so its new length hardly moves it.
    - A run resumed after epoch 0 ended but before anything was decided decides at its start, from the wall time
      so far.

    Each decision goes to ``decided(epochs)``, which writes it to args.json: a resume continues that run as if it
    had been given ``--epochs``."""

    SAFETY = 0.95  # of the time left: steps vary, and the last epoch must end before the budget does
    REFINE_FROM = 10

    def __init__(self, budget_s: float, elapsed, val_every: int, decided, started: float | None = None,
                 least: int = 1) -> None:
        self.budget_s = budget_s
        self.least = least  # the fewest epochs a decision may give: more than the warm-up's (it must end)
        self.elapsed = elapsed  # the run's wall time of training so far, across resumes
        # where this process's command began (time.perf_counter()): its setup (data, model, run folder) is part of
        # the window the budget sizes the run to, though the run's recorded training time leaves it out
        self.started = started
        self._setup_s = 0.0
        self.val_every = val_every
        self.decided = decided
        self._first_batch: int | None = None
        self._mark: tuple[int, float] | None = None  # (batch, time) where the timed steps start
        self._last: tuple[int, float] | None = None  # (batch, time) where epoch 0's last step ended
        self._validation_s = 0.0
        self._validated: set[int] = set()
        self._epoch_1_start: float | None = None  # where epoch 1's cycle starts: at epoch 0's decision
        self._most: int | None = None
        self._epochs: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.started is not None:
            self._setup_s = time.perf_counter() - self.started

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._most = trainer.max_epochs
        if trainer.current_epoch >= 1:  # resumed after epoch 0 ended, undecided (args.json still has the budget)
            done = trainer.current_epoch
            self._decide(trainer, pl_module, done, self.elapsed() / done, 0.0, f"{done} epochs so far")

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

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated.add(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0 and self._last is not None:
            elapsed = self.elapsed()
            self._validation_s = time.perf_counter() - self._last[1]  # this callback runs first: validation only
            if self._mark is not None:
                step_s = (self._last[1] - self._mark[1]) / (self._last[0] - self._mark[0] + 1)
            else:  # too few steps in this process to leave out the first: the epoch so far, all its steps
                step_s = (elapsed - self._validation_s) / (self._last[0] + 1)
            self._decide(trainer, pl_module, 1, step_s * trainer.num_training_batches, self._validation_s,
                         f"{elapsed / 60:.1f} min for epoch 0")
            self._epoch_1_start = time.perf_counter()
        elif (trainer.current_epoch == 1 and self._epoch_1_start is not None
              and (self._epochs or 0) >= self.REFINE_FROM):
            cycle_s = time.perf_counter() - self._epoch_1_start  # epoch 0's metrics and checkpoint, epoch 1
            epoch_s = cycle_s - (self._validation_s if 1 in self._validated else 0.0)
            self._decide(trainer, pl_module, 2, epoch_s, self._validation_s,
                         f"epoch 1 took {cycle_s:.1f} s with its checkpoint and metrics")

    def _decide(self, trainer, pl_module, done: int, epoch_s: float, validation_s: float, basis: str) -> None:
        elapsed = self.elapsed() + self._setup_s
        budget = elapsed + (self.budget_s - elapsed) * self.SAFETY
        epochs = epochs_within(budget, elapsed, epoch_s, validation_s, self.val_every, self._most, done)
        if epochs == done and trainer.current_epoch not in self._validated:
            epochs = done + 1  # one more, which validates as the last: a run never ends unmeasured
        floor = ""
        if epochs < self.least:  # a run cut inside its warm-up would never peak nor decay: its settings refuse that
            epochs, floor = self.least, f" (at least {self.least}, to end the warm-up)"
        epochs = trainer.strategy.broadcast(min(epochs, self._most), src=0)  # the first process's decision
        if epochs == self._epochs:
            return
        self._epochs = epochs
        trainer.fit_loop.max_epochs = epochs
        pl_module.fit_schedule(epochs)
        self.decided(epochs)
        if trainer.is_global_zero:
            cap = " (the most --epochs allows)" if epochs == self._most else floor
            if epochs == 1 < self._most:  # its one epoch ran on the schedule of --epochs
                cap += (f"; epoch 0 ran on the learning-rate schedule of --epochs {self._most}, so the rate never "
                        "decayed and the model is not trained to the end of a schedule: give a budget of two epochs "
                        "or more, or --epochs 1")
            setup = f" after {self._setup_s:.0f} s of setup" if self._setup_s >= 0.5 else ""
            print(f"\ntime budget {self.budget_s / 60:.3g} min: {basis}{setup}; an epoch takes {epoch_s:.1f} s and a "
                  f"validation {validation_s:.1f} s, so the run takes {epochs} epoch{'s' * (epochs != 1)}{cap}",
                  flush=True)
