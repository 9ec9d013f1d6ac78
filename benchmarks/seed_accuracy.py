"""Accuracy of the seed's published checkpoints, loaded into the registry models, on the full real test sets.

    BITNETCNN_DATA=/path/to/shared/data python benchmarks/seed_accuracy.py

(The test suite checks the same on fixed subsets; docs/checkpoints.md reports these full numbers.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bitnetcnn.checkpoint.seed import load_seed_checkpoint  # noqa: E402
from bitnetcnn.settings import data_root  # noqa: E402


def mnist(root: Path):
    x = np.fromfile(root / "MNIST/raw/t10k-images-idx3-ubyte", np.uint8)[16:].reshape(-1, 1, 28, 28)
    y = np.fromfile(root / "MNIST/raw/t10k-labels-idx1-ubyte", np.uint8)[8:].astype(np.int64)
    return x, y


def cifar100(root: Path):
    with np.load(root / "cifar100.npz") as d:
        return np.ascontiguousarray(d["x_test"].transpose(0, 3, 1, 2)), d["y_test"]


@torch.no_grad()
def accuracy(model, x, y, batch=256):
    cfg = model.model_config
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    correct = 0
    for i in range(0, len(x), batch):
        xb = (torch.from_numpy(x[i : i + batch]).float() / 255 - mean) / std
        correct += int((model(xb).argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="data root holding seed-checkpoints/, MNIST/ and cifar100.npz (default: "
                                           "$BITNETCNN_DATA, else the cache's data/)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    root = data_root(args.data_dir)
    if not (root / "seed-checkpoints").is_dir():
        raise SystemExit(f"no seed-checkpoints/ under {root}: point --data-dir (or BITNETCNN_DATA) at the data root "
                         "that holds the seed's checkpoints")
    print("| seed checkpoint | registry model | claimed | measured here | test images |")
    print("|---|---|---:|---:|---:|")
    for name, data in (("bit_netcnn_small_mnist_ternary.zip", mnist), ("bit_resnet_18_c100_ternary.zip", cifar100),
                       ("bit_mobilenetv2_x140_c100_ternary.zip", cifar100)):
        model = load_seed_checkpoint(root / "seed-checkpoints" / name)
        x, y = data(root)
        start = time.perf_counter()
        acc = accuracy(model, x, y)
        args = {k: v for k, v in model.model_args.items() if k in ("act", "width_mult")}
        claimed = model.checkpoint_header["metrics"]["accuracy_in_name"]
        print(f"| `{name}` | `{model.model_args['name']}` {args or ''} | {claimed:.2%} | {acc:.2%} | {len(x):,} |"
              f"  <!-- {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
