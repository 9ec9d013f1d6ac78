"""How long does a training epoch take here? Times ``bitnetcnn train``'s own pieces (the settings, DataModule,
BitClassifier and Trainer precision that ``bitnetcnn.train.run.build`` makes) for a few steps on the current
device, and prints images per second for training and for validation (Bit and ternary model, as every epoch
validates) and the epoch time they project, with the device's name.

    python benchmarks/train_throughput.py --model bitnet_cnn --dataset mnist_demo --steps 10          # CPU, ~30 s
    python benchmarks/train_throughput.py --model bit_resnet18 --dataset cifar100 --batch-size 256 --amp \\
        --accelerator gpu --steps 50 --synthetic
    python benchmarks/train_throughput.py --model bit_mobilenetv2 --dataset cifar100 --batch-size 256 --amp \\
        --accelerator cpu --steps 3 --synthetic --teacher src/bitnetcnn/pretrained/bitnet_resnet18.bnc   # what KD costs

``--synthetic`` feeds random uint8 images of the data set's shape through the same augmentation, so no data is
needed; the epoch is then projected for the data set's standard split sizes. ``benchmarks/data_loading.py``
separates the data pipeline's cost from the model's.

``--profile N`` runs the timed steps under ``torch.profiler`` (their time then includes its overhead) and prints how
busy the GPU was (its kernels' time over the steps' wall time) and the N operations that took the most host time:
a GPU run whose GPU is idle most of a step is bound by the host side of its steps (Python, Lightning, kernel
launches), which a larger batch, fewer, fused kernels (``--compile``) or one launch for all of them (CUDA graphs:
``--compile --compile-mode reduce-overhead``) relieve, not a faster GPU.
"""

from __future__ import annotations

import argparse
import json
import time

import lightning as L
import torch

from bitnetcnn.cli import count, positive_int
from bitnetcnn.machine import describe_device
from bitnetcnn.data import list_datasets
from bitnetcnn.data.sources import Split
from bitnetcnn.models import list_models
from bitnetcnn.train.run import TrainSettings, _precision, _quiet_lightning, build
from bitnetcnn.train.settings import COMPILE_MODES

# Standard split sizes (train, test), to project an epoch on synthetic data.
SPLIT_SIZES = {"mnist_demo": (10000, 2000), "mnist": (60000, 10000), "fashion_mnist": (60000, 10000),
               "cifar10": (50000, 10000), "cifar100": (50000, 10000), "tiny_imagenet": (100000, 10000)}


