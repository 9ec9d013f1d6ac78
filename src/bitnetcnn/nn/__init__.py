"""Layers: Bit layers for training (fake quantization) and their packed Ternary twins for inference."""

from bitnetcnn.nn.act_quant import ActQuantizer
from bitnetcnn.nn.bit import BIT_LAYERS, BitConv2d, BitLinear
from bitnetcnn.nn.convert import bitify, convert_to_bit, convert_to_ternary, convert_to_ternary_p2, model_form
from bitnetcnn.nn.ternary import TERNARY_LAYERS, TernaryConv2d, TernaryLinear

__all__ = [
    "ActQuantizer",
    "BIT_LAYERS",
    "BitConv2d",
    "BitLinear",
    "TERNARY_LAYERS",
    "TernaryConv2d",
    "TernaryLinear",
    "bitify",
    "convert_to_bit",
    "convert_to_ternary",
    "convert_to_ternary_p2",
    "model_form",
]
