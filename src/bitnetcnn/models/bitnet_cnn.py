"""BitNetCNN: the seed's small MobileNetV2-style network for MNIST-sized inputs (140K parameters)."""

from __future__ import annotations

from torch import Tensor, nn

from bitnetcnn.models.blocks import ConvNormAct, InvertedResidual
from bitnetcnn.models.layers import QuantSpec
from bitnetcnn.models.registry import MNIST_MEAN, MNIST_STD, register_model


class BitNetCNN(nn.Module):
    """Stem (3x3, stride 1), three inverted residual stages that double the width and halve the resolution, global
    average pooling and a linear classifier.

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
        img_size: int = 28,
    ) -> None:
        super().__init__()
        del img_size  # global pooling takes any size; accepted so every builder has the same interface
        block = dict(expand_ratio=expand_ratio, act=act, bias=True, downsample_at=downsample_at)
        self.stem = ConvNormAct(spec, in_chans, width, 3, bias=True, act=act, edge=True)
        self.stage1 = InvertedResidual(spec, width, 2 * width, stride=2, **block)
        self.stage2 = InvertedResidual(spec, 2 * width, 4 * width, stride=2, **block)
        self.stage3 = InvertedResidual(spec, 4 * width, 8 * width, stride=2, **block)
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


@register_model(input_size=(1, 28, 28), input_sizes=(28, 32), num_classes=10, mean=MNIST_MEAN, std=MNIST_STD)
def bitnet_cnn(num_classes: int, in_chans: int, spec: QuantSpec, **kwargs) -> BitNetCNN:
    """The seed's BitNetCNN (MNIST 1x28x28, also 3x32x32): stem 32 -> stages 64, 128, 256 -> classifier."""
    return BitNetCNN(num_classes, in_chans, spec, **kwargs)