class Timer(L.Callback):
    """Wall time of the training steps after ``warmup`` and of the validation pass (its ternary conversion apart),
    with the device synchronized at each mark so that queued GPU work is counted where it ran."""

    def __init__(self, warmup: int, profile: bool = False) -> None:
        self.warmup = warmup
        self.profiler = torch.profiler.profile(activities=_activities()) if profile else None
        self._profiling = False
        self.train_start = self.train_end = self.val_start = self.val_first = self.val_end = None
        self.train_images = self.val_images = self.train_steps = 0

    @staticmethod
    def _now(module) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def _start(self, module) -> None:
        """The clock after the last warm-up step: Lightning fetches and augments a batch before its
        ``on_train_batch_start``, so a clock started there left the first timed batch's loading out."""
        if self.profiler is not None:
            self.profiler.__enter__()
            self._profiling = True
        self.train_start = self._now(module)

    def on_train_epoch_start(self, trainer, module):
        if self.warmup == 0:
            self._start(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.train_steps += 1
            self.train_images += len(batch[1])
            self.train_end = self._now(module)
        if batch_idx == self.warmup - 1:
            self._start(module)

    def _stop_profiling(self) -> None:
        if self._profiling:  # after the last timed step's synchronization: its kernels are in
            self.profiler.__exit__(None, None, None)
            self._profiling = False

    def on_validation_epoch_start(self, trainer, module):
        self._stop_profiling()
        self.val_start = self._now(module)

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if self.val_first is None:  # the ternary conversion (once an epoch) and the first fetch lie before it
            self.val_first = self._now(module)

    def on_train_epoch_end(self, trainer, module):
        self._stop_profiling()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_images += len(batch[1])

    def on_validation_epoch_end(self, trainer, module):
        self.val_end = self._now(module)


def _activities() -> list:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def profile_report(profiler, wall_s: float, steps: int, rows: int) -> str:
    """How busy the device was over the profiled steps, and the operations that took the most host time."""
    events = profiler.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    lines = []
    if device_us:
        lines.append(f"GPU busy {device_us / 1e6 / wall_s:.0%} of the timed steps: kernels {device_us / 1e3 / steps:.1f} "
                     f"ms a step of {wall_s * 1e3 / steps:.1f} ms (the profiler's overhead included)")
    else:
        lines.append(f"no GPU kernels profiled (a CPU run): {wall_s * 1e3 / steps:.1f} ms a step, the profiler's "
                     "overhead included")
    lines.append(f"the {rows} operations with the most host time over {steps} steps:")
    lines.append(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    return "\n".join(lines)


def device_name(accelerator: str) -> str:
    if accelerator == "gpu":
        return f"{describe_device('gpu')} (CUDA {torch.version.cuda})"
    return f"{describe_device('cpu')}; {torch.get_num_threads()} threads"


def synthetic(n: int, shape: tuple, num_classes: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g),
                 torch.randint(0, num_classes, (n,), generator=g))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bitnet_cnn", choices=list_models(), metavar="MODEL")
    p.add_argument("--dataset", default="mnist_demo", choices=list_datasets(), metavar="DATASET")
    p.add_argument("--data-dir")
    p.add_argument("--model-kwargs", type=json.loads, default={})
    p.add_argument("--act-bits", type=int, choices=[8, 4], help="quantize activations as train --act-bits does")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--eval-ternary", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (as train --compile; "
                   "compiling happens in the warm-up steps, untimed)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="torch.compile's mode, as train --compile-mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--teacher", nargs="+", default=[], metavar="CHECKPOINT",
                   help="distill from these teachers as train --kd --teacher does (their forward passes timed too)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, auto")
    p.add_argument("--steps", type=positive_int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=count, default=3, help="untimed training steps first")
    p.add_argument("--val-batches", type=int, default=8, help="validation batches timed (0: the whole test split)")
    p.add_argument("--synthetic", action="store_true", help="random images of the data set's shape (no data needed)")
    p.add_argument("--train-images", type=int, help="images an epoch trains on (default: the split's size)")
    p.add_argument("--test-images", type=int, help="images an epoch validates on (default: the split's size)")
    p.add_argument("--profile", type=count, default=0, metavar="N",
                   help="profile the timed steps: the GPU's busy share and the N operations with the most host time")
    args = p.parse_args()

    accelerator = args.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    settings = TrainSettings.from_dict(dict(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, model_kwargs=args.model_kwargs,
        act_bits=args.act_bits, batch_size=args.batch_size, optimizer=args.optimizer, amp=args.amp,
        channels_last=args.channels_last, eval_ternary=args.eval_ternary, compile=args.compile,
        compile_mode=args.compile_mode, accelerator=accelerator,
        devices="1", epochs=1, progress=False, kd=bool(args.teacher), teacher=args.teacher))
    L.seed_everything(0, verbose=False)
    data, module = build(settings)
    spec = data.spec
    shape = (spec.in_chans, spec.img_size, spec.img_size)
    if args.synthetic:
        data.train_split = synthetic((args.warmup + args.steps) * args.batch_size, shape, data.num_classes, 0)
        data.test_split = synthetic(max(1, args.val_batches) * data.eval_batch_size, shape, data.num_classes, 1)
        train_n, test_n = SPLIT_SIZES.get(args.dataset, (None, None))
    else:
        data.setup()
        train_n, test_n = len(data.train_split.labels), len(data.test_split.labels)
    train_n, test_n = args.train_images or train_n, args.test_images or test_n

    timer = Timer(args.warmup, profile=args.profile > 0)
    with _quiet_lightning():
        trainer = L.Trainer(
            max_epochs=1, accelerator=accelerator, devices=1, precision=_precision(settings, accelerator),
            limit_train_batches=args.warmup + args.steps, limit_val_batches=args.val_batches or 1.0,
            num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[timer])
        trainer.fit(module, datamodule=data)

    if not timer.train_steps:
        raise SystemExit(f"no training step was timed: the training split holds {trainer.num_training_batches} "
                         f"batches of {args.batch_size}, all of them in the {args.warmup} warm-up steps; lower "
                         "--warmup or --batch-size")
    # the steps that ran: a split shorter than --warmup + --steps ends the epoch early
    step_s = (timer.train_end - timer.train_start) / timer.train_steps
    train_ips = timer.train_images / (timer.train_end - timer.train_start)
    # per image without the once-an-epoch ternary conversion, which a projection adds once (scaled with the images,
    # --val-batches 1 multiplied it 39-fold for CIFAR's 10,000 test images)
    val_ips = timer.val_images / (timer.val_end - timer.val_first)
    setup_s = timer.val_first - timer.val_start
    print(f"device: {device_name(accelerator)}; torch {torch.__version__}, precision {trainer.precision}")
    print(f"{args.model} on {args.dataset}{' (synthetic images)' if args.synthetic else ''}, "
          f"batch {args.batch_size}, {args.optimizer}, channels_last={module.hparams.channels_last}, "
          f"eval_ternary={module.eval_ternary}, compile={args.compile and args.compile_mode}, act_bits={settings.act_bits}"
          + (f", distilled from {', '.join(args.teacher)}" if module.teacher is not None else ""))
    short = f", all the split holds of the {args.steps} asked for" if timer.train_steps < args.steps else ""
    print(f"training:   {train_ips:9.1f} img/s  ({step_s * 1e3:.1f} ms a step, {timer.train_steps} steps{short} after "
          f"{args.warmup} warm-up)")
    val_what = "Bit + ternary" if module.eval_ternary else "Bit"
    print(f"validation: {val_ips:9.1f} img/s  ({val_what} model, {timer.val_images} images), after {setup_s:.2f} s "
          f"of {'ternary conversion and ' if module.eval_ternary else ''}first fetch")
    if train_n and test_n:
        train_s = (train_n // args.batch_size) * step_s
        val_s = setup_s + test_n / val_ips
        print(f"epoch ({train_n} training + {test_n} test images): {train_s + val_s:.1f} s projected "
              f"= {train_s:.1f} s training + {val_s:.1f} s validation")
    else:
        print("epoch: pass --train-images and --test-images to project it")
    if args.profile:
        print(profile_report(timer.profiler, timer.train_end - timer.train_start, timer.train_steps, args.profile))


if __name__ == "__main__":
    main()
