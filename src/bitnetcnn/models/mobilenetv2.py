"""MobileNetV2 with ternary convolutions, width multipliers and strides for 32 and 64 px inputs."""

from __future__ import annotations

from torch import Tensor, nn

from bitnetcnn.models.blocks import ConvNormAct, InvertedResidual, make_divisible
from bitnetcnn.models.quant_spec import QuantSpec
from bitnetcnn.models.registry import SMALL_INPUT_MAX, register_model

# (expansion t, channels c, blocks n, first stride s), as in the MobileNetV2 paper
SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 with the seed's module names (``stem``, ``features``, ``head_conv``, ``classifier``).

    Inputs up to 64 px keep full resolution in the stem (3x3 stride 1), so the network downsamples 16 times: 2x2
    positions at the end for 32 px, 4x4 for 64 px. Larger inputs get the ImageNet stride-2 stem. As in the seed,
    every block has its expansion convolution (also the first, at ratio 1) and the stem and head convolutions have
    biases. ``downsample_at='expand'`` strides the 1x1 expansion instead of the depthwise convolution, as the seed's
    published checkpoint does.
    """

    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        spec: QuantSpec = QuantSpec(),
        width_mult: float = 1.0,
        img_size: int = 32,
        act: str = "relu6",
        drop_rate: float = 0.2,
        downsample_at: str = "dw",
    ) -> None:
        super().__init__()
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not 0 < width_mult < 1e3:
            raise ValueError(f"width_mult scales every layer's channels (1.0, 1.4, 0.5): a number above 0; got "
                             f"{width_mult!r}")
        in_ch = make_divisible(32 * width_mult)
        last_ch = make_divisible(1280 * max(1.0, width_mult))
        self.stem = ConvNormAct(spec, in_chans, in_ch, 3, 1 if img_size <= SMALL_INPUT_MAX else 2, bias=True, act=act,
                                edge=True)
        blocks = []
        for t, c, n, s in SETTING:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(spec, in_ch, out_ch, s if i == 0 else 1, t, act,
                                               downsample_at=downsample_at))
                in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.head_conv = ConvNormAct(spec, in_ch, last_ch, 1, bias=True, act=act)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), spec.linear(last_ch, num_classes, edge=True))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map before the global pooling (where distillation's feature hints compare)."""
        return self.head_conv(self.features(self.stem(x)))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def bit_mobilenetv2(num_classes: int, in_chans: int, spec: QuantSpec, **kwargs) -> MobileNetV2:
    """MobileNetV2 (2.35M parameters at x1.0 and 100 classes); ``width_mult=1.4, act='silu',
    downsample_at='expand'`` is the seed's published CIFAR-100 model."""
    return MobileNetV2(num_classes, in_chans, spec, **kwargs)
