"""ONNX export, checked against the PyTorch model before anything is written."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from bitnetcnn.atomic import write_atomically
from bitnetcnn.deploy.calibration import Calibration, as_batches
from bitnetcnn.checkpoint.pretrained_cfg import input_size_of
from bitnetcnn.deploy.checks import example_input
from bitnetcnn.deploy.compile import in_float32, to_onnx_graph
from bitnetcnn.deploy.int8 import DEFAULT_CALIBRATION
from bitnetcnn.deploy.onnx_graph import INPUT_NAME
from bitnetcnn.deploy.runtime import make_session
from bitnetcnn.nn.modes import evaluating

__all__ = ["ExportCheck", "check_against_model", "export_onnx"]

FLOAT_MIN_AGREEMENT = 0.99  # float graphs: only near-ties (and rounding ties of quantized activations) may differ
INT8_MIN_AGREEMENT = 0.95  # int8 graphs of trained models agree ~99%; untrained ones have near-tied logits
FLOAT_MAX_REL_DIFF = 1e-3


@dataclass
class ExportCheck:
    """What the check before writing measured: top-1 agreement with the PyTorch model, output differences."""

    path: Optional[str]
    int8: bool
    images: int
    real_images: bool
    agreement: float
    max_abs_diff: float
    rel_diff: float
    batch_sizes: list
    bytes: int = 0
    act_scales: str = ""
    median_rel_diff: float = 0.0  # the median image's largest difference, of max |logit|

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        kind = "int8" if self.int8 else "float"
        src = "real" if self.real_images else "random"
        return (f"{kind} ONNX vs PyTorch on {self.images} {src} images: top-1 agreement {self.agreement:.2%}, "
                f"max |diff| {self.max_abs_diff:.3g} ({self.rel_diff:.2%} of max |logit|; the median image's "
                f"{self.median_rel_diff:.2%}), batch sizes "
                f"{self.batch_sizes} agree")


def _run(session, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([session.run(None, {INPUT_NAME: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


@torch.no_grad()
def check_against_model(graph, model: nn.Module, inputs: torch.Tensor, threads: Optional[int] = None,
                        batch: int = 128) -> dict:
    """Run ``graph`` and ``model`` on ``inputs``; return agreement and differences, and check the dynamic batch."""
    session = make_session(graph, threads)
    x = np.ascontiguousarray(inputs.detach().float().cpu().numpy())
    with evaluating(model):
        ref = torch.cat([model(inputs[i:i + batch].float()) for i in range(0, len(inputs), batch)]).numpy()
    out = _run(session, x, batch)
    if out.shape != ref.shape:
        raise ValueError(f"ONNX output shape {out.shape} differs from the model's {ref.shape}")
    # Dynamic batch: the same images one at a time and in an odd-sized batch give the same outputs.
    few = min(len(x), 5)
    singles = np.concatenate([session.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(few)])
    odd = session.run(None, {INPUT_NAME: x[:few]})[0]
    tol = 1e-4 * (np.abs(out[:few]).max() + 1e-6)
    if not (np.allclose(singles, out[:few], atol=tol) and np.allclose(odd, out[:few], atol=tol)):
        raise ValueError("the ONNX model's outputs depend on the batch size; the dynamic batch axis is broken")
    diff = float(np.abs(out - ref).max())
    scale = float(np.abs(ref).max() + 1e-12)
    return {
        "agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
        "max_abs_diff": diff,
        "rel_diff": diff / scale,
        "median_rel_diff": float(np.median(np.abs(out - ref).max(1))) / scale,
        "batch_sizes": sorted({1, few, min(batch, len(x))}),
    }


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    int8: bool = False,
    calibration: Optional[Calibration] = None,
    check_inputs: Optional[torch.Tensor] = None,
    input_size: Optional[tuple] = None,
    min_agreement: Optional[float] = None,
    method: str = DEFAULT_CALIBRATION,
    threads: Optional[int] = None,
) -> ExportCheck:
    """Write the ONNX graph of a converted model (float, or int8 with ternary weights; dynamic batch size).

    Before writing, the graph runs in onnxruntime on ``check_inputs`` (real images: model inputs, or uint8 images
    that are normalized with the model's mean and std) and is compared with the PyTorch model: top-1 agreement must
    reach ``min_agreement`` (default 0.99 float, 0.95 int8) and float outputs must match to 0.1% of the largest
    logit (with activation quantizers, where a value on a rounding boundary may round one step the other way in
    onnxruntime, the median image must); otherwise a ``ValueError`` says what differed and nothing is written.
    Without ``check_inputs`` the check runs on random inputs, with a warning. ``int8`` takes ``calibration`` as
    :func:`compile` does.
    """
    model = in_float32(model)  # the graph is float32: so is the model it is checked against
    graph, info = to_onnx_graph(model, calibration, int8=int8, input_size=input_size, method=method)
    real = check_inputs is not None
    if real:
        # one batch, or several as compile() takes them (a list of two was "too many values to unpack")
        batches = as_batches(check_inputs, model, batch_size=1 << 30, what="check_inputs", input_size=input_size)
        inputs = torch.from_numpy(np.concatenate(batches))
    else:
        warnings.warn("export_onnx: no check_inputs given, so the export is checked on random inputs only; pass "
                      "real images to check the accuracy of the exported model", UserWarning, stacklevel=2)
        inputs = example_input(input_size_of(model, input_size), batch=16)
    result = check_against_model(graph, model, inputs, threads)
    need = min_agreement if min_agreement is not None else (INT8_MIN_AGREEMENT if int8 else FLOAT_MIN_AGREEMENT)
    problems, quantized = [], _has_act_quant(model)
    if result["agreement"] < need:
        problems.append(f"top-1 agreement {result['agreement']:.2%} < {need:.0%}")
    if not int8 and result["rel_diff"] > FLOAT_MAX_REL_DIFF and not quantized:
        problems.append(f"max |diff| {result['max_abs_diff']:.3g} is {result['rel_diff']:.2%} of the largest logit")
    # with activation quantizers a few images near rounding ties may differ (18% of the published MobileNetV2's, by
    # up to 3.4%: the graph's folded BatchNorms round otherwise than the model's, and a quantizer after one takes a
    # tie the other way); most must still match, or the graph computes something else (a shift of every logit keeps
    # the top-1 and passed the agreement alone)
    if not int8 and quantized and result["median_rel_diff"] > FLOAT_MAX_REL_DIFF:
        problems.append(f"the median image differs by {result['median_rel_diff']:.2%} of the largest logit")
    if problems:
        raise ValueError(f"the exported {'int8' if int8 else 'float'} ONNX model does not match the PyTorch model on "
                         f"{len(inputs)} {'real' if real else 'random'} images ({'; '.join(problems)}); nothing was "
                         "written" + ("" if not int8 else ". Try more calibration images (--calibrate N)"))
    data = graph.SerializeToString()
    path = write_atomically(path, data)  # an earlier export there stays whole until this one is
    return ExportCheck(path=str(path), int8=int8, images=len(inputs), real_images=real, bytes=len(data),
                       act_scales=info.get("act_scales", ""), **result)


def _has_act_quant(model: nn.Module) -> bool:
    from bitnetcnn.nn import ActQuantizer

    return any(isinstance(m, ActQuantizer) for m in model.modules())
