"""How error messages quote what they name: on one line, the first few of a list and how many more."""

from __future__ import annotations


def short(value, n: int = 200) -> str:
    """``repr`` (or the string) cut to ``n`` characters on one line: error messages stay one line."""
    text = " ".join((value if isinstance(value, str) else repr(value)).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def few(items, n: int = 5) -> str:
    """The first ``n`` of ``items`` and how many more: ``"a, b, c, d, e and 95 more"``."""
    items = [str(item) for item in items]
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
