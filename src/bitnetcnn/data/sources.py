"""Readers of the standard on-disk layouts, each returning whole splits as uint8 tensors (N, C, H, W).

Small data sets fit in memory many times over; holding them as uint8 and augmenting whole batches at once is what
keeps two CPU cores from starving the model.
"""

from __future__ import annotations

import os
import pickle
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from bitnetcnn.class_names import CIFAR100
from bitnetcnn.images import UnreadablePixels, fit_to_size, pil_to_uint8, read_errors
from bitnetcnn.messages import few


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
        if self.labels.dim() != 1 or self.labels.is_floating_point() or self.labels.is_complex():
            raise ValueError(f"labels must be integers (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")


def _split(images: np.ndarray, labels: np.ndarray, channels_last: bool) -> Split:
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif channels_last:
        x = x.permute(0, 3, 1, 2)
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:  # Keras' (N, 1) label arrays
        labels = labels[:, 0]
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    return Split(x.contiguous(), torch.from_numpy(labels.astype(np.int64)))


FETCH_HINT = "`bitnetcnn train --download ...` fetches it there where the network allows."
COPY_HINT = "Copy it there from a machine that can fetch it."  # where --download was given and failed


def _damaged(path: Path, err: BaseException, expected: str) -> ValueError:
    if isinstance(err, PermissionError):  # whole, but not readable by this process
        return ValueError(f"{path} cannot be read (permission denied): let this user read it (chmod a+r), or point "
                          "--data-dir at a copy it can read")
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


def _idx_file_at_fault(raw: Path) -> Path:
    """The first IDX file whose size is not what its header says (a download cut short), else the folder."""
    for name in IDX_FILES:
        path = raw / name
        with path.open("rb") as f:
            head = f.read(4)
            ndim = head[3] if len(head) == 4 else 0
            dims = np.frombuffer(f.read(4 * ndim), dtype=">u4")
        if len(head) < 4 or len(dims) < ndim or path.stat().st_size != 4 + 4 * ndim + int(np.prod(dims)):
            return path
    return raw


def _torchvision_idx(cls_name: str, folder: str):
    def read(root: Path, train: bool, download: bool) -> Split:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        try:
            ds = cls(str(root), train=train, download=download)
        except Exception as err:  # torchvision: "Dataset not found. You can use download=True ..."
            raw = root / folder / "raw"
            try:
                at_fault = _idx_file_at_fault(raw) if all((raw / name).is_file() for name in IDX_FILES) else None
            except OSError as denied:  # a file or folder this user cannot read: a bare PermissionError before
                raise _damaged(Path(denied.filename or raw), denied, f"the four IDX files of {cls_name}") from None
            if at_fault is not None:  # there, but unreadable
                raise _damaged(at_fault, err, f"the four IDX files of {cls_name}") from None
            tried = f" --download could not fetch them ({' '.join(str(err).split())[:160]})." if download else ""
            raise _missing(
                cls_name, [raw],
                f"Expected the four IDX files of {cls_name} there (torchvision's layout):{tried} "
                f"{COPY_HINT if download else FETCH_HINT}",
            ) from err
        try:
            return _split(ds.data.numpy(), ds.targets.numpy(), channels_last=False)
        except ValueError as err:  # "60000 images but 10000 labels": a file of the other split, say
            raise _damaged(root / folder / "raw", err, f"the four IDX files of {cls_name}, each split's images "
                           "and labels of one count") from None

    return read


read_mnist = _torchvision_idx("MNIST", "MNIST")
read_fashion_mnist = _torchvision_idx("FashionMNIST", "FashionMNIST")


