"""Whole-model conversions: one generic walk over the module tree, three small replacement rules."""

from __future__ import annotations

import copy
import fnmatch
import functools
import inspect
import re
import warnings
from typing import Callable, Iterable, Optional

from torch import nn

from bitnetcnn.messages import few
from bitnetcnn.nn.act_quant import unset_quantizers
from bitnetcnn.nn.bit import BIT_LAYERS, BitConv2d, BitLinear
from bitnetcnn.nn.integer_bias import snap_biases_to_int32_grid
from bitnetcnn.nn.ternary import TERNARY_LAYERS, TernaryConv2d, TernaryLinear
from bitnetcnn.quant import TernaryQuant

Rule = Callable[[str, nn.Module], Optional[nn.Module]]


def replace_modules(model: nn.Module, rule: Rule, inplace: bool = False) -> tuple[nn.Module, int]:
    """Apply ``rule(name, module)`` to every submodule; where it returns a module, swap it in.

    Returns the (copied unless ``inplace``) model and the number of replacements. A replaced module's children are
    not visited. A module registered in several places (``nn.Sequential(conv, act, conv)``, or one block under two
    parents) is replaced everywhere by one and the same new module, so what was shared stays shared; it counts
    once. The forward and backward hooks on a replaced module move to its replacement.
    """
    if not inplace:
        model = _copy(model)
    root = rule("", model)
    if root is not None:
        _carry_hooks(model, root, "the model")
        return root.train(model.training), 1
    replaced: dict[int, tuple[nn.Module, nn.Module]] = {}  # id(old) -> (old, kept alive so no id is reused; new)
    visited = {id(model)}
    pending = [("", model)]
    while pending:
        prefix, parent = pending.pop()
        # _modules, not named_children(): that lists a module registered twice in one parent only once
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            name = f"{prefix}.{child_name}" if prefix else child_name
            if id(child) in replaced:
                setattr(parent, child_name, replaced[id(child)][1])
                continue
            if id(child) in visited:
                continue
            new = rule(name, child)
            if new is None:
                visited.add(id(child))
                pending.append((name, child))
            else:
                _carry_hooks(child, new, name)
                new.train(child.training)  # a layer made inside an eval model computes in eval mode
                replaced[id(child)] = (child, new)
                setattr(parent, child_name, new)
    return model, len(replaced)


# the forward and backward hooks a module keeps, with the dicts that flag some of them (by hook id)
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks")


