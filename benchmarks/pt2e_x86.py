"""The other int8 backend the deploy issue names: PyTorch's x86 path (torchao PT2E + inductor), on this CPU.

A CIFAR-style ResNet-18 (torchvision's, 3x3 stride-1 stem, no max-pool, 100 classes) is quantized with torchao's
``X86InductorQuantizer`` (u8 activations, s8 per-channel weights, calibrated on random inputs: speed does not
depend on the ranges) and compiled with inductor, which lowers it onto oneDNN's int8 convolutions. The same model in
float32 runs eagerly, eagerly in channels-last, and compiled, all in one run, so the ratios are comparable.
``bitnetcnn.deploy`` uses onnxruntime instead; this script checks whether PT2E would have been faster here.

    pip install torchao   # not a bitnetcnn dependency
    python benchmarks/pt2e_x86.py --batch 1 128
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock


class _Block(BasicBlock):
    """torchvision's block with functional ReLUs: its one ReLU module, called twice, confuses the PT2E quantizer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


def cifar_resnet18(num_classes: int = 100) -> nn.Module:
    model = torchvision.models.resnet.ResNet(_Block, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model.eval()


def int8_pt2e(model: nn.Module, example: torch.Tensor) -> nn.Module:
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise SystemExit("this benchmark needs torchao: pip install torchao") from None
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
    for _ in range(4):
        prepared(torch.randn_like(example))
    return torch.compile(convert_pt2e(prepared))


def best_seconds(fn, x: torch.Tensor, repeat: int) -> float:
    fn(x)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = cifar_resnet18()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # not the identity a fresh BN is
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        for batch in args.batch:
            x = torch.randn(batch, 3, 32, 32)
            t0 = time.perf_counter()
            candidates = {
                "float32 eager": model,
                "float32 eager, channels-last": copy.deepcopy(model).to(memory_format=torch.channels_last),
                "float32 inductor": torch.compile(copy.deepcopy(model)),
                "int8 PT2E + inductor": int8_pt2e(model, x),
            }
            for fn in candidates.values():
                fn(x)  # compiles
            print(f"batch {batch}: built and compiled in {time.perf_counter() - t0:.0f} s, {args.threads} threads")
            base = None
            for name, fn in candidates.items():
                s = best_seconds(fn, x, args.repeat if batch > 8 else 10 * args.repeat)
                base = base or s
                print(f"  {name:30s} {s * 1e3:9.1f} ms  {batch / s:7.1f} images/s  {base / s:5.2f}x float32 eager")


if __name__ == "__main__":
    main()
