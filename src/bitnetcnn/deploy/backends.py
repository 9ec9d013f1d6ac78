"""The runtimes that execute the deployed ONNX graph, and which one ``compile(backend="auto")`` picks.

Both run the same int8 (QDQ) or float ONNX graph that :func:`bitnetcnn.deploy.to_onnx_graph` builds:

- ``"onnxruntime"`` (the ``deploy`` extra): always there; its u8 x s8 kernels are fast where the CPU has VNNI.
- ``"openvino"`` (``pip install openvino``, optional): its CPU plugin turns the QDQ pairs into int8 convolutions
  (oneDNN). Measured faster than onnxruntime on an AVX2-only AMD EPYC at batch 1 and 128 and on an AVX-512 VNNI
  EPYC (docs/deploy.md), with the same top-1 agreement with the converted model on MNIST and CIFAR-100 test images.

``"auto"`` uses onnxruntime where OpenVINO cannot be used (the package does not import, it has no CPU device, or the
CPU lacks AVX2, which its int8 convolutions need). Otherwise it measures: both runtimes load the graph and take turns
on random inputs at batch 1 and batch ``AUTO_BATCH`` for about ``AUTO_BUDGET_S`` seconds, and the faster one (the
geometric mean of the two latency ratios) is kept. Which one wins depends on the model as much as on the CPU: on the
AVX2-only EPYC of development OpenVINO ran ResNet-18 faster at both batch sizes, and onnxruntime the small MNIST
bitnet_cnn (per-call overheads dominate there). The choice, the reason and the timings are kept on the compiled model
(``deployed.backend``, ``deployed.backend_reason``, ``deployed.info["backend_timings_ms"]``).
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from functools import lru_cache
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from bitnetcnn.machine import cpu_info
from bitnetcnn.deploy.onnx_graph import INPUT_NAME

__all__ = ["BACKENDS", "OnnxRuntimeRunner", "OpenVINORunner", "choose_backend", "make_runner", "make_session",
           "measure_backends", "openvino_status", "pick_faster"]

BACKENDS = ("auto", "onnxruntime", "openvino")

AUTO_BATCH = 32  # the larger batch size "auto" times besides batch 1
AUTO_BUDGET_S = 2.0  # about how long "auto" times the candidates (at least 3 rounds each)


def short_version(version: str) -> str:
    """``2026.4.1`` of OpenVINO's ``2026.4.1-22982-e213a147257-releases/2026/4``."""
    return str(version).split("-", 1)[0]


@lru_cache(maxsize=1)
def openvino_status() -> Tuple[bool, str]:
    """``(usable, why)``: whether ``import openvino`` works and it has a CPU device; cached for the process."""
    try:
        import openvino as ov  # noqa: F401
    except Exception as err:  # noqa: BLE001  (ImportError, or a broken install raising anything at import)
        return False, f"openvino is not installed ({type(err).__name__}: {str(err)[:80]}); pip install openvino"
    try:
        devices = ov.Core().available_devices
    except Exception as err:  # noqa: BLE001
        return False, f"openvino {short_version(ov.__version__)} cannot start ({type(err).__name__}: {str(err)[:80]})"
    if "CPU" not in devices:
        return False, f"openvino {short_version(ov.__version__)} has no CPU device (devices: {', '.join(devices) or 'none'})"
    return True, f"openvino {short_version(ov.__version__)}"


