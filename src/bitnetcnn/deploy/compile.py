"""``compile``: a converted model to a fast CPU callable (BN folded, int8 activations, ternary weights as int8)."""

from __future__ import annotations

import copy
import itertools
import warnings
from typing import Optional

import numpy as np
import torch
from torch import nn

from bitnetcnn.deploy.backends import choose_backend, make_runner, measure_backends, pick_faster
from bitnetcnn.deploy.calibration import Calibration, as_batches, check_calibration_memory
from bitnetcnn.checkpoint.pretrained_cfg import input_normalization, input_size_of
from bitnetcnn.deploy.checks import check_deployable
from bitnetcnn.deploy.fold import fold_batchnorm
from bitnetcnn.deploy.int8 import DEFAULT_CALIBRATION, quantize_int8, quantizer_scales, ranges_are_the_models
from bitnetcnn.deploy.onnx_graph import add_metadata, to_onnx
from bitnetcnn.deploy.runtime import DeployedModel
from bitnetcnn.nn import ActQuantizer
from bitnetcnn.nn.convert import replace_modules

__all__ = ["compile", "in_float32", "to_onnx_graph", "without_act_quantizers"]

OWN_SCALES_REASON = ("auto: every int8 range is one of the model's own 8-bit grids, and onnxruntime computes the "
                     "model's integers; OpenVINO rounds some requantizations otherwise")


def in_float32(model: nn.Module) -> nn.Module:
    """``model``, or a float32 copy of a bf16/fp16/float64 one: the graphs are float32 (a bf16 converted model loads
    as bf16, and half of its graph would be bf16 beside float32 folded layers)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    if all(t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return model
    return copy.deepcopy(model).float()


def without_act_quantizers(model: nn.Module) -> nn.Module:
    """A copy with every ``ActQuantizer`` replaced by ``nn.Identity`` (the int8 graph quantizes instead)."""
    stripped, _ = replace_modules(model, lambda _, m: nn.Identity() if isinstance(m, ActQuantizer) else None)
    return stripped


def to_onnx_graph(model: nn.Module, calibration: Optional[Calibration] = None, *, int8: bool = True,
                  input_size: Optional[tuple] = None, method: str = DEFAULT_CALIBRATION):
    """The deployable ``onnx.ModelProto`` of a converted model and a dict that says how it was made (also in the
    graph's metadata, with the input size, mean and std: what a user of the saved file needs).

    ``int8=False`` gives the float graph (BN folded, activation quantizers kept as the model has them).
    """
    check_deployable(model, int8=int8)
    model = in_float32(model)
    try:
        size = input_size_of(model, input_size)
    except ValueError:  # neither the weights nor the registry say it (a bitified model): the calibration images do
        if not (isinstance(calibration, (torch.Tensor, np.ndarray)) and calibration.ndim == 4):
            raise
        size = tuple(int(v) for v in calibration.shape[1:])
    folded = fold_batchnorm(model)
    info = {"int8": int8, "input_size": list(size), "act_scales": "float"}
    if not int8:
        return add_metadata(to_onnx(folded, size), model, info), info
    batches = None if calibration is None else as_batches(calibration, model, input_size=size)
    has_scales = bool(quantizer_scales(folded))
    info["act_scales"] = ("model quantizers + calibration" if has_scales else "calibration") if batches else (
        "model quantizers")
    if batches is not None:
        info["calibration_images"] = int(sum(len(b) for b in batches))
        check_calibration_memory(folded, info["calibration_images"], size)
    graph = to_onnx(without_act_quantizers(folded), size)
    # the graph computes the model's own integers (8-bit activations on every point it requantizes, no calibration)
    info["model_integers"] = batches is None and ranges_are_the_models(graph.graph, folded)
    return add_metadata(quantize_int8(graph, folded, batches, method=method), model, info), info


def compile(model: nn.Module, calibration: Optional[Calibration] = None, *, int8: bool = True,
            input_size: Optional[tuple] = None, threads: Optional[int] = None,
            method: str = DEFAULT_CALIBRATION, backend: str = "auto") -> DeployedModel:
    """A callable that computes what the converted ``model`` computes, fast, on the CPU (OpenVINO or onnxruntime).

    BatchNorm is folded into the per-channel scales and biases; convolutions and linear layers run as int8
    (QLinearConv / QGemm: u8 activations, the ternary codes as s8 weights, int32 accumulation); the first one reads
    the float image unless the model's own 8-bit quantizer fixes the input grid (``deploy/int8.py`` says why).

    ``calibration``: images the activation ranges are measured on (a tensor of model inputs, uint8 images, or an
    iterable of batches; a few hundred training images suffice). A model trained with 8-bit activations needs none:
    its quantizers' scales are used (calibration images would replace the ranges between its quantizers with
    measured ones: a graph that no longer computes the model's integers). ``int8=False`` runs the float graph
    instead. ``input_size``: ``(C, H, W)``, default the weights' or the registry's, else (a bitified torchvision
    model) the calibration tensor's. ``threads``: intra-op threads (default ``torch.get_num_threads()``).

    ``backend``: the runtime of the graph: ``"onnxruntime"``, ``"openvino"`` (``pip install openvino``; an
    ``ImportError`` without it) or ``"auto"`` (default): onnxruntime where OpenVINO is not installed or the CPU lacks
    AVX2, or where every range is one of the model's own 8-bit grids (no calibration; ``info["model_integers"]``:
    onnxruntime computes such a graph's integers as the model does, OpenVINO rounds some requantizations otherwise,
    and asked for by name warns; docs/deploy.md); else whichever of the two runs this graph faster on this machine,
    timed for about two seconds at batch 1 and 32. The result says which and why: ``deployed.backend`` and
    ``deployed.backend_reason``.

    Raises :class:`~bitnetcnn.deploy.NotDeployableError` (a ``ValueError``) for a model that is not converted or
    has layers the exporter cannot map.
    """
    if threads is not None and (type(threads) is not int or threads < 1):  # -1 reached the runtimes as is
        raise ValueError(f"threads={threads!r}: give a number of threads, 1 or more (None: torch's, "
                         f"{torch.get_num_threads()} here)")
    name, reason = choose_backend(backend)  # before the export: an unusable explicit backend fails fast
    graph, info = to_onnx_graph(model, calibration, int8=int8, input_size=input_size, method=method)
    if backend == "auto" and info.get("model_integers"):
        name, reason = "onnxruntime", OWN_SCALES_REASON
    elif name == "openvino" and info.get("model_integers"):
        warnings.warn("this model's int8 graph computes its own integers on onnxruntime, but OpenVINO rounds some "
                      "requantizations otherwise and an 8-bit network amplifies each (the published "
                      "bitnet_mobilenetv2 agrees on 97.65% of its test images there, 99.72% on onnxruntime): "
                      "use backend='onnxruntime' or 'auto'", UserWarning, stacklevel=2)
    runner = None
    if name == "auto":
        data = graph.SerializeToString()
        n = int(threads or torch.get_num_threads())
        runners = {k: make_runner(k, data, n) for k in ("onnxruntime", "openvino")}
        timings = measure_backends(runners, info["input_size"])
        name, reason = pick_faster(timings)
        runner = runners[name]
        info["backend_timings_ms"] = {k: {str(bs): round(ms, 3) for bs, ms in v.items()} for k, v in timings.items()}
    return DeployedModel(graph, threads=threads, info=info, backend=name, backend_reason=reason, runner=runner,
                         normalization=input_normalization(model))
