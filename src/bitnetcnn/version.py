"""The package's version, written once: pyproject.toml reads it from here, and checkpoints and ONNX files record it.
A ground-floor module: it imports nothing."""

__version__ = "0.1.0"
