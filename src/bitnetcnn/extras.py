"""The optional dependencies, by the extra that installs them (pyproject.toml), and the error that names it: a
base install (``pip install bitnetcnn``) loads, converts, predicts and summarizes; training and deployment need
more."""

from __future__ import annotations

import importlib.util

EXTRAS = {"train": ("lightning", "torchmetrics", "matplotlib"), "deploy": ("onnx", "onnxruntime", "onnxscript")}
_EXTRA_OF = {module: extra for extra, modules in EXTRAS.items() for module in modules}


class MissingExtra(ModuleNotFoundError):
    """A package of an extra is not installed; the message names the extra to install."""


def missing(extra: str) -> list[str]:
    """The packages of ``extra`` that are not installed."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require(extra: str, what: str) -> None:
    """Raise ``ModuleNotFoundError`` naming ``extra`` when one of its packages is missing, before any work."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(install_hint(absent[0], what), name=absent[0])


def install_hint(module: str, what: str) -> str:
    extra = _EXTRA_OF[module]
    return f"{what} needs {module}, which comes with the {extra} extra: pip install 'bitnetcnn[{extra}]'"


def extra_of(err: ImportError) -> str | None:
    """The extra whose package ``err`` misses, or None (a module of no extra: a broken install, a bug)."""
    return _EXTRA_OF.get((getattr(err, "name", None) or "").split(".")[0])
