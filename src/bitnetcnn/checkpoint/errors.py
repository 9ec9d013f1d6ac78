"""The one exception type that reading a checkpoint raises."""

from __future__ import annotations

import os
from typing import Optional, Union


class CheckpointError(Exception):
    """A checkpoint file that cannot be read: truncated, corrupted, tampered with, or for another architecture.

    ``path`` is the file and ``reason`` says what is wrong with it; ``str(error)`` names both.
    """

    def __init__(self, path: Optional[Union[str, os.PathLike]], reason: str) -> None:
        self.path = None if path is None else os.fspath(path) if not isinstance(path, (bytes, bytearray)) else "<bytes>"
        self.reason = reason
        where = self.path if self.path is not None else "<checkpoint>"
        super().__init__(f"{where}: {reason}")
