"""The int8 graph: onnxruntime QDQ (u8 activations, s8 weights) with the ternary weights written exactly.

``onnxruntime.quantization.quantize_static`` places the QuantizeLinear/DequantizeLinear pairs, which onnxruntime
fuses into QLinearConv / QLinearAdd / QLinearMul / QGemm kernels. This module decides every scale it uses:

- **weights**: each ternary layer's per-channel scale is overridden with the (BN-folded) ternary scale / 64, so the
  int8 weight tensor holds exactly the codes -1, 0, +1 times 64 (checked: the exported float weight must equal
  ``codes * scale`` bit for bit; see ``CODE_GAIN`` for why 64 and not 1).
- **activations at a layer's input**: where the layer has an 8-bit ``ActQuantizer``, its ``running_scale`` is the
  scale (the same grid as the fake-quantized model; zero point 128, a symmetric grid like the model's, clamped at
  -127 steps before it where the tensor can be negative); likewise a residual branch's output where its
  ``ConvNormAct`` has an 8-bit ``out_quant``.
- **every other activation** (a convolution's output before a residual add or a SiLU, a sigmoid): from calibration
  batches when given; without them, derived from the model: the sigmoid's output range is [0, 1]; any other
  tensor takes the largest scale of the quantized layer inputs it flows into (through ReLU, Add, Mul, reshapes).
  A tensor that flows into none needs calibration, and so does a model without 8-bit activation quantizers.
- the graph input (the normalized image) stays float unless the model's own 8-bit quantizer fixes its grid: one
  per-tensor u8 grid over channels of different means and stds rounds every pixel a second time, off the image's own
  grid (the published ResNet-18 agreed with its converted model on 0.45 points more of 2,000 CIFAR-100 test images
  with that input in float, ``benchmarks/deploy_sensitivity.py --kinds``), and the first convolution, which then
  runs in float, is a fraction of a percent of the network's multiply-adds (an image has 1 or 3 channels).
- the classifier's output (logits) stays float, and so does everything that only feeds the global pooling (the
  last convolution's output, residual add and activation) with the pooling itself, where the model quantizes the
  pooled mean instead; with or without calibration.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from torch import nn

from bitnetcnn.deploy.calibration import CALIBRATION_BATCH
from bitnetcnn.deploy.checks import NotDeployableError
from bitnetcnn.deploy.onnx_graph import INPUT_NAME, weight_nodes
from bitnetcnn.messages import few
from bitnetcnn.nn import TERNARY_LAYERS
from bitnetcnn.nn.act_quant import int8_scale
from bitnetcnn.quant.activation import act_qmax
from bitnetcnn.quant.integer import CODE_GAIN
from bitnetcnn.quiet import quiet_loggers

__all__ = ["CALIBRATION_METHODS", "DEFAULT_CALIBRATION", "QUANTIZED_OPS", "quantize_int8", "quantizer_scales",
           "ranges_are_the_models"]

# Operators given Q/DQ; onnxruntime's CPU provider has a fused integer kernel for each.
QUANTIZED_OPS = [
    "Conv", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "Relu", "Clip", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Reshape", "Flatten", "Transpose", "Concat", "Squeeze", "Unsqueeze",
]
# Operators through which a tensor's range is judged by the quantized tensors it flows into.
# (Not through pooling: a mean has a narrower range than what it averages.)
_FLOW_OPS = {"Relu", "Clip", "Add", "Mul", "MaxPool", "Reshape", "Flatten", "Transpose", "Concat", "Squeeze",
             "Unsqueeze"}
# Of those, the ones a quantizer's grid passes through unchanged (rounding commutes with them on a grid with 0).
_EXACT_FLOW_OPS = _FLOW_OPS - {"Add", "Mul"}
_POOLING = {"ReduceMean", "GlobalAveragePool", "AveragePool"}
# The activations quantize_static may fold into the grid of the QuantizeLinear after them.
_ACTIVATIONS = ("Relu", "Clip")
FOLDED_ACTIVATIONS = "bitnetcnn.folded_activations"  # the metadata key that lists them
U8_ZERO, U8_MID = 0, 128
# onnxruntime's calibration of the ranges the model does not fix itself. Percentile (99.999%) clips outliers that
# minmax keeps: it agreed more often with the converted model on every model measured (docs/deploy.md), e.g. the
# seed ResNet-18 97.79% against 96.38%, a ReLU ResNet-18 after 2 CPU epochs 99.10% against 98.75%.
CALIBRATION_METHODS = ("percentile", "minmax", "entropy")
DEFAULT_CALIBRATION = "percentile"


def _int8_types():
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8, QuantType.QInt8


def quantizer_scales(model: nn.Module) -> Dict[str, float]:
    """``{layer name: input scale}`` of the ternary layers with an 8-bit quantizer that has seen data."""
    scales = {name: int8_scale(m.act_quant) for name, m in model.named_modules() if isinstance(m, TERNARY_LAYERS)}
    return {name: s for name, s in scales.items() if s > 0}


def output_quantizer_scales(model: nn.Module) -> Dict[str, float]:
    """``{convolution name: output scale}`` of the ``ConvNormAct`` blocks whose linear output has an 8-bit
    ``out_quant`` (after BN folding the convolution's output is the block's)."""
    scales = {f"{name}.conv": int8_scale(getattr(m, "out_quant", None)) for name, m in model.named_modules()}
    return {name: s for name, s in scales.items() if s > 0}


def _graph_maps(graph):
    producer, consumers = {}, {}
    for node in graph.node:
        for t in node.output:
            producer[t] = node
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    return producer, consumers


def _constants(graph) -> Dict[str, np.ndarray]:
    """The graph's constant tensors by name: its initializers and the outputs of its Constant nodes."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    return consts


