"""Deprecated home of the data and cache settings: use :mod:`bitnetcnn.settings` (this module goes in 0.3)."""

import warnings

from bitnetcnn import settings

__all__ = ["cache_root", "data_root"]


def __getattr__(name: str):
    if name in __all__:
        warnings.warn(f"bitnetcnn.data.paths.{name} is deprecated: use bitnetcnn.settings.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(settings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