def _unpickle(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR "python version" batch as (images (N, 3, 32, 32) uint8, labels); a cut-short or foreign file is
    named as damaged. These archives are pickles by definition; they hold only numbers and strings."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        return np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(d[label_key])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise _damaged(path, err, f"a CIFAR batch (a pickled dict with 'data' and {label_key!r})") from None


def _cifar_batches(root: Path, name: str, cls_name: str, folder: str, files: list[str], label_key: str,
                   download: bool) -> Split:
    """The batches ``files`` of torchvision's CIFAR layout, downloaded first where some are missing and
    ``download`` is set; each one missing is named."""
    base = root / folder
    missing = [base / f for f in files if not (base / f).is_file()]
    if missing and download:
        _download_cifar(cls_name, root, base)
        missing = [base / f for f in files if not (base / f).is_file()]
    if missing:
        raise _missing(name, missing, f"Expected torchvision's layout ({folder}/ with {', '.join(files)}); "
                       f"{FETCH_HINT}")
    xs, ys = zip(*(_unpickle(base / f, label_key) for f in files))
    return _split(np.concatenate(xs), np.concatenate(ys), channels_last=False)


def _download_cifar(cls_name: str, root: Path, folder: Path) -> None:
    import torchvision

    try:
        getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)
    except Exception as err:  # offline, or a bad archive: say where it was wanted
        raise _missing(cls_name, [folder], f"--download could not fetch it ({' '.join(str(err).split())[:160]}). "
                       f"{COPY_HINT}") from err


def read_cifar10(root: Path, train: bool, download: bool) -> Split:
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return _cifar_batches(root, "cifar10", "CIFAR10", "cifar-10-batches-py", files, "labels", download)


def read_cifar100(root: Path, train: bool, download: bool) -> Split:
    """``cifar100.npz`` (x_train/y_train/x_test/y_test, NHWC uint8) if present, else torchvision's layout."""
    npz, folder = root / "cifar100.npz", root / "cifar-100-python"
    if npz.is_file():
        key = "train" if train else "test"
        expected = "numpy arrays x_train, y_train, x_test, y_test (x: N x 32 x 32 x 3 uint8, y: N labels)"
        try:
            with np.load(npz) as d:
                x, y = d[f"x_{key}"], d[f"y_{key}"]
                if x.shape[1:] != (32, 32, 3):  # NCHW or greyscale would be read as something else
                    raise ValueError(f"x_{key} has the shape {x.shape}")
                names = tuple(map(str, d["fine_label_names"])) if "fine_label_names" in d.files else CIFAR100
                if names != CIFAR100:  # labels numbered in another order: each would score as another class
                    raise ValueError(f"its fine_label_names ({few(names)}) are not CIFAR-100's classes in their "
                                     f"order ({few(CIFAR100)})")
                return _split(x, y, channels_last=True)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # cut short, or another file
            raise _damaged(npz, err, expected) from None
    if not folder.is_dir() and not download:
        raise _missing("cifar100", [npz, folder], "Expected cifar100.npz or torchvision's cifar-100-python folder; "
                       f"{FETCH_HINT}")
    return _cifar_batches(root, "cifar100", "CIFAR100", "cifar-100-python", ["train" if train else "test"],
                          "fine_labels", download)


