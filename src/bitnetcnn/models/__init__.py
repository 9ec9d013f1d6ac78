"""Architectures and their registry. Importing this never imports Lightning or the data code."""

from bitnetcnn.models.layers import QuantSpec
from bitnetcnn.models.registry import ModelConfig, create_model, get_model_config, list_models, register_model

__all__ = ["ModelConfig", "QuantSpec", "create_model", "get_model_config", "list_models", "register_model"]
