"""A per-layer model summary in the manner of Larq's: shapes, parameters, bits, memory, MACs, zero share.

It answers "what does ternary buy me on this model": how many weights are ternary, how large the model is in
float32 and packed (2 bits a ternary weight plus its float scales), and how much compute each layer costs. Memory
counts parameters (weights, biases, BatchNorm's affine) and scales, not buffers such as BatchNorm's running
statistics, which deployment folds into the scales and biases. A converted checkpoint file holds those statistics
too, but entropy-codes its ternary weights (about 1.2-1.6 bits each), so it can be smaller or larger than "packed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from bitnetcnn.checkpoint.pretrained_cfg import input_device_of, input_dtype_of, input_size_of, model_pretrained_cfg
from bitnetcnn.nn import BIT_LAYERS, TERNARY_LAYERS, TernaryConv2d, TernaryLinear
from bitnetcnn.nn.modes import evaluating

PACKED_BITS = 2  # storage of a ternary weight: four to a byte
TERNARY_INFO_BITS = math.log2(3)  # its information content, 1.58 bits
FLOAT_BITS = 32
LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear) + TERNARY_LAYERS  # the layers that own a weight matrix and MACs
CONV_TYPES = (nn.modules.conv._ConvNd, TernaryConv2d)


@dataclass(frozen=True)
class LayerSummary:
    """One row: a layer with weights, a leaf module, or a module that owns parameters directly."""

    name: str
    type: str
    output_shape: Optional[tuple[int, ...]]  # per sample (no batch dimension); None if the layer never ran
    params: int  # learnable values: a converted layer counts its weights and bias, as its Bit twin does
    ternary_weights: int
    bits: Optional[int]  # bits a weight is stored in: 2 if ternary, 32 if float, None without a weight
    fp32_bytes: float
    packed_bytes: float
    macs: int  # multiply-accumulates per sample
    weights: int  # entries of the weight matrix (ternary or float)
    zero_weights: int

    @property
    def zero_share(self) -> Optional[float]:
        return self.zero_weights / self.weights if self.weights else None


@dataclass(frozen=True)
class ModelSummary:
    """All rows plus totals; ``str()`` gives the table that :func:`summary` prints."""

    rows: tuple[LayerSummary, ...]
    input_size: tuple[int, ...]

    def _total(self, field: str) -> float:
        return sum(getattr(r, field) for r in self.rows)

    @property
    def params(self) -> int:
        return int(self._total("params"))

    @property
    def ternary_weights(self) -> int:
        return int(self._total("ternary_weights"))

    @property
    def fp32_bytes(self) -> float:
        return self._total("fp32_bytes")

    @property
    def packed_bytes(self) -> float:
        return self._total("packed_bytes")

    @property
    def macs(self) -> int:
        return int(self._total("macs"))

    @property
    def zero_share(self) -> Optional[float]:
        weights = self._total("weights")
        return self._total("zero_weights") / weights if weights else None

    def __str__(self) -> str:
        head = ("Layer", "Type", "Output", "Params", "Ternary", "Bits", "fp32 KiB", "Packed KiB", "MACs", "Zeros")
        body = [_cells(r.name, r.type, r.output_shape, r.params, r.ternary_weights, r.bits, r.fp32_bytes,
                       r.packed_bytes, r.macs, r.zero_share) for r in self.rows]
        mean_bits = f"{8 * self.packed_bytes / self.params:.2f}" if self.params else None
        total = _cells("Total", "", None, self.params, self.ternary_weights, mean_bits, self.fp32_bytes,
                       self.packed_bytes, self.macs, self.zero_share)
        widths = [max(len(row[i]) for row in [head, *body, total]) for i in range(len(head))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = "-" * len(line(head))
        ratio = ("no parameters" if not self.packed_bytes else "no ternary weights to pack"
                 if not self.ternary_weights else f"{self.fp32_bytes / self.packed_bytes:.1f}x smaller")
        share = self.ternary_weights / self.params if self.params else 0.0
        footer = [
            f"Input {_shape(self.input_size)}; MACs per sample; Bits of the Total row: packed bits per parameter.",
            f"Parameters: {self.params:,}, of which {self.ternary_weights:,} ternary weights ({share:.1%}).",
            f"Memory: {_mib(self.fp32_bytes)} MiB in float32, {_mib(self.packed_bytes)} MiB packed ({ratio}).",
            f"Packed: {PACKED_BITS} bits per ternary weight (4 a byte; their information is log2(3) = "
            f"{TERNARY_INFO_BITS:.2f} bits) plus one scale per output channel (float32, or an 8-bit exponent where "
            "the scales are powers of two); everything else float32.",
        ]
        return "\n".join([line(head), rule, *map(line, body), rule, line(total), "", *footer])


def summary(
    model: nn.Module,
    input_size: Optional[Sequence[int]] = None,
    print_fn: Optional[Callable[[str], None]] = print,
) -> ModelSummary:
    """Run one sample of ``input_size`` (``(C, H, W)``; default: the input size its weights were trained at,
    ``model.pretrained_cfg``, else the registry's for the architecture) through ``model`` in eval mode and tabulate
    it layer by layer; print the table unless ``print_fn`` is None.

    Works on Bit models, converted (Ternary) models and plain float models. The model is left as it was. A weight
    tied to another layer's counts once, as in ``model.parameters()``. MACs are those of convolution and linear
    layers, per sample of dimension 0 (a layer fed a folded batch, or attention's functional products, are not
    what they count).
    """
    if input_size is None:
        if model_pretrained_cfg(model) is None and getattr(model, "model_config", None) is None:
            raise ValueError("summary needs input_size for a model that create_model did not build")
        input_size = input_size_of(model)  # the weights', else the size the model was built for (img_size)
    elif model_pretrained_cfg(model) is not None and len(tuple(input_size)) == 3:
        input_size_of(model, input_size)  # warns where it is not the size the weights were trained at
    if any(isinstance(d, bool) or int(d) != d or d < 1 for d in input_size):
        raise ValueError(f"input_size must be positive whole numbers, (C, H, W) for an image model; got {input_size!r}")
    input_size = tuple(int(d) for d in input_size)
    rows = _row_modules(model)
    calls: dict[str, list] = {name: [None, 0] for name, _ in rows}  # output shape, MACs
    order: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output) -> None:
            out = _first_tensor(output)
            x = _first_tensor(inputs)
            if isinstance(module, CONV_TYPES) and x is not None and x.dim() == len(module.kernel_size) + 1:
                # torch runs a convolution on an input without a batch dimension (C, H, W): the sample's first
                # dimension would be taken for its batch, and its shapes and MACs for a slice of it
                raise ValueError(f"layer {name!r} ({type(module).__name__}) got an input of {tuple(x.shape[1:])}, one "
                                 f"dimension short of a batched one: input_size must be (C, H, W), channels "
                                 f"included; got {input_size}")
            order.setdefault(name, len(order))
            if calls[name][0] is None and out is not None:
                calls[name][0] = tuple(out.shape[1:])
            calls[name][1] += _macs(module, inputs, out)

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in rows]
    device = input_device_of(model)
    try:
        with evaluating(model), torch.no_grad():  # a converted model's first buffer is its uint8 packed weight: the
            model(torch.zeros((1, *input_size), device=device, dtype=input_dtype_of(model)))  # dtype is a float's
    finally:
        for handle in handles:
            handle.remove()

    position = {name: i for i, (name, _) in enumerate(rows)}
    rows.sort(key=lambda item: (order.get(item[0], len(order)), position[item[0]]))
    counted: set[int] = set()  # ids of the parameters earlier rows counted: a tied weight counts once
    result = ModelSummary(tuple(_row(name, m, *calls[name], counted) for name, m in rows), input_size)
    if print_fn is not None:
        print_fn(str(result))
    return result


def _row_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Layers with weights (whole, their inner quantizers included), other leaves except ``nn.Identity``, and any
    container that owns parameters itself; together they own every parameter exactly once."""
    rows, inside_layer = [], set()
    for name, module in model.named_modules():
        if any(not prefix or name.startswith(prefix + ".") for prefix in inside_layer):
            continue
        if isinstance(module, LAYER_TYPES):
            inside_layer.add(name)
            rows.append((name or type(module).__name__, module))
        elif next(module.children(), None) is None:
            if not isinstance(module, nn.Identity):
                rows.append((name or type(module).__name__, module))
        elif next(module.parameters(recurse=False), None) is not None:
            rows.append((name or type(module).__name__, module))
    return rows


def _row(name: str, module: nn.Module, output_shape, macs: int, counted: set[int]) -> LayerSummary:
    """The row of ``module``. Parameters in ``counted`` (tied to an earlier row's: ``b.weight = a.weight``) are left
    out of its counts, and its own go into ``counted``; MACs count every call, tied or not."""
    kind = type(module).__name__
    is_layer = isinstance(module, LAYER_TYPES)
    fresh = [p for p in module.parameters(recurse=is_layer) if id(p) not in counted]
    counted.update(id(p) for p in fresh)

    def own(tensor) -> bool:  # a converted layer's weight is a buffer: never tied
        return tensor is not None and (not isinstance(tensor, nn.Parameter) or any(tensor is p for p in fresh))

    weight_is_own = is_layer and own(module.weight)
    if isinstance(module, BIT_LAYERS + TERNARY_LAYERS):
        try:
            codes = module.codes() if isinstance(module, TERNARY_LAYERS) else module.ternary_state()[0]
        except ValueError as e:  # a diverged weight has no codes: which layer, in a model of many
            raise ValueError(f"layer {name!r}: {e}") from None
        weights = codes.numel() if weight_is_own else 0
        bias = module.bias.numel() if own(module.bias) else 0
        scale_bits = 8 if module.pow2 else FLOAT_BITS  # power-of-two scales are stored as int8 exponents
        packed_weight_bits = math.ceil(weights * PACKED_BITS / 8) * 8  # whole bytes a layer: pack_2bit pads to 4 codes
        packed_bits = packed_weight_bits + (codes.shape[0] * scale_bits if weights else 0) + bias * FLOAT_BITS
        zeros = int((codes == 0).sum()) if weights else 0
        return LayerSummary(name, kind, output_shape, weights + bias, weights, PACKED_BITS, (weights + bias) * 4.0,
                            packed_bits / 8, macs, weights, zeros)
    params = sum(p.numel() for p in fresh)
    weights = module.weight.numel() if weight_is_own else 0
    zeros = int((module.weight == 0).sum()) if weight_is_own else 0
    return LayerSummary(name, kind, output_shape, params, 0, FLOAT_BITS if is_layer else None, params * 4.0,
                        params * 4.0, macs, weights, zeros)


def _macs(module: nn.Module, inputs: tuple, out: Optional[torch.Tensor]) -> int:
    """Multiply-accumulates per sample of a convolution or linear layer; 0 for any other module."""
    if out is None or not isinstance(module, LAYER_TYPES):
        return 0
    per_sample = out[0].numel() if out.dim() > 1 else out.numel()
    if isinstance(module, (nn.Linear, TernaryLinear)):
        return per_sample * module.in_features
    kernel = math.prod(module.kernel_size)
    if getattr(module, "transposed", False):
        x = _first_tensor(inputs)
        return (x[0].numel() if x is not None else 0) * kernel * module.out_channels // module.groups
    return per_sample * kernel * module.in_channels // module.groups


def _first_tensor(value) -> Optional[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        return _first_tensor(list(value.values()))
    return None


def _cells(name, kind, shape, params, ternary, bits, fp32, packed, macs, zeros) -> tuple[str, ...]:
    return (
        name,
        kind,
        _shape(shape) if shape is not None else "-",
        f"{params:,}",
        f"{ternary:,}" if ternary else "-",
        str(bits) if bits is not None else "-",
        f"{fp32 / 1024:,.1f}" if fp32 else "-",
        f"{packed / 1024:,.1f}" if packed else "-",
        _count(macs) if macs else "-",
        f"{zeros:.1%}" if zeros is not None else "-",
    )


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.2f}"
