"""Architectures and their registry. Importing this never imports Lightning or the data code."""

from bitnetcnn.models.quant_spec import QuantSpec
from bitnetcnn.models.registry import ModelConfig, create_model, get_model_config, list_models, register_model

# Importing an architecture module registers its builders.
from bitnetcnn.models import bitnet_cnn, convnextv2, mobilenetv2, resnet  # noqa: E402,F401  isort: skip

__all__ = ["ModelConfig", "QuantSpec", "create_model", "get_model_config", "list_models", "register_model"]
