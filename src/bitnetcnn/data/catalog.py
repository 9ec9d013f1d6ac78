"""The data sets by name, with what training needs to know about each."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from bitnetcnn import class_names
from bitnetcnn.data import sources
from bitnetcnn.normalization import BY_DATASET
from bitnetcnn.normalization import IMAGENET as IMAGENET_STATS


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
    class_names: tuple[str, ...] | None = None  # label -> name, recorded in the checkpoints trained on it

    def read(self, root, train: bool, download: bool = False) -> sources.Split:
        """A split, checked against what this spec says of it: images of ``in_chans x img_size x img_size`` and
        labels among its classes (a file in another layout, or with 1-based labels, would otherwise train or score
        as something else: an accuracy counted against shifted labels looks like a weak model, not a wrong file)."""
        root = Path(root)
        split = self.reader(root, train, download)
        where = f"the {'training' if train else 'test'} split of {self.name!r} (read from {root})"
        if not len(split.labels):  # evaluated, it scored 0.0 as if the model were wrong
            raise ValueError(f"{where} holds no images: the files are empty or cut short; replace them with whole "
                             "copies")
        shape, wanted = tuple(split.images.shape[1:]), (self.in_chans, self.img_size, self.img_size)
        if shape != wanted:
            raise ValueError(f"{where} has images of {'x'.join(map(str, shape))} where {'x'.join(map(str, wanted))} "
                             "were expected: the files are in another layout than its reader expects")
        classes = self.num_classes or len(split.class_names or ()) or None
        if classes and not (0 <= int(split.labels.min()) and int(split.labels.max()) < classes):
            raise ValueError(f"{where} has labels from {int(split.labels.min())} to {int(split.labels.max())}, but "
                             f"its {classes} classes are numbered 0 to {classes - 1}: the files hold other labels "
                             "(1-based ones, or another data set's)")
        return split

    def normalized_by(self, mean=None, std=None) -> "DatasetSpec":
        """This spec with the normalization a run gives (``--mean``/``--std``, a value a channel; None keeps the data
        set's), which its checkpoints then record."""
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != self.in_chans:
                raise ValueError(f"--{name} has {len(values)} value{'s' * (len(values) != 1)} but {self.name!r} has "
                                 f"{self.in_chans} channel{'s' * (self.in_chans != 1)}: give one a channel")
        return replace(self, mean=tuple(self.mean if mean is None else mean),
                       std=tuple(self.std if std is None else std))

    def input_metadata(self) -> dict:
        """What a checkpoint of a model trained on this data set records of its inputs (``save_checkpoint``'s
        metadata keys ``input_size``, ``mean``, ``std``, and ``class_names`` where the spec names them)."""
        meta = {"input_size": [self.in_chans, self.img_size, self.img_size], "mean": list(self.mean),
                "std": list(self.std)}
        if self.class_names is not None:
            meta["class_names"] = list(self.class_names)
        return meta


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("mnist_demo", sources.read_mnist_demo, 10, 1, 28, *BY_DATASET["mnist_demo"], crop_padding=2,
                    hflip=False, class_names=class_names.BY_DATASET["mnist_demo"]),
        DatasetSpec("mnist", sources.read_mnist, 10, 1, 28, *BY_DATASET["mnist"], crop_padding=2, hflip=False,
                    class_names=class_names.BY_DATASET["mnist"]),
        DatasetSpec("fashion_mnist", sources.read_fashion_mnist, 10, 1, 28, *BY_DATASET["fashion_mnist"], 2, True,
                    class_names=class_names.BY_DATASET["fashion_mnist"]),
        DatasetSpec("cifar10", sources.read_cifar10, 10, 3, 32, *BY_DATASET["cifar10"], crop_padding=4, hflip=True,
                    class_names=class_names.BY_DATASET["cifar10"]),
        DatasetSpec("cifar100", sources.read_cifar100, 100, 3, 32, *BY_DATASET["cifar100"], crop_padding=4,
                    hflip=True, class_names=class_names.BY_DATASET["cifar100"]),
        DatasetSpec("tiny_imagenet", sources.read_tiny_imagenet, 200, 3, 64, *BY_DATASET["tiny_imagenet"], 8, True),
    ]
}


def _average(values: tuple[float, ...]) -> float:
    return round(sum(values) / len(values), 4)


def list_datasets() -> list[str]:
    return sorted([*DATASETS, "imagefolder"])


IMAGE_FOLDER_CHANNELS = (1, 3)


def get_dataset_spec(name: str, img_size: int = 64, num_classes: int | None = None, in_chans: int = 3,
                     class_names: Sequence[str] | None = None) -> DatasetSpec:
    """The spec of a named data set; ``imagefolder`` is built for ``img_size`` and ``in_chans`` (its classes come from
    the tree, or from a trained model's ``class_names``): RGB pictures normalized with ImageNet's statistics, or
    greyscale ones with their channel mean (as timm does for one-channel models)."""
    if name == "imagefolder":
        if in_chans not in IMAGE_FOLDER_CHANNELS:
            raise ValueError(f"an image folder is read with 1 (greyscale) or 3 (RGB) channels, not {in_chans}")
        mean, std = IMAGENET_STATS if in_chans == 3 else tuple((_average(stat),) for stat in IMAGENET_STATS)
        return DatasetSpec("imagefolder", sources.imagefolder_reader(img_size, in_chans, class_names),
                           num_classes or 0, in_chans, img_size, mean, std, crop_padding=img_size // 8, hflip=True)
    try:
        return DATASETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list_datasets(), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown data set {name!r}.{hint} Available: {', '.join(list_datasets())}") from None
