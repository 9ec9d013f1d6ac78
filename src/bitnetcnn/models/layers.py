"""Deprecated name of :mod:`bitnetcnn.models.quant_spec`, which holds ``QuantSpec`` (this module goes in 0.3)."""

import warnings

from bitnetcnn.models import quant_spec

__all__ = ["QUANT_MODES", "QuantSpec"]


def __getattr__(name: str):
    if name in __all__:
        warnings.warn(f"bitnetcnn.models.layers.{name} is deprecated: use bitnetcnn.models.quant_spec.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(quant_spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
