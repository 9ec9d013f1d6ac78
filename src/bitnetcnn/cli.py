"""The ``bitnetcnn`` command: argument parsing only; the work happens in the floors below."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from bitnetcnn.deploy.commands import DEFAULT_CALIBRATION_IMAGES
from bitnetcnn.extras import MissingExtra, extra_of, install_hint, require
from bitnetcnn.machine import usable_cores
from bitnetcnn.models.quant_spec import QUANT_MODES
from bitnetcnn.quant import ACT_BITS, SCALE_OPS
from bitnetcnn.train.schedule import DEFAULT_LR
from bitnetcnn.train.settings import COMPILE_MODES, TrainSettings

TRAIN_EXAMPLE = ("bitnetcnn train --model bit_resnet18 --dataset cifar100 --epochs 100 --batch-size 128 --lr 0.1 "
                 "--optimizer sgd --wd 5e-4 --amp --out runs/r18")


def positive_int(text: str) -> int:
    """argparse type: a count (batch size, threads, images, classes, pixels)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def count(text: str) -> int:
    """argparse type: a number of items where 0 means none."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def json_object(text: str) -> dict:
    """argparse type: a JSON object (the settings check that it is one)."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({e}); e.g. '{{\"act\": \"relu\"}}'") from None


def output_file(text: str) -> str:
    """argparse type: a file to write (``~`` expanded, as the shell does not in ``--output=~/x``), refused up front
    where it is a folder, lies under a file or in a folder this process cannot write (not after the work is done)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give the path of a file to write")
    path = Path(os.path.expanduser(text))  # Path.expanduser raised RuntimeError on ~nosuchuser
    try:
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder: give the path of a file to write")
        if path.exists() and not path.is_file():  # written beside and renamed, a device or pipe would become a file
            raise argparse.ArgumentTypeError(f"{text} is not a regular file (a device or a pipe): give the path of a "
                                             "file to write")
        parent = next((p for p in path.absolute().parents if p.exists()), None)
    except PermissionError:
        raise argparse.ArgumentTypeError(f"{text} cannot be written: a folder on its path cannot be entered; give a "
                                         "path in a folder you can write") from None
    if parent is not None and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text} cannot be written: {parent} is a file, not a folder")
    if parent is not None and not _can_create_in(parent):
        raise argparse.ArgumentTypeError(f"{text} cannot be written: {parent} is not writable; give a path in a "
                                         "folder you can write")
    return str(path)


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be made in ``folder``, tried: os.access says yes to root in /sys, whose bench then lost its
    JSON after the whole run."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def refuse_overwriting(output: str, source: str, suffix: str, flag: str) -> None:
    """An ``export`` or ``bench`` output may replace an earlier one (a file ending in ``suffix``), never the model it
    reads nor another kind of file (a checkpoint, a run's ``last.ckpt``): those were lost without a word."""
    out = Path(output)
    if not out.exists():
        return
    if Path(source).exists() and os.path.samefile(out, source):
        raise ValueError(f"{flag} {output} is the model being read: give another file to write")
    if out.suffix.lower() != suffix:
        raise ValueError(f"{flag} {output} exists and is not a {suffix} file (a checkpoint, say): give another path, "
                         "or remove it first")
    if out.name in ("args.json", "results.json") and (out.parent / "last.ckpt").exists():
        raise ValueError(f"{flag} {output} is a training run's record (--resume reads it): give another path")


def fraction(text: str) -> float:
    """argparse type: a share in (0, 1], such as a top-1 agreement."""
    value = float(text)
    if not (0 < value <= 1):
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1] (0.99 is 99%)")
    return value


