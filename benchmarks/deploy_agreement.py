"""Does the deployed (int8, onnxruntime) model agree with the converted PyTorch model on real test images?

For each model: top-1 of the converted PyTorch model and of ``bitnetcnn.deploy.compile(model, calibration)`` on the
test set, their top-1 agreement and the accuracy difference. Pass: agreement >= 99% and |accuracy difference| <= 0.3
points. Models: the seed's trained ternary checkpoints (bitnet_cnn on MNIST, ResNet-18 and MobileNetV2 x1.4 on
CIFAR-100), read from $BITNETCNN_DATA/seed-checkpoints (or --checkpoints), or any bitnetcnn checkpoint given with
--checkpoint LABEL=PATH (its data set from its header). ``--calibrate 0`` deploys without calibration, from the
model's own 8-bit activation quantizers (a model trained with ``--act-bits 8``).

    export BITNETCNN_DATA=/path/to/shared/data
    python benchmarks/deploy_agreement.py                       # all three, full test sets
    python benchmarks/deploy_agreement.py --models bitnet_cnn --limit 2000 --json agreement.json
    python benchmarks/deploy_agreement.py --models --checkpoint r18=runs/r18-a8/best_ternary.bnc --calibrate 0
    python benchmarks/deploy_agreement.py --backends onnxruntime openvino     # both runtimes on the same graph
    python benchmarks/deploy_agreement.py --models --checkpoint r18=FILE --qdq-reference   # + the graph's own sums
    python benchmarks/deploy_agreement.py --models --checkpoint m=RUN/last.ckpt --calibrate 0 --trained-biases
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bitnetcnn import convert_to_ternary, load_checkpoint
from bitnetcnn.cli import count, positive_int
from bitnetcnn.deploy import compile
from bitnetcnn.deploy.backends import make_session
from bitnetcnn.deploy.int8 import CALIBRATION_METHODS, DEFAULT_CALIBRATION
from bitnetcnn.deploy.calibration import dataset_for, model_inputs
from bitnetcnn.nn import TERNARY_LAYERS
from bitnetcnn.settings import data_root

# name: (seed checkpoint file, data set, create_model arguments of the seed's architecture)
SEED = {
    "bitnet_cnn": ("bit_netcnn_small_mnist_ternary.zip", "mnist", dict(num_classes=10, in_chans=1)),
    "bit_resnet18": ("bit_resnet_18_c100_ternary.zip", "cifar100", dict(num_classes=100, act="silu")),
    "bit_mobilenetv2": ("bit_mobilenetv2_x140_c100_ternary.zip", "cifar100",
                        dict(num_classes=100, width_mult=1.4, act="silu", downsample_at="expand")),
}


def load_seed(name: str, path: Path) -> torch.nn.Module:
    """A seed checkpoint as a converted model (the library reads the seed's zips; see docs/checkpoints.md)."""
    _, _, kwargs = SEED[name]
    return convert_if_needed(load_checkpoint(path, model_name=name, **kwargs))


def convert_if_needed(model: torch.nn.Module, int32_biases: bool = True) -> torch.nn.Module:
    """The converted (ternary inference) form of a Bit or already converted model, in eval mode."""
    is_converted = any(isinstance(m, TERNARY_LAYERS) for m in model.modules())
    return model.eval() if is_converted else convert_to_ternary(model.eval(), int32_biases=int32_biases)


def load_file(path: Path, int32_biases: bool = True) -> torch.nn.Module:
    """A checkpoint, or a run's ``last.ckpt`` (the Bit model as trained), as a converted model."""
    if path.suffix == ".ckpt":
        from bitnetcnn.train.convert_file import run_model

        return convert_if_needed(run_model(path), int32_biases)
    return convert_if_needed(load_checkpoint(path), int32_biases)


@torch.no_grad()
def logits_of(fn, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return torch.cat([torch.as_tensor(fn(x[i:i + batch])).float() for i in range(0, len(x), batch)])


def predict(fn, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return logits_of(fn, x, batch).argmax(1)


def qdq_reference(graph, threads: int):
    """``graph`` (a deployed model's int8 graph) run by onnxruntime with every graph optimization off: each
    QuantizeLinear/DequantizeLinear runs as itself and every convolution in float between them, the graph's own
    arithmetic without integer kernels. A runtime that agrees with the converted model more than this computes
    something else than the graph (closer to float)."""
    session = make_session(graph, threads, optimize=False)
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch.numpy()})[0]


def check(name: str, model, dataset: str, limit: int, calibrate: int, data_dir=None, method: str = DEFAULT_CALIBRATION,
          backends=("onnxruntime",), float64: bool = False, reference: bool = False) -> list:
    """One row per deploy backend (the same int8 graph on each runtime); the converted model runs once.
    ``float64`` adds the converted model computed in float64 as one more "backend": its agreement with float32 is
    the floor that rounding alone sets (a model with 8-bit activations flips its rounding ties at float32's error).
    ``reference`` adds the graph's own arithmetic (:func:`qdq_reference`). Each row also gives the mean relative
    logit error against the converted model and the median gap between its top two logits on the flipped images
    (near-ties flip first)."""
    x, test_y = model_inputs(model, dataset, limit, False, data_dir)
    calibration = model_inputs(model, dataset, calibrate, True, data_dir, seed=1)[0] if calibrate > 0 else None
    t0 = time.perf_counter()
    ref_logits = logits_of(model, x)
    ref = ref_logits.argmax(1)
    t_torch = time.perf_counter() - t0
    acc_ref = (ref == test_y).float().mean().item() * 100
    top2 = ref_logits.topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]

    def row(backend: str, logits: torch.Tensor, calibration_images: int, ranges: str) -> dict:
        """The figures of one way of computing the model against the converted model in float32."""
        out = logits.argmax(1)
        acc, agree = (out == test_y).float().mean().item() * 100, (ref == out).float().mean().item() * 100
        error = ((logits - ref_logits).norm(dim=1) / ref_logits.norm(dim=1)).mean().item() * 100
        flipped = out != ref
        return dict(model=name, dataset=dataset, backend=backend, test_images=len(x),
                    calibration_images=calibration_images, method=ranges, acc_converted=round(acc_ref, 2),
                    acc_deployed=round(acc, 2), agreement=round(agree, 2), acc_diff=round(acc - acc_ref, 2),
                    logit_error_pct=round(error, 3),
                    top2_gap_flipped=round(gap[flipped].median().item(), 4) if flipped.any() else None,
                    top2_gap_all=round(gap.median().item(), 4),
                    passed=agree >= 99.0 and abs(acc - acc_ref) <= 0.3)

    rows, outs = [], {}
    if float64:
        import copy

        wide = copy.deepcopy(model).double()
        rows.append(row("torch float64", logits_of(lambda batch: wide(batch.double()), x), 0, "none"))
    for backend in backends:
        t0 = time.perf_counter()
        deployed = compile(model, calibration, method=method, backend=backend)
        t_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = logits_of(deployed, x)
        out = outs[deployed.backend] = logits.argmax(1)
        t_deploy = time.perf_counter() - t0
        deployed_row = dict(row(deployed.backend, logits, max(calibrate, 0),
                                method if calibrate > 0 else "model quantizers"),
                            compile_s=round(t_compile, 1), torch_eval_s=round(t_torch, 1),
                            deploy_eval_s=round(t_deploy, 1))
        if deployed.backend != "onnxruntime" and "onnxruntime" in outs:
            deployed_row["agreement_with_onnxruntime"] = round(
                (outs["onnxruntime"] == out).float().mean().item() * 100, 2)
        rows.append(deployed_row)
    if reference:  # the graph every backend above ran, computed as written
        graph_own = qdq_reference(deployed.onnx_model, torch.get_num_threads())
        rows.append(row("onnxruntime, no graph optimization", logits_of(graph_own, x), max(calibrate, 0),
                        method if calibrate > 0 else "model quantizers"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(SEED), choices=list(SEED),
                   help="seed checkpoints to check (none: only the --checkpoint files)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH",
                   help="a bitnetcnn checkpoint or a run's last.ckpt to check (repeatable)")
    p.add_argument("--checkpoints", help="folder of the seed checkpoints (default $BITNETCNN_DATA/seed-checkpoints)")
    p.add_argument("--limit", type=count, default=0, help="first N test images of a fixed shuffle (0: all)")
    p.add_argument("--calibrate", type=count, default=512,
                   help="training images for int8 calibration (0: the model's own 8-bit activation quantizers)")
    p.add_argument("--method", default=DEFAULT_CALIBRATION, choices=CALIBRATION_METHODS,
                   help="onnxruntime calibration method for the activation ranges")
    p.add_argument("--backends", nargs="+", default=["onnxruntime"], choices=["onnxruntime", "openvino", "auto"],
                   help="deploy backends to check, each on the same int8 graph (openvino: pip install openvino)")
    p.add_argument("--float64", action="store_true",
                   help="also compare the converted model in float64 with float32: the floor rounding alone sets")
    p.add_argument("--qdq-reference", action="store_true",
                   help="also run the int8 graph's own arithmetic (onnxruntime, graph optimizations off)")
    p.add_argument("--trained-biases", action="store_true",
                   help="convert a Bit checkpoint (last.ckpt) keeping its biases as trained, not on the int32 grid")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--data-dir")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = Path(args.checkpoints or data_root(args.data_dir) / "seed-checkpoints")
    jobs = [(name, folder / SEED[name][0], SEED[name][1]) for name in args.models]
    for item in args.checkpoint:
        label, sep, path = item.partition("=")
        if not sep:
            p.error(f"--checkpoint {item!r}: expected LABEL=PATH")
        jobs.append((label, Path(path), None))
    if not jobs:
        p.error("nothing to check: give --models, or --checkpoint LABEL=PATH")
    for name, path, _ in jobs:  # before any work: a missing file was a traceback after the first model's checks
        if not path.is_file():
            p.error(f"{name}: {path} not found (--checkpoints / --data-dir / BITNETCNN_DATA name the seed's folder)")
    rows = []
    for name, path, dataset in jobs:
        print(f"{name}: {path}", flush=True)
        model = load_seed(name, path) if dataset else load_file(path, not args.trained_biases)
        dataset = dataset or dataset_for(model)
        for row in check(name, model, dataset, args.limit, args.calibrate, args.data_dir, args.method,
                         args.backends, args.float64, args.qdq_reference):
            rows.append(row)
            extra = (f", {row['agreement_with_onnxruntime']:.2f}% with onnxruntime"
                     if "agreement_with_onnxruntime" in row else "")
            gap = "" if row["top2_gap_flipped"] is None else (
                f", top-2 logit gap {row['top2_gap_flipped']:.3f} on the flipped images (median; {row['top2_gap_all']:.3f} "
                "on all)")
            print(f"  {row['backend']}: {row['test_images']} {dataset} test images: converted "
                  f"{row['acc_converted']:.2f}%, deployed {row['acc_deployed']:.2f}% ({row['acc_diff']:+.2f}), top-1 "
                  f"agreement {row['agreement']:.2f}%{extra} -> {'PASS' if row['passed'] else 'FAIL'}; logits "
                  f"{row['logit_error_pct']:.2f}% off{gap}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
