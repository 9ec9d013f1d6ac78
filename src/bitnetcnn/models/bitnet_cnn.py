"""BitNetCNN: the seed's small MobileNetV2-style network for MNIST-sized inputs (140K parameters)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bitnetcnn.models.blocks import ConvNormAct, InvertedResidual
from bitnetcnn.models.quant_spec import QuantSpec
from bitnetcnn.models.registry import MNIST_MEAN, MNIST_STD, register_model, require_positive_int


class BitNetCNN(nn.Module):
    """Stem (3x3, stride 1), three inverted residual stages that double the width and halve the resolution, global
    average pooling and a linear classifier. ``depths`` adds stride-1 residual blocks to a stage (the seed has one
    block a stage).

    It is the seed's NetCNN layer for layer (SiLU, conv biases, stride in the 1x1 expansion, dropout before the
    classifier), with its module names, so the seed's published MNIST checkpoint loads key by key.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        spec: QuantSpec = QuantSpec(),
        width: int = 32,
        expand_ratio: float = 2.0,
        drop_rate: float = 0.1,
        act: str = "silu",
        downsample_at: str = "expand",
        depths: Sequence[int] = (1, 1, 1),
        img_size: int = 28,
    ) -> None:
        super().__init__()
        del img_size  # global pooling takes any size; accepted so every builder has the same interface
        require_positive_int("width (the stem's channels; the stages take 2x, 4x and 8x)", width)
        if isinstance(expand_ratio, bool) or not isinstance(expand_ratio, (int, float)) or not expand_ratio > 0:
            raise ValueError(f"expand_ratio must be a number above 0 (2.0: blocks widen twice); got {expand_ratio!r}")
        depths = tuple(depths)
        if len(depths) != 3 or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths must be three block counts of at least 1, one per stage; got {depths!r}")
        # hidden channels in_ch x expand_ratio, as the seed's (MobileNet's rounding to 8 widened a width of 10 2.4x)
        block = dict(spec=spec, expand_ratio=expand_ratio, act=act, bias=True, downsample_at=downsample_at,
                     channel_divisor=1)
        self.stem = ConvNormAct(spec, in_chans, width, 3, bias=True, act=act, edge=True)
        self.stage1 = _stage(width, 2 * width, depths[0], block)
        self.stage2 = _stage(2 * width, 4 * width, depths[1], block)
        self.stage3 = _stage(4 * width, 8 * width, depths[2], block)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(drop_rate),
            spec.linear(8 * width, num_classes, edge=True),
        )

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map before the global pooling (where distillation's feature hints compare)."""
        return self.stage3(self.stage2(self.stage1(self.stem(x))))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _stage(in_ch: int, out_ch: int, depth: int, block: dict) -> nn.Module:
    """A strided block, then ``depth - 1`` residual ones; a lone block stays unwrapped, with the seed's key names."""
    first = InvertedResidual(in_ch=in_ch, out_ch=out_ch, stride=2, **block)
    if depth == 1:
        return first
    rest = (InvertedResidual(in_ch=out_ch, out_ch=out_ch, stride=1, **block) for _ in range(depth - 1))
    return nn.Sequential(first, *rest)


@register_model(input_size=(1, 28, 28), input_sizes=(28, 32), num_classes=10, mean=MNIST_MEAN, std=MNIST_STD)
def bitnet_cnn(num_classes: int, in_chans: int, spec: QuantSpec, **kwargs) -> BitNetCNN:
    """The seed's BitNetCNN (MNIST 1x28x28, also 3x32x32): stem 32 -> stages 64, 128, 256 -> classifier."""
    return BitNetCNN(num_classes, in_chans, spec, **kwargs)
