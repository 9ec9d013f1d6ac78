"""What machine a figure came from: the CPU model and the instruction sets that decide its speed, or the GPU.

Speed figures mean little without it: on x86 the int8 kernels of onnxruntime and OpenVINO are as fast as the widest
of AVX2 (``vpmaddubsw`` + ``vpmaddwd``, about the speed of float32 FMA), AVX-512 / AVX-VNNI (``vpdpbusd``: one
instruction per 4-element dot product, several times float32) and AMX (tile int8 products). So ``bench`` prints
it beside every figure, and training records it in the checkpoint beside each command and its wall time. A
ground-floor module: it imports nothing of the package.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from typing import Dict, Optional

__all__ = ["RELEVANT_FLAGS", "cpu_info", "describe_device", "format_cpu"]

# name in the report: /proc/cpuinfo flag(s), any of which means the feature is there
RELEVANT_FLAGS: Dict[str, tuple] = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_vnni": ("avx512_vnni",),
    "avx_vnni": ("avx_vnni",),
    "amx": ("amx_int8", "amx_tile"),
}


def _parse_cpuinfo(text: str) -> dict:
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = set(value.split())
    return {"model": model, "flags": flags}


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """``{"model": str, "cores": int, "flags": {name: bool} or None}`` (flags None where they cannot be read)."""
    parsed = {"model": None, "flags": None}
    try:
        with open("/proc/cpuinfo") as f:
            parsed = _parse_cpuinfo(f.read())
    except OSError:
        pass
    raw = parsed["flags"]
    flags: Optional[Dict[str, bool]] = None
    if raw is not None:
        flags = {name: any(f in raw for f in aliases) for name, aliases in RELEVANT_FLAGS.items()}
    return {"model": parsed["model"] or platform.processor() or platform.machine(), "cores": usable_cores(),
            "flags": flags}


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity: a container or ``taskset`` limits it below the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def format_cpu(info: Optional[dict] = None) -> str:
    """``AMD EPYC, 2 cores: avx2 yes, avx512f no, avx512_vnni no, avx_vnni no, amx no``."""
    info = info or cpu_info()
    flags = info.get("flags")
    features = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()) if flags else "flags unknown"
    return f"{info.get('model')}, {info.get('cores')} cores: {features}"


def describe_device(accelerator: str, devices: int = 1, num_nodes: int = 1) -> str:
    """The hardware a run used: ``1x NVIDIA H200``, or the CPU's :func:`format_cpu`."""
    if accelerator in ("gpu", "cuda"):
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "GPU"
        return f"{devices * num_nodes}x {name}"
    processes = devices * num_nodes
    return format_cpu() if processes == 1 else f"{processes} processes on {format_cpu()}"
