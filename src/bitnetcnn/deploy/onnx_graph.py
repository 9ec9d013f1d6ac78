"""The float ONNX graph of a model, with a dynamic batch dimension, via ``torch.onnx.export`` (torch.export based)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Dict

import torch
from torch import nn

from bitnetcnn.deploy.checks import NotDeployableError, example_input
from bitnetcnn.quiet import quiet_loggers

EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "torch._export")

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OPSET", "to_onnx", "weight_nodes"]

INPUT_NAME, OUTPUT_NAME = "input", "logits"
OPSET = 18


def to_onnx(model: nn.Module, input_size: tuple[int, int, int]):
    """The ``onnx.ModelProto`` of ``model`` (eval mode) for inputs ``(N, *input_size)``, N dynamic.

    Module buffers and parameters keep their names as initializers (``stem.conv.weight``), which is how the int8
    pass finds each layer's weight.
    """
    import onnx  # noqa: F401  (a clear ImportError before the exporter's own)

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
    return program.model_proto




def weight_nodes(graph) -> Dict[str, object]:
    """``{initializer name: node}`` for every Conv / Gemm / MatMul node whose weight (input 1) is an initializer."""
    inits = {i.name for i in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            out[node.input[1]] = node
    return out
