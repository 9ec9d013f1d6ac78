"""What machine a figure came from: the CPU model and its relevant instruction sets, or the GPU.

Speed and accuracy figures mean little without it (int8 is 1x float32 on an AVX2 CPU and 4x with VNNI), so
benchmarks print it and training records it in the checkpoint beside the command and its wall time.
"""

from __future__ import annotations

import os
import platform

# Instruction sets that decide how fast int8 and bf16 run on x86 (as /proc/cpuinfo names them).
RELEVANT_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                      "amx_bf16")


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The relevant flags this CPU has, in the order of :data:`RELEVANT_CPU_FLAGS`."""
    have = set((_cpuinfo_field("flags") or "").split())
    return [flag for flag in RELEVANT_CPU_FLAGS if flag in have]


def describe_cpu() -> str:
    """E.g. ``AMD EPYC, 2 cores, avx2 fma``."""
    flags = " ".join(cpu_flags()) or "no AVX2"
    return f"{cpu_model()}, {os.cpu_count()} cores, {flags}"


def describe_device(accelerator: str, devices: int = 1, num_nodes: int = 1) -> str:
    """The hardware a run used: ``1x NVIDIA H200`` or the CPU's description."""
    if accelerator in ("gpu", "cuda"):
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "GPU"
        return f"{devices * num_nodes}x {name}"
    return describe_cpu() if num_nodes * devices == 1 else f"{num_nodes * devices} processes on {describe_cpu()}"
