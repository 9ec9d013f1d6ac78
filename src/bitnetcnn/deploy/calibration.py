"""Calibration and check inputs: user batches as float32 arrays, and images read from a data set."""

from __future__ import annotations

import warnings
from typing import Iterable, List, Optional, Union

import numpy as np
import torch
from torch import nn

from bitnetcnn.checkpoint.pretrained_cfg import (input_device_of, input_dtype_of, input_normalization,
                                                  input_size_of, model_pretrained_cfg)
from bitnetcnn.normalization import as_pixels, check_finite, normalize
from bitnetcnn.nn.modes import evaluating

__all__ = ["as_batches", "check_calibration_memory", "check_normalized", "dataset_for", "dataset_images",
           "model_inputs"]

Calibration = Union[torch.Tensor, np.ndarray, Iterable]


CALIBRATION_BATCH = 64  # images a calibration batch holds (onnxruntime's calibrators want batches of one size)


def check_normalized(x: torch.Tensor, mean, std, what: str = "inputs") -> None:
    """Refuse float images far outside what normalization with ``mean`` and ``std`` gives pixels in 0..1 (pixels
    0..255 passed as floats, say), and warn of images all in 0..1 (pixels not normalized yet): the model would see
    other images than it was trained on, and say nothing."""
    if not x.is_floating_point() or x.numel() == 0:
        return
    low = min(-m / s for m, s in zip(mean, std))
    high = max((1 - m) / s for m, s in zip(mean, std))
    margin = 2 * (high - low)  # noise and augmentation stay well inside it
    seen_low, seen_high = float(x.min()), float(x.max())
    advice = "pass uint8 images (0..255, normalized here) or images normalized as the model was trained"
    if seen_low < low - margin or seen_high > high + margin:
        raise ValueError(f"{what} span {seen_low:.4g}..{seen_high:.4g}, but the model's inputs, pixels in 0..1 "
                         f"normalized with mean {tuple(mean)} and std {tuple(std)}, span {low:.3g}..{high:.3g}: "
                         + advice)
    if low < 0 and 0 <= seen_low and seen_high <= 1:
        # pixels in 0..1 not yet normalized (ToTensor's output) lie inside the normalized range, so the check above
        # passes them; a normalized batch has nothing below 0 only where every pixel is at least the mean
        warnings.warn(f"{what} all lie in 0..1, as pixels not yet normalized do (ToTensor's output): the model takes "
                      f"pixels normalized with mean {tuple(mean)} and std {tuple(std)}; {advice}", UserWarning,
                      stacklevel=3)