def _zero_constants(graph) -> set:
    """Names of the scalar constants equal to 0 (a Clip with such a minimum is a ReLU6-like clamp)."""
    return {name for name, v in _constants(graph).items() if v.size == 1 and float(v.reshape(-1)[0]) == 0.0}


def _is_nonnegative_output(node, zeros: set) -> bool:
    """A ReLU, or a Clip whose lower bound is 0 (ReLU6): its output's zero point can be 0."""
    if node is None:
        return False
    if node.op_type == "Relu":
        return True
    return node.op_type == "Clip" and len(node.input) > 1 and node.input[1] in zeros


def _weight_overrides(graph, model: nn.Module) -> Dict[str, list]:
    """Per-channel scale/zero-point overrides that make each ternary weight quantize to its exact codes."""
    from onnx import numpy_helper

    qtype = _int8_types()[1]
    inits = {i.name: i for i in graph.initializer}
    nodes = weight_nodes(graph)
    out = {}
    names = defaultdict(list)  # a layer used in two places (nn.Sequential(conv, relu, conv)) has two names
    for name, layer in model.named_modules(remove_duplicate=False):
        names[id(layer)].append(name)
    for name, layer in model.named_modules():
        # the exporter names a shared layer's one initializer after one of its names, not always the first
        key = next((f"{n}.weight" for n in names[id(layer)] if f"{n}.weight" in nodes), f"{name}.weight")
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and key in nodes:  # a float layer (fp_ends)
            out[key] = _float_weight_grid(inits[key], nodes[key], qtype)
        if not isinstance(layer, TERNARY_LAYERS):
            continue
        if key not in nodes:
            raise NotDeployableError(f"layer {name!r} was not found in the exported ONNX graph (no initializer "
                                     f"{key!r}: a weight tied to another layer's is exported once, under one of "
                                     "their names); it cannot be mapped to an int8 operator: untie it, or deploy "
                                     "the float graph (int8=False)")
        codes = layer.codes().numpy()
        scale = layer.channel_scale().float().numpy()
        stored = numpy_helper.to_array(inits[key])
        expected = (codes.astype(np.float32) * scale.reshape((-1,) + (1,) * (codes.ndim - 1))).astype(np.float32)
        axis = _output_channel_axis(nodes[key])
        if axis == 1:
            expected = expected.T
        if stored.shape != expected.shape or not np.array_equal(stored, expected):
            left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            why = (f": the BatchNorm{'s' * (len(left) != 1)} {few(left)} could not be folded into the layers before "
                   "them (one after a Linear, a subclass of BatchNorm2d, one in another container than its "
                   "convolution, or a forward torch.fx cannot trace), and the ONNX optimizer merged one into this "
                   "weight; put each convolution and its BatchNorm2d side by side in one nn.Sequential, or deploy "
                   "the float graph (int8=False)") if left else ""
            raise NotDeployableError(f"layer {name!r}: the exported weight is not codes * scale; cannot map it "
                                     f"exactly to int8 codes{why}")
        step = scale / CODE_GAIN  # exact: CODE_GAIN is a power of two
        channels = [{"scale": np.array(s, np.float32), "zero_point": np.array(0, np.int8)} for s in step]
        channels[0].update(axis=axis, quant_type=qtype)
        out[key] = channels
    return out


