"""Quantization math: pure functions on tensors, no modules and no state.

Everything ternary in the package (training layers, inference layers, checkpoints, deployment) computes its codes
and scales here, so that a fake-quantized model and its converted twin agree by construction.
"""

from bitnetcnn.quant.config import DEFAULT_QUANT, TernaryQuant
from bitnetcnn.quant.activation import (
    ACT_BITS,
    act_qmax,
    activation_codes,
    fake_quantize_activation,
    validate_act_bits,
)
from bitnetcnn.quant.packing import pack_2bit, pack_base3, unpack_2bit, unpack_base3
from bitnetcnn.quant.scale import EPS, SCALE_OPS, channel_scale, pow2_exponent, pow2_scale, validate_scale_op
from bitnetcnn.quant.ternary import (
    STE_MODES,
    dequantize,
    fake_quantize_weight,
    latent_weight,
    ternary_codes,
    ternary_quantize,
)

__all__ = [
    "ACT_BITS",
    "DEFAULT_QUANT",
    "TernaryQuant",
    "EPS",
    "SCALE_OPS",
    "STE_MODES",
    "act_qmax",
    "activation_codes",
    "channel_scale",
    "dequantize",
    "fake_quantize_activation",
    "fake_quantize_weight",
    "latent_weight",
    "pack_2bit",
    "pack_base3",
    "pow2_exponent",
    "pow2_scale",
    "ternary_codes",
    "ternary_quantize",
    "unpack_2bit",
    "unpack_base3",
    "validate_act_bits",
    "validate_scale_op",
]
