"""A pretrained weight's preprocessing, as torchvision's ``weights.transforms()``: the user's image in, the float
input the model was trained and evaluated on out.

``bitnetcnn eval`` feeds the test set through :func:`bitnetcnn.normalization.normalize`; so does this, so an image
already at the model's size gets the same floats, to the bit, and the weight's published accuracy holds for it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bitnetcnn.images import fit_to_size, pil_to_uint8
from bitnetcnn.normalization import as_pixels, check_finite, normalize, standardize


class Preprocess(nn.Module):
    """An image to a pretrained model's input: a PIL image (read as :mod:`bitnetcnn.images` reads an image folder's:
    upright, in the model's channels, wide greyscale rescaled), a uint8 tensor (0..255) or a float tensor (0..1, as
    ``torchvision.transforms.ToTensor`` gives), ``(C, H, W)`` or a batch ``(N, C, H, W)``. One of another size has
    its shorter side resized to the model's (bilinear, antialiased) and its centre cropped, as torchvision's ImageNet
    presets do; then ``(x - mean) / std`` per channel. A tensor is taken as it stands: a photo's EXIF orientation,
    which a PIL image is turned by, is not known to it (``torchvision.io.decode_image(path,
    apply_exif_orientation=True)`` applies it)."""

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
            channels_last = x.dim() in (3, 4) and x.shape[-1] == channels  # numpy's and PIL's (H, W, C) order
            if channels_last:
                advice = f"channels last, so x.permute({'0, 3, 1, 2' if x.dim() == 4 else '2, 0, 1'}) first"
            elif x.dim() == 2 and channels == 1:  # one grey picture without its channel axis
                advice = "one (H, W) grey picture: give it its channel axis, x[None]"
            else:
                advice = "convert it first (for a PIL image, pass the image)"
            raise ValueError(f"the model takes {channels}-channel images (C, H, W) or batches (N, C, H, W); got a "
                             f"tensor of shape {tuple(x.shape)}: {advice}")
        if 0 in x.shape[-2:]:  # resizing it divided by zero
            raise ValueError(f"an image of {x.shape[-2]}x{x.shape[-1]} pixels has nothing to classify")
        if x.is_floating_point():
            x = x.float()  # numpy's / 255. gives float64, a half-precision decode float16; the model is float32
            check_finite(x)
            if x.numel() and not (x.min() >= 0 and x.max() <= 1):
                low, high = float(x.min()), float(x.max())
                raise ValueError(f"float images are pixels in 0..1 (as ToTensor gives); these span {low:g}..{high:g}: "
                                 "pass uint8 pixels (0..255) or divide by 255 first")
        x = fit_to_size(x, height, width)
        return normalize(x, self.mean, self.std) if x.dtype == torch.uint8 else standardize(x, self.mean, self.std)

    def _tensor(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return as_pixels(image)  # int32/int64 pixels as the uint8 they are, as everything that normalizes reads them
        from PIL import Image  # torchvision's dependency, so bitnetcnn's too

        if isinstance(image, Image.Image):
            return pil_to_uint8(image, self.input_size[0])  # 8 bits, as an image folder's training split holds it
        raise TypeError(f"Preprocess takes a PIL image or a tensor, not {type(image).__name__}")

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, mean={self.mean}, std={self.std}"