def _output_channel_axis(node) -> int:
    """The axis of a weight initializer that holds its output channels: 1 where the exported node reads it
    transposed (a MatMul, or a Gemm without ``transB``), else 0."""
    transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not any(
        a.name == "transB" and a.i == 1 for a in node.attribute))
    return 1 if transposed else 0


def _float_weight_grid(init, node, qtype) -> list:
    """Per-channel grids of a float layer's weight (an ``fp_ends`` stem or classifier) on the ternary codes' +-64
    range: full-range int8 weights times u8 activations overflow the 16-bit pair sums of AVX2 kernels without VNNI
    (a 12% logit error, measured), which the ternary layers' grid avoids the same way."""
    from onnx import numpy_helper

    stored = numpy_helper.to_array(init)
    axis = _output_channel_axis(node)
    absmax = np.abs(np.moveaxis(stored, axis, 0).reshape(stored.shape[axis], -1)).max(axis=1)
    step = np.maximum(absmax, np.finfo(np.float32).tiny) / CODE_GAIN
    channels = [{"scale": np.array(s, np.float32), "zero_point": np.array(0, np.int8)} for s in step]
    channels[0].update(axis=axis, quant_type=qtype)
    return channels


def _activation_overrides(grids: Dict[str, List[float]]) -> Dict[str, Tuple[float, int]]:
    """``{tensor: (scale, zero point)}`` of the tensors the model quantizes (``grids``: :func:`_quantizer_grids`)."""
    # One tensor feeding several layers gets one grid: the widest, so that none of them clips. Zero point 128 makes
    # the u8 grid clamp at +127 steps as the model's symmetric quantizer does (after a ReLU too, where zero point 0
    # would let values up to 255 steps through that the model clamps).
    return {t: (max(s), U8_MID) for t, s in grids.items()}


def _clamp_below(graph, acts: Dict[str, Tuple[float, int]]) -> Dict[str, Tuple[float, int]]:
    """``acts`` with a Clip at -127 steps (in ``graph``, changed in place) before each grid of the model's on a
    tensor that can be negative, on the same grid. u8 with zero point 128 holds -128..127 steps where the model's
    quantizer clamps at +-127: an input past the running range on the negative side landed a step further."""
    from onnx import helper, numpy_helper

    producer, consumers = _graph_maps(graph)
    zeros = _zero_constants(graph)
    result, clips = dict(acts), {}
    for t, (scale, zp) in acts.items():
        if zp != U8_MID or _is_nonnegative_output(producer.get(t), zeros):
            continue
        clamped, bound = f"{t}_clamped", f"{t}_clamp_min"
        graph.initializer.append(numpy_helper.from_array(np.array(-act_qmax(8) * scale, np.float32), bound))
        for node in consumers.get(t, []):
            node.input[:] = [clamped if name == t else name for name in node.input]
        clips.setdefault(id(producer.get(t)), []).append(helper.make_node("Clip", [t, bound], [clamped],
                                                                          name=f"{t}_Clip"))
        result[clamped] = (scale, zp)
    nodes = clips.pop(id(None), []) + [m for n in graph.node for m in (n, *clips.get(id(n), []))]
    del graph.node[:]
    graph.node.extend(nodes)
    return result