def seconds(text: str) -> float:
    """argparse type: a time budget; 0 means the least the command allows."""
    value = float(text)
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of seconds >= 0")
    return value


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a ternary (or full-precision) model", epilog=f"example: {TRAIN_EXAMPLE}")
    a = p.add_argument
    a("--model", help="registry name (bitnetcnn.list_models())")
    a("--dataset", help="mnist_demo (bundled), mnist, fashion_mnist, cifar10, cifar100, "
      "tiny_imagenet, imagefolder")
    a("--data-dir", help="data root (default: $BITNETCNN_DATA, else data/ in the cache: $BITNETCNN_CACHE, "
                            "else $XDG_CACHE_HOME/bitnetcnn, else ~/.cache/bitnetcnn)")
    a("--download", action="store_true", help="let torchvision fetch a missing data set where the network allows")
    a("--out", help="run folder (default: runs/MODEL-DATASET[-N])")
    a("--resume", action="store_true", help="continue the run in --out from its last.ckpt, with its saved settings")
    a("--epochs", type=int)
    a("--batch-size", type=int)
    a("--optimizer", choices=list(DEFAULT_LR), help="sgd means Nesterov momentum (plain SGD with --momentum 0)")
    a("--lr", type=float, help="peak learning rate (default " + ", ".join(f"{lr:g} for {opt}" for opt, lr in
                                                                        DEFAULT_LR.items()) + ")")
    a("--wd", type=float, help="weight decay (never on norms, biases, scales)")
    a("--momentum", type=float)
    a("--warmup-epochs", type=float)
    a("--label-smoothing", type=float)
    a("--mixup", type=float, help="MixUp alpha on training batches (0: off)")
    a("--cutmix", type=float, help="CutMix alpha on training batches (0: off)")
    a("--rotate", type=float, help="random rotation in degrees on training batches (default: the data set's)")
    a("--zoom", type=float, help="random scaling by 1 +- ZOOM on training batches (default: the data set's)")
    a("--elastic", type=float, metavar="ALPHA", help="elastic distortion of strength ALPHA pixels (Gaussian sigma 4) "
      "on training batches (MNIST: 34; default: off)")
    a("--mean", type=float, nargs="+", help="input normalization, a value a channel (default: the data set's; a "
      "fine-tune (--init) takes the file's)")
    a("--std", type=float, nargs="+", help="input normalization's std, a value a channel (default: as --mean)")
    a("--hflip", action=argparse.BooleanOptionalAction, help="random horizontal flips of training images "
      "(default: the data set's: on for pictures and image folders, off for digits; --no-hflip for text, digits, "
      "signs)")
    a("--ema", type=float, metavar="DECAY", help="validate and ship an exponential moving average of the weights "
      "(e.g. 0.999; default: off)")
    a("--quant", choices=QUANT_MODES, help="fp trains the full-precision twin (teacher)")
    a("--scale-op", choices=SCALE_OPS, help="per-channel scale: op(|W|)")
    a("--pow2", action="store_true", help="train with power-of-two scales")
    a("--act-bits", type=int, choices=[b for b in ACT_BITS if b],
      help="quantize activations too (default: float activations)")
    a("--fp-ends", action="store_true", help="keep the first and last layers in full precision")
    a("--model-kwargs", type=json_object, help='extra model arguments as JSON, e.g. \'{"act": "silu"}\'')
    a("--num-classes", type=int, help="check that the data set has this many classes")
    a("--img-size", type=int, help="image side for --dataset imagefolder")
    a("--img-channels", type=int, choices=(1, 3), help="--dataset imagefolder: read the pictures as RGB "
      "(3) or greyscale (1, as the MNIST models take them)")
    a("--eval-ternary", action=argparse.BooleanOptionalAction,
      help="also evaluate the converted ternary model every epoch")
    a("--val-every", type=int, metavar="N", help="validate every N epochs and in the last one (default 1)")
    a("--save-every", type=float, metavar="MINUTES", help="also write last.ckpt every MINUTES of "
      "training inside an epoch, so an interruption loses at most that much (0: at epoch ends only; default 10)")
    a("--time-budget", type=float, metavar="MINUTES", help="size the run to MINUTES of wall time: epoch 0 is timed "
      "(and validated), then the run takes as many epochs as fit, at most --epochs, its learning-rate schedule "
      "fitted to them (recorded in args.json, so --resume continues that run)")
    a("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the training forward (pays on GPUs "
      "after its first minute of compiling); --resume --no-compile goes on without it (where torch.compile fails)")
    a("--compile-mode", choices=COMPILE_MODES, help="how --compile compiles (torch.compile's mode; default: "
      "default): reduce-overhead replays each step as CUDA graphs, for a GPU that waits on the host's launches")
    a("--kd", action="store_true", help="distill from --teacher")
    a("--teacher", action="append", help="checkpoint of the full-precision teacher (bitnetcnn train "
      "--quant fp), or a published weight's hub name; repeat it to distill an ensemble (the mean of the teachers' "
      "logits)")
    a("--kd-alpha", type=float)
    a("--kd-temperature", type=float)
    a("--kd-hints", type=float, metavar="WEIGHT", help="add WEIGHT x a feature hint loss (FitNets: "
      "standardized MSE between student and teacher feature maps before the pooling; 0: off)")
    a("--init", help="start from the weights of this checkpoint (fine-tuning): a bitnetcnn file or a published "
      "weight's hub name (bitnet_resnet18), or the seed's zip or a state dict read into --model with --model-kwargs; "
      "on other classes its classifier starts afresh")
    a("--amp", action="store_true", help="bf16 autocast on the CPU, mixed precision on CUDA")
    a("--channels-last", action=argparse.BooleanOptionalAction)
    a("--accelerator", help="auto, cpu, gpu (cuda), mps")
    a("--devices", help="number of devices (processes) per node")
    a("--gpus", type=int, help="the seed's flag: N GPUs (-1: all, 0: the CPU)")
    a("--num-nodes", type=int)
    a("--strategy", help="auto, ddp, ddp_spawn, ...")
    a("--seed", type=int)
    a("--limit-train", type=int, help="use only N training images, the same random sample in every run (quick checks)")
    a("--limit-eval", type=int, help="evaluate on only N test images, the same random sample in every run (quick checks)")
    a("--progress", action=argparse.BooleanOptionalAction, help="--no-progress: no progress bar; "
      "each epoch's metrics as a line instead (a background run's log); a resume keeps the run's unless given")
    # the defaults are TrainSettings' own: a flag left out and a run started from Python take the same value
    defaults = TrainSettings()
    for action in p._actions:
        if action.dest in defaults.__dataclass_fields__:
            action.default = getattr(defaults, action.dest)


