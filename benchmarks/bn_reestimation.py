"""Does re-estimating a converted model's BatchNorm statistics on clean training images raise its test accuracy?

A model trained with CutMix and random crops keeps running statistics of augmented batches; BN re-estimation
(resetting them and averaging over un-augmented training images, the ternary weights fixed) is the usual cheap fix
for quantized models whose statistics drifted. This prints the top-1 before and after, on all test images.

    BITNETCNN_DATA=/path/to/shared/data python benchmarks/bn_reestimation.py --model bitnet_resnet18

(docs/recipes.md reports the result for the published ResNet-18.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bitnetcnn.data.sources import read_cifar100  # noqa: E402
from bitnetcnn.hub import load  # noqa: E402
from bitnetcnn.normalization import normalize  # noqa: E402
from bitnetcnn.settings import data_root  # noqa: E402


@torch.no_grad()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, batch: int) -> float:
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(normalize(images[i:i + batch], mean, std))
        correct += (logits.argmax(1) == labels[i:i + batch]).sum().item()
    return 100.0 * correct / len(images)


@torch.no_grad()
def reestimate_bn(model: nn.Module, images: torch.Tensor, mean, std, batch: int, hflip: bool, seed: int) -> None:
    """Reset every BatchNorm's running statistics and average them over ``images``, each batch weighted by its size
    (momentum ``len(batch) / images seen``; PyTorch's ``None`` would weight a short last batch like a full one); only
    the BatchNorms run in training mode, so nothing else (input quantizers' scales) moves."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise SystemExit("the model has no BatchNorm to re-estimate")
    for bn in norms:
        bn.reset_running_stats()
        bn.train()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    for i in range(0, len(images), batch):
        x = normalize(images[order[i:i + batch]], mean, std)
        for bn in norms:
            bn.momentum = len(x) / (i + len(x))
        if hflip:
            flip = torch.rand(len(x), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)
        model(x)
    for bn in norms:
        bn.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bitnet_resnet18", help="a CIFAR-100 hub entry with published weights")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--hflip", action="store_true", help="flip half the re-estimation images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    root = data_root()
    train, test = read_cifar100(root, train=True, download=False), read_cifar100(root, train=False, download=False)
    model = load(args.model, pretrained=True).eval()
    cfg = model.pretrained_cfg
    start = time.perf_counter()
    before = top1(model, test.images, test.labels, cfg.mean, cfg.std, args.batch_size)
    reestimate_bn(model, train.images, cfg.mean, cfg.std, args.batch_size, args.hflip, args.seed)
    after = top1(model, test.images, test.labels, cfg.mean, cfg.std, args.batch_size)
    print(f"{args.model}: top-1 {before:.2f}% as published (metadata: {100 * cfg.top1:.2f}%), {after:.2f}% after "
          f"re-estimating BatchNorm on {len(train.images):,} training images{' (half flipped)' if args.hflip else ''}"
          f" ({after - before:+.2f} points; {time.perf_counter() - start:.0f} s, {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