def _load_image(path: Path, size: int, channels: int = 3) -> np.ndarray:
    """An image file as ``(size, size, channels)`` uint8 pixels, read as a pretrained weight's ``transforms()`` reads a
    picture (:mod:`bitnetcnn.images`: upright, centre-cropped, never squashed), so a model trained on an image
    folder sees at training what ``bitnetcnn predict`` shows it later."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            pixels = pil_to_uint8(im, channels)
    except UnreadablePixels as err:
        raise ValueError(f"{path}: {err}") from None
    except read_errors() as err:
        raise _damaged(path, err, "an image file") from None
    return fit_to_size(pixels, size, size).permute(1, 2, 0).numpy()


def _stack(paths: list[Path], labels: list[int], size: int, channels: int = 3) -> Split:
    images = (np.stack([_load_image(p, size, channels) for p in paths]) if paths
              else np.zeros((0, size, size, channels), np.uint8))
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
            found = _image_files(base / "train" / w / "images")
            if not found:  # a class no model could learn: an archive unzipped in part
                raise _missing("tiny_imagenet", [base / "train" / w / "images"], "Found no images of this class "
                               "there: unzip tiny-imagenet-200.zip again, whole.")
            paths += found
            labels += [index[w]] * len(found)
    else:
        annotations = base / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise _missing("tiny_imagenet", [annotations], "Unzip tiny-imagenet-200.zip again, whole.")
        for number, line in enumerate(annotations.read_text().splitlines(), 1):
            fields = line.split()  # tabs in the archive; spaces where an editor replaced them (none was read)
            if len(fields) == 1:
                raise ValueError(f"{annotations} line {number} holds {line.strip()!r} where an image file and its "
                                 "class were expected: unzip tiny-imagenet-200.zip again, whole")
            if len(fields) >= 2:
                if fields[1] not in index:
                    raise ValueError(f"{annotations} line {number} labels {fields[0]} {fields[1]!r}, which is not "
                                     f"among the classes of {wnids_file}: the two files come from other archives; "
                                     "unzip tiny-imagenet-200.zip again, whole")
                paths.append(base / "val" / "images" / fields[0])
                labels.append(index[fields[1]])
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise _missing("tiny_imagenet", [absent[0]], f"{annotations} lists {len(absent)} image"
                           f"{'s' * (len(absent) != 1)} absent from {base / 'val' / 'images'} "
                           f"({few(p.name for p in absent)}): unzip tiny-imagenet-200.zip again, whole.")
    return replace(_stack(paths, labels, 64), class_names=tuple(wnids))  # WordNet ids, as its folders name them


def _image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` and its subfolders, as torchvision's ``ImageFolder`` finds them (its
    extensions, any case), sorted; hidden files and folders (``.DS_Store``, ``._x.jpg``) are skipped."""
    return _pictures(folder)[0]