def _cmd_train(args) -> int:
    require("train", "bitnetcnn train")  # all of it, before any work (matplotlib is first needed after epoch 0)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from bitnetcnn.train.callbacks import StoppedByCtrlC
    from bitnetcnn.train.divergence import TrainingDiverged
    from bitnetcnn.train.run import train
    from bitnetcnn.train.run_folder import first_process, saved_run_values

    values = vars(args).copy()
    given = values.pop("given")
    command = values.pop("command_line")
    gpus = values.pop("gpus")
    resume = values.pop("resume")
    if gpus is not None and gpus < -1:
        raise ValueError(f"--gpus {gpus}: give a number of GPUs, -1 for all of them, or 0 for the CPU")
    if gpus == 0:  # the seed's (and Lightning 1.x's) way to say "on the CPU"
        values["accelerator"] = "cpu"
        given |= {"accelerator"}
    elif gpus is not None:
        values["accelerator"], values["devices"] = "gpu", str(gpus)
        given |= {"accelerator", "devices"}
    if resume and "compile" in given and not values["compile"]:
        given |= {"compile_mode"}  # --no-compile: the run's compile mode goes too (resumed_settings' rule)
    if resume:  # what was not given is the run's own, not the parser's default (which may not fit what was given)
        values.update({k: v for k, v in saved_run_values(values.get("out")).items() if k not in given})
    # a published weight by its hub entry name, as the other commands take it (the run records the name as typed)
    from bitnetcnn.hub import weight_argument

    if values.get("init") and "init" in given:
        values["init"] = weight_argument(values["init"])
    if "teacher" in given:
        values["teacher"] = [weight_argument(path) for path in values["teacher"]]
    try:
        settings = TrainSettings.from_dict(values)
        settings.refuse_unused_flags(given)  # a flag given at its default's value too: the command records it
        train(settings, resume=resume, command=command, given=given)
    except TrainingDiverged as err:  # a run that failed, not bad input: exit status 1
        if first_process():  # every process of a DDP run stops on it; one says why
            print(f"bitnetcnn train: error: {err}", file=sys.stderr)
        return 1
    except SIGTERMException as stop:  # Lightning's SystemExit without a code: a stopped run is no finished one
        return 128 + (signal.SIGINT if isinstance(stop, StoppedByCtrlC) else signal.SIGTERM)
    return 0


