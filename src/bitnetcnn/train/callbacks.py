"""Callbacks that make a run folder: metrics.csv and its plot, the best ternary model, results.json, and the
checkpoints written inside long epochs."""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import re
import shlex
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bitnetcnn.atomic import replacing, write_atomically
from bitnetcnn.machine import describe_device
from bitnetcnn.train.plot import plot_metrics

METRIC_COLUMNS = ["train_loss", "train_acc", "val_loss", "val_acc", "val_acc5", "ternary_acc", "ternary_acc5"]


def _metric(trainer: L.Trainer, name: str) -> float | None:
    for key in (f"{name}_epoch", name):
        value = trainer.callback_metrics.get(key)
        if value is not None:
            return float(value)
    return None


class TrainingDiverged(ArithmeticError):
    """The training loss or the weights became inf or nan: the run stops before it saves anything of that epoch."""


def _stop_if_diverged(trainer: L.Trainer, pl_module: L.LightningModule, train_loss: float | None) -> None:
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


def random_states() -> dict:
    """Python's, NumPy's and torch's (CPU and this process's CUDA device) generator states, as plain data a
    checkpoint holds. Only the first process's are saved: every process of a DDP run is seeded alike and draws alike
    (the augmentation of its own images), so each restores them, the CUDA one to its own device."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda_device": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_random_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if not torch.cuda.is_available():
        return
    if states.get("cuda_device") is not None:
        torch.cuda.set_rng_state(states["cuda_device"])  # the current device: this process's
    elif states.get("cuda") and len(states["cuda"]) == torch.cuda.device_count():  # runs saved before 2026-11-30
        torch.cuda.set_rng_state_all(states["cuda"])


class MidEpochCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``minutes`` of training too, so an interrupted run loses at most that much: a CPU epoch
    can take half an hour. The resumed run equals the uninterrupted one: the data module saves its place in the
    epoch (``ImageDataModule.state_dict``), in DDP runs too (``EpochShuffle``), and Lightning has every process take
    the first process's decision to save.

    A run stopped by SIGTERM (``kill``, a scheduler) saves at the end of the training batch it came in, before
    Lightning stops it, so it loses nothing; not after an epoch's last batch (above) nor in validation, where it
    resumes from the checkpoint before, as after a SIGKILL."""

    def __init__(self, out_dir: Path, minutes: float) -> None:
        super().__init__(dirpath=out_dir, filename="last", save_top_k=1, enable_version_counter=False,
                         train_time_interval=timedelta(minutes=minutes))

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        # Not after an epoch's last batch: a checkpoint there records the epoch as trained, so a run killed in the
        # validation that follows would resume past it, that epoch never measured (nor its model kept if best).
        # The epoch's own checkpoint comes after that validation.
        if trainer.fit_loop.epoch_loop.batch_progress.current.processed >= trainer.num_training_batches:
            return
        if trainer.received_sigterm:  # as if the interval had passed: the first process's decision still rules
            self._last_time_checked = -math.inf
        super().on_train_batch_end(trainer, *args, **kwargs)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # (any save, this one's too) a run that diverged inside an epoch stops before its weights replace the last
        # finite last.ckpt; the epoch's end checks before its own save
        _stop_if_diverged(trainer, pl_module, None)


class ResumeHint(L.Callback):
    """A run stopped by Ctrl-C or an error (a full disk, a lost device) says how to continue it and from where, so
    hours of training are not started again by a user who did not know ``--resume``. A diverged run gets no hint:
    it would diverge again."""

    def __init__(self, out_dir: Path) -> None:
        self.out = Path(out_dir)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, TrainingDiverged) or not trainer.is_global_zero:
            return
        how = ("was interrupted" if isinstance(exception, KeyboardInterrupt) else
               "was stopped by SIGTERM" if isinstance(exception, SIGTERMException) else "stopped on an error")
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        epochs = trainer.fit_loop.epoch_progress.current
        if trainer.validating:
            where = f"while validating epoch {trainer.current_epoch}"
        elif math.isinf(trainer.num_training_batches) or epochs.started == 0:  # before the data or first epoch
            where = "before its first batch"
        elif epochs.started == epochs.completed:  # between two epochs: the batch count is still the last one's
            where = f"after epoch {epochs.completed - 1} ended"
        else:
            where = f"in epoch {trainer.current_epoch} after {done} of {trainer.num_training_batches} batches"
        last = self.out / "last.ckpt"
        if last.exists():
            age = time.time() - last.stat().st_mtime
            hint = (f"continue it with `bitnetcnn train --resume --out {shlex.quote(str(self.out))}` (from last.ckpt, "
                    f"written {f'{age:.0f} s' if age < 120 else f'{age / 60:.0f} min'} ago)")
        else:
            hint = "it wrote no last.ckpt yet: start it again"
        print(f"bitnetcnn train: the run {how} {where}; {hint}", file=sys.stderr, flush=True)


