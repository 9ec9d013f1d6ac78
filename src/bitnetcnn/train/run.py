"""One training run, from settings to a run folder: the Trainer, its callbacks, resume, distillation."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import shlex
import sys
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.utilities import rank_zero_only

from bitnetcnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bitnetcnn.checkpoint.format import is_bitnetcnn_checkpoint, native_header
from bitnetcnn.checkpoint.pretrained_cfg import from_header
from bitnetcnn.data.datamodule import ImageDataModule
from bitnetcnn.models import get_model_config
from bitnetcnn.nn import BIT_LAYERS, ActQuantizer
from bitnetcnn.quant import DEFAULT_QUANT, TernaryQuant
from bitnetcnn.quiet import quiet_loggers
from bitnetcnn.train.callbacks import (FitToTimeBudget, MidEpochCheckpoint, ProgressBar, RunRecorder,
                                       ValidateEvery)
from bitnetcnn.train.distill import TeacherEnsemble
from bitnetcnn.train.module import BitClassifier
from bitnetcnn.train.schedule import DEFAULT_LR, warmup_ema


class SettingsError(ValueError):
    """Settings that cannot work together (wrong classes, channels, missing teacher ...)."""


def at_least(low: int, optional: bool = False, **values) -> None:
    """Each value an int >= ``low`` (None allowed when ``optional``)."""
    for name, value in values.items():
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SettingsError(f"--{name.replace('_', '-')} must be an integer >= {low}, not {value!r}")


def in_range(value, name: str, low: float, high: float = math.inf, low_open: bool = False,
             high_open: bool = False) -> None:
    """A finite number within [low, high] (an open end excludes it): inf and nan never train anything useful."""
    flag = f"--{name.replace('_', '-')}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingsError(f"{flag} must be a finite number, not {value!r}")
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
        raise SettingsError(f"{flag} {value!r} is out of range: it must lie in {lo}, {hi}")




@dataclass
class TrainSettings:
    """Everything a run depends on; saved as ``args.json`` in the run folder so ``--resume`` repeats it exactly."""

    model: str = "bitnet_cnn"
    dataset: str = "mnist_demo"
    data_dir: Optional[str] = None
    download: bool = False
    out: Optional[str] = None
    epochs: int = 4  # the defaults train the demo; see docs/training.md for longer recipes
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: Optional[float] = None  # None: DEFAULT_LR of the optimizer
    wd: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 0.3
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    rotate: Optional[float] = None  # None: the data set's default (docs/training.md)
    zoom: Optional[float] = None
    elastic: Optional[float] = None  # None: the data set's default (off)
    ema: Optional[float] = None  # decay of an exponential moving average of the weights; None: off
    quant: str = "ternary"
    scale_op: str = DEFAULT_QUANT.scale_op  # the fields of the layers' TernaryQuant (see weight_quant)
    pow2: bool = DEFAULT_QUANT.pow2
    act_bits: Optional[int] = DEFAULT_QUANT.act_bits
    fp_ends: bool = False
    model_kwargs: dict = field(default_factory=dict)
    num_classes: Optional[int] = None
    img_size: int = 64  # for imagefolder only
    eval_ternary: bool = True
    val_every: int = 1  # validate every N epochs (and always the last): validation costs a GPU epoch a second
    compile: bool = False  # torch.compile the training forward (fuses the fake quantization's elementwise ops)
    save_every: float = 10.0  # minutes: last.ckpt in the middle of long epochs too (0: at epoch ends only)
    time_budget: Optional[float] = None  # minutes: after epoch 0, take as many epochs as fit (at most `epochs`)
    kd: bool = False
    teacher: list[str] = field(default_factory=list)  # several: distill their ensemble (mean logits)
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    kd_hints: float = 0.0  # weight of the feature hint loss (0: off)
    init: Optional[str] = None  # start from the weights of a bitnetcnn checkpoint (fine-tuning)
    amp: bool = False
    channels_last: Optional[bool] = None  # None: on for CPU runs and with --amp (see _channels_last)
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    limit_train: Optional[int] = None  # use only the first N training images (quick checks)
    limit_eval: Optional[int] = None  # evaluate on only the first N test images (quick checks)
    progress: bool = True

    @property
    def weight_quant(self) -> TernaryQuant:
        """How the model's Bit layers quantize (validated when made)."""
        return TernaryQuant(scale_op=self.scale_op, pow2=bool(self.pow2), act_bits=self.act_bits)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def __post_init__(self) -> None:
        if isinstance(self.teacher, str):  # one path, as runs before ensembles saved it
            self.teacher = [self.teacher]
        self.teacher = list(self.teacher or [])
        self.validate()

    def validate(self) -> None:
        """Refuse, with one line each, values that would crash later or train something other than asked."""
        at_least(1, epochs=self.epochs, batch_size=self.batch_size, num_nodes=self.num_nodes, img_size=self.img_size,
                 val_every=self.val_every)
        at_least(1, optional=True, num_classes=self.num_classes, limit_train=self.limit_train,
                 limit_eval=self.limit_eval)
        if self.lr is not None:
            in_range(self.lr, "lr", low=0.0, low_open=True)
        in_range(self.wd, "wd", low=0.0)
        in_range(self.save_every, "save_every", low=0.0)
        if self.time_budget is not None:
            in_range(self.time_budget, "time_budget", low=0.0, low_open=True)
        in_range(self.momentum, "momentum", low=0.0, high=1.0, high_open=True)
        in_range(self.warmup_epochs, "warmup_epochs", low=0.0)
        in_range(self.label_smoothing, "label_smoothing", low=0.0, high=1.0, high_open=True)
        for name in ("mixup", "cutmix", "kd_hints"):
            in_range(getattr(self, name), name, low=0.0)
        for name in ("rotate", "elastic"):
            if getattr(self, name) is not None:
                in_range(getattr(self, name), name, low=0.0)
        if self.zoom is not None:
            in_range(self.zoom, "zoom", low=0.0, high=1.0, high_open=True)
        if self.ema is not None:
            in_range(self.ema, "ema", low=0.0, high=1.0, low_open=True, high_open=True)
        in_range(self.kd_alpha, "kd_alpha", low=0.0, high=1.0)
        in_range(self.kd_temperature, "kd_temperature", low=0.0, low_open=True)
        try:
            self.weight_quant  # noqa: B018 - validates scale_op, pow2, act_bits
        except ValueError as e:
            raise SettingsError(str(e)) from None
        if self.optimizer not in DEFAULT_LR:
            raise SettingsError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(DEFAULT_LR)}")
        if self.kd_hints > 0 and not self.kd:
            raise SettingsError("--kd-hints needs --kd and a --teacher")
        if self.teacher and not self.kd:
            raise SettingsError("--teacher is given without --kd, so it would not be used: add --kd to distill "
                                "from it, or leave --teacher out")
        if not isinstance(self.model_kwargs, dict):
            raise SettingsError(f"--model-kwargs must be a JSON object such as '{{\"act\": \"relu\"}}', not "
                                f"{self.model_kwargs!r}")
        if self.devices != "auto":
            try:
                devices = int(self.devices)
            except (TypeError, ValueError):
                devices = 0
            if devices < 1 and devices != -1:
                raise SettingsError(f"--devices {self.devices}: give a number of devices (1 or more), -1 for all, "
                                    "or auto")




