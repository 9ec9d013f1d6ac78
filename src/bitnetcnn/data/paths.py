"""Deprecated home of the data and cache settings: use :mod:`bitnetcnn.settings` (this module goes in 0.3)."""

from bitnetcnn.settings import cache_root, data_root

__all__ = ["cache_root", "data_root"]
