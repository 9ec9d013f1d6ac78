"""The float ONNX graph of a model, with a dynamic batch dimension, via ``torch.onnx.export`` (torch.export based)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from typing import Dict

import torch
from torch import nn

from bitnetcnn.checkpoint.pretrained_cfg import input_normalization, model_pretrained_cfg
from bitnetcnn.deploy.checks import NotDeployableError, example_input
from bitnetcnn.extras import require
from bitnetcnn.quiet import quiet_loggers
from bitnetcnn.version import __version__

EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "torch._export")

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OPSET", "add_metadata", "to_onnx", "weight_nodes"]

INPUT_NAME, OUTPUT_NAME = "input", "logits"
OPSET = 18


def to_onnx(model: nn.Module, input_size: tuple[int, int, int]):
    """The ``onnx.ModelProto`` of ``model`` (eval mode) for inputs ``(N, *input_size)``, N dynamic.

    Module buffers and parameters keep their names as initializers (``stem.conv.weight``), which is how the int8
    pass finds each layer's weight.
    """
    require("deploy", "an ONNX export")  # a clear error before the exporter's own

    model = model.eval()
    x = example_input(input_size, batch=2)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), quiet_loggers(EXPORTER_LOGGERS, logging.ERROR):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (x,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), opset_version=OPSET, optimize=True, verbose=False,
            )
    except Exception as err:  # the exporter raises many kinds; the user needs to know which layer and why
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NotDeployableError(
            f"{type(model).__name__} cannot be mapped to ONNX: torch.onnx.export failed ({first[:300]})"
        ) from err
    proto = program.model_proto
    _name_transposed_weights(proto.graph, model)
    return proto


def _name_transposed_weights(graph, model: nn.Module) -> None:
    """Give back each linear layer's name to its weight where the exporter stored it transposed under a generated
    name: ``F.linear`` on a 3-D or 4-D input (ConvNeXt's channels-last pointwise layers) becomes a MatMul whose
    weight the optimizer folds into an unnamed ``weight.T`` constant, which the int8 pass could not find."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    readers: Dict[str, list] = {}
    for node in graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    by_value = {}
    for name, init in inits.items():
        nodes = readers.get(name, [])
        if len(nodes) == 1 and nodes[0].op_type == "MatMul" and list(nodes[0].input).index(name) == 1:
            value = numpy_helper.to_array(init)
            by_value.setdefault((value.shape, value.dtype.str, value.tobytes()), []).append(name)
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        key = f"{module_name}.weight"
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or key in inits or not module_name:
            continue
        transposed = weight.detach().float().cpu().numpy().T
        found = by_value.get((transposed.shape, transposed.dtype.str, transposed.tobytes()), [])
        if len(found) != 1:  # none, or several equal weights: which is whose cannot be told
            continue
        (old,) = found
        inits[old].name = key
        for node in readers[old]:
            node.input[list(node.input).index(old)] = key


def weight_nodes(graph) -> Dict[str, object]:
    """``{initializer name: node}`` for every Conv / Gemm / MatMul node whose weight (input 1) is an initializer."""
    inits = {i.name for i in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            out[node.input[1]] = node
    return out


def add_metadata(graph, model: nn.Module, info: dict):
    """``graph`` (an ``onnx.ModelProto``) with what a user of its file needs in its metadata: how to prepare inputs
    (size, mean, std) and what the model is (``info``: how the graph was made, ``to_onnx_graph``'s)."""
    meta = {
        "bitnetcnn.version": __version__,
        "bitnetcnn.input_size": json.dumps(info.get("input_size")),
        "bitnetcnn.int8": json.dumps(bool(info.get("int8"))),
        "bitnetcnn.act_scales": str(info.get("act_scales", "")),
    }
    stats = input_normalization(model)  # the checkpoint's own (model.pretrained_cfg), else the registry's
    if stats is not None:
        meta["bitnetcnn.mean"], meta["bitnetcnn.std"] = json.dumps(list(stats[0])), json.dumps(list(stats[1]))
    weights = model_pretrained_cfg(model)
    if weights is not None:
        if weights.dataset:
            meta["bitnetcnn.dataset"] = weights.dataset
        meta["bitnetcnn.pretrained_cfg"] = json.dumps(weights.to_dict(), default=str)
    args = getattr(model, "model_args", None)
    if args:
        meta["bitnetcnn.model_args"] = json.dumps(args, default=str)
    meta = {**{e.key: e.value for e in graph.metadata_props}, **meta}  # keeps the int8 graph's own notes
    del graph.metadata_props[:]
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    graph.doc_string = "Exported by bitnetcnn: inputs are (N, C, H, W) float32 images, normalized (x/255 - mean)/std"
    if stats is not None:
        graph.doc_string += f" with mean {list(stats[0])} and std {list(stats[1])}"
    return graph
