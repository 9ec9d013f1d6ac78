"""The data sets by name, with what training needs to know about each."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from bitnetcnn.data import sources

MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    reader: Callable[..., sources.Split] = field(repr=False)
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # random crop with this padding during training (0: none)
    hflip: bool  # random horizontal flips during training (not for digits)
    rotate: float = 0.0  # random rotation by up to this many degrees during training
    zoom: float = 0.0  # random scaling by 1 +- zoom during training
    elastic: float = 0.0  # elastic distortion of this strength in pixels during training (0: none)


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("mnist_demo", sources.read_mnist_demo, 10, 1, 28, *MNIST_STATS, crop_padding=2, hflip=False),
        DatasetSpec("mnist", sources.read_mnist, 10, 1, 28, *MNIST_STATS, crop_padding=2, hflip=False),
        DatasetSpec("fashion_mnist", sources.read_fashion_mnist, 10, 1, 28, (0.2860,), (0.3530,), 2, True),
        DatasetSpec("cifar10", sources.read_cifar10, 10, 3, 32, *CIFAR10_STATS, crop_padding=4, hflip=True),
        DatasetSpec("cifar100", sources.read_cifar100, 100, 3, 32, *CIFAR100_STATS, crop_padding=4, hflip=True),
        DatasetSpec("tiny_imagenet", sources.read_tiny_imagenet, 200, 3, 64, *IMAGENET_STATS, 8, True),
    ]
}


def list_datasets() -> list[str]:
    return sorted([*DATASETS, "imagefolder"])


def get_dataset_spec(name: str, img_size: int = 64, num_classes: int | None = None) -> DatasetSpec:
    """The spec of a named data set; ``imagefolder`` is built for ``img_size`` (its classes come from the tree)."""
    if name == "imagefolder":
        return DatasetSpec("imagefolder", sources.imagefolder_reader(img_size), num_classes or 0, 3, img_size,
                           *IMAGENET_STATS, crop_padding=img_size // 8, hflip=True)
    try:
        return DATASETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list_datasets(), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown data set {name!r}.{hint} Available: {', '.join(list_datasets())}") from None