def _given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations the command line set itself (not left at their defaults): a resume refuses changed ones."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default


def _cmd_eval(args) -> int:
    from bitnetcnn.train.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.dataset, args.data_dir, args.batch_size)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_predict(args) -> int:
    from bitnetcnn import load_checkpoint
    from bitnetcnn.predict import predict_files

    model = load_checkpoint(args.checkpoint)
    several = len(args.images) > 1  # answer the readable ones, name the others (one image: its error alone)
    results = predict_files(model, args.images, args.top, source=args.checkpoint, keep_going=several)
    print(json.dumps(results, indent=2, ensure_ascii=False))  # class names and paths as written, not \u escapes
    failed = [r["error"] for r in results if "error" in r]
    for error in failed:
        print(f"bitnetcnn predict: error: {_one_line(error)}", file=sys.stderr)
    return 2 if failed else 0


def _cmd_convert(args) -> int:
    from bitnetcnn.hub import PRETRAINED_DIR
    from bitnetcnn.train.convert_file import convert_file

    if Path(args.checkpoint).resolve().parent == PRETRAINED_DIR.resolve():  # it wrote beside it, into the package
        raise ValueError(f"{Path(args.checkpoint).name} is a published weight, converted already: eval, predict, "
                         "export, bench and summary take it by its name; convert takes a run's last.ckpt or a Bit "
                         "checkpoint")
    out = convert_file(args.checkpoint, args.output, pow2=args.pow2, force=args.force)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


def _cmd_models(args) -> int:
    from bitnetcnn.hub import catalogue

    print(catalogue(args.pattern))
    return 0


def _cmd_summary(args) -> int:
    from bitnetcnn import create_model, summary
    from bitnetcnn.checkpoint.load import names_a_file
    from bitnetcnn.nn import model_form

    if names_a_file(args.model):
        from bitnetcnn import load_checkpoint

        model = load_checkpoint(args.model)
        given = [flag for flag, value in (("--num-classes", args.num_classes), ("--quant", args.quant)) if value]
        if given:
            raise ValueError(f"{' and '.join(given)} build a registry model; {args.model} is summarized as it was "
                             "saved: leave them out")
        channels = getattr(model, "model_args", {}).get("in_chans")
        if args.input_size and channels is not None and args.input_size[0] != channels:
            raise ValueError(f"{args.model} takes {channels}-channel images, not --input-size {args.input_size[0]} "
                             "...: leave --input-size out to use the checkpoint's own")
    else:
        size = args.input_size
        # the stem `bitnetcnn train` builds for that size (above 64 px a ResNet takes its ImageNet stem)
        # img_size only picks the stem: a non-square size above 64 px on either side gets the large-input one
        at_size = {"img_size": max(size[1], size[2])} if size else {}
        model = create_model(args.model, num_classes=args.num_classes, in_chans=size[0] if size else None,
                             quant=args.quant or "ternary", **at_size)
    if args.ternary and model_form(model) == "bit":  # a Bit checkpoint's too
        from bitnetcnn import convert_to_ternary

        model = convert_to_ternary(model.eval())
    elif args.ternary and model_form(model) == "float":
        raise ValueError(f"--ternary converts Bit layers, and {args.model} is a full-precision model without any: "
                         "leave --ternary out, or summarize a ternary one")
    summary(model, tuple(args.input_size) if args.input_size else None)  # default: the weights' own input size
    return 0


# --- deploy: `export` and `bitnetcnn bench` (issue 6; the work is in bitnetcnn.deploy.commands) ---------------------
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a converted model to ONNX (float, or int8 with ternary weights)",
                       epilog="example: bitnetcnn export runs/r18/last.ternary.bnc --format onnx --int8 -o r18.onnx")
    p.add_argument("model", help="checkpoint of a converted model, a published weight (bitnet_resnet18), or a registry "
                                 "name (untrained weights)")
    p.add_argument("--format", dest="fmt", choices=["onnx"], default="onnx")
    p.add_argument("-o", "--output", type=output_file, required=True, help="the .onnx file to write")
    p.add_argument("--int8", action="store_true", help="int8 graph: u8 activations, the ternary codes as s8 weights")
    p.add_argument("--calibrate", type=positive_int, metavar="N",
                   help="calibrate int8 activation ranges on N training images (default: the model's own 8-bit "
                        f"activation scales, else {DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--dataset", help="data set for calibration and the check (default: the model's)")
    p.add_argument("--data-dir")
    p.add_argument("--check", type=count, default=1000, metavar="N",
                   help="compare with the PyTorch model on N test images before writing (0: random inputs)")
    p.add_argument("--min-agreement", type=fraction, help="top-1 agreement the check needs (default 0.99, int8 0.95)")
    p.add_argument("--threads", type=positive_int, default=min(2, usable_cores()))


