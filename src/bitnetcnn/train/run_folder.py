"""The run folder's rules: where a new run goes, that it never writes over another run, what ``--resume`` may
change, and the saved settings it continues with."""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Iterator, Optional

from bitnetcnn.atomic import write_atomically
from bitnetcnn.train.schedule import peak_lr
from bitnetcnn.train.settings import SettingsError, TrainSettings


# The folder the first process chose, for the processes a DDP launcher starts from the same command line: without
# --out they would each pick the next free runs/MODEL-DATASET-N (the first one's now exists) and make it, empty.
RUN_FOLDER_ENV = "BITNETCNN_RUN_FOLDER"


def default_out(s: TrainSettings) -> Path:
    """``runs/MODEL-DATASET``, or the next free ``-N`` of it; in a DDP run's later processes, the first one's."""
    if not first_process() and os.environ.get(RUN_FOLDER_ENV):
        return Path(os.environ[RUN_FOLDER_ENV])
    base = Path("runs") / f"{s.model}-{s.dataset}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


# What a resumed run may change: where and on what it runs, not what it trains (--epochs only to extend the run).
RESUME_MAY_CHANGE = frozenset({"out", "progress", "data_dir", "accelerator", "devices", "num_nodes", "strategy",
                               "val_every", "compile", "compile_mode", "channels_last", "save_every", "download"})


def _as_run(name: str, saved: TrainSettings):
    """A saved setting as the run used it: ``lr`` None is its optimizer's default rate (``--resume --lr 0.01`` of an
    AdamW run started without --lr repeats it, and is not a change)."""
    return peak_lr(saved.lr, saved.optimizer) if name == "lr" else getattr(saved, name)


