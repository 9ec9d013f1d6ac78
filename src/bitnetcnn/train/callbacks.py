"""Callbacks that let a run stop anywhere and resume exactly: checkpoints inside long epochs with the random states,
the validation schedule, where to resume from, and the progress bar."""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar, WeightAveraging
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bitnetcnn.train.divergence import TrainingDiverged, stop_if_diverged


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
        stop_if_diverged(trainer, pl_module, None)


class StoppedByCtrlC(SIGTERMException):
    """A run stopped by Ctrl-C after saving where it stood (:class:`CtrlCSaves`): the command exits 130, not 143."""


class CtrlCSaves:
    """Ctrl-C as SIGTERM: the batch it came in finishes, ``last.ckpt`` is written after it
    (:class:`MidEpochCheckpoint`), and the run stops with the resume hint, losing nothing; it lost up to
    ``--save-every`` of training, and exited 1 as Lightning's Ctrl-C does. A second Ctrl-C stops at once. In a DDP
    run a terminal's Ctrl-C reaches every process: each only raises its flag (no collective in a signal handler,
    as :class:`_SigtermFlag`), and the training loop's broadcast of the first process's has them all stop together."""

    def __init__(self, trainer: L.Trainer) -> None:
        self.trainer = trainer
        self.pressed = False

    def __call__(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        self.trainer._signal_connector.received_sigterm = True  # Lightning's own stop, checked after each batch
        if self.trainer.global_rank == 0:
            print("\nbitnetcnn train: Ctrl-C: stopping once this batch is trained and saved (Ctrl-C again: at once)",
                  file=sys.stderr, flush=True)


def spawns_its_workers(trainer: L.Trainer) -> bool:
    """Whether this process only starts and waits for the processes that train (``--strategy ddp_spawn``, fork and
    notebook), which then hold the same launcher with no processes of their own; ``--strategy ddp``'s first
    process trains itself beside the ones it starts (its launcher's ``procs`` are ``subprocess.Popen``s)."""
    return isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)


@contextlib.contextmanager
def ctrl_c_saves(trainer: L.Trainer):
    """:class:`CtrlCSaves` as the SIGINT handler while the run trains, where Python's own handler is installed and
    the training runs in this process or the ones it starts with ``--strategy ddp`` (each of which installs its own);
    not under a spawning strategy, whose processes this one only waits for (Lightning's stop there is kept)."""
    if (spawns_its_workers(trainer) or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield None
        return
    handler = CtrlCSaves(trainer)
    signal.signal(signal.SIGINT, handler)
    try:
        yield handler
    except SIGTERMException:
        if handler.pressed:
            raise StoppedByCtrlC from None
        raise
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning leaves SIG_IGN after a KeyboardInterrupt


@contextlib.contextmanager
def workers_take_sigterm(trainer: L.Trainer):
    """Under a spawning strategy (``--strategy ddp_spawn``) the command's process only waits for the processes that
    train, and SIGTERM killed it alone: they trained on as orphans after the command had exited and released the run
    folder, where a ``--resume`` then wrote beside them. Here SIGTERM goes on to them (each saves where it stands and
    stops, as in any run), and the command waits for them and stops as a stopped run does."""
    launcher = trainer.strategy.launcher
    if not spawns_its_workers(trainer) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum, frame) -> None:
        procs = list(launcher.procs)  # read now: the launcher makes the list when it starts them
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signum)
        for proc in procs:
            proc.join()
        raise SIGTERMException  # the launcher would wait for the results of a run that stopped short of them

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


LAUNCHER_PID_ENV = "BITNETCNN_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_the_launcher() -> None:
    """The processes Lightning's ``ddp`` launcher starts (children of a node's first process) die with it. A first
    process killed outright (SIGKILL, the OOM killer) while the others were still meeting the process group left
    them waiting for torch's 30-minute rendezvous timeout, orphans holding their memory (once met, gloo and NCCL
    notice a lost peer and stop them). A node's first process records its pid for the children it starts; each child
    asks Linux for SIGKILL when its parent ends (``prctl(PR_SET_PDEATHSIG)``): without the first process, which
    writes the checkpoints, there is nothing to save. Elsewhere than Linux, nothing changes."""
    if os.environ.get("LOCAL_RANK", "0") == "0":  # a node's first process: it launches the others
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
        return
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    # another parent: started by another launcher (torchrun, SLURM) in an environment that inherited the variable
    if launcher is None or not sys.platform.startswith("linux") or os.getppid() != int(launcher):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != int(launcher):  # it ended between the check above and the request: no signal will come
        os._exit(1)


class ResumeHint(L.Callback):
    """A run stopped by Ctrl-C or an error (a full disk, a lost device) says how to continue it and from where, so
    hours of training are not started again by a user who did not know ``--resume``. A diverged run gets no hint:
    it would diverge again."""

    def __init__(self, out_dir: Path) -> None:
        self.out = Path(out_dir)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, TrainingDiverged) or not trainer.is_global_zero:
            return
        ctrl_c = signal.getsignal(signal.SIGINT)
        how = ("was interrupted" if isinstance(exception, KeyboardInterrupt) else
               "was stopped by Ctrl-C" if isinstance(ctrl_c, CtrlCSaves) and ctrl_c.pressed else
               "was stopped by SIGTERM" if isinstance(exception, SIGTERMException) else "stopped on an error")
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        epochs = trainer.fit_loop.epoch_progress.current
        if spawns_its_workers(trainer) and trainer.strategy.launcher.procs:  # ddp_spawn's first, not its workers
            where = "where its processes stood"  # its own loops never ran: they know nothing of where that was
        elif trainer.validating:
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


class AverageOnTheTrainingDevice(WeightAveraging):
    """Lightning's ``WeightAveraging`` (``--ema``) with its average on the device the run trains on. Lightning
    makes the average in ``setup``, where the module still is on the CPU (the strategy moves it to the GPU after):
    a GPU run's average stayed in host memory, and every step copied all the weights there to average them. A
    distilling module's teacher (not a submodule: never averaged) stays out of the copy."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._device is None:  # WeightAveraging(device=...) not given: this process's training device
            self._device = trainer.strategy.root_device
        set_aside = getattr(pl_module, "teacher_set_aside", contextlib.nullcontext)
        with set_aside():
            super().setup(trainer, pl_module, stage)