def _default_out(s: TrainSettings) -> Path:
    base = Path("runs") / f"{s.model}-{s.dataset}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


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


def _check_teacher(teacher: torch.nn.Module, num_classes: int, path: str) -> torch.nn.Module:
    classes = teacher.model_args.get("num_classes") if hasattr(teacher, "model_args") else None
    if classes is not None and classes != num_classes:
        raise SettingsError(f"teacher {path} predicts {classes} classes but the student has {num_classes}: "
                            "distill from a teacher trained on the same data set")
    if any(isinstance(m, BIT_LAYERS) for m in teacher.modules()):
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


# Model arguments a fine-tune may change; every other one must match the --init checkpoint.
FINE_TUNABLE_ARGS = frozenset({"quant", "scale_op", "pow2", "act_bits", "fp_ends", "drop_rate", "drop_path_rate"})


def _check_init_args(model: torch.nn.Module, args: dict, path: str) -> None:
    """Refuse an --init checkpoint built for another model, data set or architecture, including arguments that keep
    the tensor shapes (the activation, where the stride sits): those weights would load without error into a
    different network."""
    ours = model.model_args
    identity = ("name", "num_classes", "in_chans")
    for key in identity:
        if key in args and args[key] != ours[key]:
            raise SettingsError(f"--init {path} has {key}={args[key]!r} but this run needs {key}={ours[key]!r} "
                                f"(model {ours['name']} on the chosen data set)")
    defaults = {name: p.default for name, p in inspect.signature(type(model)).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for key in sorted((set(args) | set(ours)) - FINE_TUNABLE_ARGS - set(identity)):
        # JSON headers hold sequences as lists, builders take tuples: (1, 2, 2) and [1, 2, 2] are the same argument
        theirs, mine = (_as_tuple(a.get(key, defaults.get(key))) for a in (args, ours))
        if theirs != mine:
            raise SettingsError(f"--init {path} was built with {key}={theirs!r} but this run builds {key}={mine!r}: "
                                f"pass --model-kwargs '{json.dumps({key: theirs})}' to fine-tune it")


def _as_tuple(value):
    return tuple(value) if isinstance(value, list) else value


def _check_init(model: torch.nn.Module, path: str) -> None:
    ours = model.model_args
    if is_bitnetcnn_checkpoint(path):  # it names its architecture, which must be this run's
        source = load_checkpoint(path)
        _check_init_args(model, getattr(source, "model_args", {}), path)
    else:  # the seed's zip or a state dict: read into this run's architecture (the quantization is the run's)
        architecture = {k: v for k, v in ours.items() if k != "name" and k not in FINE_TUNABLE_ARGS}
        try:
            source = load_checkpoint(path, model_name=ours["name"], **architecture)
        except CheckpointError as e:  # tensors that do not fit: name the first; anything else as the loader says
            lines = [line.strip() for line in str(e).strip().splitlines()]
            detail = next((line for line in lines if line.startswith(("size mismatch", "Missing", "Unexpected"))),
                          None)
            if detail is None:
                raise
            raise SettingsError(f"--init {path} does not fit {ours['name']} with this run's arguments: "
                                f"{detail}") from None
    from bitnetcnn.nn import convert_to_bit

    if not any(isinstance(m, BIT_LAYERS) for m in source.modules()) and ours["quant"] == "ternary":
        source = convert_to_bit(source)
    try:
        result = model.load_state_dict(source.state_dict(), strict=False)
    except RuntimeError as e:  # tensors of other shapes: another width or depth
        first = str(e).strip().splitlines()[-1].strip()
        raise SettingsError(f"--init {path} does not fit {ours['name']} with this run's arguments: {first}") from None
    # Activation quantizers this run adds (--act-bits on a float-activation checkpoint) start unset and take their
    # scale from the first batches: quantization-aware fine-tuning of a trained model.
    new_quantizers = {f"{name}.running_scale" for name, m in model.named_modules() if isinstance(m, ActQuantizer)}
    missing = [k for k in result.missing_keys if k not in new_quantizers]
    if missing or result.unexpected_keys:
        raise SettingsError(f"--init {path} does not fit {ours['name']}: missing {missing[:5]}, "
                            f"unexpected {result.unexpected_keys[:5]}")


def _init_metadata(path: str) -> dict:
    """What a fine-tune started from, for its checkpoint's header (its header read once):

    - ``init``: the file, its accuracy and the command that made it (and, recursively, what that one started
      from), so a multi-stage recipe can be rerun from the header alone;
    - ``training``: the recipe's earlier commands with their wall times and hardware (RunRecorder appends this
      run's).
    """
    header = native_header(path)
    if header is None:  # the seed's zip or a state dict: no header, no recipe
        return {"init": {"file": Path(path).name, "accuracy": None, "command": None}, "training": []}
    meta = header.get("metadata") or {}
    lineage = {"file": Path(path).name, "accuracy": meta.get("accuracy"), "command": meta.get("command")}
    if meta.get("init"):
        lineage["init"] = meta["init"]
    return {"init": lineage, "training": [asdict(step) for step in from_header(header).training]}


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


def build(s: TrainSettings):
    """The data module, the Lightning module and the run folder for these settings (validated)."""
    get_model_config(s.model)  # unknown model: error with the valid names, before any data is read
    _check_accelerator(s)
    data = ImageDataModule(s.dataset, s.data_dir, s.batch_size, download=s.download, img_size=s.img_size,
                           limit_train=s.limit_train, limit_eval=s.limit_eval, rotate=s.rotate, zoom=s.zoom,
                           elastic=s.elastic, seed=s.seed)
    spec = data.spec
    num_classes = data.num_classes
    if s.num_classes is not None and s.num_classes != num_classes:
        raise SettingsError(f"--num-classes {s.num_classes} but data set {s.dataset!r} has {num_classes} classes")
    channels_last = _channels_last(s)
    q = s.weight_quant
    model_kwargs = dict(quant=s.quant, scale_op=q.scale_op, pow2=q.pow2, act_bits=q.act_bits, fp_ends=s.fp_ends,
                        **s.model_kwargs)
    lr = s.lr if s.lr is not None else DEFAULT_LR[s.optimizer]
    module = BitClassifier(
        s.model, num_classes, spec.in_chans, model_kwargs, optimizer=s.optimizer, lr=lr, weight_decay=s.wd,
        momentum=s.momentum, warmup_epochs=s.warmup_epochs, label_smoothing=s.label_smoothing, mixup=s.mixup,
        cutmix=s.cutmix, eval_ternary=s.eval_ternary, kd_alpha=s.kd_alpha if s.kd else 0.0,
        kd_temperature=s.kd_temperature, kd_hints=s.kd_hints if s.kd else 0.0, channels_last=channels_last,
        compile=s.compile,
    )
    data.channels_last = channels_last
    if s.kd:
        if not s.teacher:
            raise SettingsError("--kd needs --teacher PATH: a checkpoint of the full-precision twin "
                                "(train it with this command and --quant fp)")
        teachers = [_check_teacher(load_checkpoint(path), num_classes, path) for path in s.teacher]
        if s.kd_hints > 0:
            _check_hints(module.model, teachers, s.teacher, (spec.in_chans, spec.img_size, spec.img_size))
        module.set_teacher(teachers[0] if len(teachers) == 1 else TeacherEnsemble(teachers))
    if s.init:
        _check_init(module.model, s.init)
    return data, module


# Lightning's notices that a user of this command need not act on: hardware lines, tips, "Loading
# `train_dataloader` to estimate ...", "`Trainer.fit` stopped ...", a folder we made ourselves "exists and is not
# empty", a deprecation inside Lightning. Its warnings about real problems still show.
QUIET_WARNINGS = (r"Checkpoint directory .* exists and is not empty", r".*isinstance\(treespec, LeafSpec\)",
                  # the data module restores the loader's place in the epoch (ImageDataModule.state_dict)
                  r"You're resuming from a checkpoint that ended before the epoch ended")


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
    return [WeightAveraging(avg_fn=warmup_ema(s.ema))]


# Steps between progress-bar refreshes on a GPU: each refresh reads the logged loss back from the device, and a read
# each step would make the CPU wait for the GPU at every step.
GPU_PROGRESS_REFRESH = 20


def _progress_bar(s: TrainSettings) -> list:
    if not s.progress:
        return []
    # on a CPU a refresh each step costs nothing
    return [ProgressBar(refresh_rate=1 if _on_cpu(s) else GPU_PROGRESS_REFRESH)]


# What a resumed run may change: where and on what it runs, not what it trains (--epochs only to extend the run).
RESUME_MAY_CHANGE = frozenset({"out", "progress", "data_dir", "accelerator", "devices", "num_nodes", "strategy",
                               "val_every", "compile", "save_every"})


def _given(s: TrainSettings) -> set[str]:
    """The settings that differ from the defaults: what a caller of the API asked for."""
    defaults = TrainSettings()
    return {f.name for f in fields(s) if getattr(s, f.name) != getattr(defaults, f.name)}


def _resumed_settings(s: TrainSettings, given: Optional[set[str]]) -> TrainSettings:
    """The saved settings of the run in ``s.out``, with what may change on a resume; anything else given that
    differs from the saved value is refused, since it could not take effect."""
    if not s.out:
        raise SettingsError("--resume needs --out RUN_FOLDER (the folder of the run to continue)")
    saved_path = Path(s.out) / "args.json"
    if not saved_path.exists():
        raise SettingsError(f"--resume: {saved_path} not found; is {s.out} a run folder?")
    try:
        saved = TrainSettings.from_dict(json.loads(saved_path.read_text()))
    except (ValueError, TypeError) as e:
        raise SettingsError(f"--resume: {saved_path} is not a readable settings file ({e})") from None
    given = _given(s) if given is None else set(given) & {f.name for f in fields(TrainSettings)}
    changes = {}
    for name in sorted(given - {"out", "progress"}):
        mine, theirs = getattr(s, name), getattr(saved, name)
        if name in RESUME_MAY_CHANGE or mine == theirs:
            changes[name] = mine
        elif name == "epochs" and mine > theirs:
            changes[name] = mine  # extends the run: the schedule stretches over the new length
        elif name == "epochs":
            raise SettingsError(f"--resume --epochs {mine}: the run in {s.out} was set for {theirs} epochs; give more "
                                f"than {theirs} to extend it, or leave --epochs out to finish it")
        else:
            flag = "--" + name.replace("_", "-")
            raise SettingsError(f"--resume continues the run in {s.out} with its saved settings, so {flag} {mine!r} "
                                f"(saved: {theirs!r}) cannot take effect: leave it out, or start a new run with a "
                                f"fresh --out (--init {Path(s.out) / 'best_ternary.bnc'} fine-tunes from this one)")
    return replace(saved, out=s.out, progress=s.progress, **changes)


def _write_settings(out: Path, s: TrainSettings) -> None:
    (out / "args.json").write_text(json.dumps(asdict(s), indent=2) + "\n")


def _check_readable_checkpoint(path: Path) -> None:
    """A damaged last.ckpt (a full disk, a copy cut short) named as such, before Lightning's unpickling error."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        bad = f"not a readable checkpoint: {e}"
    if bad:
        raise SettingsError(f"--resume: {path} is damaged ({bad}), so the run cannot continue from it; start a new "
                            f"run with a fresh --out (--init {path.parent / 'best_ternary.bnc'} starts from the best "
                            "model so far)")


def _first_process() -> bool:
    """False in the processes a distributed launcher starts after the first one: they join the run it made."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


# What a run leaves that a new run would replace; a folder with none of them (a run that stopped before its first
# epoch ended leaves only args.json) may take a new run.
RUN_RESULTS = ("last.ckpt", "best_ternary.bnc", "metrics.csv", "results.json")


def _check_new_run_folder(out: Path) -> None:
    """A new run never writes into another run's folder: its models, metrics and results would be replaced."""
    if out.exists() and not out.is_dir():
        raise SettingsError(f"--out {out} is a file, not a folder: give a folder for the run")
    if out.is_dir() and any((out / name).exists() for name in RUN_RESULTS):
        raise SettingsError(f"--out {out} already holds a run: continue it with --resume --out {out}, or give a "
                            "fresh --out (without --out, a new folder runs/MODEL-DATASET-N is picked)")


def train(s: TrainSettings, resume: bool = False, command: Optional[str] = None,
          given: Optional[set[str]] = None) -> dict:
    """Train, validate each epoch (Bit and ternary), keep the best ternary model; returns results.json's content.

    ``resume=True`` continues the run in ``s.out`` with its saved settings; ``given`` names the settings the caller
    set (the command line's flags; default: those that differ from the defaults), which a resume checks.
    """
    if resume:
        s = _resumed_settings(s, given)
    out = Path(s.out) if s.out else _default_out(s)
    s.out = str(out)
    if not resume and _first_process():
        _check_new_run_folder(out)
    L.seed_everything(s.seed, workers=True, verbose=False)
    data, module = build(s)
    data.setup()  # a missing data set is reported before the run folder is made
    if len(data.train_split.labels) < s.batch_size:  # the last partial batch is dropped: no step at all
        raise SettingsError(f"the training set has {len(data.train_split.labels)} images, fewer than one batch of "
                            f"{s.batch_size}: lower --batch-size (or raise --limit-train)")
    averaging = _weight_averaging(s)
    last = out / "last.ckpt"
    if resume and not last.exists():
        raise SettingsError(f"--resume: {last} not found (the run stopped before its first epoch ended); "
                            "start it again without --resume")
    if resume:
        _check_readable_checkpoint(last)
    out.mkdir(parents=True, exist_ok=True)
    command = command or shlex.join(["bitnetcnn", *sys.argv[1:]])
    metadata = {
        "dataset": s.dataset,
        "mean": list(data.spec.mean),
        "std": list(data.spec.std),
        "input_size": [data.spec.in_chans, data.spec.img_size, data.spec.img_size],
    }
    if data.spec.class_names is not None:
        metadata["class_names"] = list(data.spec.class_names)
    if s.init:
        metadata.update(_init_metadata(s.init))
    metadata["test_images"] = len(data.test_split.labels)
    recorder = RunRecorder(out, save_checkpoint, command, metadata)
    # last.ckpt, overwritten (atomically, by Lightning's fsspec transaction) at the end of every epoch
    checkpoint = ModelCheckpoint(dirpath=out, filename="last", save_top_k=1, save_on_train_epoch_end=True,
                                 enable_version_counter=False)
    mid_epoch = [MidEpochCheckpoint(out, s.save_every)] if s.save_every > 0 else []
    budget = []
    if s.time_budget is not None:
        @rank_zero_only
        def record_epochs(epochs: int) -> None:  # a resume continues the run as decided
            _write_settings(out, replace(s, epochs=epochs, time_budget=None))

        budget = [FitToTimeBudget(60 * s.time_budget, recorder.elapsed_s, s.val_every, record_epochs)]
    devices = s.devices if s.devices == "auto" else int(s.devices)
    with _quiet_lightning():
        trainer = L.Trainer(
            max_epochs=s.epochs, accelerator=s.accelerator, devices=devices, num_nodes=s.num_nodes,
            strategy=s.strategy,
            precision=_precision(s, s.accelerator if s.accelerator != "auto" else ("cpu" if _on_cpu(s) else "gpu")),
            callbacks=[recorder, checkpoint, *mid_epoch, ValidateEvery(s.val_every, first=bool(budget)), *budget,
                       *averaging, *_progress_bar(s)],
            logger=False,
            num_sanity_val_steps=0,
            enable_progress_bar=s.progress, enable_model_summary=False, default_root_dir=out,
        )
        if trainer.is_global_zero:  # on a resume too: an extended --epochs is the run's length from now on
            _write_settings(out, s)
        if resume and trainer.is_global_zero:
            print(f"resuming {out} from {last}")
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    _leave_process_group()
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if trainer.is_global_zero:
        acc = results.get("best_ternary_acc")
        print(f"\nrun folder: {out}")
        if acc is not None:
            print(f"best ternary test accuracy: {100 * acc:.2f}%")
        print(f"ternary model: {out / recorder.model_path.name}")
        print(f"plot: {recorder.plot_path}\nmetrics: {recorder.csv_path}\nresults: {results_path}")
    return results
