"""Silencing the notices of the libraries underneath (Lightning, the ONNX exporter) where a command of ours has
already said what the user needs. A ground-floor module: it imports nothing of the package."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator


@contextlib.contextmanager
def quiet_loggers(names: Iterable[str], level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of the named loggers to ``level`` inside the block, and put back what they had after it."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:  # never lower: a logger its user set to ERROR keeps its WARNINGs silenced
        log.setLevel(max(level, log.getEffectiveLevel()))
    try:
        yield
    finally:
        for log, old in zip(loggers, levels):
            log.setLevel(old)
