"""Which requantization points of the int8 graph cost the agreement with the converted model?

For each activation tensor the int8 graph quantizes (each QuantizeLinear), the graph is run once with that tensor
kept in float (its Q/DQ pair removed) and the top-1 agreement with the converted PyTorch model is measured on test
images; then the most costly points are kept in float together, one more at a time. It says whether a model that
misses the deploy goal (>= 99% agreement) does so at a few points (fixable by keeping them in float) or everywhere.
``--kinds`` keeps whole kinds of points in float instead (every input of a depthwise convolution, every residual
sum, ...): whether a rule for an architecture, rather than a list of tensors, would lift the agreement.

    export BITNETCNN_DATA=/path/to/shared/data
    python benchmarks/deploy_sensitivity.py --seed bit_resnet18 --limit 1000 --method percentile
    python benchmarks/deploy_sensitivity.py --checkpoint runs/r18/best_ternary.bnc --limit 1000
    python benchmarks/deploy_sensitivity.py --checkpoint runs/mnv2/best_ternary.bnc --limit 1000 --kinds
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from bitnetcnn import load_checkpoint
from bitnetcnn.cli import count, positive_int
from bitnetcnn.deploy.int8 import CALIBRATION_METHODS, DEFAULT_CALIBRATION, _graph_maps, keep_in_float
from bitnetcnn.deploy.calibration import dataset_for, model_inputs
from bitnetcnn.deploy.compile import to_onnx_graph
from bitnetcnn.deploy.runtime import DeployedModel
from bitnetcnn.settings import data_root

sys.path.insert(0, str(Path(__file__).parent))
from deploy_agreement import SEED, convert_if_needed, load_seed, predict  # noqa: E402


def quantized_tensors(graph) -> list[str]:
    """The activation tensors the QDQ graph quantizes (weights are stored quantized and have no QuantizeLinear)."""
    return [n.input[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"]


def point_kinds(graph) -> dict[str, list[str]]:
    """The quantized tensors by kind: what made them (``Conv``, ``Add``, ``Clip``, ... or the graph input), and, apart,
    those read by a depthwise convolution (a Conv with ``group`` > 1), whose per-tensor grid serves channels of very
    different ranges."""
    producer, consumers = _graph_maps(graph.graph)
    kinds: dict[str, list[str]] = {}
    for q in graph.graph.node:
        if q.op_type != "QuantizeLinear":
            continue
        tensor = q.input[0]
        readers = [u for d in consumers.get(q.output[0], []) for u in consumers.get(d.output[0], [])]
        depthwise = any(u.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in u.attribute)
                        for u in readers)
        kind = f"{producer[tensor].op_type} output" if tensor in producer else "graph input"
        kinds.setdefault(kind, []).append(tensor)
        if depthwise:
            kinds.setdefault("depthwise convolution input", []).append(tensor)
    return kinds


def keep_float(graph, tensors: set[str]):
    """A copy of the QDQ graph with the Q/DQ pairs on ``tensors`` removed: their consumers read them in float."""
    return keep_in_float(copy.deepcopy(graph), tensors)


def agreement(graph, x, ref) -> float:
    out = predict(DeployedModel(graph, threads=torch.get_num_threads()), x)
    return (out == ref).float().mean().item() * 100


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", choices=list(SEED), help="a seed checkpoint (from $BITNETCNN_DATA/seed-checkpoints)")
    p.add_argument("--checkpoint", help="a bitnetcnn checkpoint")
    p.add_argument("--limit", type=positive_int, default=1000, help="test images (first N of a fixed shuffle)")
    p.add_argument("--calibrate", type=count, default=512,
                   help="training images for calibration (0: the model's own 8-bit activation quantizers)")
    p.add_argument("--method", default=DEFAULT_CALIBRATION, choices=CALIBRATION_METHODS)
    p.add_argument("--top", type=positive_int, default=8, help="keep up to this many of the costliest points in float")
    p.add_argument("--kinds", action="store_true", help="keep whole kinds of points in float (point_kinds), not "
                   "one point at a time")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    if bool(args.seed) == bool(args.checkpoint):
        p.error("give --seed NAME or --checkpoint PATH")
    path = data_root(args.data_dir) / "seed-checkpoints" / SEED[args.seed][0] if args.seed else Path(args.checkpoint)
    if not path.is_file():
        p.error(f"{path} not found (--data-dir or BITNETCNN_DATA names the folder of the seed's checkpoints)")
    torch.set_num_threads(args.threads)
    if args.seed:
        model, dataset = load_seed(args.seed, path), SEED[args.seed][1]
    else:
        model = convert_if_needed(load_checkpoint(args.checkpoint))
        dataset = dataset_for(model)
    x, _ = model_inputs(model, dataset, args.limit, False, args.data_dir)
    calibration, ranges = None, "the model's own quantizers"
    if args.calibrate > 0:
        calibration = model_inputs(model, dataset, args.calibrate, True, args.data_dir, seed=1)[0]
        ranges = f"{args.method} calibration"
    ref = predict(model, x)
    graph, _ = to_onnx_graph(model, calibration, method=args.method)
    t0 = time.perf_counter()
    base = agreement(graph, x, ref)
    points = quantized_tensors(graph)
    print(f"{len(x)} {dataset} test images, ranges from {ranges}: int8 agreement {base:.2f}% "
          f"({len(points)} quantized activation tensors; {time.perf_counter() - t0:.1f} s a run)", flush=True)
    if args.kinds:
        for kind, tensors in sorted(point_kinds(graph).items()):
            print(f"  every {kind} ({len(tensors)}) in float: {agreement(keep_float(graph, set(tensors)), x, ref):.2f}%",
                  flush=True)
        print(f"all {len(points)} in float: {agreement(keep_float(graph, set(points)), x, ref):.2f}%")
        return 0
    gains = []
    for name in points:
        gains.append((agreement(keep_float(graph, {name}), x, ref) - base, name))
        print(f"  {name}: {gains[-1][0]:+.2f} points kept in float", flush=True)
    gains.sort(reverse=True)
    print("costliest points kept in float together:")
    kept: set[str] = set()
    for gain, name in gains[:args.top]:
        kept.add(name)
        print(f"  +{name} ({gain:+.2f} alone): {len(kept)} in float -> {agreement(keep_float(graph, kept), x, ref):.2f}%",
              flush=True)
    print(f"all {len(points)} in float: {agreement(keep_float(graph, set(points)), x, ref):.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
