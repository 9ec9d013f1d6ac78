"""Training layers: drop-in ``nn.Conv2d`` / ``nn.Linear`` whose weights are fake-quantized to ternary."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from bitnetcnn.nn.act_quant import make_act_quantizer
from bitnetcnn.nn.exact_sums import rescaled, sums_exact, with_gradient_of
from bitnetcnn.quant import TernaryQuant, ternary_quantize
from bitnetcnn.quant.precision import at_least_float32
from bitnetcnn.quant.ternary import fake_quantize_weight_unchecked


def config_field(name: str, settable: bool = False) -> property:
    """A layer attribute that reads (and, if ``settable``, replaces) one field of the layer's ``quant``."""

    def get(self):
        return getattr(self.quant, name)

    def set(self, value):
        self.quant = replace(self.quant, **{name: value})

    return property(get, set if settable else None, doc=f"``self.quant.{name}``")


class _BitMixin:
    """What BitConv2d and BitLinear share: the quantization config and the fake-quantized weight."""

    quant: TernaryQuant

    def _init_quant(self, quant: Optional[TernaryQuant], **overrides) -> None:
        if self.weight.numel() == 0:  # torch allows it; a per-channel scale of nothing fails later, less clearly
            raise ValueError(f"{type(self).__name__} got a weight of shape {tuple(self.weight.shape)}: a ternary "
                             "layer needs at least one input and one output channel (its scale is the mean or "
                             "median of each output channel's weights)")
        self.quant = TernaryQuant.from_kwargs(quant, **overrides)  # validated here, once
        # on the weight's device: a layer built on the meta device or a GPU had its running scale on the CPU
        self.act_quant = make_act_quantizer(self.quant.act_bits).to(self.weight.device)

    @classmethod
    def around(cls, layer: nn.Module, quant: Optional[TernaryQuant] = None):
        """A Bit layer made of ``layer`` (a plain ``nn.Conv2d`` for BitConv2d, ``nn.Linear`` for BitLinear) and
        holding its own parameter objects, where :meth:`from_float` copies them into new ones: a tied weight stays
        tied (to a float layer too), an optimizer built on them keeps working, and no weight is made and
        initialized (no time, no random numbers drawn, no memory: a registered builder that bitifies a model
        allocates no more than the model, which ``load_checkpoint``'s construction budget counts on)."""
        plain = nn.Conv2d if issubclass(cls, nn.Conv2d) else nn.Linear
        if type(layer) is not plain:
            raise TypeError(f"{cls.__name__}.around takes an nn.{plain.__name__}, not {type(layer).__name__}")
        new = cls.__new__(cls)
        # the same attributes (its own dicts of parameters, buffers, submodules and hooks, holding the same objects)
        new.__dict__.update({k: v.copy() if isinstance(v, dict) else v for k, v in layer.__dict__.items()})
        new._init_quant(quant)
        return new

    # the config's fields under the names the layers always had; setting one replaces the (validated) config
    scale_op = config_field("scale_op", settable=True)
    pow2 = config_field("pow2", settable=True)
    act_bits = config_field("act_bits")  # the quantizer module is built from it: set it by building a new layer
    ste = config_field("ste", settable=True)
    ste_clip = config_field("ste_clip", settable=True)

    def quantized_weight(self) -> torch.Tensor:
        """The ternary weight ``q * s`` the layer computes with (gradient to the latent weight).

        Codes and scale are taken in float32 whatever the weight's dtype, as conversion takes them: a bf16 or fp16
        mean of |W| rounds otherwise, and codes near the threshold would flip between the two."""
        q, weight = self.quant, self.weight
        quantized = fake_quantize_weight_unchecked(at_least_float32(weight), q.scale_op, q.pow2, q.ste, q.ste_clip)
        return quantized.to(weight.dtype)  # a no-op for float32 and float64 weights

    def ternary_state(self, pow2: Optional[bool] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (int8) and per-channel scale ``[O]`` for conversion; ``pow2=True`` rounds the scale (a layer
        trained with power-of-two scales keeps them either way). A weight with NaN or infinite values is refused:
        its channel's codes would come out zero (NaN rounds to 0 in int8), and the converted layer would answer
        finite numbers where the Bit layer answers NaN."""
        q = self.quant.with_pow2(pow2)
        if self.weight.is_meta:  # torch's own error would be about nonzero() and a flag to fake its answer
            raise ValueError("the weight is on the meta device, which holds shapes and no values, so it has no "
                             "ternary codes: materialize the model first (model.to_empty(device='cpu'), then "
                             "load_state_dict)")
        weight = at_least_float32(self.weight.detach())
        bad = (~torch.isfinite(weight)).reshape(weight.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"the weight has NaN or infinite values in output channel(s) {bad[:8]}"
                             f"{' ...' if len(bad) > 8 else ''}: it has no ternary codes (a diverged training run; "
                             "go back to a checkpoint from before it diverged)")
        codes, scale = ternary_quantize(weight, q.scale_op, q.pow2)
        # a channel of zero codes computes 0 whatever its scale: 1 instead of the 1e-8 floor keeps an int8
        # runtime's bias step (input scale x weight scale) wide enough for its bias to fit in int32
        scale = torch.where(codes.reshape(codes.shape[0], -1).any(dim=1), scale.reshape(-1), 1.0)
        return codes, scale

    def _forward(self, x: torch.Tensor, weighted) -> torch.Tensor:
        """``weighted(input, weight, bias)`` (the layer's convolution or linear map) on the fake-quantized input and
        weight; in evaluation, where its input quantizer's codes sum exactly, on the codes as the converted layer
        computes (:mod:`bitnetcnn.nn.exact_sums`), with the float path's gradient where one is asked for."""
        act = self.act_quant
        if self.training or act.training or not hasattr(act, "grid") or not sums_exact(x, self.weight[0].numel()):
            return weighted(act(x), self.quantized_weight(), self.bias)
        with torch.no_grad():
            codes, step = act.grid(x)
            weight_codes, scale = ternary_quantize(at_least_float32(self.weight.detach()), self.quant.scale_op,
                                                   self.quant.pow2)
            sums = weighted(codes.to(x.dtype), weight_codes.to(x.dtype), None)
            bias = None if self.bias is None else at_least_float32(self.bias.detach())
            exact = rescaled(sums, step, scale.reshape(-1), bias, -1 if isinstance(self, nn.Linear) else -3)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return with_gradient_of(exact, weighted(act(x), self.quantized_weight(), self.bias))
        return exact

    def quant_kwargs(self) -> dict:
        """Deprecated (goes in 0.3): ``layer.quant`` is the config; this is its ``to_dict()``."""
        warnings.warn("quant_kwargs() is deprecated: use layer.quant.to_dict()", DeprecationWarning, stacklevel=2)
        return self.quant.to_dict()

    def _quant_repr(self) -> str:
        extra = f", scale_op={self.scale_op}"
        if self.pow2:
            extra += ", pow2=True"
        if self.act_bits:
            extra += f", act_bits={self.act_bits}"
        return extra


class BitConv2d(_BitMixin, nn.Conv2d):
    """``nn.Conv2d`` with ternary fake-quantized weights (and optionally quantized input activations).

    It keeps the latent float weight under the same name as ``nn.Conv2d``, so float state dicts load into it (with
    ``act_bits``, with ``strict=False``: the activation quantizer's running scale is not in a float state dict).
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
        quant: Optional[TernaryQuant] = None,
        scale_op: Optional[str] = None,
        pow2: Optional[bool] = None,
        act_bits: Optional[int] = None,
        ste: Optional[str] = None,
        ste_clip: Optional[float] = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_quant(quant, scale_op=scale_op, pow2=pow2, act_bits=act_bits, ste=ste, ste_clip=ste_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, self._conv_forward)

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
        quant: Optional[TernaryQuant] = None,
        scale_op: Optional[str] = None,
        pow2: Optional[bool] = None,
        act_bits: Optional[int] = None,
        ste: Optional[str] = None,
        ste_clip: Optional[float] = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_quant(quant, scale_op=scale_op, pow2=pow2, act_bits=act_bits, ste=ste, ste_clip=ste_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, nn.functional.linear)

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
    """The values of ``src``'s weight and bias, and whether they train (a frozen layer stays frozen)."""
    dst.weight.copy_(src.weight).requires_grad_(src.weight.requires_grad)
    if src.bias is not None:
        dst.bias.copy_(src.bias).requires_grad_(src.bias.requires_grad)


BIT_LAYERS = (BitConv2d, BitLinear)  # the training layers, for isinstance