def _cmd_export(args) -> int:
    from bitnetcnn.deploy.commands import export_command

    refuse_overwriting(args.output, args.model, ".onnx", "-o")
    result = export_command(args.model, args.output, fmt=args.fmt, int8=args.int8, calibrate=args.calibrate,
                            dataset=args.dataset, data_dir=args.data_dir, check=args.check,
                            min_agreement=args.min_agreement, threads=args.threads)
    print(result)
    print(f"wrote {result.path} ({result.bytes:,} bytes)")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="latency, throughput and size: float32, Bit, converted, deployed (int8)",
                       epilog="example: bitnetcnn bench bit_resnet18 --batch-sizes 1 128 --json bench.json")
    p.add_argument("model", help="registry name, checkpoint or published weight (bitnet_resnet18)")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 128])
    p.add_argument("--threads", type=positive_int, default=min(2, usable_cores()),
                   help="threads of every variant (default 2, or the CPUs this process may use where fewer)")
    p.add_argument("--calibrate", type=positive_int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                   help="calibration images for the int8 path (a model with 8-bit activations uses its own scales)")
    p.add_argument("--data-dir")
    p.add_argument("--budget", type=seconds, default=20.0, help="seconds of timing per batch size (at least 3 rounds)")
    p.add_argument("--variants", nargs="+", metavar="VARIANT",
                   choices=["fp32_eager", "bit_eval", "ternary", "deploy", "deploy_onnxruntime", "deploy_openvino"],
                   help="what to time (default: all; deploy: every installed deploy backend)")
    p.add_argument("--json", dest="json_path", type=output_file, metavar="PATH", help="also write the results as JSON")


def _cmd_bench(args) -> int:
    from bitnetcnn.deploy.commands import bench_command

    if args.json_path:
        refuse_overwriting(args.json_path, args.model, ".json", "--json")
    bench_command(args.model, list(dict.fromkeys(args.batch_sizes)), threads=args.threads, calibrate=args.calibrate,
                  data_dir=args.data_dir, budget_s=args.budget, json_path=args.json_path, variants=args.variants)
    return 0
# --- end deploy ---------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse without the usage block on an error: one line, like every other error of this command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bitnetcnn", description="Ternary (1.58-bit) CNNs: train, evaluate, "
                                     "convert, inspect.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set's test split")
    p.add_argument("checkpoint", help="a checkpoint file, or a published weight by its hub entry name (bitnet_resnet18)")
    p.add_argument("--dataset", help="default: the data set recorded in the checkpoint")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=positive_int, default=256)

    p = sub.add_parser("predict", help="classify image files: the top classes by name, with probabilities")
    p.add_argument("checkpoint", help="a checkpoint file, or a published weight by its hub entry name (bitnet_resnet18)")
    p.add_argument("images", nargs="*", help="image files, any size: resized and centre-cropped to the model's input, and turned greyscale (or grey to 3 channels) as it needs; each result says what was done (resized_from, cropped, converted)")
    p.add_argument("--top", type=positive_int, default=5, help="classes to print for each image (default 5)")

    p = sub.add_parser("convert", help="convert a Bit model (run folder's last.ckpt or a checkpoint) to ternary")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", type=output_file,
                   help="default: next to the input, with .ternary.bnc (.ternary-pow2.bnc with --pow2)")
    p.add_argument("--pow2", action="store_true", help="power-of-two scales")
    p.add_argument("--force", action="store_true", help="replace an existing output file (never the input)")

    p = sub.add_parser("summary", help="per-layer table: bits, memory, MACs, zero weights")
    p.add_argument("model", help="registry name, checkpoint file or published weight (bitnet_resnet18)")
    p.add_argument("--input-size", type=positive_int, nargs=3, metavar=("C", "H", "W"))
    p.add_argument("--num-classes", type=positive_int)
    p.add_argument("--quant", choices=QUANT_MODES, help="for a registry name (default: ternary)")
    p.add_argument("--ternary", action="store_true", help="show the converted (packed) model")
    p = sub.add_parser("models", help="the architectures, the hub entries and their published weights' accuracy")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern of names, e.g. 'bit_resnet*'")
    _add_export(sub)
    _add_bench(sub)
    return parser


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict, "convert": _cmd_convert,
            "summary": _cmd_summary, "export": _cmd_export, "bench": _cmd_bench, "models": _cmd_models}


