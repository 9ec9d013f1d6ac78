"""A run's settings: one dataclass that the command line fills, ``args.json`` saves and ``--resume`` reads back,
and the checks that refuse values that could not train."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field, fields
from typing import Iterable, Optional

from bitnetcnn.data.catalog import IMAGE_FOLDER_CHANNELS
from bitnetcnn.quant import DEFAULT_QUANT, TernaryQuant
from bitnetcnn.train.schedule import DEFAULT_LR


class SettingsError(ValueError):
    """Settings that cannot work together (wrong classes, channels, missing teacher ...)."""


# Model arguments a run sets from its data set and flags: --model-kwargs may not give them too.
MODEL_KWARGS_FROM_FLAGS = {"num_classes": "the data set (--num-classes checks it)",
                           "in_chans": "the data set (an image folder's: --img-channels)", "quant": "--quant",
                           "scale_op": "--scale-op", "pow2": "--pow2", "act_bits": "--act-bits",
                           "fp_ends": "--fp-ends", "img_size": "the data set (an image folder's: --img-size)"}

# torch.compile's modes: "reduce-overhead" replays each step's kernels as CUDA graphs, one launch instead of hundreds,
# for a GPU step bound by its host side; on a CPU it compiles as "default" does.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")  # Lightning's others (tpu, hpu) need packages of their own
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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
    hflip: Optional[bool] = None  # random horizontal flips; None: the data set's (pictures yes, digits no)
    ema: Optional[float] = None  # decay of an exponential moving average of the weights; None: off
    quant: str = "ternary"
    scale_op: str = DEFAULT_QUANT.scale_op  # the fields of the layers' TernaryQuant (see weight_quant)
    pow2: bool = DEFAULT_QUANT.pow2
    act_bits: Optional[int] = DEFAULT_QUANT.act_bits
    fp_ends: bool = False
    model_kwargs: dict = field(default_factory=dict)
    num_classes: Optional[int] = None
    img_size: int = 64  # for imagefolder only
    img_channels: int = 3  # for imagefolder only: 3 reads pictures as RGB, 1 as greyscale
    mean: Optional[list[float]] = None  # input normalization, one value a channel; None: the data set's (a fine-tune,
    std: Optional[list[float]] = None  # --init: the file's, see run._init_normalization)
    eval_ternary: bool = True
    val_every: int = 1  # validate every N epochs (and always the last): validation costs a GPU epoch a second
    compile: bool = False  # torch.compile the training forward (fuses the fake quantization's elementwise ops)
    compile_mode: str = "default"  # torch.compile's mode; "reduce-overhead" replays CUDA graphs (fewer launches)
    save_every: float = 10.0  # minutes: last.ckpt in the middle of long epochs too (0: at epoch ends only)
    time_budget: Optional[float] = None  # minutes: after epoch 0, take as many epochs as fit (at most `epochs`)
    kd: bool = False
    teacher: list[str] = field(default_factory=list)  # several: distill their ensemble (mean logits)
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    kd_hints: float = 0.0  # weight of the feature hint loss (0: off)
    init: Optional[str] = None  # start from the weights of a bitnetcnn checkpoint (fine-tuning)
    amp: bool = False
    channels_last: Optional[bool] = None  # None: on for CPU runs and with --amp (run._channels_last)
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    limit_train: Optional[int] = None  # use only N training images, a fixed random sample (quick checks)
    limit_eval: Optional[int] = None  # evaluate on only N test images, a fixed random sample (quick checks)
    progress: bool = True

    @property
    def weight_quant(self) -> TernaryQuant:
        """How the model's Bit layers quantize (validated when made)."""
        return TernaryQuant(scale_op=self.scale_op, pow2=bool(self.pow2), act_bits=self.act_bits)

    def changed(self) -> list[str]:
        """The names of the settings that differ from their defaults, in field order."""
        defaults = TrainSettings()
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(defaults, f.name)]

    def as_command(self) -> str:
        """The ``bitnetcnn train`` command line that gives these settings (the fields that differ from their
        defaults, in field order): what a run started from Python records as its recipe."""
        words = ["bitnetcnn", "train"]
        switches = {f.name for f in fields(self) if isinstance(f.default, bool)} | {"channels_last", "hflip"}
        for name in self.changed():
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            if name in switches:  # --no-FLAG turns one off
                words.append(flag if value else f"--no-{flag[2:]}")
                continue
            if name in ("mean", "std"):  # one flag, a value a channel
                words += [flag, *map(str, value)]
                continue
            for item in value if isinstance(value, list) else [value]:
                text = json.dumps(item) if isinstance(item, dict) else str(item)
                # "--flag=-x": a value that starts with "-" would read as a flag of its own
                words += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
        return shlex.join(words)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def __post_init__(self) -> None:
        if isinstance(self.teacher, str):  # one path, as runs before ensembles saved it
            self.teacher = [self.teacher]
        self.teacher = list(self.teacher or [])
        self.validate()

    def refuse_unused_flags(self, given: Iterable[str] = ()) -> None:
        """Flags that the settings around them would leave unused: refused, since the run's command and args.json
        would record them as if they had shaped it. A setting counts as given where it differs from its default, or
        where ``given`` (the command line's flags, by field name) names it: ``--momentum 0.9`` is the default's
        value, but the command records it."""
        default, named = type(self), set(given)

        def set_(name: str) -> bool:
            return name in named or getattr(self, name) != getattr(default, name)

        if self.optimizer != "sgd" and set_("momentum"):
            raise SettingsError(f"--momentum {self.momentum:g} is SGD's: --optimizer {self.optimizer} does not use it; "
                                "add --optimizer sgd or leave --momentum out")
        if not self.kd:
            unused = [f"--{k.replace('_', '-')}" for k in ("kd_alpha", "kd_temperature") if set_(k)]
            if unused:
                raise SettingsError(f"{' and '.join(unused)} shape{'s' * (len(unused) == 1)} distillation, which needs "
                                    f"--kd and a --teacher: add them, or leave {'them' if len(unused) > 1 else 'it'} "
                                    "out")
        if self.quant == "fp":
            unused = [flag for flag, changed in (("--scale-op", set_("scale_op")),
                                                 ("--pow2", bool(self.pow2)), ("--act-bits", bool(self.act_bits)),
                                                 ("--fp-ends", bool(self.fp_ends)))
                      if changed]
            if unused:
                raise SettingsError(f"--quant fp trains full-precision layers, so {' and '.join(unused)} would not be "
                                    f"used: leave {'them' if len(unused) > 1 else 'it'} out, or train a ternary model")
        if self.kd and self.kd_alpha == 0 and set_("kd_temperature"):
            raise SettingsError(f"--kd-temperature {self.kd_temperature:g} softens the logits of --kd-alpha's term, "
                                "which --kd-alpha 0 leaves out: leave --kd-temperature out, or give --kd-alpha above 0")
        if self.kd and self.kd_alpha == 1 and set_("label_smoothing"):
            raise SettingsError(f"--label-smoothing {self.label_smoothing:g} smooths the cross-entropy, which "
                                "--kd-alpha 1 leaves out of the loss: leave --label-smoothing out, or give --kd-alpha "
                                "below 1")
        if self.kd and self.kd_alpha == 0 and self.kd_hints == 0:
            raise SettingsError("--kd-alpha 0 without --kd-hints leaves the teacher out of the loss (plain cross-"
                                "entropy): give --kd-alpha above 0 or --kd-hints, or leave --kd out")
        if self.compile_mode != default.compile_mode and not self.compile:
            raise SettingsError(f"--compile-mode {self.compile_mode} chooses how --compile compiles: add --compile, "
                                "or leave --compile-mode out")
        if self.compile and self.kd_hints > 0:
            raise SettingsError("--kd-hints reads the student's features outside its compiled forward, so --compile "
                                "would not be used: leave one of them out")
        if self.warmup_epochs >= self.epochs:
            raise SettingsError(f"--warmup-epochs {self.warmup_epochs:g} of a {self.epochs}-epoch run: the learning "
                                "rate would never reach its peak, nor decay; give fewer warm-up epochs than --epochs")

    def validate(self) -> None:
        """Refuse, with one line each, values that would crash later or train something other than asked."""
        at_least(1, epochs=self.epochs, batch_size=self.batch_size, num_nodes=self.num_nodes, img_size=self.img_size,
                 val_every=self.val_every)
        at_least(1, optional=True, num_classes=self.num_classes, limit_train=self.limit_train,
                 limit_eval=self.limit_eval)
        at_least(0, seed=self.seed)
        if self.seed > 2**32 - 1:  # numpy's bound, which its own error gave without naming --seed
            raise SettingsError(f"--seed {self.seed} is out of range: it must lie in [0, {2**32 - 1}]")
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
        for std in self.std or ():
            in_range(std, "std", low=0.0, low_open=True)
        for mean in self.mean or ():  # nan trained to "diverged in epoch 0", blaming the learning rate
            in_range(mean, "mean", low=-math.inf)
        for name in ("out", "init"):  # an empty string trained into the default folder, or from scratch, unasked
            if getattr(self, name) is not None and not str(getattr(self, name)).strip():
                raise SettingsError(f"--{name} is empty: give a path, or leave --{name} out")
        if any(not str(t).strip() for t in self.teacher):
            raise SettingsError("--teacher is empty: give the path of a checkpoint or a published weight's name")
        if self.ema is not None:
            in_range(self.ema, "ema", low=0.0, high=1.0, low_open=True, high_open=True)
        in_range(self.kd_alpha, "kd_alpha", low=0.0, high=1.0)
        in_range(self.kd_temperature, "kd_temperature", low=0.0, low_open=True)
        try:
            self.weight_quant  # noqa: B018 - validates scale_op, pow2, act_bits
        except ValueError as e:
            raise SettingsError(str(e)) from None
        if self.accelerator not in ACCELERATORS:
            raise SettingsError(f"unknown --accelerator {self.accelerator!r}: choose one of {', '.join(ACCELERATORS)}")
        if self.compile_mode not in COMPILE_MODES:
            raise SettingsError(f"unknown --compile-mode {self.compile_mode!r}: choose one of {', '.join(COMPILE_MODES)}")
        if self.optimizer not in DEFAULT_LR:
            raise SettingsError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(DEFAULT_LR)}")
        if self.kd_hints > 0 and not self.kd:
            raise SettingsError("--kd-hints needs --kd and a --teacher")
        if self.teacher and not self.kd:
            raise SettingsError("--teacher is given without --kd, so it would not be used: add --kd to distill "
                                "from it, or leave --teacher out")
        self.refuse_unused_flags()
        if not isinstance(self.model_kwargs, dict):
            raise SettingsError(f"--model-kwargs must be a JSON object such as '{{\"act\": \"relu\"}}', not "
                                f"{self.model_kwargs!r}")
        reserved = sorted(set(self.model_kwargs) & set(MODEL_KWARGS_FROM_FLAGS))
        if reserved:
            raise SettingsError(f"--model-kwargs sets {', '.join(reserved)}, which the run takes from "
                                f"{', '.join(MODEL_KWARGS_FROM_FLAGS[k] for k in reserved)}: leave "
                                f"{'them' if len(reserved) > 1 else 'it'} out of --model-kwargs")
        if self.img_channels not in IMAGE_FOLDER_CHANNELS:
            raise SettingsError(f"--img-channels {self.img_channels}: an image folder is read as RGB (3) or greyscale "
                                "(1)")
        if self.devices != "auto":
            try:
                devices = int(self.devices)
            except (TypeError, ValueError):
                devices = 0
            if devices < 1 and devices != -1:
                raise SettingsError(f"--devices {self.devices}: give a number of devices (1 or more), -1 for all, "
                                    "or auto")
