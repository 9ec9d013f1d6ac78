"""Peak memory and time of loading files made to exhaust the checkpoint reader (issue 18): each must be refused
with CheckpointError in under 1 s and 200 MiB.

    python benchmarks/malicious_checkpoints.py [--small]

Builds each shape of ``bitnetcnn.checkpoint.fuzz.MALICIOUS_SHAPES`` from the shipped ``bitnet_mnist.bnc`` at the
sizes the issue measured (``--small``: the test suite's sizes), then loads each in a fresh interpreter and prints
the file size, the time of ``load_checkpoint``, its peak memory and what came out. Peak memory is the growth of the
process's peak resident set over the load (``VmHWM``, reset through ``/proc/self/clear_refs``; torch's import is
not counted) and the peak of Python/numpy allocations (``tracemalloc``, a second load). The valid file is the first
row, for comparison. Exit status 1 if a shape loads, raises anything but CheckpointError, or exceeds the limits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LIMIT_MIB, LIMIT_S = 200, 1.0  # MiB: ru_maxrss is in KiB


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _measure(path: str) -> None:
    """In the child: load ``path`` and print one JSON line. The peak resident set is reset first (Linux
    ``clear_refs``), so the peak counts only this load; a second load under tracemalloc gives the traced peak."""
    import time
    import tracemalloc

    import torch

    import bitnetcnn

    torch.set_num_threads(1)
    bitnetcnn.load_checkpoint(ROOT / "src/bitnetcnn/pretrained/bitnet_mnist.bnc")  # warm up lazy imports

    def load():
        try:
            bitnetcnn.load_checkpoint(path)
            return "loaded"
        except bitnetcnn.CheckpointError as e:
            return "CheckpointError: " + e.reason
        except Exception as e:  # noqa: BLE001 - what the benchmark looks for
            return f"{type(e).__name__}: {e}"

    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start = time.perf_counter()
    outcome = load()
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    tracemalloc.start()
    load()
    traced = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"outcome": outcome, "seconds": seconds, "rss_mib": (peak - before) / 1024,
                      "traced_mib": traced / 2**20}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the test suite's sizes (quick)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _measure(args.one)
        return 0
    from bitnetcnn.checkpoint.fuzz import MALICIOUS_SHAPES, malicious

    base = (ROOT / "src/bitnetcnn/pretrained/bitnet_mnist.bnc").read_bytes()
    failed = False
    print(f"{'file':<26} {'bytes':>11} {'s':>7} {'peak RSS MiB':>12} {'traced MiB':>10}  outcome")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ("(valid bitnet_mnist.bnc)",) + MALICIOUS_SHAPES:
            data = base if shape.startswith("(") else malicious(shape, base, big=not args.small)
            path = Path(tmp) / "f.bnc"
            path.write_bytes(data)
            del data
            out = subprocess.run([sys.executable, __file__, "--one", str(path)], capture_output=True, text=True)
            if out.returncode:
                print(f"{shape:<26} child failed: {out.stderr.strip().splitlines()[-1:]}")
                failed = True
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            bad = not shape.startswith("(") and (not r["outcome"].startswith("CheckpointError")
                                                 or r["seconds"] > LIMIT_S or r["rss_mib"] > LIMIT_MIB)
            failed |= bad
            print(f"{shape:<26} {path.stat().st_size:>11,} {r['seconds']:>7.3f} {r['rss_mib']:>12.1f} "
                  f"{r['traced_mib']:>10.1f}  {'FAIL ' if bad else ''}{r['outcome'][:150]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