# The argument naming the model of each command that reads one: a file, or a published weight's hub entry name
# (``bitnet_resnet18``), and for some a registry name too (untrained weights).
MODEL_ARGUMENT = {"eval": ("checkpoint", False), "predict": ("checkpoint", False), "convert": ("checkpoint", False),
                  "summary": ("model", True), "export": ("model", True), "bench": ("model", True)}
# what a command that takes files only says it takes (published weights are converted already)
FILES_ONLY = {"convert": "a run's last.ckpt or a Bit checkpoint (bitnetcnn train writes both in its run folder)"}


def _refuse_unknown(command: argparse.ArgumentParser, unknown: list[str]) -> None:
    """Exit with the command's own error for arguments it does not take, with the flag a misspelt one meant."""
    flags = [f for action in command._actions for f in action.option_strings if f.startswith("--")]
    meant = [close[0] for arg in unknown if arg.startswith("--")
             for close in [difflib.get_close_matches(arg.split("=")[0], flags, n=1, cutoff=0.6)] if close]
    command.error(f"unrecognized arguments: {' '.join(unknown)}"
                  + (f" (did you mean {', '.join(meant)}?)" if meant else ""))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse names the top command ("bitnetcnn: error") and guesses nothing: name both
        _refuse_unknown(parser._subparsers._group_actions[0].choices[args.command], unknown)
    command = args.__dict__.pop("command")
    if command == "train":
        args.given = _given_flags(parser._subparsers._group_actions[0].choices["train"], argv[1:])
        args.command_line = shlex.join(["bitnetcnn", *argv])  # the run records the command as typed
    from bitnetcnn.checkpoint.errors import CheckpointError
    from bitnetcnn.hub import PretrainedWeightsUnavailable, model_argument

    try:
        if command == "predict" and not args.images:  # argparse would say "images are required", not what was read
            raise ValueError(f"no images given: the model comes first, then the images (bitnetcnn predict MODEL "
                             f"IMAGE...); {args.checkpoint!r} was read as the model")
        if command in MODEL_ARGUMENT:
            name, registry_names = MODEL_ARGUMENT[command]
            setattr(args, name, model_argument(getattr(args, name), registry_names, FILES_ONLY.get(command)))
        return COMMANDS[command](args)
    except BrokenPipeError:  # `bitnetcnn models | head -1`: the reader has what it wanted (an OSError)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python's own advice: no second error at exit
        return 0
    except (ValueError, OSError, CheckpointError, PretrainedWeightsUnavailable) as err:  # bad input: one clear line
        print(f"bitnetcnn {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # an extra not installed (a base install trains nor deploys)
        if extra_of(err) is None:
            raise
        what = f"bitnetcnn {command}"
        hint = str(err) if isinstance(err, MissingExtra) else install_hint(err.name.split(".")[0], what)
        print(f"bitnetcnn {command}: error: {hint}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not any(words in str(err) for words in OUT_OF_MEMORY):
            raise
        print(f"bitnetcnn {command}: error: out of memory ({_one_line(err)[-160:]}): what was asked for is too "
              "large: ask for smaller images or batches, fewer classes or a narrower model", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs are written whole or not at all (atomic.py), so one line is enough
        print(f"bitnetcnn {command}: interrupted; no file was left half-written", file=sys.stderr)
        return 130
    except Exception as err:
        if type(err).__name__ != "MisconfigurationException":  # Lightning's word for settings it cannot run
            raise
        print(f"bitnetcnn {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


# what torch's allocators say of a size far too large (--img-size 100000, --input-size 1 100000 100000)
OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