def choose_backend(backend: str = "auto") -> Tuple[str, str]:
    """``(name, reason)`` of the runtime for ``backend`` ("auto", "onnxruntime" or "openvino") before measuring.

    An explicit "openvino" that cannot be used raises ``ImportError`` with the reason; "auto" falls back to
    onnxruntime and says why, or returns ``("auto", ...)`` when both are candidates and it takes a measurement
    (:func:`measure_backends`) to choose.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        return "onnxruntime", "asked for"
    usable, why = openvino_status()
    if backend == "openvino":
        if not usable:
            raise ImportError(f"backend='openvino' needs the openvino package: {why}")
        return "openvino", "asked for"
    if not usable:
        return "onnxruntime", f"auto: {why}"
    flags = cpu_info()["flags"]
    if flags is not None and not flags.get("avx2"):
        return "onnxruntime", "auto: the CPU has no AVX2, which OpenVINO's int8 convolutions need"
    return "auto", f"{why} and onnxruntime both usable"


def measure_backends(runners: Dict[str, object], input_size: Sequence[int], batch_sizes=(1, AUTO_BATCH),
                     budget_s: float = AUTO_BUDGET_S, min_rounds: int = 3) -> Dict[str, Dict[int, float]]:
    """Median latency (ms) of each runner at each batch size on random inputs; the runners take turns."""
    rng = np.random.default_rng(0)
    times: Dict[str, Dict[int, list]] = {k: {bs: [] for bs in batch_sizes} for k in runners}
    per_batch = budget_s / max(1, len(batch_sizes))
    for bs in batch_sizes:
        x = rng.standard_normal((bs, *input_size)).astype(np.float32)
        for runner in runners.values():
            runner.run(x)  # warm-up: shape-specific kernels, arenas, OpenVINO's stream model at large batches
        start, rounds = time.perf_counter(), 0
        while rounds < min_rounds or (time.perf_counter() - start < per_batch and rounds < 50):
            for k, runner in runners.items():
                runner.run(x)  # untimed: the other runtime's threads leave the cores
                t0 = time.perf_counter()
                runner.run(x)
                times[k][bs].append(time.perf_counter() - t0)
            rounds += 1
    return {k: {bs: statistics.median(v) * 1e3 for bs, v in per.items()} for k, per in times.items()}


def pick_faster(timings: Dict[str, Dict[int, float]]) -> Tuple[str, str]:
    """``(name, reason)``: openvino when the geometric mean of onnxruntime/openvino latency ratios exceeds 1."""
    ort, ov = timings["onnxruntime"], timings["openvino"]
    ratio = math.exp(statistics.fmean(math.log(ort[bs] / ov[bs]) for bs in ort))
    name = "openvino" if ratio > 1.0 else "onnxruntime"
    figures = ", ".join(f"batch {bs}: openvino {ov[bs]:.2f} ms, onnxruntime {ort[bs]:.2f} ms" for bs in ort)
    return name, f"auto: measured at compile ({figures}; openvino {ratio:.2f}x onnxruntime)"


def make_session(model: Union[bytes, str, os.PathLike, object], threads: Optional[int] = None, *,
                 optimize: bool = True):
    """An onnxruntime CPU session with ``threads`` intra-op threads (default: ``torch.get_num_threads()``) that do not
    spin when idle. ``optimize=False`` runs the graph as written (no fusions: each QuantizeLinear/DequantizeLinear
    as itself, the convolutions in float between them), the reference a runtime's integer kernels are measured by."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: spinning ones steal the cores from PyTorch (or anything else)
    # running next in the process, which made float32 eager look 2.5x slower beside the deployed model at batch 1.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeRunner:
    """An onnxruntime CPU session; ``run(x)`` maps a float32 array to the logits."""

    name = "onnxruntime"

    def __init__(self, model_bytes: bytes, threads: int) -> None:
        self.session = make_session(model_bytes, threads)
        import onnxruntime

        self.version = onnxruntime.__version__

    def run(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] == 0:  # onnxruntime's multi-threaded QLinearAdd with broadcasting (ConvNeXt's GRN) crashes
            shape = self.session.get_outputs()[0].shape  # the process (SIGSEGV) on an empty batch
            return np.zeros((0, *shape[1:]), np.float32)
        return self.session.run(None, {INPUT_NAME: x})[0]


class OpenVINORunner:
    """OpenVINO's CPU plugin on the same graph; ``run(x)`` maps a float32 array to the logits.

    One compiled model with the latency hint: one stream on ``threads`` threads, any batch size (the graph's batch
    axis is dynamic). Measured, not guessed: splitting a large batch over several one-thread compiled models run at
    once was 1.9x slower on an idle 2-core machine (they do not run in parallel), and OpenVINO's own streams
    (``NUM_STREAMS`` > 1, the THROUGHPUT hint) compute the int8 bitnet_cnn graph wrongly in OpenVINO 2026.4.1 on an
    AVX2 CPU (11% top-1 on MNIST, chance level; ResNet-18 and the float graph are right). Calls are serialized by
    a lock (an infer request is not re-entrant).
    """

    name = "openvino"

    def __init__(self, model_bytes: bytes, threads: int) -> None:
        import openvino as ov

        self.version = short_version(ov.__version__)
        self.threads = int(threads)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(model_bytes), "CPU", {
            "INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            # f32 wherever the graph is float: no bf16/f16 downcast on CPUs that have it (it would move logits)
            "INFERENCE_PRECISION_HINT": "f32",
        })
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] == 0:  # OpenVINO answers an empty batch with the last call's output
            shape = self.compiled.output(0).get_partial_shape()
            return np.zeros((0, *(shape[i].get_length() for i in range(1, len(shape)))), np.float32)
        with self._lock:
            return self._request.infer({0: x}, share_inputs=True)[0].copy()


def make_runner(name: str, model_bytes: bytes, threads: int):
    if name == "onnxruntime":
        return OnnxRuntimeRunner(model_bytes, threads)
    if name == "openvino":
        return OpenVINORunner(model_bytes, threads)
    raise ValueError(f"unknown backend {name!r}")
