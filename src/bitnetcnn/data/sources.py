"""Readers of the standard on-disk layouts, each returning whole splits as uint8 tensors (N, C, H, W).

Small data sets fit in memory many times over; holding them as uint8 and augmenting whole batches at once is what
keeps two CPU cores from starving the model.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bitnetcnn.images import fit_to_size, pil_to_pixels


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


FETCH_HINT = "`bitnetcnn train --download ...` fetches it there where the network allows."


def _damaged(path: Path, err: BaseException, expected: str) -> ValueError:
    detail = " ".join(str(err).split())[:160] or type(err).__name__
    return ValueError(f"{path} is damaged or not the expected file ({detail}); expected {expected}: replace it with "
                      "a whole copy")


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


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _torchvision_idx(cls_name: str, folder: str):
    def read(root: Path, train: bool, download: bool) -> Split:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        try:
            ds = cls(str(root), train=train, download=download)
        except Exception as err:  # torchvision: "Dataset not found. You can use download=True ..."
            raw = root / folder / "raw"
            if all((raw / name).is_file() for name in IDX_FILES):  # there, but unreadable
                raise _damaged(raw, err, f"the four IDX files of {cls_name}") from None
            tried = f" --download could not fetch them ({' '.join(str(err).split())[:160]})." if download else ""
            raise _missing(
                cls_name, [raw],
                f"Expected the four IDX files of {cls_name} there (torchvision's layout):{tried} {FETCH_HINT}",
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
        raise _missing("cifar10", [folder], f"Expected torchvision's layout (data_batch_1..5, test_batch); {FETCH_HINT}")
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return _cifar_batches(root, "cifar-10-batches-py", files, "labels")


def read_cifar100(root: Path, train: bool, download: bool) -> Split:
    """``cifar100.npz`` (x_train/y_train/x_test/y_test, NHWC uint8) if present, else torchvision's layout."""
    npz, folder = root / "cifar100.npz", root / "cifar-100-python"
    if npz.is_file():
        key = "train" if train else "test"
        try:
            with np.load(npz) as d:
                return _split(d[f"x_{key}"], d[f"y_{key}"], channels_last=True)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # cut short, or another file
            raise _damaged(npz, err, "numpy arrays x_train, y_train, x_test, y_test (NHWC uint8)") from None
    if not folder.is_dir() and download:
        _download_cifar("CIFAR100", root)
    if not folder.is_dir():
        raise _missing("cifar100", [npz, folder], "Expected cifar100.npz or torchvision's cifar-100-python folder; "
                       f"{FETCH_HINT}")
    return _cifar_batches(root, "cifar-100-python", ["train" if train else "test"], "fine_labels")


def _load_rgb(path: Path, size: int) -> np.ndarray:
    """An image file as ``(size, size, 3)`` uint8 pixels, read as a pretrained weight's ``transforms()`` reads a
    picture (:mod:`bitnetcnn.images`: upright, centre-cropped, never squashed), so a model trained on an image
    folder sees at training what ``bitnetcnn predict`` shows it later."""
    from PIL import Image

    with Image.open(path) as im:
        pixels = pil_to_pixels(im, 3)
    if pixels.is_floating_point():  # a 16-bit or float greyscale picture, in 0..1
        pixels = pixels.mul(255).round().to(torch.uint8)
    return fit_to_size(pixels, size, size).permute(1, 2, 0).numpy()


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
        if len(classes) < 2:
            raise ValueError(f"{train_dir} has one class folder ({classes[0]}): a classifier needs two or more")
        paths, labels = [], []
        for i, c in enumerate(classes):
            folder, before = split_dir / c, len(paths)
            for p in sorted(folder.iterdir()) if folder.is_dir() else ():
                if p.suffix.lower() in IMG_EXTENSIONS:
                    paths.append(p)
                    labels.append(i)
            if train and len(paths) == before:  # a class no model can learn, though it would be predicted among
                raise ValueError(f"{folder} has no images ({', '.join(IMG_EXTENSIONS[:4])}, ...): every class needs "
                                 "training images; add some or remove the folder")
        if not paths:
            raise ValueError(f"{split_dir} has no images in its class folders ({', '.join(IMG_EXTENSIONS[:4])}, ...): "
                             "nothing to evaluate on; put each class's test images in val/<class>/")
        return replace(_stack(paths, labels, size), class_names=tuple(classes))

    return read
