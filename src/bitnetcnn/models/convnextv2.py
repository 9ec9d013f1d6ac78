"""ConvNeXt V2 (atto to tiny) with ternary convolutions and linear layers, and a stem for 32 and 64 px inputs."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from bitnetcnn.models.quant_spec import QuantSpec
from bitnetcnn.nn.drop_path import DropPath
from bitnetcnn.models.registry import SMALL_INPUT_MAX, register_model

# name: (depths, dims), from the ConvNeXt V2 paper
SIZES = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global response normalization (ConvNeXt V2) on channels-last input; starts as the identity."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


class Block(nn.Module):
    """7x7 depthwise conv, LayerNorm, 1x1 expansion by 4 (a linear layer), GELU, GRN, 1x1 projection, residual."""

    def __init__(self, spec: QuantSpec, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dwconv = spec.conv(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = spec.linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = spec.linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.pwconv2(self.grn(self.act(self.pwconv1(y))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


def _pad_to_even(x: Tensor) -> Tensor:
    """An odd side padded with one zero row or column, so a 2x2 stride-2 downsample covers every position: at 28 px
    the maps went 14 -> 7 -> 3 -> 1, the last row and column of the 7x7 map dropped and a 1x1 last stage (now
    14 -> 7 -> 4 -> 2). Even sides (32 and 64 px) are left as they are. Only behind the small-input 2x2 stem: above
    64 px the maps are large enough, and a 112 px input drops its 7x7 map's last row and column as the reference
    ConvNeXt V2 does (padding it moved the logits by up to 0.8 from the same weights in the reference network)."""
    return torch.nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))


class ConvNeXtV2(nn.Module):
    """ConvNeXt V2: a patchify stem, four stages of blocks with 2x downsampling between them, pooled LayerNorm head.

    The seed's 4x4 stem leaves 1x1 positions in the last stage at 32 px. Here inputs up to 64 px get a 2x2 stem, so
    the last stage sees 2x2 positions at 32 px and 4x4 at 64 px; larger inputs get the usual 4x4 stem.
    """

    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        spec: QuantSpec = QuantSpec(),
        depths: Sequence[int] = SIZES["atto"][0],
        dims: Sequence[int] = SIZES["atto"][1],
        img_size: int = 32,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        patch = 2 if img_size <= SMALL_INPUT_MAX else 4
        self.pad_odd_maps = patch == 2  # small inputs only: larger ones downsample as ConvNeXt V2 does (see below)
        self.stem = nn.Sequential(spec.conv(in_chans, dims[0], patch, patch, edge=True), LayerNorm2d(dims[0], eps=1e-6))
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
                or not 0.0 <= drop_path_rate <= 1.0:  # here, not per block: the last block's rate is the whole one
            raise ValueError(f"drop_path_rate must be in [0, 1], not {drop_path_rate!r}")
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # stochastic depth grows linearly
        self.downsample = nn.ModuleList(
            nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), spec.conv(dims[i - 1], dims[i], 2, 2))
            for i in range(1, len(dims))
        )
        self.stages = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            start = sum(depths[:i])
            self.stages.append(nn.Sequential(*(Block(spec, dim, rates[start + j]) for j in range(depth))))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = spec.linear(dims[-1], num_classes, edge=True)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map before the global pooling (where distillation's feature hints compare)."""
        x = self.stages[0](self.stem(x))
        for down, stage in zip(self.downsample, self.stages[1:]):
            x = down[0](x)  # norm
            x = stage(down[1](_pad_to_even(x) if self.pad_odd_maps else x))  # (pad,) 2x2 stride-2 conv
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x.mean((2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def bit_convnextv2(num_classes: int, in_chans: int, spec: QuantSpec, size: str = "atto", **kwargs) -> ConvNeXtV2:
    """ConvNeXt V2 in sizes atto, femto, pico, nano and tiny (``size=...``; 3.4M to 27.9M parameters)."""
    try:
        depths, dims = SIZES[size]
    except KeyError:
        raise ValueError(f"unknown ConvNeXt V2 size {size!r}: choose one of {', '.join(SIZES)}") from None
    return ConvNeXtV2(num_classes, in_chans, spec, depths, dims, **kwargs)
