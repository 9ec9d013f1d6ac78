"""``bitnetcnn bench``: latency, throughput and size of the float model, the Bit model, the converted model and the
deployment path, measured in one run and compared with PyTorch float32 eager of the same architecture.

Timing on a shared machine: the variants take turns (one timed call of each per round), so a burst of load hits them
alike, and each reports the median over its rounds (``min_ms`` too). Before its timed call a variant runs untimed
for a few milliseconds, so that it is not timed against the other runtime's spinning threads.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from bitnetcnn.deploy.checks import input_size_of

__all__ = ["VARIANTS", "bench", "format_report", "model_bytes"]

VARIANTS = {
    "fp32_eager": "PyTorch float32 eager (quant='fp' twin)",
    "bit_eval": "Bit model, eval mode (fake-quantized weights)",
    "ternary": "converted model (TernaryConv2d/Linear, PyTorch)",
    "deploy": "bitnetcnn.deploy.compile (onnxruntime int8)",
}


def model_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers a model holds in memory (shared storage counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def _disk_bytes(model: nn.Module, compact: bool) -> int:
    """Size on disk: a bitnetcnn checkpoint where the checkpoint module can write it, else a ``torch.save``."""
    if compact:
        try:
            from bitnetcnn.checkpoint import save_checkpoint

            with tempfile.TemporaryDirectory() as tmp:
                path = save_checkpoint(model, Path(tmp) / "model.bnc")
                return Path(path).stat().st_size
        except Exception:  # noqa: BLE001  (fall back to the plain state dict)
            pass
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def _calibration(source, model: nn.Module, n: int, data_dir=None):
    """``n`` real training images where the data set is on disk, else random inputs (speed does not care)."""
    from bitnetcnn.checkpoint.pretrained_cfg import input_normalization
    from bitnetcnn.deploy.calibration import dataset_for, dataset_images, normalize_images

    try:
        name = dataset_for(model)
        images, _, spec = dataset_images(name, n, True, data_dir)
        stats = input_normalization(model) or (spec.mean, spec.std)
        return normalize_images(images, *stats), f"{len(images)} {name} training images"
    except (FileNotFoundError, ValueError, KeyError):
        size = input_size_of(model)
        return torch.randn(n, *size, generator=torch.Generator().manual_seed(0)), f"{n} random inputs"


SETTLE_S = 0.01


def _time(fns: Dict[str, Callable], x: torch.Tensor, budget_s: float, min_rounds: int, max_rounds: int):
    times: Dict[str, list] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm-up: first-call allocations, oneDNN primitive caches, ORT arenas
            fn(x)
        start = time.perf_counter()
        rounds = 0
        while rounds < min_rounds or (rounds < max_rounds and time.perf_counter() - start < budget_s):
            for k, fn in fns.items():
                # Untimed calls for SETTLE_S first: the previous variant's worker threads (OpenMP's after PyTorch,
                # onnxruntime's after a session) spin on the cores for a while after their last call; timed right
                # after another runtime, a variant measured up to 1.6x slower than alone.
                settled = time.perf_counter() + SETTLE_S
                fn(x)
                while time.perf_counter() < settled:
                    fn(x)
                t0 = time.perf_counter()
                fn(x)
                times[k].append(time.perf_counter() - t0)
            rounds += 1
    return times


def bench(
    spec: str,
    batch_sizes: Sequence[int] = (1, 128),
    *,
    threads: int = 2,
    calibrate: int = 256,
    data_dir=None,
    budget_s: float = 20.0,
    variants: Sequence[str] = tuple(VARIANTS),
    num_classes: Optional[int] = None,
    model_kwargs: Optional[dict] = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Measure ``variants`` of the model ``spec`` (registry name or checkpoint) at each batch size; a JSON-able dict.

    ``budget_s`` bounds the timing of each batch size (at least 3 rounds, at most 100).
    """
    from bitnetcnn.deploy.compile import compile
    from bitnetcnn.deploy.source import load_model

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    if "fp32_eager" not in variants:
        variants = ("fp32_eager", *variants)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        source = load_model(spec, num_classes=num_classes, model_kwargs=model_kwargs)
        converted = source.converted()
        size = input_size_of(converted)
        models: Dict[str, object] = {"fp32_eager": source.float_twin()}
        if "bit_eval" in variants:
            models["bit_eval"] = source.bit()
        if "ternary" in variants:
            models["ternary"] = converted
        calib_note = None
        if "deploy" in variants:
            log("compiling the deployment path (BN folding, ONNX export, int8 calibration) ...")
            images, calib_note = _calibration(source, converted, calibrate, data_dir)
            t0 = time.perf_counter()
            models["deploy"] = compile(converted, images, threads=threads)
            log(f"  compiled in {time.perf_counter() - t0:.1f} s, calibrated on {calib_note}")
        sizes = {}
        for k, m in models.items():
            if k == "deploy":
                sizes[k] = {"memory_bytes": m.nbytes, "disk_bytes": m.nbytes}
            else:
                sizes[k] = {"memory_bytes": model_bytes(m), "disk_bytes": _disk_bytes(m, compact=k == "ternary")}
        results = []
        for bs in batch_sizes:
            x = torch.randn(bs, *size, generator=torch.Generator().manual_seed(bs))
            log(f"timing batch size {bs} ...")
            times = _time({k: models[k] for k in variants}, x, budget_s, 3, 100)
            base = statistics.median(times["fp32_eager"])
            row = {}
            for k in variants:
                med = statistics.median(times[k])
                row[k] = {
                    "latency_ms": med * 1e3,
                    "min_ms": min(times[k]) * 1e3,
                    "throughput_ips": bs / med,
                    "speedup_vs_fp32": base / med,
                    "rounds": len(times[k]),
                }
            results.append({"batch_size": int(bs), "variants": row})
        return {
            "model": source.label,
            "model_args": source.args,
            "input_size": list(size),
            "threads": threads,
            "calibration": calib_note,
            "machine": _machine(),
            "variants": {k: VARIANTS[k] for k in variants},
            "sizes": sizes,
            "results": results,
        }
    finally:
        torch.set_num_threads(previous_threads)


def _machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def format_report(report: dict) -> str:
    """The report as a text table."""
    m = report["machine"]
    lines = [
        f"bitnetcnn bench: {report['model']}  input {tuple(report['input_size'])}  threads {report['threads']}  "
        f"({m.get('cpu')}, {m.get('cores')} cores; torch {m.get('torch')}, onnxruntime {m.get('onnxruntime', '-')})",
    ]
    if report.get("calibration"):
        lines.append(f"deploy calibrated on {report['calibration']}")
    header = f"{'batch':>5}  {'variant':<11} {'latency ms':>11} {'images/s':>10} {'vs fp32':>8}"
    for res in report["results"]:
        lines += ["", header]
        for k, r in res["variants"].items():
            lines.append(f"{res['batch_size']:>5}  {k:<11} {r['latency_ms']:>11.2f} {r['throughput_ips']:>10.1f} "
                         f"{r['speedup_vs_fp32']:>7.2f}x")
    lines += ["", f"{'variant':<11} {'memory':>10} {'disk':>10}"]
    for k, s in report["sizes"].items():
        lines.append(f"{k:<11} {_mb(s['memory_bytes']):>10} {_mb(s['disk_bytes']):>10}")
    lines += ["", *(f"{k}: {v}" for k, v in report["variants"].items())]
    return "\n".join(lines)


def write_json(report: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
