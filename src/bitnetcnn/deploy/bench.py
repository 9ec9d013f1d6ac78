"""``bitnetcnn bench``: latency, throughput and size of the float model, the Bit model, the converted model and the
deployment path, measured in one run and compared with PyTorch float32 eager of the same architecture.

Timing on a shared machine: the variants take turns (one timed call of each per round), so a burst of load hits them
alike, and each reports the median over its rounds (``min_ms`` too). Before its timed call a variant runs untimed
for a few milliseconds, so that it is not timed against the other runtime's spinning threads. Where /proc/stat can be
read, each round also records how much CPU other processes used meanwhile; when at least 3 rounds were quiet (other
processes below ``QUIET_CORES`` cores), the medians are over the quiet rounds only (PyTorch's OpenMP threads slow down
many times over when another process takes one of their cores, the int8 runtimes much less, which would inflate
every speed-up), and the report says how many rounds were quiet.

The deployment path is measured on every backend that is installed (``deploy_onnxruntime``, ``deploy_openvino``:
the same int8 graph), and the report says which one ``compile(backend="auto")`` picks on this machine and the CPU's
model and int8-relevant instruction sets (avx2, avx512_vnni, avx_vnni, amx).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from bitnetcnn.atomic import write_atomically
from bitnetcnn.checkpoint.pretrained_cfg import input_dtype_of, input_normalization, input_size_of
from bitnetcnn.extras import install_hint, missing
from bitnetcnn.machine import usable_cores
from bitnetcnn.nn import model_form
from bitnetcnn.version import __version__

__all__ = ["VARIANTS", "bench", "format_report", "model_bytes"]

VARIANTS = {
    "fp32_eager": "PyTorch float32 eager (quant='fp' twin)",
    "bit_eval": "Bit model, eval mode (fake-quantized weights)",
    "ternary": "converted model (TernaryConv2d/Linear, PyTorch)",
    "deploy_onnxruntime": "bitnetcnn.deploy.compile(backend='onnxruntime'): int8 graph on onnxruntime",
    "deploy_openvino": "bitnetcnn.deploy.compile(backend='openvino'): the same int8 graph on OpenVINO's CPU plugin",
}
DEPLOY_VARIANTS = {"deploy_onnxruntime": "onnxruntime", "deploy_openvino": "openvino"}
# "deploy" in a variant list means every deploy backend that is installed
ALIASES = {"deploy": tuple(DEPLOY_VARIANTS)}
QUIET_CORES = 0.25  # other processes' CPU use (in cores) during a round below which the round counts as quiet


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


def _calibration(model: nn.Module, n: int, data_dir=None):
    """``n`` real training images where the data set is on disk, else random inputs (speed does not care)."""
    from bitnetcnn.deploy.calibration import check_calibration_memory, dataset_for, model_inputs

    check_calibration_memory(model, n)  # before the images are read or made
    try:
        name = dataset_for(model)
        images, _ = model_inputs(model, name, n, True, data_dir)
        return images, f"{len(images)} {name} training images"
    except (FileNotFoundError, ValueError, KeyError):
        size = input_size_of(model)
        return torch.randn(n, *size, generator=torch.Generator().manual_seed(0)), f"{n} random inputs"


SETTLE_S = 0.01


def _cpu_ticks():
    """``(busy ticks of all CPUs, ticks of this process)`` from /proc, or None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait
        return busy, int(own[11]) + int(own[12])  # utime + stime (all threads)
    except (OSError, ValueError, IndexError):
        return None


def _foreign_cores(before, after, seconds: float) -> Optional[float]:
    """CPU used by other processes between two ``_cpu_ticks`` readings, in cores."""
    if before is None or after is None or seconds <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / hz / seconds)


