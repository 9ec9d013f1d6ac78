"""One training run, from settings to a run folder: the data, the model, the teachers, the Trainer and its
callbacks (settings.py holds the settings, run_folder.py the folder's and resume's rules, fine_tune.py --init)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from bitnetcnn.checkpoint import load_checkpoint, save_checkpoint
from bitnetcnn.checkpoint.read import native_header
from bitnetcnn.checkpoint.pretrained_cfg import model_pretrained_cfg
from bitnetcnn.data.catalog import get_dataset_spec
from bitnetcnn.data.datamodule import ImageDataModule
from bitnetcnn.messages import few
from bitnetcnn.models import get_model_config
from bitnetcnn.nn import model_form
from bitnetcnn.quiet import quiet_loggers
from bitnetcnn.train.callbacks import (AverageOnTheTrainingDevice, MidEpochCheckpoint, ProgressBar, ResumeHint,
                                       ValidateEvery, ctrl_c_saves, die_with_the_launcher,
                                       workers_take_sigterm)
from bitnetcnn.train.distill import TeacherEnsemble
from bitnetcnn.train.atomic_checkpoint import AtomicCheckpointIO
from bitnetcnn.train.fine_tune import init_metadata, init_normalization, load_init_weights, teacher_metadata
from bitnetcnn.train.module import BitClassifier
from bitnetcnn.train.run_folder import (RUN_FOLDER_ENV, check_new_run_folder, check_resumed_images,
                                        check_resumed_model, check_resumed_processes, default_out, first_process,
                                        hold_run_folder, length_before_resume, read_resume_record, resumed_settings,
                                        write_settings)
from bitnetcnn.train.randomness import ProcessRandomness
from bitnetcnn.train.run_recorder import RunRecorder
from bitnetcnn.train.schedule import DEFAULT_LR, warmup_ema
from bitnetcnn.train.settings import SettingsError, TrainSettings
from bitnetcnn.train.time_budget import FitToTimeBudget

__all__ = ["SettingsError", "TrainSettings", "build", "train"]


def _precision(s: TrainSettings, accelerator: str) -> str:
    if not s.amp:
        return "32-true"
    if accelerator == "cpu":
        if not _cpu_has_bf16():
            print("warning: --amp on a CPU without native bf16 arithmetic (AVX-512 BF16 or AMX): bf16 autocast will be "
                  "several times slower than float32 here; leave --amp out on this machine", file=sys.stderr)
        return "bf16-mixed"
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def _cpu_has_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _same_values(a, b) -> bool:
    """Two sizes or normalizations alike to 4 decimals (a header's JSON floats against the data set's)."""
    return tuple(round(float(v), 4) for v in a) == tuple(round(float(v), 4) for v in b)


def _check_teacher(teacher: torch.nn.Module, num_classes: int, class_names, path: str, spec) -> torch.nn.Module:
    """A teacher that knows the student's classes and sees its inputs as it was trained to: the student's batches,
    normalized with its data set's statistics (``spec``), at its size. A teacher whose file records none of these
    gets a note that says what it must have been trained on."""
    classes = teacher.model_args.get("num_classes") if hasattr(teacher, "model_args") else None
    if classes is not None and classes != num_classes:
        raise SettingsError(f"teacher {path} predicts {classes} classes but the student has {num_classes}: "
                            "distill from a teacher trained on the same data set")
    cfg = model_pretrained_cfg(teacher)
    size = (spec.in_chans, spec.img_size, spec.img_size)
    for what, theirs, ours in (("inputs of", cfg and cfg.input_size, size), ("a mean of", cfg and cfg.mean, spec.mean),
                               ("a std of", cfg and cfg.std, spec.std)):
        if theirs is not None and not _same_values(theirs, ours):
            raise SettingsError(f"teacher {path} was trained on {what} {list(theirs)} but this run feeds it "
                                f"{list(ours)} ({spec.name}): its logits would teach from images it was not trained on; "
                                "distill from a teacher trained on the same data set")
    if cfg is not None and cfg.class_names and class_names and tuple(cfg.class_names) != tuple(class_names):
        differ = [f"{i}: {a} / {b}" for i, (a, b) in enumerate(zip(cfg.class_names, class_names)) if a != b]
        raise SettingsError(f"teacher {path} names its classes otherwise than this data set ({few(differ, 3)}): "
                            "its labels would teach the wrong classes")
    if cfg is None:  # a seed checkpoint, a file saved without metadata: fed the wrong inputs, it teaches noise
        print(f"note: teacher {path} records no input size, normalization nor class names, so none could be checked: "
              f"it must have been trained on {spec.name}'s classes at {list(size)}, normalized with mean "
              f"{list(spec.mean)} and std {list(spec.std)}, as this run feeds it", file=sys.stderr)
    if model_form(teacher) == "bit":
        print(f"note: teacher {path} is itself a Bit model; a full-precision teacher (--quant fp) usually helps more",
              file=sys.stderr)
    return teacher


@torch.no_grad()
def _check_hints(student: torch.nn.Module, teachers: list, paths: list, input_shape: tuple) -> None:
    """Feature hints compare the feature maps before the global pooling: one teacher, of the same shape there."""
    if len(teachers) != 1:
        raise SettingsError(f"--kd-hints needs one teacher, not {len(teachers)}: an ensemble has no single feature map")
    x = torch.zeros(1, *input_shape)
    mine = tuple(student.eval().forward_features(x).shape)
    theirs = tuple(teachers[0].eval().forward_features(x).shape)
    student.train()
    if mine != theirs:
        raise SettingsError(f"--kd-hints: teacher {paths[0]} has features of shape {theirs} before its pooling, the "
                            f"student {mine}; hints need a teacher of the student's architecture and width")


def _on_cpu(s: TrainSettings) -> bool:
    return s.accelerator == "cpu" or (s.accelerator == "auto" and not torch.cuda.is_available())


def _channels_last(s: TrainSettings) -> bool:
    """Channels-last memory unless set: on the CPU a float32 training step is 13-25% faster with it (BitNetCNN 564
    -> 429 ms, BitMobileNetV2 970 -> 830 ms, BitResNet18 6.0 -> 5.7 s per batch, one thread), and on CUDA it pays
    with mixed precision."""
    return s.channels_last if s.channels_last is not None else (s.amp or _on_cpu(s))


def _check_accelerator(s: TrainSettings) -> None:
    """A GPU asked for on a machine without one: say so before anything is built (Lightning's words are cryptic)."""
    if s.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise SettingsError(f"--accelerator {s.accelerator} (or --gpus) but this machine has no usable CUDA GPU: "
                            "use --accelerator cpu, or auto")
    if s.accelerator in ("gpu", "cuda") and s.devices not in ("auto", "-1"):
        if int(s.devices) > torch.cuda.device_count():
            raise SettingsError(f"--devices {s.devices} but this machine has {torch.cuda.device_count()} GPU(s)")


def _check_weight_files(s: TrainSettings, resume: bool) -> None:
    """A missing --init or --teacher file, named with its flag before any data is read (the checkpoint reader's
    "cannot read the file" named neither). A resumed run takes its weights from last.ckpt, and says itself where
    teachers that moved must be given."""
    if resume:
        return
    for flag, path in [("--init", s.init)] * bool(s.init) + [("--teacher", t) for t in s.teacher if s.kd]:
        if not Path(path).is_file():
            raise SettingsError(f"{flag} {path}: no such file; give a checkpoint file (a run's best_ternary.bnc) or "
                                "a published weight's name (bitnetcnn models lists them)")


def build(s: TrainSettings, resume: bool = False):
    """The data module, the Lightning module and the run folder for these settings (validated). A resumed run
    takes its weights from last.ckpt, not from ``--init``, which may have moved since."""
    get_model_config(s.model)  # unknown model: error with the valid names, before any data is read
    _check_accelerator(s)
    _check_weight_files(s, resume)
    data = ImageDataModule(s.dataset, s.data_dir, s.batch_size, download=s.download, img_size=s.img_size,
                           img_channels=s.img_channels,
                           limit_train=s.limit_train, limit_eval=s.limit_eval, rotate=s.rotate, zoom=s.zoom,
                           elastic=s.elastic, hflip=s.hflip, mean=s.mean, std=s.std, seed=s.seed)
    spec = data.spec
    num_classes = data.num_classes
    if s.num_classes is not None and s.num_classes != num_classes:
        raise SettingsError(f"--num-classes {s.num_classes} but data set {s.dataset!r} has {num_classes} classes")
    channels_last = _channels_last(s)
    q = s.weight_quant
    # img_size: the stem a builder chooses (an image folder's --img-size above 64 px gets the ImageNet stem)
    model_kwargs = dict(quant=s.quant, scale_op=q.scale_op, pow2=q.pow2, act_bits=q.act_bits, fp_ends=s.fp_ends,
                        img_size=spec.img_size, **s.model_kwargs)
    lr = s.lr if s.lr is not None else DEFAULT_LR[s.optimizer]
    module = BitClassifier(
        s.model, num_classes, spec.in_chans, model_kwargs, optimizer=s.optimizer, lr=lr, weight_decay=s.wd,
        momentum=s.momentum, warmup_epochs=s.warmup_epochs, label_smoothing=s.label_smoothing, mixup=s.mixup,
        cutmix=s.cutmix, eval_ternary=s.eval_ternary, kd_alpha=s.kd_alpha if s.kd else 0.0,
        kd_temperature=s.kd_temperature, kd_hints=s.kd_hints if s.kd else 0.0, channels_last=channels_last,
        compile=s.compile, compile_mode=s.compile_mode,
    )
    data.channels_last = channels_last
    if s.kd:
        if not s.teacher:
            raise SettingsError("--kd needs --teacher PATH: a checkpoint of the full-precision twin "
                                "(train it with this command and --quant fp)")
        gone = [path for path in s.teacher if not Path(path).is_file()]
        if resume and gone:
            raise SettingsError(f"--resume: the teacher {gone[0]} is not there; give --kd --teacher with where the "
                                "run's teachers are now, in the same order, to continue it")
        teachers = [_check_teacher(load_checkpoint(path), num_classes, data.class_names, path, spec)
                    for path in s.teacher]
        if s.kd_hints > 0:
            _check_hints(module.model, teachers, s.teacher, (spec.in_chans, spec.img_size, spec.img_size))
        module.set_teacher(teachers[0] if len(teachers) == 1 else TeacherEnsemble(teachers), ', '.join(s.teacher))
    if s.init and not resume:
        load_init_weights(module.model, s.init, data.class_names, image_folder=s.dataset == "imagefolder")
    return data, module


# Lightning's notices that a user of this command need not act on: hardware lines, tips, "Loading
# `train_dataloader` to estimate ...", "`Trainer.fit` stopped ...", a folder we made ourselves "exists and is not
# empty", a deprecation inside Lightning. Its warnings about real problems still show.
QUIET_WARNINGS = (r"Checkpoint directory .* exists and is not empty", r".*isinstance\(treespec, LeafSpec\)",
                  # the data module restores the loader's place in the epoch (ImageDataModule.state_dict)
                  r"You're resuming from a checkpoint that ended before the epoch ended",
                  # a run folder moved or copied: ModelCheckpoint then forgets its top-k bookkeeping, which a run
                  # that keeps one last.ckpt (no monitor) does not use
                  r"The dirpath has changed from")


@contextlib.contextmanager
def _quiet_lightning():
    # --compile on a machine without CUDA: inductor's "No CUDA runtime is found" is about a GPU nobody asked for
    with warnings.catch_warnings(), quiet_loggers(("lightning.pytorch.utilities.rank_zero",
                                                    "lightning.fabric.utilities.rank_zero")), \
            quiet_loggers(("torch.utils.cpp_extension",), logging.ERROR):
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def _leave_process_group() -> None:
    """After a distributed fit: wait for every rank (rank 0 writes results.json), then leave the process group.

    Left to interpreter exit, gloo's threads can be torn down in the wrong order and abort a finished run
    ("terminate called without an active exception", exit -6).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _weight_averaging(s: TrainSettings) -> list:
    """Lightning's weight averaging with a ramped EMA: validation, the saved model and the final weights use the
    averaged weights (and batch-norm statistics)."""
    if s.ema is None:
        return []
    return [AverageOnTheTrainingDevice(avg_fn=warmup_ema(s.ema))]


# Steps between progress-bar refreshes on a GPU: each refresh reads the logged loss back from the device, and a read
# each step would make the CPU wait for the GPU at every step.
GPU_PROGRESS_REFRESH = 20


def _progress_bar(s: TrainSettings) -> list:
    if not s.progress:
        return []
    # on a CPU a refresh each step costs nothing
    return [ProgressBar(refresh_rate=1 if _on_cpu(s) else GPU_PROGRESS_REFRESH)]


def _check_shares(data: ImageDataModule, batch_size: int, processes: int) -> None:
    """Each of a DDP run's processes trains a share of the training set and validates a share of the test set: a
    share without a whole batch would train nothing, and a process without a test image fails alone, leaving the
    others waiting for it."""
    if processes == 1:
        return
    train_share = math.ceil(len(data.train_split.labels) / processes)
    if train_share < batch_size:
        raise SettingsError(f"the training set has {len(data.train_split.labels)} images, {train_share} for each of "
                            f"{processes} processes: fewer than one batch of {batch_size}; lower --batch-size (or "
                            "use fewer devices)")
    if len(data.test_split.labels) < processes:
        raise SettingsError(f"the test set has {len(data.test_split.labels)} images, fewer than the {processes} "
                            "processes that validate a share each: raise --limit-eval (or use fewer devices)")


def _check_resumed_classes(out: Path, class_names) -> None:
    """A resumed run reads the classes it trained on (an image folder's, given again with --data-dir): other folders
    would go on training the same outputs under other labels."""
    best = out / "best_ternary.bnc"
    header = native_header(best) if class_names is not None and best.is_file() else None
    trained = (header or {}).get("class_names")
    if trained and list(trained) != list(class_names):
        raise SettingsError(f"--resume: the run trained on the classes {few(trained)} ({best}), but the data "
                            f"has {few(list(class_names))}: give --data-dir the folders the run trained on")


def train(s: TrainSettings, resume: bool = False, command: Optional[str] = None,
          given: Optional[set[str]] = None) -> dict:
    """Train, validate each epoch (Bit and ternary), keep the best ternary model; returns results.json's content.

    ``resume=True`` continues the run in ``s.out`` with its saved settings; ``given`` names the settings the caller
    set (the command line's flags; default: those that differ from the defaults), which a resume checks.
    ``command``: the command line the run records as its recipe (default: ``s.as_command()``).
    """
    started = time.perf_counter()  # a --time-budget counts the setup below, not only the training
    die_with_the_launcher()
    s = _settled(s, resume, given)
    if not resume:
        s = _init_normalization(s)
    picked = not s.out  # the folder is this command's choice, not the user's
    out = Path(s.out) if s.out else default_out(s)
    s.out = str(out)
    if first_process():
        os.environ[RUN_FOLDER_ENV] = str(out.resolve())  # the processes a DDP launcher starts inherit it (default_out)
        if not resume:
            check_new_run_folder(out)
    L.seed_everything(s.seed, workers=True, verbose=False)
    data, module = build(s, resume)
    data.setup()  # a missing data set is reported before the run folder is made
    if len(data.train_split.labels) < s.batch_size:  # the last partial batch is dropped: no step at all
        raise SettingsError(f"the training set has {len(data.train_split.labels)} images, fewer than one batch of "
                            f"{s.batch_size}: lower --batch-size"
                            + (" (or raise --limit-train)" if s.limit_train else ""))
    averaging = _weight_averaging(s)
    last = out / "last.ckpt"
    if resume and not last.exists() and (out / "results.json").exists():  # finished, then its checkpoint deleted
        raise SettingsError(f"--resume: {last} not found: the run finished (results.json) and its checkpoint is "
                            f"gone, so it cannot continue; train on from its best model in a new folder (--init "
                            f"{out / 'best_ternary.bnc'} --out NEW_FOLDER)")
    if resume and not last.exists() and (out / "best_ternary.bnc").exists():  # measured, then no checkpoint
        raise SettingsError(f"--resume: {last} not found, though the run kept a model (best_ternary.bnc): the run "
                            "was stopped before its first checkpoint, or the file was moved (put it back to continue "
                            "the run); start it again without --resume (which replaces that model), or train on from "
                            f"it in a new folder (--init {out / 'best_ternary.bnc'} --out NEW_FOLDER)")
    if resume and not last.exists():
        raise SettingsError(f"--resume: {last} not found (the run stopped before its first epoch ended); "
                            "start it again without --resume")
    length_before = None
    if resume:
        length_before = length_before_resume(out)  # before this command writes args.json
        record = read_resume_record(last)
        module.check_resumed_teacher(record, last)  # before args.json records a teacher given in its place
        check_resumed_model(record, module, last)
        _check_resumed_classes(out, data.class_names)
        check_resumed_images(record, len(data.train_split.labels), len(data.test_split.labels))
    command = command or s.as_command()
    metadata = {"dataset": s.dataset, **data.spec.input_metadata()}
    if data.class_names is not None:  # the spec's, or an image folder's (its folders)
        metadata["class_names"] = list(data.class_names)
    # a resume takes the run's own record of --init (RunRecorder's state), since the file may have moved or
    # changed; reading it then serves runs saved before that record was kept
    if s.init and (not resume or Path(s.init).is_file()):
        metadata.update(init_metadata(s.init))
    if s.kd:  # the teachers are there (build checked): their hashes and recipes join the run's
        metadata.update(teacher_metadata(s.teacher, metadata.get("training", [])))
    metadata["test_images"] = len(data.test_split.labels)
    recorder = RunRecorder(out, save_checkpoint, command, metadata, echo=not s.progress,
                           budgeted=s.time_budget is not None)
    if resume:
        recorder.resumed(length_before)
    devices = s.devices if s.devices == "auto" else int(s.devices)
    with _quiet_lightning():
        trainer = L.Trainer(
            max_epochs=s.epochs, accelerator=s.accelerator, devices=devices, num_nodes=s.num_nodes,
            strategy=s.strategy,
            precision=_precision(s, s.accelerator if s.accelerator != "auto" else ("cpu" if _on_cpu(s) else "gpu")),
            callbacks=[*_callbacks(s, out, recorder, started), *averaging, *_progress_bar(s)],
            plugins=[AtomicCheckpointIO()],
            logger=False,
            num_sanity_val_steps=0,
            enable_progress_bar=s.progress, enable_model_summary=False, default_root_dir=out,
        )
        _check_shares(data, s.batch_size, trainer.world_size)
        if trainer.world_size > 1:
            _flag_sigterm_only(trainer)
        if resume:
            check_resumed_processes(record, trainer.world_size)
        # only now, when Lightning has taken the strategy and accelerator: refused settings leave no empty folder
        out.mkdir(parents=True, exist_ok=True)
        with hold_run_folder(out, resume, picked) if trainer.is_global_zero else contextlib.nullcontext():
            if trainer.is_global_zero:  # on a resume too: an extended --epochs is the run's length from now on
                write_settings(out, s, budget_gave=length_before if s.epochs == length_before else None)
            with ctrl_c_saves(trainer), workers_take_sigterm(trainer):
                trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    _leave_process_group()
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if trainer.is_global_zero:
        _print_outcome(s, out, results, recorder)
    return results


def _init_normalization(s: TrainSettings) -> TrainSettings:
    """A fine-tune (``--init``) normalizes its images as the file's model was trained to see them (as timm takes a
    pretrained model's mean and std), unless ``--mean``/``--std`` say otherwise: an image folder's generic
    statistics had the published MNIST model score 26% on digits it scores 100% on with its own, and the fine-tune
    would first spend epochs relearning its input (a named data set's own statistics too, for a file trained with
    others). args.json records them, so a resume keeps them."""
    if not s.init or s.mean is not None or s.std is not None:
        return s
    spec = get_dataset_spec(s.dataset, s.img_size, in_chans=s.img_channels)  # size and channels: a folder's only
    recorded = init_normalization(s.init, spec.in_chans)
    if recorded is None or _same_values((*recorded[0], *recorded[1]), (*spec.mean, *spec.std)):
        return s  # none recorded, or the data set's own
    mean, std = recorded
    if first_process():
        print(f"note: --init {s.init} was trained on inputs normalized with mean {mean} and std {std}: this run's "
              f"images are normalized so too, not with {s.dataset}'s {list(spec.mean)} and {list(spec.std)} "
              "(--mean/--std say otherwise)", file=sys.stderr)
    return replace(s, mean=mean, std=std)


def _settled(s: TrainSettings, resume: bool, given: Optional[set[str]]) -> TrainSettings:
    """The settings the run takes: ``--out`` expanded, a resumed run's own, and the image-folder flags refused
    for named data sets. ``given``: as :func:`train` takes it."""
    named = set(given) if given is not None else set(s.changed())  # the caller's, not a resumed run's args.json
    if s.out:  # "~/runs/x" quoted, or from Python: else last.ckpt (Lightning expands it) and the rest part ways
        s = replace(s, out=str(Path(s.out).expanduser()))
    if resume:
        s = resumed_settings(s, given)
    if "img_size" in named and s.dataset != "imagefolder":
        raise SettingsError(f"--img-size sizes an imagefolder's images; {s.dataset!r} has its own size "
                            f"({get_dataset_spec(s.dataset).img_size} px): leave --img-size out")
    if "img_channels" in named and s.dataset != "imagefolder":
        raise SettingsError(f"--img-channels sets how an imagefolder's pictures are read; {s.dataset!r} has its own "
                            f"({get_dataset_spec(s.dataset).in_chans}): leave --img-channels out")
    return s


def _callbacks(s: TrainSettings, out: Path, recorder: RunRecorder, started: float) -> list:
    """The run folder's callbacks, in the order they must run: the time budget decides before the recorder writes
    epoch 0's row and best model (which then name the run's length), and last.ckpt (replaced whole at the end of
    every epoch: AtomicCheckpointIO) follows the recorder, whose state it saves."""
    checkpoint = ModelCheckpoint(dirpath=out, filename="last", save_top_k=1, save_on_train_epoch_end=True,
                                 enable_version_counter=False)
    mid_epoch = [MidEpochCheckpoint(out, s.save_every)] if s.save_every > 0 else []
    budget = []
    if s.time_budget is not None:
        budget = [FitToTimeBudget(60 * s.time_budget, recorder.elapsed_s, s.val_every,
                                  functools.partial(_record_decided, s, out, recorder), started,
                                  least=math.floor(s.warmup_epochs) + 1)]
    return [ProcessRandomness(s.seed), *budget, recorder, checkpoint, *mid_epoch, ResumeHint(out),
            ValidateEvery(s.val_every, first=bool(budget))]


class _SigtermFlag:
    """Lightning's SIGTERM handler without its broadcast: a collective inside a signal handler meets no partner on
    the other processes (they are inside another collective, or in their own handler's), and the run hung or
    aborted in 4 of 16 stops. The flag alone suffices: the training loop broadcasts rank 0's every step, and every
    process then saves and stops. A class, not a closure: ``--strategy ddp_spawn`` pickles the Trainer."""

    def __init__(self, trainer: L.Trainer) -> None:
        self.trainer = trainer

    def __call__(self, signum, frame) -> None:
        connector = self.trainer._signal_connector
        launcher = self.trainer.strategy.launcher
        if not connector.received_sigterm and launcher is not None:
            launcher.kill(signum)  # the processes this one started, as Lightning's handler does
        connector.received_sigterm = True


def _flag_sigterm_only(trainer: L.Trainer) -> None:
    connector = getattr(trainer, "_signal_connector", None)
    if connector is not None and hasattr(connector, "_sigterm_notifier_fn"):  # Lightning 2.x's private name
        connector._sigterm_notifier_fn = _SigtermFlag(trainer)


def _record_decided(s: TrainSettings, out: Path, recorder: RunRecorder, epochs: int) -> None:
    """The epochs the time budget gave, in the run's record and its args.json (a resume continues the run as
    decided). Module-level, not a closure: ``--strategy ddp_spawn`` pickles the callbacks."""
    recorder.budget_decided(epochs)
    if rank_zero_only.rank == 0:
        write_settings(out, replace(s, epochs=epochs, time_budget=None), budget_gave=epochs)


def _print_outcome(s: TrainSettings, out: Path, results: dict, recorder: RunRecorder) -> None:
    """Where the run's files are, and the best test accuracy of the model it keeps."""
    acc, images = results.get("best_ternary_acc"), results.get("test_images")
    on = f" on {images:,} test images{' (--limit-eval)' if s.limit_eval else ''}" if images else ""
    print(f"\nrun folder: {out}")
    if acc is not None:
        print(f"best ternary test accuracy{on}: {100 * acc:.2f}%")
    elif results.get("best_float_acc") is not None and s.quant == "fp":  # a full-precision model, kept as is
        print(f"best full-precision test accuracy{on}: {100 * results['best_float_acc']:.2f}% (--quant fp)")
    elif results.get("best_float_acc") is not None:  # --no-eval-ternary: the Bit model was scored, and kept
        print(f"best Bit-model test accuracy{on}: {100 * results['best_float_acc']:.2f}% (--no-eval-ternary: "
              "the converted model was not evaluated)")
    kind = ("full-precision model" if s.quant == "fp" else "ternary model" if s.eval_ternary else
            "Bit model (not converted: `bitnetcnn convert` it)")
    print(f"{kind}: {out / recorder.model_path.name}")
    print(f"plot: {recorder.plot_path}\nmetrics: {recorder.csv_path}\nresults: {out / 'results.json'}")