def _quantizer_grids(graph, model: nn.Module) -> Dict[str, List[float]]:
    """``{tensor: [scale of each 8-bit quantizer of it]}``: a layer's input, a residual branch's output."""
    nodes = weight_nodes(graph)
    scales: Dict[str, List[float]] = {}
    for name, scale in quantizer_scales(model).items():
        node = nodes.get(f"{name}.weight")
        if node is not None:
            scales.setdefault(node.input[0], []).append(scale)
    for name, scale in output_quantizer_scales(model).items():
        node = nodes.get(f"{name}.weight")
        if node is None:
            raise NotDeployableError(f"the output quantizer after {name!r} has no convolution in the ONNX graph")
        scales.setdefault(node.output[0], []).append(scale)
    return scales


def ranges_are_the_models(graph, model: nn.Module) -> bool:
    """Whether the data-free int8 graph of ``model`` (``graph``: its float export) quantizes every tensor on one of
    the model's own grids, so that the graph computes the model's integers: each range is a quantizer's, directly
    (one grid per tensor) or through what commutes with rounding on a grid with 0 (ReLU, a clamp at 0, max-pooling,
    reshapes), never derived through a sum, a product or a sigmoid."""
    grids = _quantizer_grids(graph, model)
    if not grids or any(len(set(s)) > 1 for s in grids.values()):
        return False
    try:
        _data_free_overrides(graph, _activation_overrides(grids), _pooled_tail(graph), exact=True)
    except NotDeployableError:
        return False
    return True


def _data_free_overrides(graph, known: Dict[str, Tuple[float, int]], float_nodes: set,
                         exact: bool = False) -> Dict[str, Tuple[float, int]]:
    """Scales for the tensors between quantized layer inputs, from the model alone (see the module docstring); the
    outputs of ``float_nodes`` (see ``_pooled_tail``) need none. ``exact``: only the ranges that are a quantizer's
    own grid (see :func:`ranges_are_the_models`); any other tensor is an error."""
    flow = _EXACT_FLOW_OPS if exact else _FLOW_OPS
    producer, consumers = _graph_maps(graph)
    zeros = _zero_constants(graph)
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    tensors = []
    for node in graph.node:
        if node.op_type in QUANTIZED_OPS:
            tensors += [t for t in (*node.input, *node.output) if t and t not in inits and t not in outputs]
    result = dict(known)

    def downstream(t: str, seen: set) -> List[float]:
        found = []
        for node in consumers.get(t, []):
            if node.op_type not in flow:
                continue
            for out in node.output:
                if out in seen:
                    continue
                seen.add(out)
                if out in known:
                    found.append(known[out][0])
                else:
                    found += downstream(out, seen)
        return found

    missing = []
    for t in dict.fromkeys(tensors):
        node = producer.get(t)
        users = consumers.get(t, [])
        if t in result or (node is not None and node.name in float_nodes) or (
                users and all(u.name in float_nodes for u in users)):
            continue  # computed or only read in float: no int8 range
        if node is not None and node.op_type == "Sigmoid" and not exact:
            result[t] = (1.0 / 255.0, U8_ZERO)
            continue
        found = downstream(t, {t})
        # exact: one grid, and read only where it passes unchanged (a sum reading it would add its rounding)
        inexact = exact and (len(set(found)) > 1 or any(u.op_type not in flow and u.name not in float_nodes
                                                        for u in users))
        if found and not inexact:
            result[t] = (max(found), U8_ZERO if _is_nonnegative_output(node, zeros) else U8_MID)
        else:
            missing.append(t)
    if missing:
        raise NotDeployableError(
            f"the model's own activation quantizers do not determine the int8 range of {len(missing)} tensor(s) "
            f"(e.g. {missing[0]!r}); deploy it with calibration images (calibration=... / --calibrate N)"
        )
    return result