def _time(fns: Dict[str, Callable], x: torch.Tensor, budget_s: float, min_rounds: int, max_rounds: int):
    """Per variant the timed calls' seconds, and per round the other processes' CPU use (cores, or None)."""
    times: Dict[str, list] = {k: [] for k in fns}
    foreign: list = []
    with torch.inference_mode():
        for fn in fns.values():  # warm-up: first-call allocations, oneDNN primitive caches, ORT arenas
            fn(x)
        start = time.perf_counter()
        rounds = 0
        while rounds < min_rounds or (rounds < max_rounds and time.perf_counter() - start < budget_s):
            ticks, t_round = _cpu_ticks(), time.perf_counter()
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
            foreign.append(_foreign_cores(ticks, _cpu_ticks(), time.perf_counter() - t_round))
            rounds += 1
    return times, foreign


def _quiet_rounds(foreign: list, min_quiet: int = 3) -> Optional[list]:
    """Indices of the rounds in which other processes used under ``QUIET_CORES`` cores; None when too few were."""
    quiet = [i for i, f in enumerate(foreign) if f is not None and f < QUIET_CORES]
    return quiet if len(quiet) >= min_quiet else None


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
    from bitnetcnn.deploy.backends import choose_backend, measure_backends, openvino_status, pick_faster
    from bitnetcnn.deploy.compile import OWN_SCALES_REASON, in_float32
    from bitnetcnn.deploy.source import load_model

    expanded = _expanded(variants)
    cores = usable_cores()
    if threads > cores:
        raise ValueError(f"--threads {threads}, but this process may use {cores} CPU{'s' * (cores != 1)}: OpenVINO "
                         f"caps itself at {cores} while PyTorch and onnxruntime would run {threads} threads on them, "
                         f"so the ratios would compare unlike runs; give --threads {cores} or fewer")
    notes = []
    absent = missing("deploy")
    if absent and any(k in DEPLOY_VARIANTS for k in expanded):  # a base install: the PyTorch rows still compare
        expanded = [k for k in expanded if k not in DEPLOY_VARIANTS]
        notes.append(f"deploy rows skipped: {install_hint(absent[0], 'deployment')}")
    if "deploy_openvino" in expanded and not openvino_status()[0]:
        expanded.remove("deploy_openvino")
        notes.append(f"deploy_openvino skipped: {openvino_status()[1]}")
    variants = tuple(expanded)
    if "fp32_eager" not in variants:
        variants = ("fp32_eager", *variants)
    auto_backend, auto_reason = choose_backend("auto") if not absent else (None, None)  # ("auto", ...): measure
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        source = load_model(spec, num_classes=num_classes, model_kwargs=model_kwargs)
        stored = input_dtype_of(source.model)
        if stored != torch.float32:  # a bf16 file's layers met the float32 images in a RuntimeError
            notes.append(f"{source.label} is stored in {str(stored).removeprefix('torch.')}: timed in float32, as "
                         "the fp32 baseline and the deployed graphs compute")
            source.model = in_float32(source.model)
        converted = source.converted()
        size = input_size_of(converted)
        if model_form(converted) == "float":  # a --quant fp model
            dropped = [k for k in ("bit_eval", "ternary") if k in variants]
            skipped = [k for k in variants if k in DEPLOY_VARIANTS]
            variants = tuple(k for k in variants if k not in dropped and k not in skipped)
            if dropped:
                notes.append(f"{' and '.join(dropped)} skipped: {source.label} has no ternary layers, so they would "
                             "time the float model again")
            if skipped:
                notes.append(f"{' and '.join(skipped)} skipped: the deployment path compiles converted ternary "
                             f"models, and {source.label} has no ternary layers")
        models: Dict[str, object] = {"fp32_eager": source.float_twin()}
        if "bit_eval" in variants:
            models["bit_eval"] = source.bit()
        if "ternary" in variants:
            models["ternary"] = converted
        calib_note = None
        deploy = [k for k in variants if k in DEPLOY_VARIANTS]
        if deploy:
            deployed, info, calib_note = _deployed(converted, deploy, threads, calibrate, data_dir, log)
            models.update(deployed)
            if info.get("model_integers"):
                auto_backend, auto_reason = "onnxruntime", OWN_SCALES_REASON
            if auto_backend == "auto" and len(deploy) == 2:  # what compile(backend="auto") would choose here
                with torch.inference_mode():
                    timings = measure_backends({DEPLOY_VARIANTS[k]: models[k].runner for k in deploy}, size)
                auto_backend, auto_reason = pick_faster(timings)
        if model_form(converted) == "float":  # compile refuses a model without ternary layers: no backend to pick
            auto_backend = auto_reason = None
        elif auto_backend == "auto":  # no deploy variant pair timed here: which one auto picks is not known
            notes.append("compile(backend='auto') would time onnxruntime against OpenVINO on this machine; bench "
                         "both deploy variants to see which it picks")
            auto_backend = auto_reason = None
        sizes = {}
        for k, m in models.items():
            if k in DEPLOY_VARIANTS:
                # the graph's bytes; what the runtime holds (its prepacked weights, arenas) is not measured
                sizes[k] = {"memory_bytes": None, "disk_bytes": m.nbytes}
            else:
                sizes[k] = {"memory_bytes": model_bytes(m), "disk_bytes": _disk_bytes(m, compact=k == "ternary")}
        results = []
        for bs in batch_sizes:
            log(f"timing batch size {bs} ...")
            results.append(_timed_batch({k: models[k] for k in variants}, bs, size, budget_s))
        return {
            "model": source.label,
            "model_args": source.args,
            "input_size": list(size),
            "threads": threads,
            "budget_s": budget_s,
            "calibration": calib_note,
            "machine": _machine(),
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # a figure says when, as where
            "auto_backend": auto_backend,
            "auto_backend_reason": auto_reason,
            "notes": notes,
            "variants": {k: VARIANTS[k] for k in variants},
            "sizes": sizes,
            "results": results,
        }
    finally:
        torch.set_num_threads(previous_threads)


