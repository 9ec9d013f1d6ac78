"""bitnetcnn: convolutional networks with ternary (1.58-bit) weights.

Import layers, conversion and models from here; training (Lightning) lives in ``bitnetcnn.train`` and is imported
only when used.
"""

from bitnetcnn.nn import (
    BitConv2d,
    BitLinear,
    TernaryConv2d,
    TernaryLinear,
    bitify,
    convert_to_bit,
    convert_to_ternary,
    convert_to_ternary_p2,
)

from bitnetcnn.models import create_model, get_model_config, list_models, register_model
from bitnetcnn.summary import summary
from bitnetcnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bitnetcnn.checkpoint.pretrained_cfg import PretrainedCfg


# Imported on first use, so that importing bitnetcnn stays free of Lightning, data code and ONNX: the hub reads the
# cache settings, deploy needs onnxruntime or OpenVINO, train needs Lightning.
LAZY_SUBMODULES = ("data", "deploy", "hub", "train")


def __getattr__(name: str):
    if name == "list_pretrained":
        from bitnetcnn.hub import list_pretrained

        return list_pretrained
    if name in LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"bitnetcnn.{name}")
    raise AttributeError(f"module 'bitnetcnn' has no attribute {name!r}")

from bitnetcnn.version import __version__  # noqa: E402

__all__ = [
    "BitConv2d",
    "CheckpointError",
    "PretrainedCfg",
    "BitLinear",
    "TernaryConv2d",
    "TernaryLinear",
    "__version__",
    "bitify",
    "convert_to_bit",
    "convert_to_ternary",
    "convert_to_ternary_p2",
    "create_model",
    "get_model_config",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "register_model",
    "save_checkpoint",
    "summary",
]