class ValidateEvery(L.Callback):
    """Validate every ``n`` epochs and always in the last one, so a run always ends measured; with ``first`` in the
    first one too (a run sized to a time budget times it).

    (Lightning's ``check_val_every_n_epoch`` alone skips the last epoch unless ``n`` divides the run's length.)
    """

    def __init__(self, n: int, first: bool = False) -> None:
        self.n = n
        self.first = first

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1
        first = self.first and trainer.current_epoch == 0
        trainer.check_val_every_n_epoch = 1 if last or first else self.n

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a run resumed inside an epoch gets no on_train_epoch_start for that epoch
        self.on_train_epoch_start(trainer, pl_module)


def batches_done_at_resume(trainer: L.Trainer) -> int | None:
    """The batches of the current epoch trained before the checkpoint a run resumed from inside that epoch; None
    when the run did not resume inside an epoch (Lightning then calls no ``on_train_epoch_start`` for it)."""
    if not trainer.fit_loop.restarted_mid_epoch:
        return None
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, right after a resume inside an epoch too: Lightning skips ``on_train_epoch_start`` then,
    and its bar would show neither the epoch nor the number of batches, and a rate over batches it did not run."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        done = batches_done_at_resume(trainer)
        if done is not None:
            self.on_train_epoch_start(trainer, pl_module)
            self.train_progress_bar.initial = self.train_progress_bar.n = done


def _row_line(row: dict, epochs: int) -> str:
    """One metrics.csv row as a log line, numbered as the file and Lightning number epochs (from 0)."""
    pct = {k: f"{100 * row[k]:.2f}%" for k in METRIC_COLUMNS if k.endswith(("acc", "acc5")) and row[k] != ""}
    line = f"epoch {row['epoch']} (epochs 0-{epochs - 1})  lr {row['lr']:.3g}  train loss {row['train_loss']}"
    line += f" acc {pct.get('train_acc')}"
    if "val_acc" in pct:
        line += f"  val loss {row['val_loss']} acc {pct['val_acc']}"
    if "ternary_acc" in pct:
        line += f"  ternary acc {pct['ternary_acc']} top-5 {pct['ternary_acc5']}"
    return line + f"  {row['elapsed_s']:.0f} s"


def budget_note(epochs: int) -> str:
    """What a budgeted run's recorded command adds."""
    return f"the time budget gave {epochs} epoch{'' if epochs == 1 else 's'}"


# budget_note's number, read back (scripts/publish_weight.py reads it from older files)
BUDGET_GAVE = re.compile(r"the time budget gave (\d+) epochs?\b")


