"""The deployed model: an onnxruntime session behind the call signature of a PyTorch model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from bitnetcnn.deploy.onnx_graph import INPUT_NAME

__all__ = ["DeployedModel", "make_session"]


def make_session(model: Union[bytes, str, os.PathLike, object], threads: Optional[int] = None):
    """An onnxruntime CPU session with ``threads`` intra-op threads (default: ``torch.get_num_threads()``) that do not
    spin when idle."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: spinning ones steal the cores from PyTorch (or anything else)
    # running next in the process, which made float32 eager look 2.5x slower beside the deployed model at batch 1.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class DeployedModel:
    """Callable like the model it came from: ``logits = deployed(images)`` with torch tensors in and out.

    ``onnx_model`` is the graph it runs (QDQ int8 or float), ``save(path)`` writes it as a ``.onnx`` file that any
    onnxruntime loads. ``info`` says how it was made (int8 or float, where the activation scales came from).
    """

    def __init__(self, onnx_model, threads: Optional[int] = None, info: Optional[dict] = None) -> None:
        self.onnx_model = onnx_model
        self._bytes = onnx_model.SerializeToString()
        self.threads = int(threads or torch.get_num_threads())
        self.session = make_session(self._bytes, self.threads)
        self.info = dict(info or {})

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run(None, {INPUT_NAME: array})
        return torch.from_numpy(out).to(x.device)

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """The same call without torch conversions (what a serving process would do)."""
        return self.session.run(None, {INPUT_NAME: x})[0]

    def eval(self) -> "DeployedModel":
        return self  # already an inference-only object; lets code written for nn.Module call .eval()

    @property
    def nbytes(self) -> int:
        """Size of the serialized graph (weights included): what the file on disk takes."""
        return len(self._bytes)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._bytes)
        return path

    def __repr__(self) -> str:
        kind = "int8" if self.info.get("int8") else "float"
        return f"DeployedModel({kind}, {self.nbytes:,} bytes, threads={self.threads})"