_ELEMENTWISE = {"Add", "Mul", "Sigmoid", "Relu", "Clip"}


def _pooled_tail(graph) -> set:
    """Names of the poolings and of the elementwise nodes (an activation, a residual add) whose outputs only flow
    into them. The model pools in float and quantizes the mean, so these have no range of their own in it, and
    requantizing each position before the mean would only add error: they run in float, on int8-exact inputs."""
    _, consumers = _graph_maps(graph)
    tail = {n.name for n in graph.node if n.op_type in _POOLING and n.name}
    grew = True
    while grew:
        grew = False
        for node in graph.node:
            if node.op_type not in _ELEMENTWISE or not node.name or node.name in tail:
                continue
            users = [u for out in node.output for u in consumers.get(out, [])]
            if users and all(u.name in tail for u in users):
                tail.add(node.name)
                grew = True
    return tail


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over a list of float32 arrays, given back as batches of one
    size: the percentile and entropy calibrators stack each tensor's outputs across batches, and a shorter last
    batch (100 images in batches of 64) failed there with numpy's "inhomogeneous shape"."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        images = np.concatenate(list(batches))
        size = max(d for d in range(1, min(CALIBRATION_BATCH, len(images)) + 1) if len(images) % d == 0)
        self._batches = np.split(images, len(images) // size)
        self._it = iter(self._batches)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def quantize_int8(original, folded: nn.Module, calibration: Optional[List[np.ndarray]] = None,
                  method: str = DEFAULT_CALIBRATION):
    """The QDQ int8 ``onnx.ModelProto`` of ``original`` (the float export of ``folded`` without its quantizers).

    ``calibration``: float32 input batches for the ranges the model does not fix itself; None derives them from the
    model's 8-bit activation quantizers (an error when it has none or they leave a range open).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    act_type, weight_type = _int8_types()
    float_model = onnx.ModelProto()
    float_model.CopyFrom(original)  # _clamp_below adds to its graph: the caller's stays as exported
    graph = float_model.graph
    overrides: Dict[str, list] = _weight_overrides(graph, folded)
    acts = _clamp_below(graph, _activation_overrides(_quantizer_grids(graph, folded)))
    own_input_grid = INPUT_NAME in acts
    float_nodes = _pooled_tail(graph)
    if calibration is None:
        if not acts:
            raise NotDeployableError(
                "the model has no 8-bit activation quantizers with a running scale, so its int8 activation ranges "
                "must come from calibration: pass calibration=<images or batches> (CLI: --calibrate N)"
            )
        acts = _data_free_overrides(graph, acts, float_nodes)
        example = np.zeros([1] + [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]], np.float32)
        calibration = [example]  # every range is overridden; onnxruntime still wants one batch to run
    for t, (scale, zp) in acts.items():
        overrides[t] = [{"scale": np.array(scale, np.float32), "zero_point": np.array(zp, np.uint8),
                         "quant_type": act_type}]
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}: choose one of {', '.join(methods)}")
    excluded = set(float_nodes)
    while True:
        with tempfile.TemporaryDirectory(prefix="bitnetcnn-int8-") as tmp, _quiet():
            src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
            onnx.save(float_model, src)
            quantize_static(
                str(src), str(dst), _Batches(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=act_type, weight_type=weight_type, op_types_to_quantize=QUANTIZED_OPS,
                calibrate_method=methods[method], nodes_to_exclude=sorted(excluded),
                extra_options={
                    "TensorQuantOverrides": overrides,
                    "QDQDisableWeightAdjustForInt32Bias": True,
                    # A ReLU before a model quantizer's grid (zero point 128) is not implied by the grid: keep it.
                    "QDQKeepRemovableActivations": bool(acts),
                    "OpTypesToExcludeOutputQuantization": ["Gemm"],
                    "ActivationSymmetric": False,
                    "WeightSymmetric": True,
                    "CalibTensorRangeSymmetric": False,
                },
            )
            quantized = onnx.load(str(dst))
        # A bias whose int32 value would not fit (a channel whose folded scale is tiny: a BatchNorm gamma near 0, a
        # float layer's all-zero row) is clipped by quantize_static, with a log line _quiet() hides: the layer would
        # add another bias than the model's. Such layers run in float (their weights stay exact codes * scale).
        saturated = _saturated_bias_nodes(quantized.graph) - excluded
        if not saturated:
            break
        excluded |= saturated
    _record_folded_activations(graph, quantized)
    quantized = _float_convolution_outputs(quantized, float_nodes)
    return quantized if own_input_grid else keep_in_float(quantized, {INPUT_NAME})


def _saturated_bias_nodes(graph) -> set:
    """Names of the Conv / Gemm / MatMul nodes whose int32 bias (a DequantizeLinear of an int32 initializer) was
    clipped by quantize_static, or leaves too little room below int32's limit for the sum of products it is added
    to (at most fan-in x 255 x 64: u8 activations less their zero point, weights codes x 64), which would wrap."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    producer, consumers = _graph_maps(graph)
    limit = float(np.iinfo(np.int32).max)
    out = set()
    for node in graph.node:
        if (node.op_type != "DequantizeLinear" or node.input[0] not in inits
                or inits[node.input[0]].data_type != TensorProto.INT32):  # a bias
            continue
        bias = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
        for user in consumers.get(node.output[0], []):
            if user.op_type not in ("Conv", "Gemm", "MatMul") or len(user.input) < 2:
                continue
            weight_dq = producer.get(user.input[1])
            weight = inits.get(weight_dq.input[0]) if weight_dq is not None else None
            size = int(np.prod(weight.dims)) if weight is not None else 0
            fan_in = size // max(bias.size, 1)
            if np.abs(bias).max(initial=0) + fan_in * 255 * 64 >= limit and user.name:  # nodes_to_exclude: by name
                out.add(user.name)
    return out


def _record_folded_activations(float_graph, quantized) -> None:
    """Note in ``quantized``'s metadata the ReLU/Clip nodes ``quantize_static`` removed (it leaves their clamp to
    the grid of the QuantizeLinear after them), by output tensor, so that ``keep_in_float`` can put each back where
    it removes that grid: without it the float tensor would lose its activation."""
    kept = {t for n in quantized.graph.node if n.op_type in _ACTIVATIONS for t in n.output}
    consts = _constants(float_graph)
    folded = {}
    for node in float_graph.node:
        if node.op_type not in _ACTIVATIONS or node.output[0] in kept:
            continue
        spec = {"op": node.op_type}
        if node.op_type == "Clip":
            for key, name in zip(("min", "max"), node.input[1:]):
                if name and name in consts:
                    spec[key] = float(consts[name].reshape(-1)[0])
                elif name:  # a bound computed in the graph: keep_in_float keeps this pair rather than guess it
                    spec["unknown_bounds"] = True
        folded[node.output[0]] = spec
    if folded:
        entry = quantized.metadata_props.add()
        entry.key, entry.value = FOLDED_ACTIVATIONS, json.dumps(folded, sort_keys=True)


def _folded_activations(model) -> Dict[str, dict]:
    """What ``_record_folded_activations`` noted in ``model``'s metadata ({} for a graph without the note)."""
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props.get(FOLDED_ACTIVATIONS, "{}"))


