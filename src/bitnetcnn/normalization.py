"""Per-channel mean and std (of pixels / 255) of the data sets the models are made for.

One home for them: the data catalog normalizes with them, and the model registry takes an architecture's default
input normalization from them (a checkpoint then records its own). A ground-floor module: it imports nothing.
"""

from __future__ import annotations

Stats = tuple[tuple[float, ...], tuple[float, ...]]

MNIST: Stats = ((0.1307,), (0.3081,))
FASHION_MNIST: Stats = ((0.2860,), (0.3530,))
CIFAR10: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
