"""Per-channel mean and std (of pixels / 255) of the data sets the models are made for.

One home for them and for the arithmetic that applies them: the data catalog normalizes with them, and the model
registry takes an architecture's default input normalization from them (a checkpoint then records its own).
Training, evaluation, calibration and a pretrained weight's ``transforms()`` all call :func:`normalize`, so a model
sees the same floats, to the bit, wherever its images come from. A ground-floor module: it imports only torch.
"""

from __future__ import annotations

import torch

Stats = tuple[tuple[float, ...], tuple[float, ...]]

MNIST: Stats = ((0.1307,), (0.3081,))
FASHION_MNIST: Stats = ((0.2860,), (0.3530,))
CIFAR10: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# by the data set names bitnetcnn knows (its data catalog's), for a checkpoint that names its data set only
BY_DATASET: dict[str, Stats] = {"mnist_demo": MNIST, "mnist": MNIST, "fashion_mnist": FASHION_MNIST,
                                "cifar10": CIFAR10, "cifar100": CIFAR100, "tiny_imagenet": IMAGENET}


def standardize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Float ``(N, C, H, W)`` or ``(C, H, W)`` pixels in 0..1 to the model input: ``(x - mean) / std`` per channel
    (``mean`` and ``std``: tensors or sequences). ``x`` is left as it was."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    if x.dim() < 3 or x.shape[-3] != len(mean):  # else broadcast: a grey image ran on an RGB model, no word said
        raise ValueError(f"images of shape {tuple(x.shape)} have {x.shape[-3] if x.dim() >= 3 else 'no'} channels "
                         f"where the model's normalization has {len(mean)}: give (N, {len(mean)}, H, W) images "
                         f"({'a greyscale picture repeated over 3 channels' if len(mean) == 3 else 'one channel'})")
    return x.sub(mean).div_(std)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (or float in 0..255) ``(N, C, H, W)`` or ``(C, H, W)`` images to the float model input:
    ``(x / 255 - mean) / std`` per channel. ``images`` is left as it was (a float32 batch too)."""
    x = images.float()
    return standardize(x.div_(255) if x is not images else x / 255, mean, std)


def as_pixels(images: torch.Tensor) -> torch.Tensor:
    """Integer images (int32 or int64 from a decoder, ``torch.tensor(list)``, ``randint``) as the uint8 pixels they
    are, so that everything which normalizes uint8 normalizes them too (calibration once measured raw 0..255 ranges
    from int64 images, and the int8 graph fell to chance); refused outside 0..255, and bool ones
    (0 and 1 would run as pixels). Float and uint8 tensors are returned as they are."""
    if images.dtype == torch.bool:  # a mask or a binarized picture would run as pixels 0 and 1 of 255
        raise ValueError("bool images are not pixels: give uint8 pixels 0..255 (images.to(torch.uint8) * 255 for a "
                         "binarized picture)")
    if images.is_floating_point() or images.dtype == torch.uint8:
        return images
    if images.numel() and (images.min() < 0 or images.max() > 255):
        raise ValueError(f"integer images must be pixels in 0..255, these run from {int(images.min())} to "
                         f"{int(images.max())}")
    return images.to(torch.uint8)


def check_finite(images: torch.Tensor, what: str = "the images") -> None:
    """Refuse images holding NaN or infinite values, naming how many: they are no pixels, and an answer on them
    means nothing (an int8 graph quantizes them to codes and answers with finite, confident logits)."""
    if images.numel() and not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum()) if images.dim() == 4 else 1
        raise ValueError(f"{what} hold NaN or infinite values ({bad} image{'s' * (bad != 1)}): they are no pixels; "
                         "check what made them")
