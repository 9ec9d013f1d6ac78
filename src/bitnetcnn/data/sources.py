"""Readers of the standard on-disk layouts, each returning whole splits as uint8 tensors (N, C, H, W).

Small data sets fit in memory many times over; holding them as uint8 and augmenting whole batches at once is what
keeps two CPU cores from starving the model.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class DatasetNotFoundError(FileNotFoundError):
    """A data set is missing: the message says where it was looked for and how to get it."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)
    class_names: tuple[str, ...] | None = None  # label -> name, where the files name the classes (image folders)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")


def _split(images: np.ndarray, labels: np.ndarray, channels_last: bool) -> Split:
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif channels_last:
        x = x.permute(0, 3, 1, 2)
    return Split(x.contiguous(), torch.from_numpy(np.asarray(labels).astype(np.int64)))


def _missing(name: str, looked: list[Path], how: str) -> DatasetNotFoundError:
    where = ", ".join(str(p) for p in looked)
    return DatasetNotFoundError(
        f"data set {name!r} not found; looked in: {where}. {how} "
        "Point --data-dir (or the BITNETCNN_DATA environment variable) at the folder that holds it."
    )


def read_mnist_demo(root: Path, train: bool, download: bool) -> Split:
    """The MNIST subset bundled with the package (no root needed)."""
    with np.load(Path(__file__).parent / "demo" / "mnist_demo.npz") as d:
        key = "train" if train else "test"
        return _split(d[f"x_{key}"], d[f"y_{key}"], channels_last=False)


def _torchvision_idx(cls_name: str, folder: str):
    def read(root: Path, train: bool, download: bool) -> Split:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        try:
            ds = cls(str(root), train=train, download=download)
        except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True ..."
            raise _missing(
                cls_name, [root / folder / "raw"],
                f"Expected the four IDX files of {cls_name} there (torchvision's layout); pass --download to fetch "
                "them where the network allows.",
            ) from err
        return _split(ds.data.numpy(), ds.targets.numpy(), channels_last=False)

    return read


read_mnist = _torchvision_idx("MNIST", "MNIST")
read_fashion_mnist = _torchvision_idx("FashionMNIST", "FashionMNIST")


def _unpickle(path: Path) -> dict:
    # The CIFAR "python version" archives are pickles by definition; they hold only numbers and strings.
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar_batches(root: Path, folder: str, files: list[str], label_key: str) -> Split:
    xs, ys = [], []
    for name in files:
        d = _unpickle(root / folder / name)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key]))
    return _split(np.concatenate(xs), np.concatenate(ys), channels_last=False)


def _download_cifar(cls_name: str, root: Path) -> None:
    import torchvision

    getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)


def read_cifar10(root: Path, train: bool, download: bool) -> Split:
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir() and download:
        _download_cifar("CIFAR10", root)
    if not folder.is_dir():
        raise _missing("cifar10", [folder], "Expected torchvision's layout (data_batch_1..5, test_batch); pass "
                       "--download to fetch it where the network allows.")
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return _cifar_batches(root, "cifar-10-batches-py", files, "labels")


def read_cifar100(root: Path, train: bool, download: bool) -> Split:
    """``cifar100.npz`` (x_train/y_train/x_test/y_test, NHWC uint8) if present, else torchvision's layout."""
    npz, folder = root / "cifar100.npz", root / "cifar-100-python"
    if npz.is_file():
        key = "train" if train else "test"
        with np.load(npz) as d:
            return _split(d[f"x_{key}"], d[f"y_{key}"], channels_last=True)
    if not folder.is_dir() and download:
        _download_cifar("CIFAR100", root)
    if not folder.is_dir():
        raise _missing("cifar100", [npz, folder], "Expected cifar100.npz or torchvision's cifar-100-python folder; "
                       "pass --download to fetch the latter where the network allows.")
    return _cifar_batches(root, "cifar-100-python", ["train" if train else "test"], "fine_labels")


def _load_rgb(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _stack(paths: list[Path], labels: list[int], size: int) -> Split:
    images = np.stack([_load_rgb(p, size) for p in paths]) if paths else np.zeros((0, size, size, 3), np.uint8)
    return _split(images, np.asarray(labels, dtype=np.int64), channels_last=True)


def read_tiny_imagenet(root: Path, train: bool, download: bool) -> Split:
    """The distributed ``tiny-imagenet-200`` layout: ``train/<wnid>/images/*.JPEG``, ``val/val_annotations.txt``."""
    base = root / "tiny-imagenet-200"
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise _missing("tiny_imagenet", [base], "Download tiny-imagenet-200.zip (cs231n.stanford.edu) and unzip it "
                       "there; the test split is unlabelled, so val/ serves as the test set.")
    wnids = wnids_file.read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    if train:
        for w in wnids:
            for p in sorted((base / "train" / w / "images").glob("*.JPEG")):
                paths.append(p)
                labels.append(index[w])
    else:
        for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                paths.append(base / "val" / "images" / fields[0])
                labels.append(index[fields[1]])
    return replace(_stack(paths, labels, 64), class_names=tuple(wnids))  # WordNet ids, as its folders name them


def _class_folders(folder: Path) -> list[str]:
    """The class folders of an image-folder split, sorted; hidden ones (``.ipynb_checkpoints``) are not classes."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def imagefolder_reader(size: int) -> Callable[[Path, bool, bool], Split]:
    """A generic ``root/{train,val}/<class>/*.jpg`` tree, resized to ``size`` (for small data sets). The classes are
    the folders of ``train/``, in both splits: a ``val/`` without some class keeps the others' labels (each split
    numbering its own folders would shift them, and every score with them)."""

    def read(root: Path, train: bool, download: bool) -> Split:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        train_dir, split_dir = root / "train", root / ("train" if train else "val")
        for folder in dict.fromkeys((train_dir, split_dir)):
            if not folder.is_dir():
                raise _missing("imagefolder", [folder], "Expected root/train/<class>/*.jpg and root/val/<class>/*.jpg.")
        classes = _class_folders(train_dir)
        if not classes:
            raise _missing("imagefolder", [train_dir], "Found no class folders there: expected "
                           "root/train/<class>/*.jpg and root/val/<class>/*.jpg.")
        unknown = [c for c in _class_folders(split_dir) if c not in classes]
        if unknown:
            raise ValueError(f"{split_dir} has class folders that {train_dir} lacks ({', '.join(unknown[:5])}"
                             f"{', ...' if len(unknown) > 5 else ''}): no model learns a class it never saw; give "
                             "each class of val/ a folder in train/")
        paths, labels = [], []
        for i, c in enumerate(classes):
            folder = split_dir / c
            for p in sorted(folder.iterdir()) if folder.is_dir() else ():
                if p.suffix.lower() in IMG_EXTENSIONS:
                    paths.append(p)
                    labels.append(i)
        return replace(_stack(paths, labels, size), class_names=tuple(classes))

    return read