def _folded_activation(model, spec: Optional[dict], tensor: str, output: str) -> Optional[list]:
    """The node(s) computing ``output`` = the activation ``spec`` that ``quantize_int8`` folded into ``tensor``'s
    grid ([] where none was folded; None where it cannot be rebuilt). ``tensor`` holds the values before the
    activation, under the activation's output name; only the removed pair's readers get the activation back."""
    from onnx import helper, numpy_helper

    if spec is None:
        return []
    if spec.get("unknown_bounds"):
        return None
    if spec["op"] == "Relu":
        return [helper.make_node("Relu", [tensor], [output], name=f"{output}_Relu")]
    bounds = []
    for key in ("min", "max"):
        if key in spec:
            name = f"{output}_{key}"
            model.graph.initializer.append(numpy_helper.from_array(np.array(spec[key], np.float32), name))
            bounds.append(name)
        else:
            bounds.append("")
    while bounds and not bounds[-1]:
        bounds.pop()
    return [helper.make_node("Clip", [tensor, *bounds], [output], name=f"{output}_Clip")]



def _float_convolution_outputs(model, float_nodes: set):
    """Drop the Q/DQ pair on a convolution's (or a token linear layer's MatMul's) output that only feeds
    ``float_nodes`` (the pooled tail, which ``quantize_static`` leaves in float but whose input it still
    requantizes, on the placeholder image's range where no calibration is given). That layer then runs in float on
    int8-exact inputs and weights."""
    producer, consumers = _graph_maps(model.graph)
    tensors = set()
    for q in model.graph.node:
        layer = getattr(producer.get(q.input[0]), "op_type", None)
        if q.op_type != "QuantizeLinear" or layer not in ("Conv", "MatMul"):
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        users = [u for d in dqs for u in consumers.get(d.output[0], [])]
        if users and all(u.name in float_nodes for u in users):
            tensors.add(q.input[0])
    return keep_in_float(model, tensors)


