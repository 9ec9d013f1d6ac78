"""A pretrained weight's preprocessing, as torchvision's ``weights.transforms()``: the user's image in, the float
input the model was trained and evaluated on out.

``bitnetcnn eval`` feeds the test set through :func:`bitnetcnn.normalization.normalize`; so does this, so an image
already at the model's size gets the same floats, to the bit, and the weight's published accuracy holds for it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bitnetcnn.normalization import normalize, standardize


# Pillow's greyscale modes wider than 8 bits: 16-bit (PNG, TIFF) and 32-bit integers, and 32-bit floats
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def wide_grey_to_float(image) -> torch.Tensor:
    """A 16- or 32-bit greyscale PIL image as a ``(1, H, W)`` float tensor in 0..1: integers are 16-bit pixels
    (0..65535), floats are taken as 0..1 already. Values outside those ranges are refused, not clipped."""
    import numpy as np

    pixels = np.asarray(image).astype(np.float32)
    top = 1.0 if image.mode == "F" else 65535.0
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if low < 0 or high > top:
        read_as = "0..1 floats" if top == 1 else "16-bit pixels (0..65535)"
        raise ValueError(f"a {image.mode!r} image is read as {read_as}; this one spans {low:g}..{high:g}: scale it "
                         "to that range (or to 8 bits) first")
    return torch.from_numpy(pixels / top)[None]


class Preprocess(nn.Module):
    """An image to a pretrained model's input: a PIL image (turned upright by its EXIF orientation, converted to the
    model's channels; 16-bit and float greyscale rescaled to 0..1, not clipped), a uint8 tensor
    (0..255) or a float tensor (0..1, as ``torchvision.transforms.ToTensor`` gives), ``(C, H, W)`` or a batch
    ``(N, C, H, W)``. One of another size has its shorter side resized to the model's (bilinear, antialiased) and
    its centre cropped, as torchvision's ImageNet presets do; then ``(x - mean) / std`` per channel."""

    def __init__(self, input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(input_size) != 3 or len(mean) != input_size[0] or len(std) != input_size[0]:
            raise ValueError(f"Preprocess needs input_size (C, H, W) and C values of mean and std, not {input_size}, "
                             f"{mean}, {std}")
        self.input_size = tuple(int(v) for v in input_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def forward(self, image) -> torch.Tensor:
        channels, height, width = self.input_size
        x = self._tensor(image)
        if x.dim() not in (3, 4) or x.shape[-3] != channels:
            raise ValueError(f"the model takes {channels}-channel images (C, H, W) or batches (N, C, H, W); got a "
                             f"tensor of shape {tuple(x.shape)}: convert it first (for a PIL image, pass the image)")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise TypeError(f"images are uint8 (0..255) or float (0..1) tensors, not {x.dtype}")
        if tuple(x.shape[-2:]) != (height, width):
            from torchvision.transforms.v2 import functional as F

            x = F.center_crop(F.resize(x, min(height, width), antialias=True), [height, width])
        return normalize(x, self.mean, self.std) if x.dtype == torch.uint8 else standardize(x, self.mean, self.std)

    def _tensor(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image
        from PIL import Image  # torchvision's dependency, so bitnetcnn's too

        if isinstance(image, Image.Image):
            from PIL import ImageOps
            from torchvision.transforms.v2.functional import pil_to_tensor

            image = ImageOps.exif_transpose(image)  # a phone photo upright, as a viewer shows it
            if image.mode in WIDE_GREY_MODES:  # convert("L") would clip them to 0..255, not rescale
                grey = wide_grey_to_float(image)
                return grey if self.input_size[0] == 1 else grey.expand(3, -1, -1)
            return pil_to_tensor(image.convert("L" if self.input_size[0] == 1 else "RGB"))
        raise TypeError(f"Preprocess takes a PIL image or a tensor, not {type(image).__name__}")

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, mean={self.mean}, std={self.std}"
