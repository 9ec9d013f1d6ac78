"""The deployed model: an onnxruntime session or an OpenVINO compiled model behind the call signature of a PyTorch
model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from bitnetcnn.atomic import write_atomically
from bitnetcnn.deploy.backends import make_runner, make_session
from bitnetcnn.deploy.calibration import check_normalized
from bitnetcnn.normalization import as_pixels, check_finite, normalize

__all__ = ["DeployedModel", "make_session"]


class DeployedModel:
    """Callable like the model it came from: ``logits = deployed(images)`` with torch tensors in and out.

    ``onnx_model`` is the graph it runs (QDQ int8 or float), ``save(path)`` writes it as a ``.onnx`` file that any
    onnxruntime (or OpenVINO) loads, with the input size, mean and std in its metadata as ``export`` writes them.
    ``info`` says how it was made (int8 or float, where the activation scales came from, the backend). ``backend``
    is the runtime that executes it ("onnxruntime" or "openvino") and ``backend_reason`` why that one (see
    :func:`bitnetcnn.deploy.backends.choose_backend`). ``session`` is the onnxruntime session (None on OpenVINO).
    """

    def __init__(self, onnx_model, threads: Optional[int] = None, info: Optional[dict] = None,
                 backend: str = "onnxruntime", backend_reason: str = "asked for", runner=None,
                 normalization: Optional[tuple] = None) -> None:
        self.onnx_model = onnx_model
        self.normalization = normalization  # (mean, std) that uint8 images are normalized with, as in calibration
        self._bytes = onnx_model.SerializeToString()
        self.threads = int(threads or torch.get_num_threads())
        self.runner = runner if runner is not None else make_runner(backend, self._bytes, self.threads)
        self.backend = self.runner.name
        self.backend_reason = backend_reason
        self.session = getattr(self.runner, "session", None)
        self.info = dict(info or {})
        self.info.update(backend=self.backend, backend_version=self.runner.version, backend_reason=backend_reason)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalized float images, or of integer images (uint8, or int32/int64 pixels in 0..255),
        normalized first as calibration does. Float images far outside what the normalization gives (pixels 0..255
        as floats) are refused, as in calibration."""
        self._check_shape(x.shape)
        array = np.ascontiguousarray(self._normalized(x.detach().to("cpu")).to(torch.float32).numpy())
        return torch.from_numpy(self.runner.run(array)).to(x.device)

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """The same call on numpy arrays in and out (what a serving process would do); the normalization and the
        checks of the input go through torch as :meth:`__call__`'s do."""
        self._check_shape(x.shape)
        # every batch, also a float one without normalization (the NaN check); a copy where numpy strides are
        # negative (a flipped image), which torch.from_numpy refuses
        x = self._normalized(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        # float32, as __call__ gives it: onnxruntime refused numpy's default float64 in its own words
        return self.runner.run(np.ascontiguousarray(x, dtype=np.float32))

    def _check_shape(self, shape) -> None:
        """Refuse what the graph's input does not take before the runtime does, in its own words ("Invalid rank for
        input", "Got invalid dimensions"), which name neither the shape expected nor what to do."""
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in self.onnx_model.graph.input[0].type.tensor_type.shape.dim]
        if len(shape) == len(dims) and all(d is None or d == n for d, n in zip(dims[1:], shape[1:])):
            return
        if len(shape) == len(dims) - 1:
            advice = "add the batch dimension (x[None])"
        elif len(shape) == len(dims) - 2:
            advice = "add the batch and channel dimensions (x[None, None] for a greyscale image)"
        elif len(shape) == len(dims) and dims[1] is not None and shape[1] != dims[1]:
            advice = (f"give {dims[1]}-channel images ({'greyscale' if dims[1] == 1 else 'RGB'}; a pretrained model's "
                      "pretrained_cfg.transforms() converts them)")
        else:
            advice = "resize them first (a pretrained model's pretrained_cfg.transforms() does)"
        expected = ", ".join("N" if i == 0 else str(d) for i, d in enumerate(dims))
        raise ValueError(f"the deployed model takes batches shaped ({expected}), not {tuple(shape)}: {advice}")

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            check_finite(x)  # the int8 graph answers them with finite logits where the model answers NaN
            if self.normalization is not None:  # pixels 0..255 as floats would run, and be wrong without a word
                check_normalized(x, *self.normalization, what="images")
            return x
        x = as_pixels(x)  # int64 or int32 pixels (a decoded image, torchvision.io), as calibration takes them
        if self.normalization is None:
            raise ValueError("uint8 images need the model's mean and std, which this deployed model was not given: "
                             "pass normalized float images")
        return normalize(x, *self.normalization)

    def eval(self) -> "DeployedModel":
        return self  # already an inference-only object; lets code written for nn.Module call .eval()

    @property
    def nbytes(self) -> int:
        """Size of the serialized graph (weights included): what the file on disk takes."""
        return len(self._bytes)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        return write_atomically(path, self._bytes)

    def __repr__(self) -> str:
        kind = "int8" if self.info.get("int8") else "float"
        return f"DeployedModel({kind}, {self.backend}, {self.nbytes:,} bytes, threads={self.threads})"
