"""A longer fuzz run of the checkpoint reader than the test suite's: only CheckpointError may come out.

    python benchmarks/fuzz_checkpoint.py --seconds 300 [--model bitnet_cnn --width 4]

Cycles through the modes of ``bitnetcnn.checkpoint.fuzz`` (damaged file bytes; damaged header re-zipped with valid
CRCs; damaged tensors re-zipped with a matching sha256) in batches until the time is up, then prints the counts
and any other exception (exit status 1 if there was one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import bitnetcnn  # noqa: E402
from bitnetcnn.checkpoint.fuzz import FUZZ_MODES, fuzz  # noqa: E402
from bitnetcnn.cli import positive_int, seconds  # noqa: E402
from bitnetcnn.models import list_models  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=seconds, default=300)
    parser.add_argument("--model", default="bitnet_cnn", choices=list_models(), metavar="MODEL")
    parser.add_argument("--width", type=positive_int, default=4, help="bitnet_cnn width (small: fast iterations)")
    parser.add_argument("--batch", type=positive_int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    kwargs = {"width": args.width} if args.model == "bitnet_cnn" else {}
    totals = {}
    other = []
    with tempfile.TemporaryDirectory() as tmp:
        for form in ("ternary", "pow2", "bit"):
            model = bitnetcnn.create_model(args.model, **kwargs).eval()
            if form != "bit":
                model = bitnetcnn.convert_to_ternary(model, pow2=form == "pow2")
            data = bitnetcnn.save_checkpoint(model, Path(tmp) / f"{form}.bnc").read_bytes()
            totals[form] = data
    deadline = time.monotonic() + args.seconds
    counts = {"checkpoint_error": 0, "loaded": 0, "iterations": 0}
    round_ = 0
    while time.monotonic() < deadline:
        for form, data in totals.items():
            for mode in FUZZ_MODES:
                stats = fuzz(data, mode, args.batch, seed=args.seed * 1_000_003 + round_)
                counts["checkpoint_error"] += stats["checkpoint_error"]
                counts["loaded"] += stats["loaded"]
                counts["iterations"] += stats["loaded"] + stats["checkpoint_error"] + len(stats["other"])
                other += [f"{form}: {line}" for line in stats["other"]]
                round_ += 1
                if time.monotonic() >= deadline:
                    break
    print(f"{counts['iterations']:,} damaged checkpoints: {counts['checkpoint_error']:,} CheckpointError, "
          f"{counts['loaded']:,} loaded (damage the checks cannot see, e.g. in zip timestamps or float values), "
          f"{len(other)} other exceptions")
    for line in other[:20]:
        print("  " + line)
    return 1 if other else 0


if __name__ == "__main__":
    sys.exit(main())
