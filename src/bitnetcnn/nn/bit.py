"""Training layers: drop-in ``nn.Conv2d`` / ``nn.Linear`` whose weights are fake-quantized to ternary."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bitnetcnn.nn.act_quant import make_act_quantizer
from bitnetcnn.quant import fake_quantize_weight, ternary_quantize, validate_act_bits, validate_scale_op
from bitnetcnn.quant.ternary import STE_MODES


class _BitMixin:
    """What BitConv2d and BitLinear share: the quantization settings and the fake-quantized weight."""

    def _init_quant(self, scale_op: str, pow2: bool, act_bits: Optional[int], ste: str, ste_clip: float) -> None:
        self.scale_op = validate_scale_op(scale_op)
        self.pow2 = bool(pow2)
        self.act_bits = validate_act_bits(act_bits)
        if ste not in STE_MODES:
            raise ValueError(f"unknown ste {ste!r}: choose one of {', '.join(map(repr, STE_MODES))}")
        self.ste = ste
        self.ste_clip = float(ste_clip)
        self.act_quant = make_act_quantizer(act_bits)

    def quantized_weight(self) -> torch.Tensor:
        """The ternary weight ``q * s`` the layer computes with (gradient to the latent weight)."""
        return fake_quantize_weight(self.weight, self.scale_op, self.pow2, self.ste, self.ste_clip)

    def ternary_state(self, pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (int8) and per-channel scale ``[O]`` for conversion; ``pow2`` rounds the scale."""
        codes, scale = ternary_quantize(self.weight.detach().float(), self.scale_op, self.pow2 or pow2)
        return codes, scale.reshape(-1)

    def quant_kwargs(self) -> dict:
        return dict(scale_op=self.scale_op, pow2=self.pow2, act_bits=self.act_bits, ste=self.ste, ste_clip=self.ste_clip)

    def _quant_repr(self) -> str:
        extra = f", scale_op={self.scale_op}"
        if self.pow2:
            extra += ", pow2=True"
        if self.act_bits:
            extra += f", act_bits={self.act_bits}"
        return extra


class BitConv2d(_BitMixin, nn.Conv2d):
    """``nn.Conv2d`` with ternary fake-quantized weights (and optionally quantized input activations).

    It keeps the latent float weight under the same name as ``nn.Conv2d``, so float state dicts load into it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        scale_op: str = "median",
        pow2: bool = False,
        act_bits: Optional[int] = None,
        ste: str = "identity",
        ste_clip: float = 1.5,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_quant(scale_op, pow2, act_bits, ste, ste_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.act_quant(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **quant) -> "BitConv2d":
        """A Bit layer with the arguments and (a copy of) the weights of ``conv``."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            **quant,
        )
        _copy_params(conv, layer)
        return layer


class BitLinear(_BitMixin, nn.Linear):
    """``nn.Linear`` with ternary fake-quantized weights (and optionally quantized input activations)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        scale_op: str = "median",
        pow2: bool = False,
        act_bits: Optional[int] = None,
        ste: str = "identity",
        ste_clip: float = 1.5,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_quant(scale_op, pow2, act_bits, ste, ste_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.act_quant(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()

    @classmethod
    def from_float(cls, linear: nn.Linear, **quant) -> "BitLinear":
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **quant,
        )
        _copy_params(linear, layer)
        return layer


@torch.no_grad()
def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)