class RunRecorder(L.Callback):
    """Writes one metrics.csv row per epoch (and redraws the plot), keeps the best converted ternary model, and
    writes results.json at the end.

    Rows are written at the end of each training epoch, before the checkpoint of that epoch; each write drops the
    rows of the epoch being written and later ones (left by a killed run), so the file stays one row per epoch. An
    epoch that did not validate (``--val-every``) leaves its validation columns empty.
    """

    def __init__(self, out_dir: Path, save_model, command: str, metadata: dict[str, Any], echo: bool = False,
                 budgeted: bool = False) -> None:
        self.out = Path(out_dir)
        self.echo = echo  # print each row too: without a progress bar (a background run's log) nothing else does
        self.save_model = save_model  # save_model(model, path, metadata)
        self.command = command
        self.budgeted = budgeted  # sized by --time-budget: the command alone does not say how many epochs it took
        self.epochs: int | None = None  # the run's length as last saved
        self.extended: list[int] | None = None  # [from, to]: `--resume --epochs` lengthened the run
        self.metadata = metadata
        self.best_ternary = -1.0
        self.best_float = -1.0
        self.elapsed = 0.0
        self._t0 = 0.0
        self.hardware: str | None = None
        self._validated_epoch = -1

    @property
    def csv_path(self) -> Path:
        return self.out / "metrics.csv"

    @property
    def plot_path(self) -> Path:
        return self.out / "metrics.png"

    @property
    def model_path(self) -> Path:
        return self.out / "best_ternary.bnc"

    # Lightning saves this in last.ckpt, so best scores, wall time, the command that started the run (not
    # `--resume`) and what it started from (--init's recipe) survive a resume.
    # The random generators too: the next epoch's shuffle and augmentation draw from them, so a resumed run
    # continues exactly as the uninterrupted one would have.
    def state_dict(self) -> dict:
        return {"best_ternary": self.best_ternary, "best_float": self.best_float, "elapsed": self.elapsed_s(),
                "command": self.command, "budgeted": self.budgeted, "epochs": self.epochs, "extended": self.extended,
                "lineage": self._lineage(), "hardware": self.hardware, "rng": random_states()}

    def _lineage(self) -> dict:
        """What the run started from (``--init``'s recipe, ``fine_tune.init_metadata``), as it was when it started."""
        return {k: self.metadata[k] for k in ("init", "training") if k in self.metadata}

    def load_state_dict(self, state: dict) -> None:
        self.best_ternary = state["best_ternary"]
        self.best_float = state["best_float"]
        self.elapsed = state["elapsed"]
        self.command = state.get("command", self.command)
        # what the run started from as it was then: the --init file may have moved or changed since (the rest of the
        # metadata describes the data as the resumed run reads it)
        self.metadata = {**self.metadata, **state.get("lineage", {})}
        # a resumed run's settings no longer hold the budget once it became epochs; runs saved before this key
        # was kept tell it by their command
        self.budgeted = state.get("budgeted", "--time-budget" in self.command)
        self.epochs, self.extended = state.get("epochs"), state.get("extended")  # absent before they were kept
        if "rng" in state:  # absent in runs saved before it was kept
            set_random_states(state["rng"])

    def elapsed_s(self) -> float:
        return self.elapsed + (time.time() - self._t0 if self._t0 else 0.0)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.time()
        device = "gpu" if trainer.strategy.root_device.type == "cuda" else "cpu"
        self.hardware = f"{describe_device(device, trainer.num_devices, trainer.num_nodes)}, {trainer.precision}"

    def budget_decided(self, epochs: int) -> None:
        """The time budget set the run's length: an undecided run's ``--resume --epochs N`` was only the cap it
        decided within, not an extension of what it gave."""
        self.epochs, self.extended = epochs, None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epochs is not None and trainer.max_epochs > self.epochs:  # resumed with more epochs
            self.extended = [self.extended[0] if self.extended else self.epochs, trainer.max_epochs]
        self.epochs = trainer.max_epochs
        if trainer.ckpt_path is None or not trainer.is_global_zero:
            return
        done = batches_done_at_resume(trainer)
        if done is not None:
            where = f"inside epoch {trainer.current_epoch} at batch {done} of {trainer.num_training_batches}"
        else:
            where = f"at the start of epoch {trainer.current_epoch}"
        print(f"resumed from {trainer.ckpt_path} {where}, after {self.elapsed:.0f} s of training", flush=True)

    def _write(self, rows: list[dict]) -> None:
        with replacing(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", "step", "lr", "elapsed_s", *METRIC_COLUMNS])
            writer.writeheader()
            writer.writerows(rows)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before the module converts its weights for the ternary score (NaN weights have no ternary codes)
        if not trainer.sanity_checking:
            _stop_if_diverged(trainer, pl_module, None)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.epochs = trainer.max_epochs  # a time budget has decided it by now
        validated = self._validated_epoch == trainer.current_epoch  # else the metrics are an earlier epoch's
        values = {k: _metric(trainer, k) if validated or k.startswith("train_") else None for k in METRIC_COLUMNS}
        _stop_if_diverged(trainer, pl_module, values["train_loss"])
        if trainer.is_global_zero:
            row = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                   "lr": trainer.optimizers[0].param_groups[0]["lr"], "elapsed_s": round(self.elapsed_s(), 1),
                   **{k: "" if v is None else round(v, 6) for k, v in values.items()}}
            rows = []
            if self.csv_path.exists():
                with open(self.csv_path, newline="") as f:
                    rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < trainer.current_epoch]
            self._write(rows + [row])
            plot_metrics(self.csv_path, self.plot_path)
            if self.echo:
                print(_row_line(row, trainer.max_epochs), flush=True)
        if values["val_acc"] is not None:
            self.best_float = max(self.best_float, values["val_acc"])
        score = values["ternary_acc"] if values["ternary_acc"] is not None else values["val_acc"]
        if score is not None and score > self.best_ternary:
            self.best_ternary = score
            if trainer.is_global_zero:
                self._save_best(pl_module, values, trainer.current_epoch)

    def _command_as_run(self, trainer: L.Trainer) -> str:
        """The command, and what it does not say: for a run sized by ``--time-budget`` the epochs the budget gave it
        (on another machine the budget gives others, and ``--epochs N`` without it repeats this run), for a run
        lengthened by ``--resume --epochs N`` its new length."""
        notes = []
        if self.budgeted:
            notes.append(budget_note(self.extended[0] if self.extended else trainer.max_epochs))
        if self.extended:
            notes.append(f"resumed with --epochs {self.extended[1]}")
        return f"{self.command}  # {'; '.join(notes)}" if notes else self.command

    def _save_best(self, pl_module, values: dict, epoch: int) -> None:
        model = copy.deepcopy(pl_module.validated_model())
        float_eval = {"top1": values["val_acc"], "top5": values["val_acc5"]}
        ternary_eval = {"top1": values["ternary_acc"], "top5": values["ternary_acc5"]}
        shipped = ternary_eval if pl_module.eval_ternary else float_eval
        # the recipe so far: earlier stages (from --init), then this run up to this epoch
        command = self._command_as_run(pl_module.trainer)
        step = {"command": command, "wall_time_s": round(self.elapsed_s(), 1), "hardware": self.hardware}
        meta = dict(self.metadata, epoch=epoch, epochs=pl_module.trainer.max_epochs, accuracy=shipped["top1"],
                    float_eval=float_eval, ternary_eval=ternary_eval if pl_module.eval_ternary else None,
                    command=command, training=[*self.metadata.get("training", []), step])
        self.save_model(model.float().to(memory_format=torch.contiguous_format), self.model_path, meta)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checksum = torch.stack([p.detach().double().sum() for p in pl_module.model.parameters()]).sum()
        sums = trainer.strategy.all_gather(checksum.to(pl_module.device))
        self._write_results(trainer, [float(s) for s in torch.atleast_1d(sums.cpu())])

    def _final(self, trainer: L.Trainer, name: str) -> float | None:
        """The last validation's ``name``: this fit's, else (a resume that had nothing left to train) the one
        metrics.csv holds for the run's current step, so results.json keeps the run's figures."""
        value = _metric(trainer, name)
        if value is None and self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) == trainer.global_step and r.get(name)]
            value = float(rows[-1][name]) if rows else None
        return value

    @rank_zero_only
    def _write_results(self, trainer: L.Trainer, checksums: list[float]) -> None:
        size = self.model_path.stat().st_size if self.model_path.exists() else None
        # without --eval-ternary the best model is the best Bit model, scored as such: no ternary figure
        ternary_scored = getattr(trainer.lightning_module, "eval_ternary", True)
        results = {
            "float_acc": self._final(trainer, "val_acc"),
            "ternary_acc": self._final(trainer, "ternary_acc"),
            "best_float_acc": self.best_float if self.best_float >= 0 else None,
            "best_ternary_acc": self.best_ternary if self.best_ternary >= 0 and ternary_scored else None,
            "test_images": self.metadata.get("test_images"),  # what the figures were measured on (--limit-eval)
            "epochs": trainer.current_epoch,
            "step": trainer.global_step,  # tells whether a last.ckpt is the model these figures measured
            "model_file": self.model_path.name if size else None,
            "model_bytes": size,
            "wall_time_s": round(self.elapsed_s(), 1),
            "world_size": trainer.world_size,
            "param_checksums": checksums,
            "command": self._command_as_run(trainer),
        }
        write_atomically(self.out / "results.json", json.dumps(results, indent=2) + "\n")
