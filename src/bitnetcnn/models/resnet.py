"""ResNet-18/34/50 with ternary convolutions, a CIFAR stem for small inputs and the ImageNet stem for large ones."""

from __future__ import annotations

from typing import Sequence, Type, Union

from torch import Tensor, nn

from bitnetcnn.models.blocks import ConvNormAct, make_act
from bitnetcnn.models.quant_spec import QuantSpec
from bitnetcnn.models.registry import SMALL_INPUT_MAX, register_model



class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (a strided 1x1 projection when the shape changes)."""

    expansion = 1

    def __init__(self, spec: QuantSpec, in_ch: int, planes: int, stride: int, act: str) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = ConvNormAct(spec, in_ch, planes, 3, stride, act=act)
        self.conv2 = ConvNormAct(spec, planes, out_ch, 3, act=None)
        self.shortcut = _shortcut(spec, in_ch, out_ch, stride)
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as in torchvision's ResNet v1.5), 1x1 expand by 4, and a shortcut."""

    expansion = 4

    def __init__(self, spec: QuantSpec, in_ch: int, planes: int, stride: int, act: str) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv_reduce = ConvNormAct(spec, in_ch, planes, 1, act=act)
        self.conv_transform = ConvNormAct(spec, planes, planes, 3, stride, act=act)
        self.conv_expand = ConvNormAct(spec, planes, out_ch, 1, act=None)
        self.shortcut = _shortcut(spec, in_ch, out_ch, stride)
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_expand(self.conv_transform(self.conv_reduce(x))) + self.shortcut(x))


def _shortcut(spec: QuantSpec, in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return ConvNormAct(spec, in_ch, out_ch, 1, stride, act=None)


class ResNet(nn.Module):
    """ResNet with the seed's module names (``stem``, ``layer1..4``, ``head``).

    Inputs up to 64 px get the CIFAR stem (3x3 stride 1, no max-pool), larger ones the ImageNet stem (7x7 stride 2
    and a 3x3 max-pool), chosen by ``img_size``.
    """

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        depths: Sequence[int],
        num_classes: int = 100,
        in_chans: int = 3,
        spec: QuantSpec = QuantSpec(),
        img_size: int = 32,
        act: str = "relu",
    ) -> None:
        super().__init__()
        small = img_size <= SMALL_INPUT_MAX
        self.stem = ConvNormAct(spec, in_chans, 64, 3 if small else 7, 1 if small else 2, act=act, edge=True)
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(spec, in_ch, planes, 2 if i > 0 and j == 0 else 1, act))
                in_ch = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), spec.linear(in_ch, num_classes, edge=True))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map before the global pooling (where distillation's feature hints compare)."""
        x = self.maxpool(self.stem(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def bit_resnet18(num_classes: int, in_chans: int, spec: QuantSpec, **kwargs) -> ResNet:
    """ResNet-18 (11.2M parameters at 100 classes); ``act='silu'`` is the seed's published CIFAR-100 model."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_chans, spec, **kwargs)


@register_model
def bit_resnet34(num_classes: int, in_chans: int, spec: QuantSpec, **kwargs) -> ResNet:
    """ResNet-34 (21.3M parameters at 100 classes)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_chans, spec, **kwargs)


@register_model
def bit_resnet50(num_classes: int, in_chans: int, spec: QuantSpec, **kwargs) -> ResNet:
    """ResNet-50 with bottleneck blocks (23.7M parameters at 100 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, spec, **kwargs)
