"""Print the model zoo's table for docs/models.md: parameters, ternary weights, memory and MACs at CIFAR-100.

    python benchmarks/param_table.py

Every model is built for 100 classes and 3x32x32 inputs and measured with bitnetcnn.summary.
"""

from __future__ import annotations

import argparse

import torch

from bitnetcnn import create_model, summary

VARIANTS = [
    ("bitnet_cnn", {}),
    ("bit_resnet18", {}),
    ("bit_resnet34", {}),
    ("bit_resnet50", {}),
    ("bit_mobilenetv2", {}),
    ("bit_mobilenetv2", {"width_mult": 1.4}),
    *[("bit_convnextv2", {"size": size}) for size in ("atto", "femto", "pico", "nano", "tiny")],
]


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(2)
    print("| model | arguments | parameters | ternary weights | float32 MB | packed MB | MACs at 32x32 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, kwargs in VARIANTS:
        model = create_model(name, num_classes=100, in_chans=3, **kwargs)
        result = summary(model, (3, 32, 32), print_fn=None)
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "-"
        print(
            f"| `{name}` | {args} | {result.params:,} | {result.ternary_weights:,} "
            f"| {result.fp32_bytes / 1e6:.1f} | {result.packed_bytes / 1e6:.2f} | {result.macs / 1e6:,.0f}M |"
        )


if __name__ == "__main__":
    main()
