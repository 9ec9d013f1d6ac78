"""Classify a user's image files with a checkpoint or a published weight: the weight's own preprocessing
(``PretrainedCfg.transforms()``), then its top classes by name. What ``bitnetcnn predict`` prints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from bitnetcnn.checkpoint.pretrained_cfg import input_device_of, input_dtype_of, model_pretrained_cfg
from bitnetcnn.images import read_errors, upright
from bitnetcnn.nn.modes import evaluating


def _open_image(path: Path):
    """The image, loaded (its first frame, for an animated or multi-page file: ``image.info["frames"]`` says how
    many it has, counted while the file is open)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            image.seek(0)
            image.load()
            image.info["frames"] = frames
            return image
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file PIL can read (PNG, JPEG, BMP, ...)") from None
    except Image.DecompressionBombError:  # Pillow's "could be decompression bomb DOS attack", without advice
        raise ValueError(f"{path} is larger than Pillow opens ({Image.MAX_IMAGE_PIXELS * 2:,} pixels, twice "
                         "PIL.Image.MAX_IMAGE_PIXELS): the model sees it at a few dozen pixels a side, so resize it "
                         "first (or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file)") from None
    except read_errors() as err:
        detail = " ".join(str(err).split())[:160] or type(err).__name__
        raise ValueError(f"{path} cannot be read as an image ({detail})") from None


@torch.no_grad()
def predict_files(model: nn.Module, paths: Iterable, top: int = 5, source: str = "the model",
                  keep_going: bool = False) -> list[dict]:
    """For each image file, its ``top`` classes (name, index, probability), most probable first. A file that is no
    readable image raises ``ValueError`` naming it, or with ``keep_going`` gets ``{"image", "error"}`` in its place
    (one damaged photo among a thousand should not cost the other answers)."""
    if isinstance(paths, (str, os.PathLike)) or not hasattr(paths, "__iter__"):  # one file, not its name's letters
        paths = [paths]
    paths = list(paths)
    pictures = [p for p in paths if not isinstance(p, (str, os.PathLike))]
    if pictures:  # a PIL image was "expected str, bytes or os.PathLike" or "'PngImageFile' object is not iterable"
        raise TypeError(f"predict_files takes image file paths, not {type(pictures[0]).__name__}: for an image in "
                        "memory, model(model.pretrained_cfg.transforms()(image)[None]).softmax(1)")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a whole number of classes >= 1, not {top!r}")
    cfg = model_pretrained_cfg(model)
    if cfg is None:
        raise ValueError(f"{source} records no input size, mean and std, so its preprocessing is unknown: save it "
                         "with its data set's (bitnetcnn convert writes them from the run that trained it)")
    preprocess, names = cfg.transforms(), cfg.class_names
    dtype = input_dtype_of(model)
    device = input_device_of(model)
    results = []
    with evaluating(model):
        for path in map(Path, paths):
            try:
                image, x = _read(path, preprocess)
            except ValueError as err:
                if not keep_going:
                    raise
                results.append({"image": str(path), "error": str(err)})
                continue
            probabilities = model(x[None].to(device=device, dtype=dtype)).float().softmax(1)[0].cpu()
            if names and len(names) != len(probabilities):
                raise ValueError(f"{source} gives {len(probabilities)} scores but its pretrained_cfg names "
                                 f"{len(names)} classes (a new head?): set model.pretrained_cfg = "
                                 "model.pretrained_cfg.derived(num_classes=..., class_names=...) to match it")
            best = probabilities.topk(min(top, len(probabilities)))
            results.append({"image": str(path), "top": [
                {"class": names[i] if names else str(i), "index": i, "probability": round(p, 6)}
                for p, i in zip(best.values.tolist(), best.indices.tolist())],
                **_what_was_done(image, cfg.input_size), **_brightness_note(x, cfg.mean, cfg.std)})
    return results


def _read(path: Path, preprocess):
    """The opened image and the model input made of it; ``ValueError`` naming the file where there is none."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the image files in it ({path}/*.png)")
    if not path.is_file():
        raise ValueError(f"{path}: no such image file")
    image = _open_image(path)
    try:
        return image, preprocess(image)
    except ValueError as err:  # UnreadablePixels, or any other from PIL's conversion: the file is named
        raise ValueError(f"{path}: {err}") from None


def _what_was_done(image, input_size) -> dict:
    """What the preprocessing changed of an image to fit the model, said in its result: an answer about a picture
    resized, cropped or turned grey should not read as one about the picture given. ``{}`` when nothing."""
    channels, height, width = input_size
    done = {}
    w, h = upright(image).size
    if (h, w) != (height, width):
        done["resized_from"] = [h, w]  # the shorter side to the model's, then the centre cropped (fit_to_size)
        if w * height != h * width:
            done["cropped"] = True
    if channels == 1 and _in_colour(image):
        done["converted"] = f"{image.mode} colour image to greyscale"
    elif channels == 3 and _grey_mode(image):  # an RGB file of a grey picture has its 3 channels already
        done["converted"] = "greyscale image to 3 equal channels"
    frames = image.info.get("frames", 1)
    if frames > 1:  # an animated GIF, a multi-page TIFF: the answer is about one picture of several
        done["frame"] = f"the first of {frames}"
    return done


def _brightness_note(x: torch.Tensor, mean, std) -> dict:
    """A note where the picture's mean pixel lies more than half the range from the training images' (MNIST's is
    0.13): black digits on white paper, the usual home-made digit, were answered wrongly and confidently (16% right
    at 0.82 mean probability), and nothing in the answer hinted why."""
    if mean is None or std is None:
        return {}
    pixels = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    seen, trained = float(pixels.mean()), sum(mean) / len(mean)
    if abs(seen - trained) <= 0.5:
        return {}
    return {"brightness": f"its mean pixel is {seen:.2f} where the training images' is {trained:.2f}: a picture of the "
                          "other polarity (dark on light where the model learned light on dark) gets confident, "
                          "wrong answers; invert it if so"}


def _in_colour(image) -> bool:
    """Whether some pixel's channels differ (an RGB file of a grey picture is grey: turning it grey loses nothing)."""
    import numpy as np

    if _grey_mode(image):
        return False
    # through RGBA: a palette image's transparency (which pil_to_pixels has found unused) makes convert("RGB") warn
    rgb = np.asarray(image.convert("RGBA"))[..., :3]
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def _grey_mode(image) -> bool:
    """Whether the file stores one grey channel (its pixels, not what they show)."""
    return image.mode in ("1", "L", "LA", "La", "I", "F") or image.mode.startswith("I;")