def _copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, which fails with torch's own words on an old-style weight norm (its ``weight`` is
    computed, not a leaf tensor): that one is named instead."""
    try:
        return copy.deepcopy(model)
    except RuntimeError:
        for name, module in model.named_modules():
            _refuse_old_norms(module, name, "which copy.deepcopy cannot copy (its weight is computed, not a leaf)",
                              "or pass inplace=True (for bitify, with the layer named in skip=: a ternary layer "
                              "would not recompute its weight)")
        raise


def _refuse_old_norms(module: nn.Module, name: str, why: str, other_way: str) -> None:
    """Refuse torch.nn.utils's old-style weight and spectral norms and its pruning: hooks that recompute ``weight``
    from parameters of their own (``weight_g``/``weight_v``, ``weight_orig``/``weight_mask``)."""
    from torch.nn.utils.prune import BasePruningMethod

    for hook in [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]:
        if isinstance(hook, BasePruningMethod):
            what, remove = "pruning", f"torch.nn.utils.prune.remove(module, {getattr(hook, '_tensor_name', 'weight')!r})"
        elif type(hook).__name__ in ("WeightNorm", "SpectralNorm"):
            what = type(hook).__name__
            remove = f"torch.nn.utils.remove_{'weight_norm' if what == 'WeightNorm' else 'spectral_norm'}(module)"
        else:
            continue
        raise ValueError(f"{name or 'the model'} ({type(module).__name__}) carries torch.nn.utils's {what}, "
                         f"{why}: remove it first ({remove}), {other_way}")


def _carry_hooks(old: nn.Module, new: nn.Module, name: str) -> None:
    """Move ``old``'s forward and backward hooks to ``new`` (Grad-CAM's among them); refuse the old-style weight and spectral norms, which are hooks that
    recompute ``weight`` from parameters the replacement does not have."""
    _refuse_old_norms(old, name, "whose weight a ternary layer would not recompute",
                      "or keep the layer in full precision (bitify's skip)")
    for attr in _HOOK_DICTS:
        hooks = getattr(old, attr, None)
        if hooks:
            getattr(new, attr).update(hooks)
    if getattr(old, "_is_full_backward_hook", None) is not None:  # how torch calls the backward hooks just moved
        new._is_full_backward_hook = old._is_full_backward_hook


def convert_to_ternary(model: nn.Module, pow2: Optional[bool] = None, inplace: bool = False,
                       int32_biases: bool = True) -> nn.Module:
    """Replace every Bit layer by its packed inference twin; the result computes what the eval-mode model does (up
    to the bias snap of 8-bit layers below).

    Each layer keeps its own config; ``pow2=True`` rounds every scale to a power of two (and says so in the
    model's ``model_args``, which a checkpoint header records). Layers with 8-bit activations get their biases
    moved onto the int32 grid an int8 runtime uses (by at most half its step; :mod:`bitnetcnn.nn.integer_bias`), so
    that the converted model computes what the deployed one does; ``int32_biases=False`` keeps them as trained.
    """

    def rule(name: str, module: nn.Module) -> Optional[nn.Module]:
        if not isinstance(module, BIT_LAYERS):
            return None
        twin = TernaryConv2d if isinstance(module, BitConv2d) else TernaryLinear
        try:
            return twin.from_bit(module, pow2)
        except ValueError as e:  # which layer, in a model of many
            raise ValueError(f"{f'layer {name!r}' if name else 'the model'}: {e}") from None

    rounded = [n for n, m in model.named_modules() if pow2 and isinstance(m, BIT_LAYERS) and not m.quant.pow2]
    converted, count = replace_modules(model, rule, inplace)
    if rounded:
        warnings.warn(
            f"convert_to_ternary: {len(rounded)} layer{'s' * (len(rounded) != 1)} ({few(rounded, 1)}) were trained "
            "without power-of-two scales; rounding each channel's scale to a power of two changes its gain by a "
            "factor between 0.71 and 1.41, so the converted model computes another function than the Bit model "
            "(check its accuracy): train or fine-tune with pow2=True (bitify(..., pow2=True), or set each layer's "
            ".pow2) before converting", UserWarning, stacklevel=2)
    if int32_biases:
        snap_biases_to_int32_grid(converted)
    if count and pow2 and isinstance(getattr(converted, "model_args", None), dict):
        trained_pow2 = converted.model_args.get("pow2")
        converted.model_args = {**converted.model_args, "pow2": True}
        weights = getattr(converted, "pretrained_cfg", None)
        if not trained_pow2:  # other scales than the file's: its accuracy and identity no longer describe the model
            vars(converted).pop("checkpoint_header", None)
            if hasattr(weights, "derived"):  # a PretrainedCfg (the checkpoint floor's, above this one)
                converted.pretrained_cfg = weights.derived(model_kwargs={**weights.model_kwargs, "pow2": True})
    unset = unset_quantizers(converted)
    if count and unset:
        warnings.warn(
            f"convert_to_ternary: {len(unset)} activation quantizer{'s' * (len(unset) != 1)} ({few(unset, 1)}) saw"
            " no training batch, so each takes its scale from the batch it "
            "is given and an image's output depends on the others in its batch: run training-mode batches through "
            "the model first (model.train(); model(images)), then convert",
            UserWarning,
            stacklevel=2,
        )
    if count == 0:
        warnings.warn(
            f"convert_to_ternary: {type(model).__name__} has no BitConv2d or BitLinear layer, so nothing was "
            "converted. Make the model ternary first with bitnetcnn.bitify(model) or build it with "
            "bitnetcnn.create_model(...).",
            UserWarning,
            stacklevel=2,
        )
    return converted.eval() if count else converted


def convert_to_ternary_p2(model: nn.Module, inplace: bool = False) -> nn.Module:
    """:func:`convert_to_ternary` with power-of-two scales (a multiply becomes a shift on integer hardware)."""
    return convert_to_ternary(model, pow2=True, inplace=inplace)


def convert_to_bit(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Turn a converted model back into a trainable Bit model that computes the same function, to fine-tune it
    (latent weights from :func:`bitnetcnn.quant.latent_weight`: ``codes * scale`` for median scales)."""

    def rule(_: str, module: nn.Module) -> Optional[nn.Module]:
        if isinstance(module, TERNARY_LAYERS):
            return module.to_bit()
        return None

    converted, count = replace_modules(model, rule, inplace)
    if count == 0:
        warnings.warn(
            f"convert_to_bit: {type(model).__name__} has no TernaryConv2d or TernaryLinear layer; nothing changed.",
            UserWarning,
            stacklevel=2,
        )
    return converted


def model_form(model: nn.Module) -> str:
    """Which form ``model`` is in: 'ternary' (converted layers: inference), 'bit' (fake-quantized layers: training)
    or 'float' (neither: a full-precision twin or any other model)."""
    kinds = [m for m in model.modules() if isinstance(m, BIT_LAYERS + TERNARY_LAYERS)]
    if any(isinstance(m, TERNARY_LAYERS) for m in kinds):
        return "ternary"
    return "bit" if kinds else "float"


def _qualname(module: nn.Module) -> str:
    """The class name, with its module where it is not torch's (timm's ``Linear`` is not ``nn.Linear``)."""
    cls = type(module)
    return cls.__name__ if cls.__module__.startswith("torch.") else f"{cls.__module__}.{cls.__name__}"


def _weight_read_by_parent(model: nn.Module, name: str) -> bool:
    """Whether the forward of the layer's parent reads ``self.<layer>.weight`` itself (torchvision's Swin attention
    passes ``qkv.weight`` to a function; ``nn.TransformerEncoderLayer``'s fast path, in eval mode without gradients,
    reads ``linear1.weight``): a Bit layer there trains, or evaluates, on its float weight, and converts to ternary."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return re.search(rf"\bself\.{re.escape(leaf)}\.weight\b", _forward_source(type(parent))) is not None


@functools.cache
def _forward_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):  # defined in C, or in a notebook cell gone: nothing read that can be seen
        return ""


def bitify(
    model: nn.Module,
    skip: Iterable[str] = (),
    scale_op: Optional[str] = None,
    pow2: Optional[bool] = None,
    act_bits: Optional[int] = None,
    inplace: bool = False,
    *,
    quant: Optional[TernaryQuant] = None,
    **quant_kwargs,
) -> nn.Module:
    """Make any PyTorch model ternary: each ``nn.Conv2d`` / ``nn.Linear`` becomes a Bit layer keeping its weights.

    ``skip`` takes module-name patterns (``fnmatch``: ``"conv1"``, ``"fc"``, ``"features.0.*"``) of layers to keep
    in full precision, e.g. the stem and the classifier as in TWN/TTQ; a pattern that names a container
    (``"classifier"``, ``"stem"``) keeps everything inside it, and one that names no module warns (a typo would
    otherwise make the layer ternary without a word). ``quant`` (a :class:`TernaryQuant`) or its
    fields as keywords (``scale_op='mean'``, ``act_bits=8``, ...) configure every layer. Subclasses of
    ``nn.Conv2d`` with their own forward (timm's ``Conv2dSame``, for one) and parametrized layers are left as they
    are, since a Bit layer would drop that behaviour; a warning names them. So are layers whose weight their
    parent's forward reads itself (torchvision's Swin attention reads ``qkv.weight``): a Bit layer there would
    compute in float and convert to ternary. It returns a deep copy unless ``inplace=True``:
    build the optimizer on the model it returns (one built on the float model before updates the float model's
    parameters, not the copy's, without a word); with ``inplace=True`` the Bit layers hold the model's own
    Parameter objects, so an optimizer built before keeps working.
    """
    skip = (skip,) if isinstance(skip, str) else tuple(skip)  # "fc" is one pattern, not "f" and "c"
    settings = dict(quant=TernaryQuant.from_kwargs(quant, scale_op=scale_op, pow2=pow2, act_bits=act_bits,
                                                   **quant_kwargs))  # validated once, before the walk

    matched = set()
    aliases: dict[int, list[str]] = {}  # a module registered under several names is skipped under any of them
    for name, module in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(module), []).append(name)
    names_of = {name: names for names in aliases.values() for name in names}  # the copy has the same names

    def skipped(name: str) -> bool:
        parts = name.split(".")
        hits = {p for p in skip for i in range(1, len(parts) + 1) if fnmatch.fnmatchcase(".".join(parts[:i]), p)}
        matched.update(hits)
        return bool(hits)

    kept: list[str] = []  # convolutions and linear layers left in float though no skip pattern named them
    other: list[str] = []  # layers of kinds bitify does not make ternary (Conv1d, Conv3d, ConvTranspose2d, ...)

    def rule(name: str, module: nn.Module) -> Optional[nn.Module]:
        if name and any([skipped(alias) for alias in names_of.get(name, [name])]):  # a list: each alias marks its pattern
            return None
        if type(module) in (nn.Conv2d, nn.Linear) and _weight_read_by_parent(model, name):
            kept.append(f"{name} ({_qualname(module)}, its weight read by its parent's forward)")
            return None
        if type(module) in (nn.Conv2d, nn.Linear):
            return (BitConv2d if type(module) is nn.Conv2d else BitLinear).around(module, settings["quant"])
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(module, BIT_LAYERS):
            kept.append(f"{name} ({_qualname(module)})")
        elif isinstance(module, (nn.modules.conv._ConvNd, nn.Bilinear)) and not isinstance(module, nn.Conv2d):
            other.append(f"{name} ({type(module).__name__})")
        elif not isinstance(module, BIT_LAYERS + TERNARY_LAYERS + (nn.Embedding, nn.EmbeddingBag)) and any(
                "weight" in key and p is not None and p.dim() >= 2 for key, p in module._parameters.items()):
            other.append(f"{name} ({_qualname(module)}: a weight of its own)")  # timm's CondConv2d, MHA in_proj
        return None

    converted, count = replace_modules(model, rule, inplace)
    if count and isinstance(getattr(converted, "model_args", None), dict):  # create_model(**model_args) rebuilds it
        q = settings["quant"]
        converted.model_args = {**converted.model_args, "quant": "ternary", "scale_op": q.scale_op, "pow2": q.pow2,
                                "act_bits": q.act_bits}
    if kept:
        warnings.warn(f"bitify: {len(kept)} layer{'s' * (len(kept) != 1)} kept in full precision: "
                      f"{few(kept)}. They are subclasses of nn.Conv2d or "
                      "nn.Linear with a forward of their own (timm's Conv2dSame), read by their parent instead of "
                      "or besides being called (nn.MultiheadAttention's out_proj, torchvision's Swin attention, "
                      "nn.TransformerEncoderLayer's fast path), or parametrized (torch.nn.utils.parametrize, "
                      "parametrizations.weight_norm): a Bit layer would drop that behaviour or never run. Name them "
                      "in skip= to silence this, or remove the parametrization first "
                      "(torch.nn.utils.parametrize.remove_parametrizations) to make them ternary", UserWarning,
                      stacklevel=2)
    if other:
        warnings.warn(f"bitify makes nn.Conv2d and nn.Linear ternary; {len(other)} layer{'s' * (len(other) != 1)} of "
                      f"other kinds stay in full precision: {few(other)}. Name them in skip= to silence this",
                      UserWarning, stacklevel=2)
    unmatched = [p for p in skip if p not in matched]
    if unmatched:
        names = [n for n, _ in model.named_modules() if n and "." not in n]
        warnings.warn(f"bitify: skip patterns {unmatched} name no module of {type(model).__name__}, so nothing was "
                      f"kept in full precision for them; its top-level modules are {names}", UserWarning, stacklevel=2)
    existing = [m.quant for m in model.modules() if isinstance(m, BIT_LAYERS)]  # the Bit layers it had before
    already = len(existing)
    other_settings = sorted({str(q) for q in existing} - {str(settings["quant"])})
    if count and other_settings:
        warnings.warn(f"bitify: {type(model).__name__} had {already} Bit layer{'s' * (already != 1)} already, which "
                      f"keep their settings ({'; '.join(other_settings)}), while the {count} made now take "
                      f"{settings['quant']}: the model quantizes two ways, and its model_args say the new way only "
                      "(save_checkpoint will refuse it). Bitify the float model once with one setting, or set each "
                      "layer's .quant", UserWarning, stacklevel=2)
    if count == 0 and already:
        warnings.warn(f"bitify: {type(model).__name__} is ternary already ({already} Bit layers) and bitify leaves "
                      "their settings as they are; to quantize otherwise, bitify the float model with the new "
                      "settings (or convert_to_bit a converted one and set each layer's .quant)", UserWarning,
                      stacklevel=2)
    elif count == 0 and any(isinstance(m, TERNARY_LAYERS) for m in model.modules()):
        warnings.warn(f"bitify: {type(model).__name__} is converted already (TernaryConv2d/TernaryLinear layers), so "
                      "nothing changed; to train it again, bitnetcnn.convert_to_bit(model)", UserWarning, stacklevel=2)
    elif count == 0:
        warnings.warn(
            f"bitify: {type(model).__name__} has no nn.Conv2d or nn.Linear outside the skipped patterns {skip}; "
            "nothing changed.",
            UserWarning,
            stacklevel=2,
        )
    return converted