def read_run_record(path: Path) -> dict:
    """A run folder's ``args.json`` or ``results.json``: a JSON object, else a ``ValueError`` saying what it holds
    (a copy cut short, a hand edit)."""
    try:
        record = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ValueError(f"not readable JSON ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"it holds a JSON {type(record).__name__}, not an object")
    return record


def saved_run_values(out) -> dict:
    """The settings a run folder's args.json holds, as saved; {} where there is none to read (``resumed_settings``
    then says what is wrong)."""
    try:
        return read_run_record(Path(out).expanduser() / "args.json") if out else {}
    except (OSError, ValueError):
        return {}


def resumed_settings(s: TrainSettings, given: Optional[set[str]]) -> TrainSettings:
    """The saved settings of the run in ``s.out``, with what may change on a resume; anything else given that
    differs from the saved value is refused, since it could not take effect."""
    if not s.out:
        raise SettingsError("--resume needs --out RUN_FOLDER (the folder of the run to continue)")
    saved_path = Path(s.out) / "args.json"
    if not saved_path.exists():
        raise SettingsError(f"--resume: {saved_path} not found; is {s.out} a run folder?")
    try:
        saved = TrainSettings.from_dict(read_run_record(saved_path))
    except (ValueError, TypeError) as e:
        raise SettingsError(f"--resume: {saved_path} is not a readable settings file ({e})") from None
    given = set(s.changed()) if given is None else set(given) & {f.name for f in fields(TrainSettings)}
    changes = {}
    for name in sorted(given - {"out", "progress"}):
        mine, theirs = getattr(s, name), getattr(saved, name)
        if name in RESUME_MAY_CHANGE or mine == theirs:
            changes[name] = mine
        elif mine == _as_run(name, saved):
            pass  # the value the run took by default: no change
        elif name == "epochs" and mine > theirs:
            changes[name] = mine  # extends the run: the schedule stretches over the new length
        elif name == "time_budget" and theirs is None:
            raise SettingsError(f"--resume --time-budget {mine:g}: a budget becomes a number of epochs at the end of "
                                f"epoch 0, and the run in {s.out} takes {saved.epochs} epoch"
                                f"{'s' * (saved.epochs != 1)} (args.json): leave --time-budget out, and --epochs too "
                                "unless you mean to extend the run")
        elif name == "teacher" and len(mine) == len(theirs) and all(
                m == t or not Path(t).is_file() for m, t in zip(mine, theirs)):
            changes[name] = mine  # teachers that moved (another machine): where they are now
        elif name == "epochs":
            raise SettingsError(f"--resume --epochs {mine}: the run in {s.out} was set for {theirs} epoch{'s' * (theirs != 1)}; give more "
                                f"than {theirs} to extend it, or leave --epochs out to finish it")
        else:
            flag = "--" + name.replace("_", "-")
            raise SettingsError(f"--resume continues the run in {s.out} with its saved settings, so {flag} {mine!r} "
                                f"(saved: {_saved_text(name, saved)}) cannot take effect: leave it out, or start a new run with a "
                                f"fresh --out (--init {Path(s.out) / 'best_ternary.bnc'} fine-tunes from this one)")
    if changes.get("compile") is False and "compile_mode" not in given:  # --no-compile: its mode goes with it
        changes["compile_mode"] = TrainSettings.compile_mode
    if changes.get("epochs", saved.epochs) > saved.epochs and first_process():
        # said aloud (once nothing was refused); a budget that has not decided yet decides within the new cap
        if saved.time_budget is not None:
            print(f"--resume --epochs {changes['epochs']}: the run in {s.out} has not decided its length yet; its "
                  f"time budget decides it within {changes['epochs']} epochs", flush=True)
        else:  # repeating a decided run's original --epochs cap lands here too
            print(f"--resume --epochs {changes['epochs']}: the run in {s.out} was set for {saved.epochs} "
                  f"epoch{'s' * (saved.epochs != 1)}; it now runs to {changes['epochs']}, its learning-rate schedule "
                  "stretched over them", flush=True)
    # a background run resumed with the command its interruption printed stays without a progress bar in its log
    progress = s.progress if "progress" in given else saved.progress
    return replace(saved, out=s.out, progress=progress, **changes)


def _saved_text(name: str, saved: TrainSettings) -> str:
    theirs, effective = getattr(saved, name), _as_run(name, saved)
    if theirs is not None:
        return repr(theirs)
    return "the default" if effective is None else f"the default, {effective!r}"


# args.json's record that its epochs are what the time budget gave (not a `--resume --epochs` of the user's)
BUDGET_GAVE_KEY = "time_budget_gave"


def write_settings(out: Path, s: TrainSettings, budget_gave: Optional[int] = None) -> None:
    """args.json, replaced atomically: a run killed while writing it keeps the previous one, and can resume.
    ``budget_gave``: the epochs are the time budget's decision (:func:`length_before_resume`)."""
    record = asdict(s)
    if budget_gave is not None:
        record[BUDGET_GAVE_KEY] = budget_gave
    write_atomically(out / "args.json", json.dumps(record, indent=2) + "\n")


def length_before_resume(out: Path) -> Optional[int]:
    """The run's length before a resume where args.json knows it better than last.ckpt: the time budget's decision
    reaches args.json before the epoch's checkpoint, so a run killed between the two has its real length there.
    None otherwise: a longer args.json then comes from a `--resume --epochs N` killed before its first checkpoint,
    and N still extends the run."""
    saved = read_run_record(out / "args.json")
    gave = saved.get(BUDGET_GAVE_KEY)
    return gave if gave is not None and gave == saved.get("epochs") else None


# What last.ckpt records for the resume's checks (BitClassifier writes them): which teacher the run distils from, and
# how many processes shared each step, and how many images the training and test splits held.
TEACHER_KEY = "teacher_weights_sha256"
PROCESSES_KEY = "training_processes"
IMAGES_KEY = "split_images"


def read_resume_record(path: Path) -> dict:
    """What ``path`` (a run's last.ckpt) records for the resume's checks (``TEACHER_KEY``, ``PROCESSES_KEY``,
    ``IMAGES_KEY``; None in runs saved before they were kept), read once; a damaged file (a full disk, a copy cut
    short) is named as such, before Lightning's unpickling error."""
    saved = None
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        bad = f"not a readable checkpoint: {e}"
    if not bad:
        import torch  # mmap: only the small entries are read, not the weights and optimizer state beside them

        try:
            saved = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except Exception as e:  # noqa: BLE001 - a zip that is not torch's (a .bnc copied over it, any archive)
            bad = f"not a checkpoint torch can read: {' '.join(str(e).split())[:160]}"
    if not bad and not (isinstance(saved, dict) and "pytorch-lightning_version" in saved and "state_dict" in saved):
        bad = "not a Lightning training checkpoint (a model file or a state dict copied over it)"
    if bad:
        raise SettingsError(f"--resume: {path} is damaged ({bad}), so the run cannot continue from it; start a new "
                            f"run with a fresh --out (--init {path.parent / 'best_ternary.bnc'} starts from the best "
                            "model so far)")
    shapes = {name: tuple(t.shape) for name, t in saved.get("state_dict", {}).items() if hasattr(t, "shape")}
    return {**{key: saved.get(key) for key in (TEACHER_KEY, PROCESSES_KEY, IMAGES_KEY)}, "shapes": shapes}


def check_resumed_model(record: dict, module, path: Path) -> None:
    """The model args.json describes is the one ``path`` holds (``record``: :func:`read_resume_record`'s): an
    args.json edited to another width or depth ended in Lightning's "size mismatch" for dozens of tensors."""
    saved, built = record.get("shapes") or {}, {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if not saved:
        return
    differ = [f"{k}: {saved[k]} saved, {built[k]} built" for k in built if k in saved and saved[k] != built[k]]
    missing, extra = [k for k in built if k not in saved], [k for k in saved if k not in built]
    problems = differ + [f"{k} is not in the checkpoint" for k in missing] + [f"{k} is not built" for k in extra]
    if problems:
        raise SettingsError(
            f"--resume: {path} holds another model than {path.parent / 'args.json'} describes ({len(problems)} "
            f"tensor(s) differ; {'; '.join(problems[:3])}): restore the run's settings in args.json (was it "
            f"edited?), or start a new run with --init {path.parent / 'best_ternary.bnc'}")


def check_resumed_processes(record: dict, processes: int) -> None:
    """A resume runs as many processes (devices x nodes) as the run did (``record``: :func:`read_resume_record`'s):
    each takes --batch-size images a step, so another count changes the steps an epoch, in which the learning-rate
    schedule and the place inside an epoch are counted (a schedule counted for 2 processes ends halfway through the
    run of 1)."""
    saved = record.get(PROCESSES_KEY)
    if saved is not None and saved != processes:
        raise SettingsError(
            f"--resume: the run trained in {saved} process{'es' * (saved != 1)} (devices x nodes) and this resume "
            f"starts {processes}: give --devices and --num-nodes that make {saved}, since its learning-rate schedule "
            "and place in the epoch are counted in steps of that many batches (or start a new run with --init)")


def check_resumed_images(record: dict, train: int, test: int) -> None:
    """A resume reads as many training and test images as the run did (``record``: :func:`read_resume_record`'s): the
    learning-rate schedule is counted in steps of the first (half the images, and a run killed at 60% of its steps
    resumed past the schedule's end, at a rate of 0 for the rest), and the best model is chosen on the second."""
    saved = record.get(IMAGES_KEY)
    if saved is not None and list(saved) != [train, test]:
        raise SettingsError(
            f"--resume: the run trained on {saved[0]} images and tested on {saved[1]}, and this resume reads {train} "
            f"and {test}: give the --data-dir it read, since its learning-rate schedule is counted in steps of those "
            "images and its best model chosen on those (or start a new run with --init)")


def first_process() -> bool:
    """False in the processes a distributed launcher starts after the first one: they join the run it made."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


# What makes a folder a run's: a checkpoint to resume from, or a finished run's results. A folder with neither, from
# a run that stopped before its first last.ckpt was written (killed, a full disk), holds at most epoch 0's model and
# metrics: --resume cannot continue it, so a new run may take it and replace them.
RUN_RESULTS = ("last.ckpt", "results.json")
# What such a run leaves that a new run writes too: removed when the new run takes the folder, so that none passes for
# the new run's own (its resume took the old model's accuracy for the best so far, and kept the old file as the best)
UNFINISHED_RUN_FILES = ("best_ternary.bnc", "metrics.csv", "metrics.png")


def check_new_run_folder(out: Path) -> None:
    """A new run never writes into another run's folder: its models, metrics and results would be replaced."""
    if out.exists() and not out.is_dir():
        raise SettingsError(f"--out {out} is a file, not a folder: give a folder for the run")
    parent = next((p for p in out.absolute().parents if p.exists()), None)  # the folder the run's is made in
    if parent is not None and not parent.is_dir():
        raise SettingsError(f"--out {out} cannot be made: {parent} is a file, not a folder; give a folder for the run")
    if parent is not None and not os.access(out if out.is_dir() else parent, os.W_OK | os.X_OK):
        raise SettingsError(f"--out {out} cannot be written by this user: give a folder you can write")
    if out.is_dir() and (out / "results.json").exists() and not (out / "last.ckpt").exists():
        raise SettingsError(f"--out {out} holds a finished run whose last.ckpt is gone: give a fresh --out (--init "
                            f"{out / 'best_ternary.bnc'} trains on from its best model)")
    if out.is_dir() and any((out / name).exists() for name in RUN_RESULTS):
        raise SettingsError(f"--out {out} already holds a run: continue it with --resume --out {out}, or give a "
                            "fresh --out (without --out, a new folder runs/MODEL-DATASET-N is picked)")


def _clear_unfinished_run(out: Path) -> None:
    """Remove what a run that stopped before its first last.ckpt left in ``out`` (said aloud: the new run replaces it)."""
    left = [name for name in UNFINISHED_RUN_FILES if (out / name).is_file()]
    for name in left:
        (out / name).unlink()
    if left:
        print(f"{out}: a run that stopped before its first checkpoint left {', '.join(left)}; this run replaces "
              f"{'them' if len(left) > 1 else 'it'}", flush=True)


LOCK_NAME = ".lock"  # held (flock) by the process that trains in the folder, released by the kernel when it ends


@contextlib.contextmanager
def hold_run_folder(out: Path, resume: bool, picked: bool = False) -> Iterator[None]:
    """The training process's hold on its run folder for as long as it trains: a second run started into the same
    ``--out`` at the same time, or a ``--resume`` of a run still going (in the background), is refused instead of
    writing its files among the first one's. A killed run's hold ends with it. ``picked``: no ``--out`` was given
    (two such runs started at once pick the same free folder)."""
    try:
        import fcntl
    except ImportError:  # not on this system (Windows): no hold
        yield
        return
    with open(out / LOCK_NAME, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            if picked:
                raise SettingsError(f"another `bitnetcnn train` (process {holder or '?'}) started at the same moment "
                                    f"took {out}, the free folder both picked: start this one again (it takes the "
                                    "next free one), or give --out") from None
            raise SettingsError(f"{out} is in use by another `bitnetcnn train` (process {holder or '?'}), still "
                                "training there: wait for it to end (or stop it, then --resume), or give another "
                                "--out") from None
        if not resume:  # a run that took the folder since this one checked it, and ended
            check_new_run_folder(out)
            _clear_unfinished_run(out)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
