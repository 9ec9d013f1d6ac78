"""How a picture becomes the pixels a model reads, in one place for the image-folder data sets a model trains on
and for a pretrained weight's ``transforms()``, so both see an image alike:

- upright, by its EXIF orientation, as a viewer shows a phone photo (PIL's ``Image.open`` does not turn it);
- in the model's channels; 16-bit and float greyscale rescaled to 0..1, not clipped as PIL's ``convert`` does;
- fitted to the model's size as torchvision's presets do: the shorter side resized (bilinear, antialiased), the
  centre cropped, so no image is squashed.

A ground-floor module: it imports nothing of the package (PIL and torchvision when called).
"""

from __future__ import annotations

import torch

class UnreadablePixels(ValueError):
    """A whole picture whose pixels a model cannot read as they are (transparent, NaN, out of range): the file is
    fine, the image needs preparing first."""


def read_errors() -> tuple:
    """What reading a picture file raises when the file is cut short, damaged, not a picture or too big (a
    decompression bomb): the exceptions a reader names the file for."""
    from PIL import Image

    return OSError, ValueError, SyntaxError, Image.DecompressionBombError


# Pillow's greyscale modes wider than 8 bits: 16-bit (PNG, TIFF) and 32-bit integers, and 32-bit floats
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


TRANSPARENT = ("the image has transparent pixels, and which background they stand for is not known: flatten it onto "
               "its background first (PIL: Image.alpha_composite(background, image))")


def upright(image):
    """``image`` turned as its EXIF orientation says. Pillow reads EXIF lazily, here, and a damaged block (a PNG's
    eXIf chunk of garbage) raised SyntaxError, a traceback that cost every other image's answer: it is refused as
    the image's own problem, naming it."""
    from PIL import ImageFile, ImageOps

    if isinstance(image, ImageFile.ImageFile) and image.tile and image.fp is None:  # Pillow: a bare AssertionError
        raise ValueError("the image's file was closed before its pixels were read: use the image inside its "
                         "`with Image.open(path) as image:` block, or call image.load() in it")
    # the pixels first, outside the EXIF reading: a PNG's getexif() loads the whole file, and one cut short was
    # refused as damaged EXIF ("save the picture again without it") instead of as the truncated file it is
    image.load()
    try:
        return ImageOps.exif_transpose(image)
    except read_errors() as err:
        raise UnreadablePixels(f"its EXIF metadata is damaged ({err}), so which way up it is cannot be read: save "
                               "the picture again without it") from None


def pil_to_pixels(image, channels: int) -> torch.Tensor:
    """A PIL image as a ``(channels, H, W)`` tensor, upright: uint8 (0..255), or float in 0..1 for a wide greyscale
    image (16-bit pixels 0..65535, floats 0..1; values outside those ranges, NaN and infinities are refused, not
    clipped, and so is a wide integer image no pixel of which exceeds 255: 8-bit values it would darken 257-fold).
    An image with transparent pixels is refused; an opaque alpha channel is dropped."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    import numpy as np

    image = upright(image)
    if image.mode in WIDE_GREY_MODES and "transparency" in image.info:
        # a 16-bit PNG's transparent grey level (tRNS): converting to RGBA would clip every pixel to 8 bits first
        if (np.asarray(image) == image.info["transparency"]).any():
            raise UnreadablePixels(TRANSPARENT)
    elif image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        image = _opaque(image.convert("RGBA"))
    if image.mode not in WIDE_GREY_MODES:
        # contiguous: the view pil_to_tensor gives is channels-last, and a model with 8-bit activations may round a
        # tie the other way on that layout's kernels (bitnet_mobilenetv2: 0.4% of top-1 answers differed)
        return pil_to_tensor(_converted(image, "L" if channels == 1 else "RGB")).contiguous()
    pixels = np.asarray(image).astype(np.float32)
    top = 1.0 if image.mode == "F" else 65535.0
    if not np.isfinite(pixels).all():
        raise UnreadablePixels(f"a {image.mode!r} image with NaN or infinite pixels: a model's answer on it would "
                               "mean nothing")
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if low < 0 or high > top:
        read_as = "0..1 floats" if top == 1 else "16-bit pixels (0..65535)"
        raise UnreadablePixels(f"a {image.mode!r} image is read as {read_as}; this one spans {low:g}..{high:g}: "
                               "scale it to that range (or to 8 bits) first")
    if top > 1 and 0 < high <= 255:  # 8-bit values in a wide file (numpy's int32 array saved as is, say)
        raise UnreadablePixels(f"a {image.mode!r} image is read as 16-bit pixels (0..65535), but this one spans only "
                               f"{low:g}..{high:g}: 8-bit values in a 16-bit file, which read as 16 bits would be "
                               "nearly black; save it as an 8-bit image (mode 'L'), or scale it to 0..65535")
    if top > 1 and 255 < high <= 4095:  # a camera's or scanner's 10-12 bits in a 16-bit PNG (Pillow ignores sBIT)
        raise UnreadablePixels(f"a {image.mode!r} image is read as 16-bit pixels (0..65535), but this one spans only "
                               f"{low:g}..{high:g}: 10- to 12-bit values in a 16-bit file, which read as 16 bits "
                               "would be a sixteenth as bright (a digit model answered 14 of 100 right, sure of "
                               "each); scale it to 0..65535 (or to 8 bits) first")
    return torch.from_numpy(pixels / top)[None].expand(channels, -1, -1).contiguous()


def pil_to_uint8(image, channels: int) -> torch.Tensor:
    """:func:`pil_to_pixels` as 8-bit pixels: a 16-bit or float greyscale picture's 0..1 rounded to 0..255. An image
    folder's splits are held so (uint8), and a weight's ``transforms()`` reads a picture so too, so that a model is
    shown a file as its training showed it (resizing 16-bit floats instead gave other inputs than training's)."""
    pixels = pil_to_pixels(image, channels)
    return pixels.mul(255).round().to(torch.uint8) if pixels.is_floating_point() else pixels


def _converted(image, mode: str):
    """``image.convert(mode)``, through RGB where Pillow converts the file's mode to RGB alone (LAB to L was
    "conversion from LAB to RGB not supported", for a file a colour model reads)."""
    try:
        return image.convert(mode)
    except ValueError:
        return image.convert("RGB").convert(mode)


def _opaque(image):
    """An RGBA image whose every pixel is opaque, refused where some are not: dropping the alpha shows what lies
    under it (a drawing on a transparent canvas reads as a blank), and which background was meant is not known."""
    import numpy as np

    if (np.asarray(image.getchannel("A")) < 255).any():
        raise UnreadablePixels(TRANSPARENT)
    return image


def fit_to_size(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., C, H, W)`` images at ``height`` x ``width``: resized to cover both sides (for a square size, the shorter
    side to it, as torchvision's ``Resize(size)``), then the centre cropped; images at that size already come back as
    they are. Resizing the shorter side to the smaller of a non-square size left the crop larger than the image, which
    ``center_crop`` filled with black."""
    if tuple(x.shape[-2:]) == (height, width):
        return x
    from torchvision.transforms.v2 import functional as F

    if height == width:
        return F.center_crop(F.resize(x, height, antialias=True), [height, width])
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    covering = [max(height, int(h * scale)), max(width, int(w * scale))]
    return F.center_crop(F.resize(x, covering, antialias=True), [height, width])
