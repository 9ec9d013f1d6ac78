"""How an architecture asks for its convolutions and linear layers: ternary or float, from one spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from bitnetcnn.nn import BitConv2d, BitLinear
from bitnetcnn.quant import DEFAULT_QUANT, TernaryQuant
from bitnetcnn.quant.config import as_flag

# the model arguments that say how a model is quantized: what QuantSpec.to_dict records in model_args
QUANT_ARGS = ("quant", "scale_op", "pow2", "act_bits", "fp_ends")

QUANT_MODES = ("ternary", "fp")


@dataclass(frozen=True)
class QuantSpec:
    """Quantization settings of a whole model: the mode, the layers' :class:`TernaryQuant`, and ``fp_ends``.

    ``quant='fp'`` builds the identical full-precision twin (teacher, baseline). ``fp_ends=True`` keeps the first
    convolution and the last linear layer in float (the TWN/TTQ setting); by default they are ternary as in the seed.
    ``QuantSpec(scale_op='mean', act_bits=8)`` is short for ``QuantSpec(config=TernaryQuant(scale_op='mean',
    act_bits=8))``.
    """

    quant: str = "ternary"
    scale_op: Optional[str] = None
    pow2: Optional[bool] = None
    act_bits: Optional[int] = None
    fp_ends: bool = False
    config: TernaryQuant = field(default=DEFAULT_QUANT)

    def __post_init__(self) -> None:
        if self.quant not in QUANT_MODES:
            raise ValueError(f"unknown quant {self.quant!r}: choose one of {', '.join(map(repr, QUANT_MODES))}")
        config = TernaryQuant.from_kwargs(self.config, scale_op=self.scale_op, pow2=self.pow2, act_bits=self.act_bits)
        object.__setattr__(self, "fp_ends", as_flag("fp_ends", self.fp_ends))
        if self.quant == "fp":  # no ternary layer takes them: model_args (and a header) then say what the model is
            config = DEFAULT_QUANT
            object.__setattr__(self, "fp_ends", False)
        # one source of truth: the shorthand fields mirror the config
        for name, value in (("config", config), ("scale_op", config.scale_op), ("pow2", config.pow2),
                            ("act_bits", config.act_bits)):
            object.__setattr__(self, name, value)

    @property
    def ternary(self) -> bool:
        return self.quant == "ternary"

    def _bit(self, edge: bool) -> bool:
        return self.ternary and not (edge and self.fp_ends)

    def conv(self, *args, edge: bool = False, **kwargs) -> nn.Module:
        """``nn.Conv2d`` arguments; ``edge=True`` marks the model's first layer."""
        if self._bit(edge):
            return BitConv2d(*args, **kwargs, quant=self.config)
        return nn.Conv2d(*args, **kwargs)

    def linear(self, *args, edge: bool = False, **kwargs) -> nn.Module:
        """``nn.Linear`` arguments; ``edge=True`` marks the classifier."""
        if self._bit(edge):
            return BitLinear(*args, **kwargs, quant=self.config)
        return nn.Linear(*args, **kwargs)

    @property
    def int8_activations(self) -> bool:
        """Whether the model's ternary layers quantize their inputs to 8 bits: the grids an int8 runtime uses."""
        return self.ternary and self.act_bits == 8

    def to_dict(self) -> dict:
        """What a model's ``model_args`` record of it (and a checkpoint header with them)."""
        return {key: getattr(self, key) for key in QUANT_ARGS}
