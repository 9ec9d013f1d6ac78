"""The activation quantizer: a module because it keeps a running scale for inference."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from bitnetcnn.quant.activation import absmax_scale, activation_codes, fake_quantize_activation, validate_act_bits
from bitnetcnn.quant.precision import wide_dtype


class ActQuantizer(nn.Module):
    """Symmetric absmax fake quantization of a layer's input, per tensor.

    Training uses each batch's absmax and tracks its running average in ``running_scale``; evaluation uses that
    running scale, so a converted model (which copies this module) reproduces the training-time grid exactly and a
    deployment backend can read a fixed int8 scale from it. Before any training batch the scale is 0 and the
    quantizer falls back to the batch's absmax.
    """

    def __init__(self, bits: int, momentum: float = 0.1) -> None:
        super().__init__()
        if validate_act_bits(bits) is None:
            raise ValueError("ActQuantizer needs 8 or 4 bits; leave act_bits=None to keep activations in float")
        self.bits: int = bits
        self.momentum = momentum
        self.register_buffer("running_scale", torch.zeros(()))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """What :meth:`forward` computes, without updating the running scale (a tensor this quantizer also sees
        through ``forward`` in the same step: a MobileNetV2 shortcut)."""
        if x.numel() == 0:
            return x
        return fake_quantize_activation(x, self._step(x), self.bits)

    def grid(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(``x``'s integer codes as floats, the grid's step): ``codes * step`` is what :meth:`quantize` returns.
        A converted layer computes on the codes, exactly, as an int8 runtime does."""
        step = self._step(x)
        return activation_codes(x, step, self.bits), step

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        """The grid's step for ``x`` without updating the running scale (see :meth:`_scale`)."""
        return self._scale(absmax_scale(x, self.bits))

    def _scale(self, batch_scale: torch.Tensor) -> torch.Tensor:
        """The batch's in training; in evaluation the running scale, or the batch's before any training batch."""
        if self.training:
            return batch_scale
        return torch.where(self.running_scale > 0, self.running_scale, batch_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:  # an empty batch has no absmax (and moves no running scale), as torch.nn layers take it
            return x
        batch_scale = absmax_scale(x, self.bits)
        if self.training:
            with torch.no_grad():
                seen = self.running_scale > 0
                blended = (1 - self.momentum) * self.running_scale + self.momentum * batch_scale
                self.running_scale.copy_(torch.where(seen, blended, batch_scale))
        return fake_quantize_activation(x, self._scale(batch_scale), self.bits)

    def _apply(self, fn, recurse=True):
        """Moves and casts as any module, but the grid's step stays at least float32: cast to a half-precision
        model's dtype it would move the grid (0.0900591 is 0.0898438 in bf16), and a converted copy of a half-precision
        Bit model would compute another function than the model (the step is float32 where it is used anyway)."""
        step = self.running_scale
        super()._apply(fn, recurse)
        if self.running_scale.dtype in (torch.float16, torch.bfloat16):
            self.running_scale = step.to(self.running_scale.device, wide_dtype(step.dtype))
        return self

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def unset_quantizers(model: nn.Module) -> list:
    """The names of ``model``'s activation quantizers that never saw a training batch (running scale 0): each takes
    its scale from the batch it is given, so an image's answer depends on the images beside it."""
    return [name for name, m in model.named_modules() if isinstance(m, ActQuantizer) and not m.running_scale > 0]


def make_act_quantizer(bits: Optional[int]) -> nn.Module:
    """An :class:`ActQuantizer`, or ``nn.Identity`` when activation quantization is off."""
    return nn.Identity() if validate_act_bits(bits) is None else ActQuantizer(bits)


def int8_scale(quantizer: Optional[nn.Module]) -> float:
    """The scale of an 8-bit :class:`ActQuantizer` that has seen data (its int8 grid's step), else 0."""
    if isinstance(quantizer, ActQuantizer) and quantizer.bits == 8:
        return float(quantizer.running_scale)
    return 0.0