def _expanded(variants: Sequence[str]) -> list:
    """The variants asked for, aliases expanded, each once; unknown ones refused."""
    expanded = []
    for v in variants:
        for k in ALIASES.get(v, (v,)):
            if k not in expanded:
                expanded.append(k)
    unknown = set(expanded) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}: choose from {', '.join([*VARIANTS, *ALIASES])}")
    return expanded


def _deployed(converted: nn.Module, deploy: list, threads: int, calibrate: int, data_dir, log) -> tuple:
    """One int8 graph of ``converted`` and each deploy variant's runtime on it: ``(models, graph info, what it was
    calibrated on)``."""
    from bitnetcnn.deploy.checks import NotDeployableError
    from bitnetcnn.deploy.compile import to_onnx_graph
    from bitnetcnn.deploy.int8 import quantizer_scales
    from bitnetcnn.deploy.runtime import DeployedModel

    log("compiling the deployment path (BN folding, ONNX export, int8 calibration) ...")
    t0 = time.perf_counter()
    graph = None
    if quantizer_scales(converted):  # 8-bit activations deploy from their own scales, as compile(model) does
        with contextlib.suppress(NotDeployableError):  # unless they leave a range open
            graph, info = to_onnx_graph(converted, None)
            calib_note = "nothing: the model's own 8-bit activation scales"
    if graph is None:
        images, calib_note = _calibration(converted, calibrate, data_dir)
        graph, info = to_onnx_graph(converted, images)
    log(f"  int8 graph in {time.perf_counter() - t0:.1f} s, calibrated on {calib_note}")
    models = {}
    for k in deploy:
        t0 = time.perf_counter()
        models[k] = DeployedModel(graph, threads=threads, info=info, backend=DEPLOY_VARIANTS[k],
                                  normalization=input_normalization(converted))  # its per-call check timed too
        log(f"  {k}: loaded in {time.perf_counter() - t0:.1f} s")
    return models, info, calib_note


def _timed_batch(models: Dict[str, object], bs: int, size: tuple, budget_s: float) -> dict:
    """One batch size's row: each model's median latency over the rounds in which other processes were quiet (all
    rounds when too few were), and its speed-up over fp32_eager in the same rounds."""
    x = torch.randn(bs, *size, generator=torch.Generator().manual_seed(bs))
    times, foreign = _time(models, x, budget_s, 3, 100)
    quiet = _quiet_rounds(foreign)
    used = quiet if quiet is not None else list(range(len(foreign)))
    base = statistics.median(times["fp32_eager"][i] for i in used)
    row = {}
    for k in models:
        med = statistics.median(times[k][i] for i in used)
        row[k] = {"latency_ms": med * 1e3, "min_ms": min(times[k][i] for i in used) * 1e3, "throughput_ips": bs / med,
                  "speedup_vs_fp32": base / med, "rounds": len(used)}
    known = [f for f in foreign if f is not None]
    return {"batch_size": int(bs), "variants": row, "rounds": len(foreign),
            "quiet_rounds": None if quiet is None else len(quiet),
            "other_processes_cores_median": round(statistics.median(known), 3) if known else None}


