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

from bitnetcnn.cli import positive_int  # noqa: E402
from bitnetcnn.data.catalog import get_dataset_spec  # noqa: E402
from bitnetcnn.hub import list_pretrained, load  # noqa: E402
from bitnetcnn.normalization import normalize  # noqa: E402
from bitnetcnn.settings import data_root  # noqa: E402
from bitnetcnn.train.evaluate import accuracy  # noqa: E402


@torch.no_grad()
def reestimate_bn(model: nn.Module, images: torch.Tensor, mean, std, batch: int, seed: int = 0) -> None:
    """Reset every BatchNorm's running statistics and average them over ``images`` (in a shuffled order), each batch
    weighted by its size (momentum ``len(batch) / images seen``; PyTorch's ``None`` would weight a short last batch
    like a full one); only the BatchNorms run in training mode, so nothing else (input quantizers' scales) moves."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise SystemExit("the model has no BatchNorm to re-estimate")
    for bn in norms:
        bn.reset_running_stats()
        bn.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(images), batch):
        x = normalize(images[order[i:i + batch]], mean, std)
        for bn in norms:
            bn.momentum = len(x) / (i + len(x))
        model(x)
    for bn in norms:
        bn.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bitnet_resnet18", choices=[w.hub_entry for w in list_pretrained()],
                        metavar="MODEL", help="a hub entry with published weights")
    parser.add_argument("--batch-size", type=positive_int, default=500)
    args = parser.parse_args(argv)

    model = load(args.model, pretrained=True).eval()
    cfg = model.pretrained_cfg
    read = get_dataset_spec(cfg.dataset).reader
    train, test = read(data_root(), True, False), read(data_root(), False, False)
    start = time.perf_counter()
    before = 100 * accuracy(model, test.images, test.labels, cfg.mean, cfg.std, args.batch_size)["top1"]
    reestimate_bn(model, train.images, cfg.mean, cfg.std, args.batch_size)
    after = 100 * accuracy(model, test.images, test.labels, cfg.mean, cfg.std, args.batch_size)["top1"]
    print(f"{args.model}: top-1 {before:.2f}% as published (metadata: {100 * cfg.top1:.2f}%), {after:.2f}% after "
          f"re-estimating BatchNorm on {len(train.images):,} training images ({after - before:+.2f} points; "
          f"{time.perf_counter() - start:.0f} s, {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
