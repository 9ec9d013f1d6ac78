"""Building blocks shared by several architectures: conv-norm-act and the inverted residual.

Submodule names (``conv``, ``norm``, ``conv_pw_exp``, ``conv_dw``, ``conv_pw``) follow the seed's, so its published
checkpoints map onto these modules key by key.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from bitnetcnn.models.quant_spec import QuantSpec
from bitnetcnn.nn import ActQuantizer

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU}
DOWNSAMPLE_AT = ("dw", "expand")


def make_act(name: Optional[str]) -> nn.Module:
    """An activation module by name; ``None`` gives ``nn.Identity`` (a linear layer)."""
    if name is None:
        return nn.Identity()
    try:
        cls = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown act {name!r}: choose one of {', '.join(map(repr, ACTIVATIONS))}") from None
    return cls() if cls is nn.GELU else cls(inplace=True)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below it (MobileNet's rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class ConvNormAct(nn.Sequential):
    """Convolution, BatchNorm, activation; ``act=None`` leaves the output linear (projections, shortcuts).

    ``quantize_output=True`` (linear outputs only) adds ``out_quant``, an 8-bit quantizer of the output where the
    model's layers quantize their inputs to 8 bits: a residual branch's output, which the int8 graph requantizes
    before the sum.
    """

    def __init__(
        self,
        spec: QuantSpec,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        act: Optional[str] = "relu",
        edge: bool = False,
        quantize_output: bool = False,
    ) -> None:
        super().__init__()
        self.conv = spec.conv(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias, edge=edge)
        self.norm = nn.BatchNorm2d(out_ch)
        self.act = make_act(act)
        if quantize_output:
            if act is not None:
                raise ValueError("quantize_output is for linear outputs (act=None): an activation's output is "
                                 "quantized by the layer it feeds")
            if spec.int8_activations:  # otherwise no module: the seed's state dict, 4-bit models as they were
                self.out_quant = ActQuantizer(8)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, 1x1 linear projection, residual when shapes allow.

    The expansion convolution is always present, also at ratio 1 (as in the seed). ``downsample_at='dw'`` strides
    the depthwise convolution (MobileNetV2); ``'expand'`` strides the 1x1 expansion, as the seed's blocks do, which
    its published checkpoints need to reproduce their accuracy. The hidden width is ``in_ch * expand_ratio`` rounded
    to a multiple of ``channel_divisor`` (MobileNet's 8; BitNetCNN's 1, as the seed's).
    """

    def __init__(
        self,
        spec: QuantSpec,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        expand_ratio: float = 6.0,
        act: str = "relu6",
        bias: bool = False,
        downsample_at: str = "dw",
        channel_divisor: int = 8,
    ) -> None:
        super().__init__()
        if downsample_at not in DOWNSAMPLE_AT:
            raise ValueError(f"unknown downsample_at {downsample_at!r}: choose one of {DOWNSAMPLE_AT}")
        hidden = make_divisible(in_ch * expand_ratio, channel_divisor)  # 1: the product itself, rounded
        exp_stride, dw_stride = (stride, 1) if downsample_at == "expand" else (1, stride)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.quantize_shortcut = self.use_residual and spec.int8_activations
        self.conv_pw_exp = ConvNormAct(spec, in_ch, hidden, 1, exp_stride, bias=bias, act=act)
        self.conv_dw = ConvNormAct(spec, hidden, hidden, 3, dw_stride, groups=hidden, bias=bias, act=act)
        self.conv_pw = ConvNormAct(spec, hidden, out_ch, 1, bias=bias, act=None, quantize_output=self.use_residual)

    def forward(self, x: Tensor) -> Tensor:
        if not self.use_residual:
            return self.conv_pw(self.conv_dw(self.conv_pw_exp(x)))
        conv = self.conv_pw_exp.conv
        # hasattr, not isinstance: TorchScript resolves it while compiling, and scripts the branch taken only (a
        # full-precision twin's nn.Conv2d has no act_quant)
        if hasattr(conv, "act_quant"):
            if self.quantize_shortcut:
                # With 8-bit activations the shortcut adds the input as the expansion quantizes it, and the branch
                # as its own quantizer does: the two tensors the int8 graph adds (docs/deploy.md). Quantizing the
                # input twice on one grid changes nothing; the running scale moves once, in the expansion's forward.
                quantizer = conv.act_quant  # an Identity once deployment strips the quantizers
                x = quantizer.quantize(x) if hasattr(quantizer, "quantize") else quantizer(x)
        return x + self.conv_pw(self.conv_dw(self.conv_pw_exp(x)))
