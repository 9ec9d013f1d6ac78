"""Where data sets and caches live: an explicit setting, else an environment variable, else a user cache folder.

The ground floor: every part of the package may read these settings, and they import nothing of it.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$BITNETCNN_DATA``, else ``data`` in :func:`cache_root`. An empty ``data_dir``
    (``--data-dir "$UNSET"``) is refused: it used to fall back to the default without a word."""
    if data_dir is not None and not str(data_dir).strip():
        raise ValueError("the data folder given is empty: name the folder that holds the data sets, or leave it out "
                         "for $BITNETCNN_DATA, else data/ in the cache")
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("BITNETCNN_DATA")
    if env:
        return Path(env).expanduser()
    return cache_root() / "data"


def cache_root() -> Path:
    """``$BITNETCNN_CACHE``, else ``$XDG_CACHE_HOME/bitnetcnn``, else ``~/.cache/bitnetcnn``."""
    env = os.environ.get("BITNETCNN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bitnetcnn"
