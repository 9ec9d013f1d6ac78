"""Data readers on small files made here in each data set's real on-disk format, and batched augmentation."""

import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from bitnetcnn.data import DatasetNotFoundError, data_root, get_dataset_spec, list_datasets
from bitnetcnn.normalization import normalize
from bitnetcnn.data.augment import random_affine, random_crop, random_elastic, random_hflip
from bitnetcnn.data.datamodule import ImageDataModule

rng = np.random.default_rng(0)


def write_idx(path, array: np.ndarray) -> None:
    """The IDX format of the MNIST files: magic (0, 0, 0x08 = uint8, ndim), big-endian sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7) % 10
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    split = get_dataset_spec("mnist").reader(tmp_path, True, False)
    assert split.images.shape == (7, 1, 28, 28)
    assert torch.equal(split.images[3, 0], torch.from_numpy(imgs[3]))
    assert split.labels.tolist() == labels.tolist()


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_python_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        batches[name] = data
        _pickle(folder / name, {"data": data, "labels": [1, 2, 3, 4], "batch_label": name})
    train = get_dataset_spec("cifar10").reader(tmp_path, True, False)
    test = get_dataset_spec("cifar10").reader(tmp_path, False, False)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    # CIFAR rows are 1024 red, then green, then blue values, row-major
    assert torch.equal(test.images[1, 2].flatten(), torch.from_numpy(batches["test_batch"][1, 2048:]))


def test_cifar100_npz_and_python_layouts(tmp_path):
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    y = np.arange(5)
    npz_root = tmp_path / "npz"
    npz_root.mkdir()
    np.savez_compressed(npz_root / "cifar100.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    split = get_dataset_spec("cifar100").reader(npz_root, True, False)
    assert split.images.shape == (5, 3, 32, 32)
    assert torch.equal(split.images[4].permute(1, 2, 0), torch.from_numpy(x[4]))

    py_root = tmp_path / "py"
    (py_root / "cifar-100-python").mkdir(parents=True)
    flat = x.transpose(0, 3, 1, 2).reshape(5, -1)
    for name in ("train", "test"):
        _pickle(py_root / "cifar-100-python" / name, {"data": flat, "fine_labels": list(y), "coarse_labels": [0] * 5})
    split2 = get_dataset_spec("cifar100").reader(py_root, False, False)
    assert torch.equal(split2.images, split.images) and split2.labels.tolist() == y.tolist()


def test_tiny_imagenet_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (base).mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colors = {}
    for i, w in enumerate(wnids):
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (64, 64), (i * 200, j * 50, 0)).save(d / f"{w}_{j}.JPEG")
        colors[w] = i
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for k, w in enumerate([wnids[1], wnids[0]]):
        Image.new("RGB", (64, 64), (255, 255, 255)).save(base / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    train = get_dataset_spec("tiny_imagenet").reader(tmp_path, True, False)
    val = get_dataset_spec("tiny_imagenet").reader(tmp_path, False, False)
    assert train.images.shape == (6, 3, 64, 64) and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert val.labels.tolist() == [1, 0] and train.class_names == val.class_names == tuple(wnids)
    assert abs(int(train.images[3, 0, 10, 10]) - 200) <= 3  # JPEG keeps a flat colour nearly exact


def test_imagefolder_resizes(tmp_path):
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            Image.new("RGB", (40, 30), (10, 20, 30)).save(d / "a.png")
    dm = ImageDataModule("imagefolder", tmp_path, batch_size=2, img_size=16)
    dm.setup()
    assert dm.train_split.images.shape == (2, 3, 16, 16) and dm.num_classes == 2


def test_imagefolder_reads_a_picture_as_the_weights_transforms_do(tmp_path):
    """An image folder's pictures reach training as `bitnetcnn predict` later shows them to the model: a wide one
    centre-cropped (its side bars cut, not squashed in), a phone photo turned upright by its EXIF orientation."""
    from bitnetcnn.preprocess import Preprocess

    wide = np.zeros((30, 40, 3), dtype=np.uint8)
    wide[:, :] = (200, 100, 50)
    wide[:, :2] = wide[:, -2:] = (0, 255, 0)  # well outside the central 30x30 square
    tall = np.zeros((40, 30, 3), dtype=np.uint8)
    tall[:20] = (255, 255, 255)  # upright: white on top
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down: turn it 180 degrees to show it
    for split in ("train", "val"):
        for c in ("wide", "tall"):
            (tmp_path / split / c).mkdir(parents=True)
        Image.fromarray(wide).save(tmp_path / split / "wide" / "a.png")
        Image.fromarray(tall).rotate(180).save(tmp_path / split / "tall" / "a.png", exif=exif)
    split = get_dataset_spec("imagefolder", 16).reader(tmp_path, True, False)
    by_class = {split.class_names[int(label)]: image for image, label in zip(split.images, split.labels)}
    assert by_class["wide"][1].max() <= 100 + 2  # no green bar squashed in
    assert by_class["tall"][:, :6].min() >= 250 and by_class["tall"][:, -6:].max() <= 5  # white on top
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    with Image.open(tmp_path / "train" / "wide" / "a.png") as opened:
        shown = Preprocess((3, 16, 16), mean, std)(opened)
    assert torch.equal(shown, normalize(by_class["wide"], mean, std))


def test_imagefolder_numbers_the_classes_of_train_in_both_splits(tmp_path):
    """val/ without a class keeps the labels train/ gave the others (numbering its own folders would shift emu from
    2 to 1, and every score with it); a class of val/ that train/ lacks is refused; a run records the folders as the
    model's class names."""
    from bitnetcnn import load_checkpoint
    from bitnetcnn.train.evaluate import evaluate_checkpoint
    from bitnetcnn.train.run import SettingsError, TrainSettings, train

    for split, classes in (("train", ("cat", "dog", "emu")), ("val", ("cat", "emu"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (20, 20), (10, 20, 30)).save(tmp_path / split / c / "a.png")
    for split in ("train", "val"):  # three classes as well, another third one; and a hidden folder, no class
        for c in ("cat", "emu", "fox", ".ipynb_checkpoints"):
            (tmp_path / "two" / split / c).mkdir(parents=True)
            Image.new("RGB", (20, 20), (10, 20, 30)).save(tmp_path / "two" / split / c / "a.png")
    read = get_dataset_spec("imagefolder", 16).reader
    assert read(tmp_path / "two", False, False).class_names == ("cat", "emu", "fox")
    val = read(tmp_path, False, False)
    assert val.labels.tolist() == [0, 2] and val.class_names == ("cat", "dog", "emu")
    results = train(TrainSettings(dataset="imagefolder", data_dir=str(tmp_path), img_size=16, batch_size=2,
                                  epochs=1, model_kwargs={"width": 4}, out=str(tmp_path / "run"), progress=False))
    assert load_checkpoint(tmp_path / "run" / "best_ternary.bnc").pretrained_cfg.class_names == ("cat", "dog", "emu")
    import bitnetcnn.train.evaluate as evaluate

    shapes = []

    def accuracy(model, images, labels, *args):
        shapes.append(tuple(images.shape))
        return real_accuracy(model, images, labels, *args)

    real_accuracy = evaluate.accuracy
    with pytest.MonkeyPatch.context() as m:  # eval reads the folders at the model's size
        m.setattr(evaluate, "accuracy", accuracy)
        measured = evaluate_checkpoint(str(tmp_path / "run" / "best_ternary.bnc"), data_dir=str(tmp_path))
    assert shapes == [(2, 3, 16, 16)]
    assert measured["images"] == 2 and measured["top1"] == pytest.approx(results["best_ternary_acc"], abs=1e-6)
    with pytest.raises(SettingsError, match=r"teacher .* names its classes otherwise than this data set \(1: dog / "
                                            r"emu, 2: emu / fox\): its labels would teach the wrong classes"):
        train(TrainSettings(dataset="imagefolder", data_dir=str(tmp_path / "two"), img_size=16, batch_size=1,
                            epochs=1, kd=True, teacher=[str(tmp_path / "run" / "best_ternary.bnc")],
                            model_kwargs={"width": 4}, out=str(tmp_path / "kd"), progress=False))
    import bitnetcnn.deploy.export as export
    from bitnetcnn.deploy.commands import export_command

    seen = {}

    def record(net, output, calibration=None, check_inputs=None, **kwargs):
        seen.update(calibration=tuple(calibration.shape), check=tuple(check_inputs.shape))

    with pytest.MonkeyPatch.context() as m:  # int8 export calibrates and checks on the folders at the model's size
        m.setattr(export, "export_onnx", record)
        export_command(str(tmp_path / "run" / "best_ternary.bnc"), str(tmp_path / "m.onnx"), int8=True,
                       calibrate=3, data_dir=str(tmp_path), log=lambda message: None)
    assert seen == {"calibration": (3, 3, 16, 16), "check": (2, 3, 16, 16)}
    other = tmp_path / "other"
    for split in ("train", "val"):
        for c in ("cat", "emu"):
            (other / split / c).mkdir(parents=True)
            Image.new("RGB", (20, 20), (10, 20, 30)).save(other / split / c / "a.png")
    # folders named as the model's classes are labelled by those names (cat 0, emu 2), whatever train/ holds;
    # one the model does not know is refused
    assert evaluate_checkpoint(str(tmp_path / "run" / "best_ternary.bnc"), data_dir=str(other))["images"] == 2
    (other / "val" / "fox").mkdir()
    Image.new("RGB", (20, 20), (10, 20, 30)).save(other / "val" / "fox" / "a.png")
    with pytest.raises(ValueError, match=r"val has class folders that the model's classes lack \(fox\): it never learnt "
                                         r"them; remove them from val/, or evaluate a model trained on them"):
        evaluate_checkpoint(str(tmp_path / "run" / "best_ternary.bnc"), data_dir=str(other))
    (tmp_path / "val" / "fox").mkdir()
    with pytest.raises(ValueError, match=r"val has class folders that .*train lacks \(fox\): no model learns"):
        read(tmp_path, False, False)


def test_missing_data_set_says_where_and_how(tmp_path):
    for name in ("mnist", "cifar10", "cifar100", "tiny_imagenet"):
        with pytest.raises(DatasetNotFoundError) as err:
            get_dataset_spec(name).reader(tmp_path, True, False)
        assert str(tmp_path) in str(err.value) and "--data-dir" in str(err.value)


def test_damaged_data_files_are_named_as_damaged_not_missing(tmp_path, monkeypatch):
    """A file cut short or of another kind is not "not found" (whose advice, --download, would not help)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.zeros((3, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.zeros(3))
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is damaged or not the expected file .*the four "
                                         r"IDX files"):
        get_dataset_spec("mnist").reader(tmp_path, True, False)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))  # whole again; the cut file is another now
    (raw / "t10k-labels-idx1-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte is damaged"):
        get_dataset_spec("mnist").reader(tmp_path, False, False)
    # the image file of the other split: a bare "10 images but 3 labels", naming no file
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(3))
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28)))
    with pytest.raises(ValueError, match=r"MNIST.raw is damaged or not the expected file \(10 images but 3 labels\)"):
        get_dataset_spec("mnist").reader(tmp_path, False, False)
    # a folder this user cannot search (chmod 000, as another user; here its check fails as it does then, since the
    # tests may run as root): a bare PermissionError from the check of what is there
    import pathlib

    with monkeypatch.context() as m:
        def is_file(path):
            raise PermissionError(13, "Permission denied", str(path))

        m.setattr(pathlib.Path, "is_file", is_file)
        with pytest.raises(ValueError, match=r"denied.MNIST.raw.train-images-idx3-ubyte cannot be read \(permission "
                                             r"denied\): let this user read it"):
            get_dataset_spec("mnist").reader(tmp_path / "denied", True, False)
    # a download that failed leaves the files missing, not damaged (a refused local port: no network needed)
    monkeypatch.setattr("torchvision.datasets.MNIST.mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DatasetNotFoundError, match="--download could not fetch them") as failed:
        get_dataset_spec("mnist").reader(tmp_path / "offline", True, True)
    assert "Copy it there from a machine" in str(failed.value) and "train --download" not in str(failed.value)
    npz = tmp_path / "cifar100.npz"
    for content in (b"", b"not numpy"):
        npz.write_bytes(content)
        with pytest.raises(ValueError, match=r"cifar100.npz is damaged or not the expected file .*x_train, y_train"):
            get_dataset_spec("cifar100").reader(tmp_path, False, False)
    np.savez(npz, x_train=np.zeros((2, 32, 32, 3), np.uint8), y_train=np.zeros(2))
    with pytest.raises(ValueError, match="cifar100.npz is damaged .*x_test is not a file"):
        get_dataset_spec("cifar100").reader(tmp_path, False, False)


def test_the_download_flag_reaches_the_readers(monkeypatch):
    """`bitnetcnn train --download` reads the data before its trainer exists: the flag must reach that read."""
    import dataclasses

    seen = []
    demo = get_dataset_spec("mnist_demo")

    def reader(root, train, download):
        seen.append(download)
        return demo.reader(root, train, False)

    monkeypatch.setitem(__import__("bitnetcnn.data.catalog", fromlist=["DATASETS"]).DATASETS, "mnist_demo",
                        dataclasses.replace(demo, reader=reader))
    ImageDataModule("mnist_demo", download=True).setup()
    assert seen == [True, True]


def test_imagefolders_that_cannot_train_or_test_a_classifier_are_refused(tmp_path):
    def folder(name, classes):
        for split, images in (("train", classes), ("val", classes)):
            for c, n in images.items():
                (tmp_path / name / split / c).mkdir(parents=True)
                for i in range(n):
                    Image.new("RGB", (8, 8)).save(tmp_path / name / split / c / f"{i}.png")
        return tmp_path / name

    read = get_dataset_spec("imagefolder", 8).reader
    with pytest.raises(ValueError, match="has one class folder .cat.: a classifier needs two or more"):
        read(folder("one", {"cat": 2}), True, False)
    with pytest.raises(ValueError, match=r"train.dog has no images .* every class needs training images"):
        read(folder("empty_class", {"cat": 2, "dog": 0}), True, False)
    with pytest.raises(ValueError, match=r"val has no images in its class folders"):
        read(folder("empty_val", {"cat": 0, "dog": 0}), False, False)


def test_unknown_data_set_lists_names():
    with pytest.raises(ValueError, match="unknown data set 'cifar1000'.*cifar100"):
        get_dataset_spec("cifar1000")
    assert "mnist_demo" in list_datasets()


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("BITNETCNN_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("BITNETCNN_DATA")
    monkeypatch.setenv("BITNETCNN_CACHE", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "data"
    # an empty folder name (--data-dir "$UNSET") fell back to the default without a word
    for empty in ("", " "):
        with pytest.raises(ValueError, match="the data folder given is empty"):
            data_root(empty)


def test_random_crop_is_a_window_of_the_padded_image():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop(x, 2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        found = any(torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))
        assert found
    assert not all(torch.equal(out[i], x[i]) for i in range(16))
    # every offset of the (2p+1)^2, the farthest ones too: a crop short of them shifts every image one way on average
    g = torch.Generator().manual_seed(0)
    out = random_crop(x[:1].expand(400, -1, -1, -1), 2, generator=g)
    offsets = {(dy, dx) for i in range(400) for dy in range(5) for dx in range(5)
               if torch.equal(out[i], padded[0, :, dy:dy + 8, dx:dx + 8])}
    assert offsets == {(dy, dx) for dy in range(5) for dx in range(5)}


def test_flip_and_normalize():
    x = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    out = random_hflip(x)
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    assert 5 < sum(flipped) < 59 and all(f or torch.equal(out[i], x[i]) for i, f in enumerate(flipped))
    y = normalize(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), torch.tensor([0.5]), torch.tensor([0.25]))
    assert torch.allclose(y, torch.full_like(y, 2.0))


def test_random_affine_rotates_and_zooms_about_the_centre():
    x = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 4:24, 13:15] = 255  # a vertical bar through the centre
    assert torch.equal(random_affine(x, 0, 0), x.float())  # off: unchanged (as float)
    g = torch.Generator().manual_seed(0)
    out = random_affine(x, 30, 0.2, generator=g)
    assert out.shape == x.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 255
    assert not torch.allclose(out, x.float(), atol=1)  # the bars moved ...
    centre = out[:, 0, 13:15, 13:15]
    assert (centre > 100).all()  # ... but about the centre, which stays on the bar
    # the ink is kept up to the zoom (area scales by at most 1.2^2) and bilinear blur
    ratio = out.sum((1, 2, 3)) / x.float().sum((1, 2, 3))
    assert ((ratio > 0.6) & (ratio < 1.5)).all()
    # a rotation keeps lengths: a dot 8 px from the centre stays 8 px from it at any angle (a matrix with a sign
    # lost, [[cos, sin], [sin, cos]], stretches along the diagonals and sends it off the image near 45 degrees)
    dot = torch.zeros(32, 1, 64, 64, dtype=torch.uint8)
    dot[:, :, 31:33, 39:41] = 255  # centred 8 px right of the image's centre (31.5, 31.5)
    turned = random_affine(dot, 90, 0, generator=torch.Generator().manual_seed(1))
    rows, cols = torch.arange(64.0)[:, None], torch.arange(64.0)[None, :]
    mass = turned[:, 0].sum((1, 2))
    cy, cx = ((turned[:, 0] * rows).sum((1, 2)) / mass, (turned[:, 0] * cols).sum((1, 2)) / mass)
    radius = ((cy - 31.5) ** 2 + (cx - 31.5) ** 2).sqrt()
    assert (mass > 0.8 * 4 * 255).all() and torch.allclose(radius, torch.full_like(radius, 8.0), atol=0.5), radius
    assert (cy - 31.5).abs().max() > 4  # it did turn


def test_random_elastic_bends_strokes_locally_and_keeps_the_ink():
    x = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 4:24, 12:16] = 255  # a vertical bar
    assert torch.equal(random_elastic(x, 0), x.float())  # off: unchanged (as float)
    g = torch.Generator().manual_seed(0)
    out = random_elastic(x, 34, 4, generator=g)
    assert out.shape == x.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 255
    assert all(not torch.allclose(out[i], x[i].float(), atol=1) for i in range(8))  # every image is bent ...
    assert not torch.allclose(out[0], out[1], atol=1)  # ... each its own way
    ratio = out.sum((1, 2, 3)) / x.float().sum((1, 2, 3))
    assert ((ratio > 0.5) & (ratio < 1.5)).all()  # a smooth field stretches and squeezes strokes, never erases them
    cols = torch.arange(28.0)
    centre_x = (out.sum((1, 2)) * cols).sum(-1) / out.sum((1, 2, 3))
    assert ((centre_x - 13.5).abs() < 2).all()  # local wobble: the bar stays where it was


def test_rotation_and_zoom_settings_reach_training_batches_only():
    dm = ImageDataModule("mnist_demo", batch_size=16, rotate=20, zoom=0.1, elastic=10, limit_train=64, limit_eval=64)
    assert (dm.rotate, dm.zoom, dm.elastic) == (20, 0.1, 10)
    default = ImageDataModule("mnist_demo")
    assert (default.rotate, default.zoom, default.elastic) == (0.0, 0.0, 0.0)
    dm.setup()
    x, _ = next(iter(dm.val_dataloader()))
    torch.manual_seed(0)
    a = dm.transform(x, training=True)
    torch.manual_seed(1)
    b = dm.transform(x, training=True)
    assert not torch.allclose(a, b)
    assert torch.equal(dm.transform(x, training=False), dm.transform(x, training=False))


def test_demo_data_ships_with_the_package():
    dm = ImageDataModule("mnist_demo", batch_size=32)
    dm.setup()
    assert dm.train_split.images.shape == (10000, 1, 28, 28) and dm.test_split.images.shape == (2000, 1, 28, 28)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (32,)
    # evaluation batches are never augmented
    x_eval, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(dm.transform(x_eval, training=False), dm.transform(x_eval, training=False))


def test_every_named_data_set_has_one_class_name_per_class():
    """A checkpoint records these as what each output means (``model.pretrained_cfg.class_names``)."""
    named = [get_dataset_spec(n) for n in list_datasets() if n not in ("imagefolder", "tiny_imagenet")]  # (folders)
    assert all(len(spec.class_names) == spec.num_classes for spec in named)


def test_cifar100_class_names_are_the_data_sets_own_in_label_order():
    from conftest import require_real_data

    with np.load(require_real_data("cifar100.npz")) as d:
        assert get_dataset_spec("cifar100").class_names == tuple(d["fine_label_names"].tolist())


def test_the_catalog_normalizes_each_data_set_as_checkpoints_record_it():
    from bitnetcnn.data.catalog import DATASETS
    from bitnetcnn.normalization import BY_DATASET

    assert set(BY_DATASET) == set(DATASETS)
    for name, spec in DATASETS.items():
        assert (tuple(spec.mean), tuple(spec.std)) == BY_DATASET[name], name


@pytest.mark.parametrize("name, mean, std", [
    ("CIFAR10", (0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
    ("CIFAR100", (0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)),
])
def test_cifar_normalization_is_the_training_sets_own_pixel_statistics_to_four_digits(name, mean, std):
    """The mean and std of every pixel of the 50,000 training images (/ 255), as published to eight digits, here
    rounded to four: a digit off would move every input a little, away from what the published weights were
    trained on, and nothing else would notice (the std is the per-pixel one, not the (0.2023, 0.1994, 0.2010) of
    many training scripts). No CIFAR-10 files are on the test machines to measure it from."""
    from bitnetcnn import normalization

    ours = getattr(normalization, name)
    assert ours == (tuple(round(v, 4) for v in mean), tuple(round(v, 4) for v in std))


def _image_tree(root, counts: dict, split="train"):
    for c, n in counts.items():
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / split / c / f"{i}.png")


def test_the_limit_flags_take_the_same_sample_of_every_class_not_the_first_class(tmp_path):
    """Image folders are read class by class: --limit-eval 10 of the first ten images scored one class alone."""
    counts = {c: 20 for c in ("a", "b", "c", "d")}
    _image_tree(tmp_path, counts, "train")
    _image_tree(tmp_path, {c: 10 for c in counts}, "val")
    dm = ImageDataModule("imagefolder", tmp_path, img_size=8, limit_train=30, limit_eval=10)
    dm.setup()
    assert len(dm.train_split.labels) == 30 and len(dm.test_split.labels) == 10
    assert set(dm.train_split.labels.tolist()) == {0, 1, 2, 3}
    assert len(set(dm.test_split.labels.tolist())) >= 3
    again = ImageDataModule("imagefolder", tmp_path, img_size=8, limit_train=30, limit_eval=10)
    again.setup()  # a resumed run, or another process of a DDP run, trains and scores the same images
    assert torch.equal(again.train_split.images, dm.train_split.images)
    assert torch.equal(again.test_split.labels, dm.test_split.labels)


def test_labels_that_do_not_fit_the_data_set_are_refused_before_they_score(tmp_path):
    """Keras' CIFAR-100 arrays hold (N, 1) labels: compared with (N,) predictions they broadcast into an N x N
    table and eval printed 185%; labels counted from 1 scored against shifted classes with no word."""
    from bitnetcnn.train.evaluate import evaluate_model
    from bitnetcnn.models import create_model

    x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar100.npz", x_train=x, y_train=np.arange(6)[:, None], x_test=x, y_test=np.arange(6)[:, None])
    split = get_dataset_spec("cifar100").read(tmp_path, False)
    assert split.labels.tolist() == list(range(6))
    model = create_model("bit_resnet18", num_classes=100)
    assert evaluate_model(model, "cifar100", str(tmp_path))["top1"] <= 1.0
    np.savez(tmp_path / "cifar100.npz", x_train=x, y_train=np.arange(95, 101), x_test=x, y_test=np.arange(95, 101))
    with pytest.raises(ValueError, match=r"test split of 'cifar100' .* has labels from 95 to 100, but its 100 classes"):
        evaluate_model(model, "cifar100", str(tmp_path))
    with pytest.raises(ValueError, match=r"training split of 'cifar100' .* labels from 95 to 100"):
        ImageDataModule("cifar100", tmp_path).setup()
    np.savez(tmp_path / "cifar100.npz", x_train=x, y_train=np.zeros(6), x_test=x, y_test=np.zeros(6))
    with pytest.raises(ValueError, match=r"cifar100.npz is damaged .*labels must be integers"):
        get_dataset_spec("cifar100").read(tmp_path, True)


def test_a_cifar100_npz_in_another_layout_is_refused(tmp_path):
    """NCHW arrays were permuted into 32x3x32 images (and failed far away); greyscale ones were read as 1-channel."""
    for x in (np.zeros((2, 3, 32, 32), np.uint8), np.zeros((2, 32, 32), np.uint8)):
        np.savez(tmp_path / "cifar100.npz", x_train=x, y_train=np.arange(2), x_test=x, y_test=np.arange(2))
        with pytest.raises(ValueError, match=r"cifar100.npz is damaged .*x_train has the shape .*N x 32 x 32 x 3"):
            get_dataset_spec("cifar100").read(tmp_path, True)


def test_a_cifar100_npz_whose_class_names_are_in_another_order_or_that_holds_no_images_is_refused(tmp_path):
    """The file's own fine_label_names were never read: a file numbering the classes otherwise trained and scored
    each image as another class. A split of no images scored 0.0, as if the model were wrong."""
    from bitnetcnn.class_names import CIFAR100

    x, y = np.zeros((2, 32, 32, 3), np.uint8), np.arange(2)
    np.savez(tmp_path / "cifar100.npz", x_train=x, y_train=y, x_test=x, y_test=y,
             fine_label_names=np.array(CIFAR100[::-1]))
    with pytest.raises(ValueError, match=r"cifar100.npz is damaged or not the expected file \(its fine_label_names "
                                         r"\(worm, woman, wolf"):
        get_dataset_spec("cifar100").read(tmp_path, True)
    np.savez(tmp_path / "cifar100.npz", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0],
             fine_label_names=np.array(CIFAR100))
    assert len(get_dataset_spec("cifar100").read(str(tmp_path), True).labels) == 2  # a str root too
    with pytest.raises(ValueError, match=r"the test split of 'cifar100' \(read from .*\) holds no images"):
        get_dataset_spec("cifar100").read(tmp_path, False)


def test_an_image_folder_that_cannot_be_listed_is_named_not_left_out(tmp_path, monkeypatch):
    """os.walk skips a folder it cannot list (chmod 000, as another user): a class of the test images vanished
    from the score without a word. Here the listing fails as it does for such a folder (the tests may run as root,
    whom no permission stops)."""
    import os

    for split in ("train", "val"):
        _image_tree(tmp_path, {"a": 1, "b": 1}, split)
    listing = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith(os.path.join("val", "b")):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert get_dataset_spec("imagefolder", 8).read(tmp_path, True).labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"val.b cannot be read \(permission denied\)"):
        get_dataset_spec("imagefolder", 8).read(tmp_path, False)


def test_image_folder_labels_and_order_are_torchvisions_and_the_specs_say_what_each_data_set_takes(tmp_path):
    """Labels numbered as torchvision's ImageFolder numbers them (case-sensitive order: "B" before "a"), images in
    its order (sorted paths: a --limit sample is the same on every file system); CIFAR-10 flips, digits do not; a
    greyscale image folder is normalized by the mean of ImageNet's channel statistics."""
    from torchvision.datasets import ImageFolder

    from bitnetcnn.normalization import IMAGENET

    for split in ("train", "val"):
        for c in ("B", "a", "c"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in (3, 1, 2):
                Image.new("L", (8, 8), 40 * i + ord(c)).save(tmp_path / split / c / f"{i}.png")
    ours = get_dataset_spec("imagefolder", 8, in_chans=1).read(tmp_path, False)
    theirs = ImageFolder(str(tmp_path / "val"))
    assert list(ours.class_names) == theirs.classes
    assert ours.labels.tolist() == theirs.targets
    assert ours.images[:, 0, 0, 0].tolist() == [np.asarray(theirs[i][0])[0, 0, 0] for i in range(len(theirs))]
    assert all(get_dataset_spec(name).hflip for name in ("cifar10", "cifar100", "fashion_mnist", "tiny_imagenet"))
    assert not get_dataset_spec("mnist").hflip and not get_dataset_spec("mnist_demo").hflip
    grey = get_dataset_spec("imagefolder", 8, in_chans=1)
    assert (grey.mean, grey.std) == ((round(sum(IMAGENET[0]) / 3, 4),), (round(sum(IMAGENET[1]) / 3, 4),))


def test_incomplete_or_cut_short_cifar_batches_are_named(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 5)] + ["test_batch"]:
        _pickle(folder / name, {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    with pytest.raises(DatasetNotFoundError, match=r"'cifar10' not found; looked in: \S*data_batch_5\. .*--data-dir"):
        get_dataset_spec("cifar10").read(tmp_path, True)
    assert len(get_dataset_spec("cifar10").read(tmp_path, False).labels) == 2  # the test split is whole
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:50])
    with pytest.raises(ValueError, match=r"test_batch is damaged or not the expected file .*a CIFAR batch"):
        get_dataset_spec("cifar10").read(tmp_path, False)
    # --download where the network is not: says where it was wanted (a refused local port, nothing downloads)
    monkeypatch.setattr("torchvision.datasets.CIFAR10.url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py.*--download could not fetch it") as failed:
        get_dataset_spec("cifar10").read(tmp_path, True, download=True)
    assert "train --download" not in str(failed.value)  # it advised the flag that had just failed


def test_a_partly_unzipped_tiny_imagenet_is_refused(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("n01\nn02\nn03\n")
    for w in ("n01", "n02"):
        (base / "train" / w / "images").mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(base / "train" / w / "images" / f"{w}_0.jpeg")  # any case of the extension
    with pytest.raises(DatasetNotFoundError, match=r"n03.images\. Found no images of this class there"):
        get_dataset_spec("tiny_imagenet").read(tmp_path, True)
    (base / "train" / "n03" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(base / "train" / "n03" / "images" / "n03_0.JPEG")
    assert get_dataset_spec("tiny_imagenet").read(tmp_path, True).labels.tolist() == [0, 1, 2]
    with pytest.raises(DatasetNotFoundError, match=r"val_annotations.txt"):
        get_dataset_spec("tiny_imagenet").read(tmp_path, False)
    # an image the annotations list that is not there was called damaged; a class not in wnids.txt a bare KeyError
    (base / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(base / "val" / "images" / "val_0.JPEG")
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t1\t1\nval_1.JPEG\tn02\t0\t0\t1\t1\n")
    with pytest.raises(DatasetNotFoundError, match=r"lists 1 image absent from .*images \(val_1.JPEG\): unzip"):
        get_dataset_spec("tiny_imagenet").read(tmp_path, False)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"val_annotations.txt line 1 labels val_0.JPEG 'n99', which is not among "
                                         r"the classes of .*wnids.txt"):
        get_dataset_spec("tiny_imagenet").read(tmp_path, False)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t1\t1\n")
    assert get_dataset_spec("tiny_imagenet").read(tmp_path, False).labels.tolist() == [1]
    # spaces for the tabs (an editor's): every line was skipped, and the test split held no image, scored 0.0
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG n02 0 0 1 1\n")
    assert get_dataset_spec("tiny_imagenet").read(tmp_path, False).labels.tolist() == [1]
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\n")
    with pytest.raises(ValueError, match=r"line 1 holds 'val_0.JPEG' where an image file and its class were expected"):
        get_dataset_spec("tiny_imagenet").read(tmp_path, False)
    (base / "val" / "val_annotations.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"the test split of 'tiny_imagenet' \(read from .*\) holds no images"):
        get_dataset_spec("tiny_imagenet").read(tmp_path, False)


def test_imagefolder_reads_the_subfolders_of_a_class_and_names_a_damaged_picture(tmp_path):
    """As torchvision's ImageFolder does: a class folder's pictures may sit in folders of their own."""
    _image_tree(tmp_path, {"cat": 1, "dog": 1}, "train")
    _image_tree(tmp_path, {"cat/indoor": 2, "dog/2024/june": 3, "dog/.thumbnails": 4}, "train")
    split = get_dataset_spec("imagefolder", 8).read(tmp_path, True)
    assert split.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    bad = tmp_path / "train" / "dog" / "2024" / "cut.jpg"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut.jpg is damaged or not the expected file .*an image file"):
        get_dataset_spec("imagefolder", 8).read(tmp_path, True)


def test_imagefolder_follows_a_linked_subfolder_of_a_class_once_as_imagefolder_does(tmp_path):
    """Path.rglob skipped a class's linked subfolder (a second batch of pictures kept elsewhere): the run trained on
    fewer pictures with another class balance than torchvision's ImageFolder reads, without a word."""
    from torchvision.datasets import ImageFolder

    _image_tree(tmp_path, {"cat": 1, "dog": 1}, "train")
    _image_tree(tmp_path / "elsewhere", {"batch2": 3}, "train")
    (tmp_path / "train" / "cat" / "batch2").symlink_to(tmp_path / "elsewhere" / "train" / "batch2")
    (tmp_path / "train" / "dog" / "loop").symlink_to(tmp_path / "train" / "dog")  # read once, not forever
    split = get_dataset_spec("imagefolder", 8).read(tmp_path, True)
    assert split.labels.tolist() == [0, 0, 0, 0, 1]
    assert sorted(label for _, label in ImageFolder(str(tmp_path / "train")).samples)[:4] == [0, 0, 0, 0]


@pytest.mark.parametrize("channels_last", [False, True])
def test_one_channel_training_batches_have_standard_strides(channels_last):
    """The crop's permute left a one-channel batch with strides (HW, 1, W, 1), which .contiguous() keeps and on
    which PyTorch 2.14's oneDNN convolution backward corrupted memory: `bitnetcnn train --model-kwargs
    '{"width": 4}'` died in its first step (SIGSEGV, or "free(): invalid next size")."""
    dm = ImageDataModule("mnist_demo", batch_size=8, limit_train=8, limit_eval=8, channels_last=channels_last)
    dm.setup()
    x, _ = next(iter(dm.val_dataloader()))
    for training in (True, False):
        out = dm.transform(x, training=training)
        assert out.stride() == (28 * 28, 28 * 28, 28, 1), (training, out.stride())


def test_horizontal_flips_follow_the_data_set_unless_the_run_says(monkeypatch):
    """Image folders were always flipped: the digits of the recommended MNIST fine-tune trained half mirrored (the
    published MNIST model scores 38.9% on mirrored digits). --no-hflip turns them off, --hflip on; the run records
    it."""
    import bitnetcnn.data.datamodule as datamodule
    from bitnetcnn.cli import build_parser
    from bitnetcnn.train.settings import TrainSettings

    flips = []
    monkeypatch.setattr(datamodule, "random_hflip", lambda images: flips.append(len(images)) or images)
    for dataset, hflip, flipped in [("mnist_demo", None, False), ("mnist_demo", True, True), ("cifar100", None, True),
                                    ("imagefolder", None, True), ("imagefolder", False, False)]:
        flips.clear()
        data = datamodule.ImageDataModule(dataset, batch_size=8, img_channels=1, hflip=hflip)
        data.transform(torch.zeros(2, data.spec.in_chans, data.spec.img_size, data.spec.img_size, dtype=torch.uint8),
                       training=True)
        assert bool(flips) is flipped, (dataset, hflip)
    args = build_parser().parse_args(["train", "--dataset", "imagefolder", "--no-hflip"])
    assert args.hflip is False and build_parser().parse_args(["train"]).hflip is None
    assert TrainSettings(hflip=False).as_command().endswith("--no-hflip")


def test_a_trained_models_missing_test_folder_names_val_alone(tmp_path):
    """Evaluating a trained model reads val/ alone (its class names label it), yet a missing val/ said "Expected
    root/train/<class>/*.jpg and root/val/<class>/*.jpg", as if train/ were needed too."""
    from bitnetcnn.data.sources import imagefolder_reader

    with pytest.raises(DatasetNotFoundError, match=r"looked in: .*val\. Expected root/val/<class>/\*\.jpg \(the test"):
        imagefolder_reader(28, 1, class_names=["a", "b"])(tmp_path, False, False)
    with pytest.raises(DatasetNotFoundError, match=r"Expected root/train/<class>/\*\.jpg and root/val"):
        imagefolder_reader(28, 1)(tmp_path, False, False)  # a new run's data: both splits


def test_imagefolder_names_a_cut_short_png_and_the_pictures_it_does_not_read(tmp_path):
    """A PNG cut in half was refused as "its EXIF metadata is damaged ... save the picture again without it"
    (Pillow's getexif() reads a PNG whole); GIF, JFIF and HEIC pictures in a class folder and pictures beside the
    class folders were left out of training without a word."""
    _image_tree(tmp_path, {"a": 2, "b": 2}, "train")
    _image_tree(tmp_path, {"a": 1, "b": 1}, "val")
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "anim.gif")
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "b" / "x.jfif", format="JPEG")
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "loose.png")
    (tmp_path / "train" / "a" / "README.txt").write_text("not a picture")
    with pytest.warns(UserWarning, match=r"train: 4 images read; 3 files not read as images \(loose.png \(beside "
                                         r"the class folders\), a/anim.gif, b/x.jfif\)") as caught:
        get_dataset_spec("imagefolder", 8).read(tmp_path, True)
    assert not any("README" in str(w.message) for w in caught)
    cut = tmp_path / "train" / "a" / "0.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r"0.png is damaged or not the expected file .*truncated") as refused:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_dataset_spec("imagefolder", 8).read(tmp_path, True)
    assert "EXIF" not in str(refused.value)


def test_a_16_bit_picture_reaches_the_model_in_predict_as_training_read_it(tmp_path):
    """Training rounded a 16-bit grey picture to 8 bits before resizing it, predict resized the 16-bit floats:
    two inputs for one file (up to 0.024 apart, normalized)."""
    from bitnetcnn.data.sources import _load_image
    from bitnetcnn.preprocess import Preprocess

    path = tmp_path / "deep.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 65536, (40, 40), dtype=np.uint16)).save(path)
    mean, std = (0.449,), (0.226,)
    trained = normalize(torch.from_numpy(_load_image(path, 28, 1)).permute(2, 0, 1), mean, std)
    with Image.open(path) as opened:
        assert torch.equal(Preprocess((1, 28, 28), mean, std)(opened), trained)


def test_imagefolder_takes_a_class_folder_spelt_in_another_unicode_form_as_the_same_class(tmp_path):
    """"café" in val/ (NFC, one code point for the accent) and in train/ as copied from a Mac (NFD, "e" and a
    combining accent): printed alike, they were refused as "val has class folders that train lacks (café)"."""
    nfd, nfc = "cafe\u0301", "caf\u00e9"
    _image_tree(tmp_path, {nfd: 2, "tea": 2}, "train")
    _image_tree(tmp_path, {nfc: 1, "tea": 1}, "val")
    test = get_dataset_spec("imagefolder", 8).read(tmp_path, False)
    assert test.labels.tolist() == [0, 1] and test.class_names == (nfd, "tea")


@pytest.mark.parametrize("split", ["train", "val"])
def test_two_class_folders_whose_names_differ_only_in_unicode_form_are_refused(tmp_path, split):
    """"café" twice, once precomposed (NFC) and once as copied from a Mac (NFD): both became classes, both read
    the one folder matched by the NFC form, and the other folder's images were never read, without a word."""
    nfd, nfc = "cafe\u0301", "caf\u00e9"
    _image_tree(tmp_path, {nfc: 2, "tea": 2, **({nfd: 2} if split == "train" else {})}, "train")
    _image_tree(tmp_path, {nfc: 1, "tea": 1, **({nfd: 1} if split == "val" else {})}, "val")
    with pytest.raises(ValueError, match=r"differ only in their Unicode form.*'cafe\\u0301'.*'caf\\xe9'"):
        get_dataset_spec("imagefolder", 8).read(tmp_path, split == "train")
