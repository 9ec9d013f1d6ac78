"""How an architecture asks for its convolutions and linear layers: ternary or float, from one spec."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from torch import nn

from bitnetcnn.nn import BitConv2d, BitLinear
from bitnetcnn.quant import validate_act_bits, validate_scale_op

QUANT_MODES = ("ternary", "fp")


@dataclass(frozen=True)
class QuantSpec:
    """Quantization settings of a whole model.

    ``quant='fp'`` builds the identical full-precision twin (teacher, baseline). ``fp_ends=True`` keeps the first
    convolution and the last linear layer in float (the TWN/TTQ setting); by default they are ternary as in the seed.
    """

    quant: str = "ternary"
    scale_op: str = "median"
    pow2: bool = False
    act_bits: Optional[int] = None
    fp_ends: bool = False

    def __post_init__(self) -> None:
        if self.quant not in QUANT_MODES:
            raise ValueError(f"unknown quant {self.quant!r}: choose one of {', '.join(map(repr, QUANT_MODES))}")
        validate_scale_op(self.scale_op)
        validate_act_bits(self.act_bits)

    @property
    def ternary(self) -> bool:
        return self.quant == "ternary"

    def _bit(self, edge: bool) -> bool:
        return self.ternary and not (edge and self.fp_ends)

    def _settings(self) -> dict:
        return dict(scale_op=self.scale_op, pow2=self.pow2, act_bits=self.act_bits)

    def conv(self, *args, edge: bool = False, **kwargs) -> nn.Module:
        """``nn.Conv2d`` arguments; ``edge=True`` marks the model's first layer."""
        if self._bit(edge):
            return BitConv2d(*args, **kwargs, **self._settings())
        return nn.Conv2d(*args, **kwargs)

    def linear(self, *args, edge: bool = False, **kwargs) -> nn.Module:
        """``nn.Linear`` arguments; ``edge=True`` marks the classifier."""
        if self._bit(edge):
            return BitLinear(*args, **kwargs, **self._settings())
        return nn.Linear(*args, **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)
