"""The run folder's record, written as the run goes: metrics.csv and its plot, the best ternary model, and
results.json at the end."""

from __future__ import annotations

import copy
import csv
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from bitnetcnn.atomic import replacing, write_atomically
from bitnetcnn.machine import describe_device
from bitnetcnn.train.callbacks import batches_done_at_resume
from bitnetcnn.train.randomness import set_random_states
from bitnetcnn.train.divergence import logged_metric, stop_if_diverged
from bitnetcnn.train.plot import plot_metrics
from bitnetcnn.train.recorded_command import budget_note, command_with_note

TRAIN_COLUMNS = ("train_loss", "train_acc")  # the epoch's means (BitClassifier.train_epoch_means), the rest validated
METRIC_COLUMNS = ["train_loss", "train_acc", "val_loss", "val_acc", "val_acc5", "ternary_acc", "ternary_acc5"]

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
        self._length_before: int | None = None  # a resumed run's length before this command (:meth:`resumed`)
        self._loaded_checksum: torch.Tensor | None = None  # a resumed run's saved parameters' (on_load_checkpoint)
        self.metadata = metadata
        self.best_ternary = -1.0
        self.best_float = -1.0
        self.elapsed = 0.0
        self._t0 = 0.0
        self.hardware: str | None = None
        self._validated_epoch = -1
        self._last_validation: dict = {}  # the last validation's figures and step, unrounded (metrics.csv rounds)

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
    def state_dict(self) -> dict:
        return {"best_ternary": self.best_ternary, "best_float": self.best_float, "elapsed": self.elapsed_s(),
                "command": self.command, "budgeted": self.budgeted, "epochs": self.epochs, "extended": self.extended,
                "lineage": self._lineage(), "hardware": self.hardware,
                "last_validation": self._last_validation}

    def _lineage(self) -> dict:
        """What the run started from (``--init``'s recipe and the teachers', ``fine_tune.init_metadata`` and
        ``teacher_metadata``), as it was when it started."""
        return {k: self.metadata[k] for k in ("init", "teachers", "training") if k in self.metadata}

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
        if "rng" in state:  # runs saved before 2026-12-07 kept the first process's here (ProcessRandomness now)
            set_random_states(state["rng"])
        self._last_validation = state.get("last_validation", {})
        # best_ternary.bnc is written at an epoch's end before last.ckpt: a run killed between the two comes back
        # with a best model better than the best it recorded, and a redone epoch that scores less (a GPU's is not
        # bit-identical) must not pass as the best nor replace that file with a worse model
        self.best_ternary = max(self.best_ternary, _saved_accuracy(self.model_path))

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

    def resumed(self, length: int | None) -> None:
        """The run's length before this resume where args.json holds the time budget's decision (it reaches args.json
        before last.ckpt, so a run killed between the two has a longer one there than the checkpoint's); None: the
        checkpoint's own (``run_folder.length_before_resume``)."""
        self._length_before = length

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loaded_checksum = None  # this fit trains: its own weights are the run's at its end
        if self.epochs is not None:  # resumed: with more epochs than the run had, or as the budget left it
            before = max(self.epochs, self._length_before or 0)
            if trainer.max_epochs > before:
                self.extended = [self.extended[0] if self.extended else before, trainer.max_epochs]
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
            stop_if_diverged(trainer, pl_module, None)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.epochs = trainer.max_epochs  # a time budget has decided it by now
        validated = self._validated_epoch == trainer.current_epoch  # else the metrics are an earlier epoch's
        values = {k: logged_metric(trainer, k) if validated else None for k in METRIC_COLUMNS if k not in TRAIN_COLUMNS}
        values = {**pl_module.train_epoch_means(), **values}  # the epoch's every batch, those before a resume too
        stop_if_diverged(trainer, pl_module, values["train_loss"])
        if validated:
            figures = {k: v for k, v in values.items() if v is not None and k not in TRAIN_COLUMNS}
            self._last_validation = {"step": trainer.global_step, **figures}
        if trainer.is_global_zero:
            row = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                   "lr": trainer.optimizers[0].param_groups[0]["lr"], "elapsed_s": round(self.elapsed_s(), 1),
                   **{k: "" if v is None else round(v, 6) for k, v in values.items()}}
            rows = []
            if self.csv_path.exists():
                with open(self.csv_path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self._write([r for r in rows if int(r["epoch"]) < trainer.current_epoch] + [row])
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
        command = self.command
        for note in notes:
            command = command_with_note(command, note)
        return command

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

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # the saved model's parameters: with --ema they are the average, and the module gets the raw weights (only
        # a training end copies the average back, and a resume with nothing left to train has none)
        names = {"model." + n for n, _ in pl_module.model.named_parameters()}
        self._loaded_checksum = _checksum(v for k, v in checkpoint["state_dict"].items() if k in names)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checksum = self._loaded_checksum
        if checksum is None:
            checksum = _checksum(pl_module.model.parameters())
        elif trainer.is_global_zero:  # on_train_start never ran: the resumed run had trained all its epochs
            epochs = f"{trainer.max_epochs} epoch{'s' * (trainer.max_epochs != 1)}"
            print(f"nothing left to train: the run has trained its {epochs}; results.json written "
                  f"again from {trainer.ckpt_path} (--resume --epochs N trains on)", flush=True)
        sums = trainer.strategy.all_gather(checksum.to(pl_module.device))
        self._write_results(trainer, [float(s) for s in torch.atleast_1d(sums.cpu())])

    def _final(self, trainer: L.Trainer, name: str) -> float | None:
        """The last validation's ``name``: this fit's, else (a resume that had nothing left to train) the one
        last.ckpt keeps for the run's current step, unrounded, so results.json keeps the run's figures (runs saved
        before it kept them: metrics.csv's, rounded to 6 decimals)."""
        value = logged_metric(trainer, name)
        if value is None and self._last_validation.get("step") == trainer.global_step:
            value = self._last_validation.get(name)
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


def _saved_accuracy(path: Path) -> float:
    """The accuracy a run's best model file records (what chose it), or -1 where there is none to read."""
    from bitnetcnn.checkpoint.read import native_header

    try:
        accuracy = native_header(path)["metrics"].get("accuracy")
    except Exception:  # noqa: BLE001 - absent, damaged or another kind of file: no best to keep
        return -1.0
    return float(accuracy) if isinstance(accuracy, (int, float)) else -1.0


def _checksum(tensors) -> torch.Tensor:
    """The sum of every value, in float64: results.json's fingerprint of the weights (equal across DDP processes)."""
    return torch.stack([t.detach().double().sum() for t in tensors]).sum()