def _pictures(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(read, unread)``: :func:`_image_files`, and in the same walk the pictures of other extensions than
    ImageFolder's (.gif, .heic, .jfif, .avif), which it leaves out."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not folder.is_dir():
        return [], []
    found, unread, seen, other = [], [], set(), _unread_suffixes()
    # os.walk following links as ImageFolder does (Path.rglob skips linked subfolders before Python 3.13), each real
    # folder once: a link back up the tree would loop
    for here, folders, files in os.walk(folder, followlinks=True, onerror=_unlisted):
        real = os.path.realpath(here)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = [d for d in folders if not d.startswith(".")]
        for f in files:
            suffix, path = Path(f).suffix.lower(), Path(here) / f
            if f.startswith("."):
                continue
            if suffix in IMG_EXTENSIONS:
                found += [path] if path.is_file() else []  # not a dangling link
            elif suffix in other:
                unread.append(path)
    return sorted(found), sorted(unread)


def _unlisted(err: OSError) -> None:
    """A folder of images ``os.walk`` cannot list: it skipped such a folder without a word, and a class of the test
    images went missing from the score."""
    raise _damaged(Path(err.filename), err, "a folder of images") from None


def _unread_suffixes() -> set[str]:
    """The extensions of pictures: every one Pillow registers and the phones' it may not (.heic, .avif). Inside a
    class folder those beyond ImageFolder's (checked first) are left out; beside the class folders, all are."""
    from PIL import Image

    return {".heic", ".heif", ".avif", ".jfif", *Image.registered_extensions()}


def _beside_class_folders(split_dir: Path) -> list[Path]:
    """Pictures lying in a split's folder itself, beside its class folders: no class's images."""
    other = _unread_suffixes()
    return [p for p in sorted(split_dir.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in other]


def _class_folders(folder: Path) -> list[str]:
    """The class folders of an image-folder split, sorted; hidden ones (``.ipynb_checkpoints``) are not classes.
    Two whose names differ only in their Unicode form (NFC and NFD "café") are refused: classes are matched across
    the splits by that form, so both would read one folder."""
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    forms: dict[str, list[str]] = {}
    for name in names:
        forms.setdefault(unicodedata.normalize("NFC", name), []).append(name)
    alike = next((spellings for spellings in forms.values() if len(spellings) > 1), None)
    if alike:
        raise ValueError(f"{folder} has class folders whose names differ only in their Unicode form "
                         f"({' and '.join(map(ascii, alike))}): they print alike and would be read as one class; "
                         "merge them into one folder or rename one")
    return names


def imagefolder_reader(size: int, channels: int = 3,
                       class_names: Optional[Sequence[str]] = None) -> Callable[[Path, bool, bool], Split]:
    """A generic ``root/{train,val}/<class>/*.jpg`` tree, resized to ``size``, with ``channels`` (3: RGB, 1:
    greyscale; for small data sets). The classes are
    the folders of ``train/``, in both splits: a ``val/`` without some class keeps the others' labels (each split
    numbering its own folders would shift them, and every score with them). A trained model's ``class_names`` give
    them instead, so that its test images alone (``val/``, without ``train/``) can be evaluated."""

    def read(root: Path, train: bool, download: bool) -> Split:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        train_dir, split_dir = root / "train", root / ("train" if train else "val")
        for folder in dict.fromkeys((split_dir,) if class_names else (train_dir, split_dir)):
            if not folder.is_dir():
                raise _missing("imagefolder", [folder], "Expected root/val/<class>/*.jpg (the test images, all a "
                               "trained model's evaluation reads)." if class_names and not train else
                               "Expected root/train/<class>/*.jpg and root/val/<class>/*.jpg.")
        classes = list(class_names) if class_names else _class_folders(train_dir)
        if not classes:
            raise _missing("imagefolder", [train_dir], "Found no class folders there: expected "
                           "root/train/<class>/*.jpg and root/val/<class>/*.jpg.")
        # a class's folder in this split, by its name's NFC form: a folder copied from a Mac spells "café" as
        # "cafe" and a combining accent (NFD), which printed alike was refused as a class train/ lacks
        here = {unicodedata.normalize("NFC", d): d for d in _class_folders(split_dir)}
        known = {unicodedata.normalize("NFC", c) for c in classes}
        unknown = [d for n, d in here.items() if n not in known]
        if unknown:
            if class_names:  # evaluating a trained model: train/ is not read
                raise ValueError(f"{split_dir} has class folders that the model's classes lack ({few(unknown)}): it "
                                 "never learnt them; remove them from val/, or evaluate a model trained on them")
            raise ValueError(f"{split_dir} has class folders that {train_dir} lacks ({few(unknown)}): no model learns "
                             "a class it never saw; give each class of val/ a folder in train/")
        if len(classes) < 2:
            raise ValueError(f"{train_dir} has one class folder ({classes[0]}): a classifier needs two or more")
        paths, labels = [], []
        unread = [f"{p.name} (beside the class folders)" for p in _beside_class_folders(split_dir)]
        for i, c in enumerate(classes):
            folder = split_dir / here.get(unicodedata.normalize("NFC", c), c)
            found, left_out = _pictures(folder)
            unread += [str(p.relative_to(split_dir)) for p in left_out]
            paths += found
            labels += [i] * len(found)
            if train and not found:  # a class no model can learn, though it would be predicted among
                raise ValueError(f"{folder} has no images ({', '.join(IMG_EXTENSIONS[:4])}, ...): every class needs "
                                 "training images; add some or remove the folder")
        if unread:  # a class's .gif photos or .heic phone pictures vanished from training, and nothing said so
            warnings.warn(f"{split_dir}: {len(paths)} images read; {len(unread)} file{'s' * (len(unread) != 1)} "
                          f"not read as images ({few(unread)}): only {', '.join(IMG_EXTENSIONS)} are, as "
                          "torchvision's ImageFolder reads; convert the others to PNG to use them", UserWarning,
                          stacklevel=2)
        if not paths:
            raise ValueError(f"{split_dir} has no images in its class folders ({', '.join(IMG_EXTENSIONS[:4])}, ...): "
                             "nothing to evaluate on; put each class's test images in val/<class>/")
        return replace(_stack(paths, labels, size, channels), class_names=tuple(classes))

    return read