def keep_in_float(model, tensors: set):
    """``model`` (a QDQ graph, changed in place) with the Q/DQ pairs on ``tensors`` removed, and their scales and
    zero points: whatever read their dequantized values reads the float tensors instead. Where the pair stood for a
    folded ReLU or Clip (see ``_record_folded_activations``), that activation takes its place."""
    graph = model.graph
    _, consumers = _graph_maps(graph)
    outputs = {o.name for o in graph.output}
    folded = _folded_activations(model)
    drop, rewire, replace = set(), {}, {}
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] not in tensors:
            continue
        dqs = [d for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
        if not dqs or len(dqs) != len(consumers.get(q.output[0], [])):
            continue  # something reads the quantized tensor itself: keep the pair
        if any(d.output[0] in outputs for d in dqs):
            continue  # a graph output keeps its name and its grid
        activation = _folded_activation(model, folded.get(q.input[0]), q.input[0], dqs[0].output[0])
        if activation is None:
            continue
        drop.update(id(n) for n in (q, *dqs))
        if activation:
            replace[id(q)] = activation
            rewire.update({d.output[0]: dqs[0].output[0] for d in dqs[1:]})
        else:
            rewire.update({d.output[0]: q.input[0] for d in dqs})
    if not drop:
        return model
    kept = [m for n in graph.node for m in replace.get(id(n), [] if id(n) in drop else [n])]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rewire:
                node.input[i] = rewire[name]
    del graph.node[:]
    graph.node.extend(kept)
    read = {name for node in kept for name in node.input}  # the dropped pairs' scales and zero points: a runtime
    for unread in [t for t in graph.initializer if t.name not in read]:  # warns of each when it loads the file
        graph.initializer.remove(unread)
    return model


@contextlib.contextmanager
def _quiet():
    """quantize_static logs "consider pre-processing" warnings on the root logger, and its calibrators print their
    progress to stdout, where it would land inside a command's own output (``--json`` included)."""
    with quiet_loggers([""], logging.ERROR), contextlib.redirect_stdout(io.StringIO()):
        yield