def _machine() -> dict:
    from bitnetcnn.deploy.backends import openvino_status, short_version
    from bitnetcnn.machine import cpu_info

    cpu = cpu_info()
    info = {"cpu": cpu["model"], "cores": cpu["cores"], "cpu_flags": cpu["flags"], "bitnetcnn": __version__,
            "torch": torch.__version__}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if openvino_status()[0]:
        import openvino

        info["openvino"] = short_version(openvino.__version__)
    return info


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def _flags_text(m: dict) -> str:
    flags = m.get("cpu_flags")
    if not flags:
        return "CPU flags unknown"
    return " ".join(f"{k}{'+' if v else '-'}" for k, v in flags.items())


def format_report(report: dict) -> str:
    """The report as a text table."""
    m = report["machine"]
    cpu = f"{m.get('cpu')}, {m.get('cores')} cores, {_flags_text(m)}"
    lines = [
        f"bitnetcnn bench: {report['model']}  input {tuple(report['input_size'])}  threads {report['threads']}",
        f"CPU: {cpu}",
        f"torch {m.get('torch')}, onnxruntime {m.get('onnxruntime', '-')}, openvino {m.get('openvino', '-')}",
    ]
    if report.get("auto_backend"):
        lines.append(f"compile(backend='auto') picks {report['auto_backend']} ({report.get('auto_backend_reason')})")
    lines += list(report.get("notes") or [])
    if report.get("calibration"):
        lines.append(f"deploy calibrated on {report['calibration']}")
    width = max([len(k) for r in report["results"] for k in r["variants"]] + [11])
    header = f"{'batch':>5}  {'variant':<{width}} {'latency ms':>11} {'images/s':>10} {'vs fp32':>8}"
    for res in report["results"]:
        quiet = res.get("quiet_rounds")
        rounds = (f"medians of {quiet} quiet rounds of {res['rounds']}" if quiet is not None else
                  f"medians of {res.get('rounds', '?')} rounds")
        other = res.get("other_processes_cores_median")
        if other is not None:
            rounds += f"; other processes used {other:.2f} cores (median)"
        lines += ["", f"batch {res['batch_size']} on {cpu} ({rounds})", header]
        auto = f"deploy_{report.get('auto_backend')}"
        for k, r in res["variants"].items():
            mark = " <- auto" if k == auto else ""
            lines.append(f"{res['batch_size']:>5}  {k:<{width}} {r['latency_ms']:>11.2f} {r['throughput_ips']:>10.1f} "
                         f"{r['speedup_vs_fp32']:>7.2f}x{mark}")
        v = res["variants"]
        if "deploy_onnxruntime" in v and "deploy_openvino" in v:
            ratio = v["deploy_onnxruntime"]["latency_ms"] / v["deploy_openvino"]["latency_ms"]
            lines.append(f"{'':>5}  openvino vs onnxruntime: {ratio:.2f}x")
    lines += ["", f"{'variant':<{width}} {'memory':>10} {'disk':>10}"]
    for k, s in report["sizes"].items():
        lines.append(f"{k:<{width}} {_mb(s['memory_bytes']):>10} {_mb(s['disk_bytes']):>10}")
    if any(s["memory_bytes"] is None for s in report["sizes"].values()):
        lines.append("(a deployed model's disk: its int8 graph; the memory its runtime holds is not measured)")
    lines += ["", *(f"{k}: {v}" for k, v in report["variants"].items())]
    return "\n".join(lines)


def write_json(report: dict, path) -> Path:
    return write_atomically(path, json.dumps(report, indent=2))
