"""One frozen object for how a layer quantizes, validated once where it is made (as torchao's configs and Larq's
quantizers): layers store it, models, training settings and checkpoint headers carry it, the command line takes its
choices and defaults from it. The defaults live here and nowhere else."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

from bitnetcnn.quant.activation import validate_act_bits
from bitnetcnn.quant.scale import DEFAULT_SCALE_OP, SCALE_OPS
from bitnetcnn.quant.ternary import DEFAULT_STE, DEFAULT_STE_CLIP, STE_MODES


def as_flag(name: str, value: Any) -> bool:
    """``value`` as a bool where it is one (True, False, 1 or 0); a string such as "False" is refused, where
    ``bool()`` would have turned the option on."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, (str, bytes)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be True or False, not {value!r}")


@dataclass(frozen=True)
class TernaryQuant:
    """Ternary weights ``{-1, 0, +1} x scale`` per output channel, and optionally quantized input activations.

    ``scale_op``: 'median' of |W| per channel (the seed's: ignores the long tail; about three quarters of a
    bell-shaped channel's weights non-zero, the threshold being half the median) or 'mean'. ``pow2``: round each
    scale to a power of two (a shift on integer hardware). ``act_bits``: None (float
    activations), 8 or 4 (symmetric absmax with a running scale). ``ste``: 'identity' passes the gradient to every
    latent weight, 'clipped' stops it where ``|W| > ste_clip * scale``.
    """

    scale_op: str = DEFAULT_SCALE_OP
    pow2: bool = False
    act_bits: Optional[int] = None
    ste: str = DEFAULT_STE
    ste_clip: float = DEFAULT_STE_CLIP

    def __post_init__(self) -> None:
        if self.scale_op not in SCALE_OPS:
            raise ValueError(f"unknown scale_op {self.scale_op!r}: choose one of {', '.join(map(repr, SCALE_OPS))}")
        if not isinstance(self.pow2, bool):
            raise ValueError(f"pow2 must be True or False, not {self.pow2!r}")
        validate_act_bits(self.act_bits)
        if self.ste not in STE_MODES:
            raise ValueError(f"unknown ste {self.ste!r}: choose one of {', '.join(map(repr, STE_MODES))}")
        if isinstance(self.ste_clip, bool) or not isinstance(self.ste_clip, (int, float)) \
                or not math.isfinite(self.ste_clip) or self.ste_clip <= 0:
            raise ValueError(f"ste_clip must be a finite number > 0, not {self.ste_clip!r}")
        object.__setattr__(self, "ste_clip", float(self.ste_clip))

    def with_pow2(self, pow2: Optional[bool]) -> "TernaryQuant":
        """The config a conversion gives: ``pow2=True`` forces power-of-two scales, None or False keeps the layer's
        own (a layer trained with power-of-two scales keeps them)."""
        return replace(self, pow2=True) if pow2 and not self.pow2 else self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_kwargs(cls, base: Optional["TernaryQuant"] = None, **overrides: Any) -> "TernaryQuant":
        """``base`` (default: the defaults) with the keyword arguments that are not None put over it; unknown
        keywords are an error that lists the known ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown quantization argument(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "pow2" in given:
            given["pow2"] = as_flag("pow2", given["pow2"])
        base = base or DEFAULT_QUANT
        return replace(base, **given) if given else base


DEFAULT_QUANT = TernaryQuant()
