"""Inference layers: ternary weights stored packed (2 bits each), unpacked once into a cached float weight."""

from __future__ import annotations

import copy
import warnings
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from bitnetcnn.nn.act_quant import make_act_quantizer
from bitnetcnn.nn.bit import BitConv2d, BitLinear, config_field
from bitnetcnn.nn.exact_sums import rescaled, sums_exact, with_gradient_of
from bitnetcnn.quant.precision import at_least_float32, wide_dtype
from bitnetcnn.quant import TernaryQuant, dequantize, latent_weight, pack_2bit, pow2_exponent, unpack_2bit


class _TernaryMixin:
    """Packed storage shared by TernaryConv2d and TernaryLinear.

    ``state_dict`` holds ``weight_packed`` (uint8, 4 codes a byte), ``scale`` (float, ``[O]``) or ``scale_exp``
    (int8 power-of-two exponents, ``[O]``), and ``bias``. ``weight`` is a non-persistent buffer, rebuilt from them
    at construction and after ``load_state_dict``, so ``forward`` never unpacks.
    """

    # the config's fields, read-only, under the names the layers always had (not compiled by TorchScript)
    __jit_unused_properties__ = ["scale_op", "pow2", "act_bits"]
    scale_op = config_field("scale_op")
    pow2 = config_field("pow2")  # the stored scale's form follows it: convert again to change it
    act_bits = config_field("act_bits")

    def train(self, mode: bool = True):
        """The layer's mode; its activation quantizer stays in eval mode. A converted layer is for inference (its
        weights are buffers, which no optimizer moves; ``convert_to_bit`` gives a trainable one), and its int8 grid
        is fixed: conversion aligned the bias to it, and a training-mode batch would move it."""
        super().train(mode)
        self.act_quant.train(False)
        return self

    def _init_storage(self, codes: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor],
                      quant: TernaryQuant) -> None:
        """Pack the codes, keep the scale (or its power-of-two exponent) and the bias, and compute the float weight
        from the codes at hand (no unpacking: loading a checkpoint builds every layer this way)."""
        packed = pack_2bit(codes)  # refuses codes other than -1, 0 and 1 before the cast (int8 wraps 255 to -1)
        codes = torch.as_tensor(codes).to(torch.int8)
        self.quant = quant
        self.weight_shape = tuple(codes.shape)
        self.register_buffer("weight_packed", packed.to(codes.device))
        scale = at_least_float32(scale.detach().reshape(-1))
        if scale.shape != (codes.shape[0],):
            raise ValueError(f"scale has {tuple(scale.shape)} values for {codes.shape[0]} output channels")
        if bool((scale < 0).any()):  # the integer-code path takes the sign from the weight: it would cancel
            raise ValueError(f"scale has negative values ({scale[scale < 0][:3].tolist()}): a ternary layer's scale is "
                             "positive; flip the codes of those channels instead (as BatchNorm folding does)")
        if quant.pow2:
            self.register_buffer("scale_exp", pow2_exponent(scale))
        else:
            self.register_buffer("scale", scale.clone())
        self.register_buffer("bias", None if bias is None else at_least_float32(bias.detach().clone()))
        self.register_buffer("weight", self._dequantized(codes), persistent=False)

    def codes(self) -> torch.Tensor:
        """The ternary codes, int8 in {-1, 0, 1}, shaped like the float weight."""
        numel = 1
        for d in self.weight_shape:
            numel *= d
        return unpack_2bit(self.weight_packed, numel).reshape(self.weight_shape)

    def channel_scale(self) -> torch.Tensor:
        """Per-output-channel scale ``[O]`` as a float tensor (``2 ** scale_exp`` for power-of-two layers). It asks
        which buffer the layer stores (``_init_storage`` keeps one of the two), which TorchScript resolves."""
        if hasattr(self, "scale_exp"):
            return torch.exp2(self.scale_exp.float())
        return self.scale

    def _dequantized(self, codes: torch.Tensor) -> torch.Tensor:
        """The float weight ``codes * scale`` in the stored scale's dtype (``2 ** scale_exp`` in float32 for
        power-of-two layers, exact there)."""
        scale = self.channel_scale()
        return dequantize(codes, scale.reshape((-1,) + (1,) * (codes.dim() - 1)), scale.dtype)

    def weight_is_current(self) -> bool:
        """Whether the cached ``weight`` is still ``codes * scale`` (an in-place edit of ``scale`` or
        ``weight_packed`` leaves it stale until :meth:`refresh_weight`)."""
        fresh = self._dequantized(self.codes()).to(device=self.weight.device, dtype=self.weight.dtype)
        return torch.equal(self.weight, fresh)

    def refresh_weight(self) -> None:
        """Rebuild the cached float weight from the stored codes and scale (after editing either in place)."""
        dtype = self.weight.dtype if self.weight.is_floating_point() else torch.float32
        self.weight = self._dequantized(self.codes()).to(dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """The state, and the weight's shape in the state dict's metadata: ``weight_packed`` is flat bytes, so a
        (3, 1) kernel's would load into a (1, 3) one, and a 3x3 convolution's into a 1x1 one of 9x the inputs."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None and prefix[:-1] in metadata:
            metadata[prefix[:-1]]["weight_shape"] = list(self.weight_shape)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        saved = local_metadata.get("weight_shape")  # absent from state dicts that lost their metadata
        if saved is not None and tuple(saved) != tuple(self.weight_shape):
            error_msgs.append(f"size mismatch for {prefix}weight_packed: it packs the codes of a weight shaped "
                              f"{tuple(saved)}, the current model's is {tuple(self.weight_shape)}")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.refresh_weight()

    @classmethod
    def from_bit(cls, layer: nn.Module, pow2: Optional[bool] = None):
        """The inference twin of a Bit layer: its codes and scale (power-of-two when ``pow2``, else as the layer
        is configured), its bias and a copy of its activation quantizer, in the layer's dtype and device."""
        codes, scale = layer.ternary_state(pow2)
        converted = cls.from_codes(layer, codes, scale, layer.bias, layer.quant.with_pow2(pow2))
        return converted.to(layer.weight.device, layer.weight.dtype)  # a bf16 model's layers stay bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on its input quantizer's integer codes where they sum exactly (:mod:`bitnetcnn.nn.exact_sums`),
        scaled once, with the float path's gradient where one must reach ``x``; else on the (fake-quantized) input
        with the float weight. ``hasattr``, which TorchScript resolves (models/blocks.py), asks whether
        ``act_quant`` is an ``ActQuantizer``."""
        if hasattr(self.act_quant, "grid"):
            if sums_exact(x, self.weight[0].numel()):
                codes, step = self.act_quant.grid(x)
                sums = self._weighted(codes.to(x.dtype), torch.sign(self.weight).to(x.dtype), None)
                exact = rescaled(sums, step, self.channel_scale(), self.bias, self._channel_dim)
                if torch.is_grad_enabled() and x.requires_grad:
                    return with_gradient_of(exact, self._weighted(self.act_quant(x), self.weight, self.bias))
                return exact
        return self._weighted(self.act_quant(x), self.weight, self.bias)

    def _ternary_repr(self) -> str:
        return f", scale_op={self.scale_op}" + (", pow2=True" if self.pow2 else "")


def _layer_quant(quant: Optional[TernaryQuant], pow2: Optional[bool], scale_op: Optional[str],
                 act_quant: Optional[nn.Module]) -> tuple[TernaryQuant, nn.Module]:
    """A Ternary layer's config and input quantizer: ``quant`` with the legacy keywords over it, ``act_bits`` from
    the quantizer given; a config with ``act_bits`` and no quantizer gets a fresh one (as a Bit layer made with it
    does), so the layer never says it quantizes what it does not."""
    quant = TernaryQuant.from_kwargs(quant, pow2=pow2, scale_op=scale_op, act_bits=_act_bits(act_quant))
    if _act_bits(act_quant) is None and quant.act_bits is not None:
        act_quant = make_act_quantizer(quant.act_bits)
    # in eval mode from the start, as train() keeps it: a quantizer copied from a training Bit layer scaled each batch
    # by its own max, not the trained running scale, until someone called .eval()
    return quant, (act_quant if act_quant is not None else nn.Identity()).train(False)


class TernaryConv2d(_TernaryMixin, nn.Module):
    """Inference twin of :class:`BitConv2d`: same arguments, same function in eval mode, packed weights."""

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        padding_mode: str = "zeros",
        *,
        quant: Optional[TernaryQuant] = None,
        pow2: Optional[bool] = None,
        scale_op: Optional[str] = None,
        act_quant: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        # The same argument handling as nn.Conv2d, borrowed from a zero-sized instance of it.
        spec = nn.Conv2d(
            codes.shape[1] * groups, codes.shape[0], tuple(codes.shape[2:]), stride, padding, dilation, groups,
            False, padding_mode, device="meta",
        )
        self.in_channels = spec.in_channels
        self.out_channels = spec.out_channels
        self.kernel_size = spec.kernel_size
        self.stride = spec.stride
        self.padding = spec.padding
        self.dilation = spec.dilation
        self.groups = spec.groups
        self.padding_mode = spec.padding_mode
        self._reversed_padding_repeated_twice: List[int] = list(spec._reversed_padding_repeated_twice)
        self._channel_dim = -3  # where the output channels are, for the per-channel scale: (N, C, H, W) or (C, H, W)
        quant, self.act_quant = _layer_quant(quant, pow2, scale_op, act_quant)
        self._init_storage(codes, scale, bias, quant)

    def _weighted(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """``nn.Conv2d``'s function with this layer's geometry (what the shared ``forward`` applies)."""
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + self._ternary_repr()

    @classmethod
    def from_codes(cls, like: nn.Conv2d, codes, scale: torch.Tensor, bias: Optional[torch.Tensor],
                   quant: TernaryQuant) -> "TernaryConv2d":
        """The layer that takes the place of ``like`` (a Bit or float convolution, possibly on the meta device:
        its geometry and activation quantizer are used, not its weights) with these codes, scale and bias."""
        codes = _codes_fitting(like, codes)
        return cls(codes, scale, bias, like.stride, like.padding, like.dilation, like.groups, like.padding_mode,
                   quant=quant, act_quant=_copy_act_quant(like))

    def to_bit(self) -> BitConv2d:
        """A trainable :class:`BitConv2d` that computes what this layer computes (for fine-tuning); its latent
        weight is :func:`~bitnetcnn.quant.latent_weight` of the codes and scale."""
        layer = BitConv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.bias is not None, self.padding_mode, device=self.weight.device, quant=self.quant,
        )
        return _fill_bit(layer, self)


class TernaryLinear(_TernaryMixin, nn.Module):
    """Inference twin of :class:`BitLinear`."""

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        *,
        quant: Optional[TernaryQuant] = None,
        pow2: Optional[bool] = None,
        scale_op: Optional[str] = None,
        act_quant: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = int(codes.shape[0]), int(codes.shape[1])
        self._channel_dim = -1  # where the output features are, for the per-channel scale
        quant, self.act_quant = _layer_quant(quant, pow2, scale_op, act_quant)
        self._init_storage(codes, scale, bias, quant)

    def _weighted(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}" + (
            self._ternary_repr()
        )

    @classmethod
    def from_codes(cls, like: nn.Linear, codes, scale: torch.Tensor, bias: Optional[torch.Tensor],
                   quant: TernaryQuant) -> "TernaryLinear":
        """The layer that takes the place of ``like`` (see :meth:`TernaryConv2d.from_codes`)."""
        codes = _codes_fitting(like, codes)
        return cls(codes, scale, bias, quant=quant, act_quant=_copy_act_quant(like))

    def to_bit(self) -> BitLinear:
        layer = BitLinear(self.in_features, self.out_features, self.bias is not None, device=self.weight.device,
                          quant=self.quant)
        return _fill_bit(layer, self)


def _codes_fitting(like: nn.Module, codes) -> torch.Tensor:
    """``codes`` as a tensor, refused unless shaped like the weight of the layer they replace."""
    codes = torch.as_tensor(codes)
    if tuple(codes.shape) != tuple(like.weight.shape):
        raise ValueError(f"codes {tuple(codes.shape)} do not fit the layer's weight {tuple(like.weight.shape)}")
    return codes


def _copy_act_quant(layer: nn.Module) -> nn.Module:
    act_quant = getattr(layer, "act_quant", None)
    return copy.deepcopy(act_quant) if act_quant is not None else nn.Identity()


def _act_bits(act_quant: nn.Module) -> Optional[int]:
    return getattr(act_quant, "bits", None)


@torch.no_grad()
def _fill_bit(bit: nn.Module, ternary: _TernaryMixin) -> nn.Module:
    # in float32, or float64 for a float64 model, whose scales must not round through float32
    bit = bit.to(wide_dtype(ternary.weight.dtype))
    codes, scale = ternary.codes(), ternary.channel_scale()
    bit.weight.copy_(latent_weight(codes, scale, ternary.quant.scale_op))
    again_codes, again_scale = bit.ternary_state()
    if not (torch.equal(again_codes.cpu(), codes.cpu()) and torch.allclose(again_scale, scale, rtol=1e-5)):
        warnings.warn(f"{type(ternary).__name__}.to_bit: no latent weight gives back these codes and scales under "
                      f"scale_op={ternary.quant.scale_op!r} (a channel with more zero codes than the op allows), so "
                      "the trainable layer computes another function than the converted one", UserWarning, stacklevel=3)
    if ternary.bias is not None:
        bit.bias.copy_(ternary.bias)
    if isinstance(ternary.act_quant, nn.Module) and not isinstance(ternary.act_quant, nn.Identity):
        bit.act_quant.load_state_dict(ternary.act_quant.state_dict())
    return bit.to(ternary.weight.dtype)  # a bf16 or float64 model's layers stay in its dtype


TERNARY_LAYERS = (TernaryConv2d, TernaryLinear)  # the converted layers, for isinstance
