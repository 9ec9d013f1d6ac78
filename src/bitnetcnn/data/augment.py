"""Augmentation of whole batches at once: random crop with padding, horizontal flip, rotation and zoom, elastic
distortion (normalization, shared with evaluation and deployment, is ``bitnetcnn.normalization``).

Random numbers are drawn on the images' device (or a given generator's): a draw on the CPU copied to a GPU would
wait for every queued kernel, one host synchronization per augmentation per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _draw(fn, *args, images: torch.Tensor, generator: torch.Generator | None, **kwargs) -> torch.Tensor:
    """``fn(*args)`` (``torch.rand`` / ``torch.randint``) on the generator's device, or the images' when none is
    given, and moved to the images' device (no copy when they are the same)."""
    device = generator.device if generator is not None else images.device
    return fn(*args, generator=generator, device=device, **kwargs).to(images.device)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad each image with zeros by ``padding`` and crop back at a random offset, for the whole batch in one go."""
    if padding <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy, dx = _draw(torch.randint, 0, 2 * padding + 1, (2, n), images=images, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None, :])  # (n, w)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # advanced indexing gathers (n, h, w, c); move channels back
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = _draw(torch.rand, images.shape[0], images=images, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_affine(images: torch.Tensor, degrees: float, zoom: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image by up to +-``degrees`` and scale it by 1 +- ``zoom`` about its centre (bilinear, zeros
    outside), for the whole batch in one ``grid_sample``; returns float images in the input's 0..255 range.

    Digits gain from it what natural images gain from flips: MNIST's remaining errors are mostly slanted or
    oddly sized strokes that a shift alone does not teach.
    """
    x = images.float()
    if degrees <= 0 and zoom <= 0:
        return x
    n = x.shape[0]
    u = _draw(torch.rand, 2, n, images=x, generator=generator) * 2 - 1  # uniform in [-1, 1]
    angle = u[0] * math.radians(degrees)
    inv_scale = 1.0 / (1.0 + u[1] * zoom)  # the grid maps output to input coordinates: the inverse transform
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0, 255)  # rounding can overshoot 255 by a hair


def random_elastic(images: torch.Tensor, alpha: float, sigma: float = 4.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Elastic distortion (Simard et al., 2003): move each pixel by a random field of uniform noise smoothed with a
    Gaussian of ``sigma`` pixels and scaled by ``alpha`` pixels (MNIST: alpha 34, sigma 4 moves strokes by about a
    pixel and a half); one ``grid_sample`` for the batch, float output in the input's range.

    It imitates the hand's wobble, which rotation and zoom (global transforms) do not.
    """
    x = images.float()
    if alpha <= 0:
        return x
    n, _, h, w = x.shape
    field = _draw(torch.rand, n, 2, h, w, images=x, generator=generator) * 2 - 1
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    # separable Gaussian blur of both displacement channels (treated as a batch of 2n single-channel maps)
    flat = field.reshape(2 * n, 1, h, w)
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1), padding=(0, radius))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    # the identity grid (random_affine's convention) plus the field, whose pixels become grid units of 2 / size
    pixel = torch.tensor([2 / w, 2 / h], dtype=x.dtype, device=x.device)  # (x, y), grid_sample's order
    shift = flat.view(n, 2, h, w).permute(0, 2, 3, 1) * (alpha * pixel)
    identity = torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(n, 2, 3)
    grid = F.affine_grid(identity, list(x.shape), align_corners=False) + shift
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0, 255)