def available_memory() -> Optional[int]:
    """Bytes the system can still give (Linux's MemAvailable), or None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_calibration_memory(model: nn.Module, count: int, input_size: Optional[tuple] = None) -> None:
    """Refuse a calibration that cannot fit: onnxruntime's calibrator keeps every activation of every image until
    it has seen them all, so 60,000 MNIST images were killed by the kernel, with no word, after filling the memory.
    One image's activations are measured here by its layers' outputs (more than the calibrator keeps of a folded
    model: 9.1 MiB an image for ``bitnet_resnet18``, where its memory grew by about 6 MiB an image)."""
    available = available_memory()
    if available is None:
        return
    per_image = 0

    def count_outputs(module, inputs, output):
        nonlocal per_image
        per_image += output.numel() * 4 if isinstance(output, torch.Tensor) else 0

    # an image of the model's own device and dtype (a bf16 checkpoint is exported from a float32 copy later)
    image = torch.zeros(1, *input_size_of(model, input_size), device=input_device_of(model),
                        dtype=input_dtype_of(model))
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count_outputs) for m in leaves]
    try:
        with evaluating(model), torch.no_grad():  # a training-mode pass would move BatchNorm statistics
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
    if count * per_image > 0.8 * available:
        raise ValueError(f"calibration on {count:,} images would keep about {count * per_image / 2**30:.1f} GiB of "
                         f"activations in memory ({per_image / 2**20:.1f} MiB an image: onnxruntime's calibrator "
                         f"keeps every image's), more than the {available / 2**30:.1f} GiB available: calibrate on "
                         "fewer images (a few hundred do; the CLI's default is 256)")


def as_batches(calibration: Calibration, model: Optional[nn.Module] = None, batch_size: int = CALIBRATION_BATCH,
               what: str = "calibration images", input_size: Optional[tuple] = None) -> List[np.ndarray]:
    """Float32 ``(N, C, H, W)`` arrays from a tensor of model inputs or an iterable of batches.

    A batch may be a tensor, an array, or a ``(inputs, labels)`` pair as data loaders yield. uint8 images are
    normalized with the model's mean and std; float images far outside what that normalization gives are refused,
    and so are images of another size than ``input_size`` (default: the model's), which onnxruntime would refuse
    deep inside calibration (``what`` names them in the error).
    """
    size = tuple(input_size_of(model, input_size)) if model is not None else None
    if isinstance(calibration, (torch.Tensor, np.ndarray)):
        items = [calibration]
        split = True
    else:
        items, split = calibration, False
    stats = input_normalization(model) if model is not None else None
    batches = []
    for item in items:
        if isinstance(item, (tuple, list)):
            item = item[0]
        x = as_pixels(torch.as_tensor(item))  # int64 pixels are images too, as the deployed model takes them
        if x.dtype == torch.uint8:
            if stats is None:
                raise ValueError("uint8 images need the model's mean and std (model.pretrained_cfg or "
                                 "model.model_config); pass normalized floats")
            x = normalize(x, *stats)
        elif stats is not None:
            check_normalized(x, *stats, what=what)
        if x.dim() != 4:
            raise ValueError(f"{what} must be (N, C, H, W), got shape {tuple(x.shape)}")
        if size is not None and tuple(x.shape[1:]) != size:
            raise ValueError(f"{what} are {'x'.join(map(str, x.shape[1:]))} but the model takes "
                             f"{'x'.join(map(str, size))}: resize them to its input size")
        x = x.detach().to("cpu", torch.float32)
        check_finite(x, what)  # onnxruntime's ranges or the check's logits would be NaN, far from here
        chunks = x.split(batch_size) if split else [x]
        batches += [np.ascontiguousarray(c.numpy()) for c in chunks if len(c)]
    if not batches:
        raise ValueError(f"{what} are empty: pass some images")
    return batches


def dataset_for(model: nn.Module) -> str:
    """The data set a model was trained on: from its weights' metadata (``model.pretrained_cfg``), else guessed
    from its input size and classes."""
    cfg = model_pretrained_cfg(model)
    if cfg is not None and cfg.dataset:
        return cfg.dataset
    args = getattr(model, "model_args", {}) or {}
    cfg = getattr(model, "model_config", None)
    channels = int(args.get("in_chans", cfg.input_size[0] if cfg else 3))
    classes = int(args.get("num_classes", cfg.num_classes if cfg else 100))
    if channels == 1:
        return "mnist"
    return "cifar10" if classes == 10 else "cifar100"


def dataset_images(dataset: str, n: int, train: bool, data_dir=None, seed: int = 0, img_size: int = 64,
                   in_chans: int = 3):
    """``(images, labels, spec)``: ``n`` uint8 images and labels of a data set split, a fixed random sample (the
    whole split for ``n <= 0``), and the data set's spec (its mean and std normalize the images). ``img_size``,
    ``in_chans``: the size and channels an image folder is read with, the model's (a named data set has its own)."""
    from bitnetcnn.data.catalog import get_dataset_spec
    from bitnetcnn.settings import data_root

    spec = get_dataset_spec(dataset, img_size, in_chans=in_chans)
    split = spec.read(data_root(data_dir), train, False)
    images, labels = split.images, split.labels
    if 0 < n < len(images):
        index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
        images, labels = images[index], labels[index]
    return images, labels, spec


def model_inputs(model: nn.Module, dataset: str, n: int, train: bool, data_dir=None, seed: int = 0):
    """``(inputs, labels)``: :func:`dataset_images` as ``model`` takes them: read at its input size (an image
    folder's; a named data set has its own) and normalized with its weights' own mean and std, else the data set's."""
    size = input_size_of(model)
    images, labels, spec = dataset_images(dataset, n, train, data_dir, seed, img_size=size[-1], in_chans=size[0])
    if tuple(images.shape[1:]) != tuple(size):  # else a runtime's shape error, far from the cause
        raise ValueError(f"{dataset!r} has {'x'.join(map(str, images.shape[1:]))} images but the model takes "
                         f"{'x'.join(map(str, size))}: give images of its size (calibration=... in Python), or leave --dataset out for its own data set")
    return normalize(images, *(input_normalization(model) or (spec.mean, spec.std))), labels
