"""Bit layers, their Ternary twins and whole-model conversion."""

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

import bitnetcnn
from bitnetcnn import BitConv2d, BitLinear, TernaryConv2d, TernaryLinear, bitify, convert_to_bit, convert_to_ternary
from bitnetcnn import convert_to_ternary_p2
from bitnetcnn.nn.exact_sums import rescaled, sums_exact


def assert_same_function(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    tol = 1e-5 * ya.abs().max().clamp_min(1e-12)
    assert (ya - yb).abs().max() <= tol
    assert torch.equal(ya.argmax(-1), yb.argmax(-1))


def warm_up(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """One training-mode pass so BatchNorm and activation quantizers have statistics, then eval."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


conv_cases = st.fixed_dictionaries(
    {
        "kernel": st.sampled_from([1, 3, 5, (3, 1)]),
        "stride": st.sampled_from([1, 2]),
        "padding": st.sampled_from([0, 1, 2, "same"]),
        "dilation": st.sampled_from([1, 2]),
        "depthwise": st.booleans(),
        "bias": st.booleans(),
        "padding_mode": st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
        "scale_op": st.sampled_from(["median", "mean"]),
        "pow2": st.booleans(),
        "act_bits": st.sampled_from([None, 8, 4]),
    }
)


@settings(max_examples=60, deadline=None)
@given(case=conv_cases, seed=st.integers(0, 10_000))
@example(case=dict(kernel=5, stride=2, padding=0, dilation=1, depthwise=True, bias=False, padding_mode="zeros",
                   scale_op="mean", pow2=True, act_bits=4), seed=4095)  # a rounding tie that float32 flipped
def test_random_conv_models_match_after_conversion(case, seed):
    """In float64: a converted layer with an input quantizer sums integer codes exactly, while the Bit layer sums
    dequantized floats, so in float32 a value on the next quantizer's rounding boundary may round one step apart
    (the example above did); in float64 both are exact to far below a step."""
    torch.manual_seed(seed)
    if case["padding"] == "same":
        case["stride"] = 1
    c = 6
    groups = c if case["depthwise"] else 1
    layer_args = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], bias=case["bias"],
                      padding_mode=case["padding_mode"], scale_op=case["scale_op"], pow2=case["pow2"],
                      act_bits=case["act_bits"])
    model = nn.Sequential(
        BitConv2d(3, c, 3, padding=1, pow2=case["pow2"]),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        BitConv2d(c, c, case["kernel"], groups=groups, **layer_args),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        BitLinear(c, 10, scale_op=case["scale_op"], pow2=case["pow2"], act_bits=case["act_bits"]),
    )
    x = torch.randn(5, 3, 12, 12)
    warm_up(model, x)
    model, x = model.double(), x.double()
    assert_same_function(model, convert_to_ternary(model, int32_biases=False), x)
    if case["pow2"]:
        assert_same_function(model, convert_to_ternary(model, pow2=True, int32_biases=False), x)
    if case["act_bits"] != 8:  # nothing to snap: the default conversion is the same function
        assert_same_function(model, convert_to_ternary(model), x)


def test_pow2_conversion_of_a_float_scale_model_matches_a_pow2_bit_model():
    torch.manual_seed(1)
    model = nn.Sequential(BitConv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), BitLinear(8 * 6 * 6, 10)).eval()
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, (BitConv2d, BitLinear)):
            m.pow2 = True
    p2 = convert_to_ternary_p2(model)
    assert_same_function(twin, p2, torch.randn(4, 3, 8, 8))
    assert all(hasattr(m, "scale_exp") for m in p2.modules() if isinstance(m, (TernaryConv2d, TernaryLinear)))


def test_ternary_layer_state_dict_is_packed():
    layer = TernaryConv2d.from_bit(BitConv2d(16, 32, 3))
    sd = layer.state_dict()
    assert set(sd) == {"weight_packed", "scale", "bias"}
    assert sd["weight_packed"].dtype == torch.uint8
    assert sd["weight_packed"].numel() * 8 <= 2 * 16 * 32 * 9  # at most 2 bits a weight
    p2 = TernaryLinear.from_bit(BitLinear(10, 3), pow2=True).state_dict()
    assert set(p2) == {"weight_packed", "scale_exp", "bias"} and p2["scale_exp"].dtype == torch.int8


def test_ternary_layer_load_state_dict_rebuilds_cached_weight():
    a = TernaryLinear.from_bit(BitLinear(10, 3))
    b = TernaryLinear.from_bit(BitLinear(10, 3))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 10)
    assert torch.equal(a(x), b(x))


def test_forward_does_not_unpack(monkeypatch):
    layer = TernaryConv2d.from_bit(BitConv2d(4, 4, 3)).eval()
    import bitnetcnn.nn.ternary as ternary_module

    def boom(*_):
        raise AssertionError("unpacked during forward")

    monkeypatch.setattr(ternary_module, "unpack_2bit", boom)
    layer(torch.randn(1, 4, 5, 5))


def test_ternary_layers_script_export_deepcopy_and_dtype():
    model = nn.Sequential(BitConv2d(3, 4, 3, padding=1, act_bits=8), nn.ReLU(), nn.Flatten(), BitLinear(64, 5))
    x = torch.randn(2, 3, 4, 4)
    ternary = convert_to_ternary(warm_up(model, x))
    y = ternary(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(ternary)
    assert torch.equal(scripted(x), y)
    exported = torch.export.export(ternary, (x,))
    assert torch.allclose(exported.module()(x), y)
    assert torch.equal(copy.deepcopy(ternary)(x), y)
    as64 = copy.deepcopy(ternary).to(torch.float64)
    assert as64(x.double()).dtype == torch.float64
    assert torch.allclose(as64(x.double()).float(), y, atol=1e-5)


def test_converted_model_goes_back_to_trainable_bit_model():
    model = nn.Sequential(BitConv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), BitLinear(8 * 6 * 6, 4))
    x = torch.randn(8, 3, 8, 8)
    ternary = convert_to_ternary(model.eval())
    back = convert_to_bit(ternary)
    assert isinstance(back[0], BitConv2d) and isinstance(back[3], BitLinear)
    assert back[0].weight.requires_grad
    # median scales of codes*scale give the same scale back when at most half the codes are zero
    assert_same_function(ternary, back.eval(), x)
    back.train()
    nn.functional.cross_entropy(back(x), torch.zeros(8, dtype=torch.long)).backward()
    assert back[0].weight.grad is not None


@pytest.mark.parametrize("scale_op", ["median", "mean"])
@pytest.mark.parametrize("pow2", [False, True])
def test_going_back_to_bit_keeps_the_function_for_every_scale_op(scale_op, pow2):
    # 'mean' of |codes * scale| is scale * (nonzero fraction): a latent weight of codes * scale came back 25-30%
    # smaller, so a warm restart or hub's ternary=False started from another model
    model = nn.Sequential(BitConv2d(3, 8, 3, scale_op=scale_op, pow2=pow2), nn.ReLU(), nn.Flatten(),
                          BitLinear(8 * 6 * 6, 4, scale_op=scale_op, pow2=pow2))
    x = torch.randn(8, 3, 8, 8)
    ternary = convert_to_ternary(model.eval())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = convert_to_bit(ternary).eval()
    for a, b in ((ternary[0], back[0]), (ternary[3], back[3])):
        codes, scale = b.ternary_state()
        assert torch.equal(codes, a.codes())
        assert torch.allclose(scale, a.channel_scale(), rtol=1e-6)
    assert_same_function(ternary, back, x)


def test_going_back_to_bit_warns_where_no_latent_weight_fits():
    codes = torch.tensor([[1, 0, 0, 0], [1, -1, 1, 0]], dtype=torch.int8)  # row 0: 3 zeros of 4, not a median's
    layer = TernaryLinear(codes, torch.tensor([0.5, 0.25]), scale_op="median")
    with pytest.warns(UserWarning, match="computes another function"):
        layer.to_bit()


def test_conversion_leaves_the_original_unless_inplace():
    model = nn.Sequential(BitLinear(4, 4))
    converted = convert_to_ternary(model)
    assert isinstance(model[0], BitLinear) and isinstance(converted[0], TernaryLinear)
    same = convert_to_ternary(model, inplace=True)
    assert same is model and isinstance(model[0], TernaryLinear)


def test_conversion_of_a_model_without_bit_layers_warns():
    with pytest.warns(UserWarning, match="nothing was converted"):
        convert_to_ternary(nn.Sequential(nn.Linear(2, 2)))
    # a Bit model given back to convert_to_bit: its own name and what it needs, not bitify's advice
    with pytest.warns(UserWarning, match=r"^convert_to_bit: Sequential has no TernaryConv2d or TernaryLinear"):
        convert_to_bit(nn.Sequential(BitLinear(2, 2)))


def test_bad_layer_settings_are_named():
    with pytest.raises(ValueError, match="unknown scale_op 'max'"):
        BitConv2d(1, 1, 1, scale_op="max")
    with pytest.raises(ValueError, match="unsupported act_bits 3"):
        BitLinear(1, 1, act_bits=3)
    with pytest.raises(ValueError, match="unsupported act_bits 16"):
        bitify(nn.Sequential(nn.Linear(2, 2)), act_bits=16)


def test_bitify_keeps_weights_and_respects_skip():
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    bit = bitify(model, skip=("conv1", "fc"))
    assert type(bit.conv1) is nn.Conv2d and type(bit.fc) is nn.Linear
    assert isinstance(bit.layer1[0].conv1, BitConv2d)
    assert torch.equal(bit.layer1[0].conv1.weight, model.layer1[0].conv1.weight)
    assert type(model.layer1[0].conv1) is nn.Conv2d  # original untouched


def test_bitify_skip_keeps_a_whole_container_and_warns_on_a_pattern_that_names_nothing():
    import torchvision

    model = torchvision.models.mobilenet_v2(num_classes=10)  # classifier = Sequential(Dropout, Linear)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bit = bitify(model, skip=("classifier", "features.0"))
    assert type(bit.classifier[1]) is nn.Linear and type(bit.features[0][0]) is nn.Conv2d
    assert isinstance(bit.features[1].conv[0][0], BitConv2d)
    with pytest.warns(UserWarning, match=r"\['clasifier'\] name no module.*'classifier'"):
        bit = bitify(model, skip=("clasifier",))
    assert isinstance(bit.classifier[1], BitLinear)


def test_a_layer_used_twice_is_made_ternary_in_both_places_and_stays_one_layer():
    """``nn.Sequential(conv, act, conv)`` registers one convolution twice; ``named_children`` lists it once, so the
    second use once stayed float. Both uses must be the same Bit layer (and then the same ternary layer)."""
    conv = nn.Conv2d(4, 4, 3, padding=1)
    bit = bitify(nn.Sequential(conv, nn.ReLU(), conv))
    assert isinstance(bit[0], BitConv2d) and bit[2] is bit[0]
    ternary = convert_to_ternary(bit.eval())
    assert isinstance(ternary[0], TernaryConv2d) and ternary[2] is ternary[0]
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(ternary(x), bit(x))


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
def test_conversions_keep_forward_hooks_and_refuse_old_style_weight_norms_and_pruning():
    """A hook registered before bitify or conversion (a feature extractor's, or one that changes the output) acts
    on the replacement too; torch.nn.utils's old weight and spectral norms recompute ``weight`` from parameters a
    Bit layer does not have, so they are refused rather than silently frozen."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    model[0].register_forward_hook(lambda module, args, out: out.clamp(max=0.1))
    bit = bitify(model)
    x = torch.randn(1, 3, 8, 8)
    assert bit[0](x).max() <= 0.1
    assert convert_to_ternary(bit)[0](x).max() <= 0.1
    with pytest.raises(ValueError, match=r"0 \(Conv2d\) carries torch.nn.utils's SpectralNorm.*remove_spectral_norm"):
        bitify(nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(3, 4, 3))))
    # the old weight norm made copy.deepcopy fail first, with torch's words about graph leaves
    with pytest.raises(ValueError, match=r"0 \(Conv2d\) carries torch.nn.utils's WeightNorm.*remove_weight_norm"):
        bitify(nn.Sequential(nn.utils.weight_norm(nn.Conv2d(3, 4, 3))))
    with pytest.raises(ValueError, match=r"carries torch.nn.utils's WeightNorm.*remove_weight_norm"):
        bitify(nn.Sequential(nn.utils.weight_norm(nn.Conv2d(3, 4, 3))), inplace=True)
    from torch.nn.utils import prune

    # pruning is such a hook too (weight_orig * weight_mask): the Bit layer failed at its first forward, naming
    # an attribute, or copy.deepcopy failed with torch's words
    for inplace in (False, True):
        pruned = nn.Sequential(nn.Conv2d(3, 4, 3))
        prune.l1_unstructured(pruned[0], "weight", 0.5)
        with pytest.raises(ValueError, match=r"0 \(Conv2d\) carries torch.nn.utils's pruning.*prune.remove\(module, "
                                             r"'weight'\)"):
            bitify(pruned, inplace=inplace)


def test_bitify_names_the_layers_it_keeps_in_float_because_they_are_parametrized():
    from torch.nn.utils import parametrizations

    model = nn.Sequential(parametrizations.weight_norm(nn.Conv2d(3, 4, 3)), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with pytest.warns(UserWarning, match=r"1 layer kept in full precision: 0 \(ParametrizedConv2d\)"):
        bit = bitify(model)
    assert isinstance(bit[2], BitConv2d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bitify(model, skip=("0",))  # named: kept on purpose, no warning


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_bit_model_and_its_conversion_agree(dtype):
    """A bf16/fp16 Bit layer once took its mean scale and codes in half precision and conversion in float32: codes
    near the threshold differed (59 of 73,728 in bf16). Both now take them in float32; the converted layer keeps the
    model's dtype."""
    torch.manual_seed(0)
    bit = BitConv2d(64, 128, 3, padding=1, scale_op="mean").to(dtype).eval()
    ternary = convert_to_ternary(bit)
    assert ternary.weight.dtype == dtype
    x = torch.randn(1, 64, 8, 8, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(ternary(x), bit(x))


def test_bitify_resnet18_trains_converts_and_shrinks():
    import torchvision

    torch.manual_seed(0)
    model = bitify(torchvision.models.resnet18(num_classes=10))
    n_bit = sum(isinstance(m, (BitConv2d, BitLinear)) for m in model.modules())
    assert n_bit == 21  # 20 convolutions (downsample included) and the classifier
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8
    ternary = convert_to_ternary(model.eval())
    assert torch.equal(model(x).argmax(1), ternary(x).argmax(1))

    def saved_size(m):
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        return buf.tell()

    float_size = saved_size(torchvision.models.resnet18(num_classes=10))
    assert float_size / saved_size(ternary) >= 10


def test_public_api():
    for name in ("convert_to_ternary", "convert_to_ternary_p2", "bitify", "BitConv2d", "TernaryLinear"):
        assert hasattr(bitnetcnn, name)


def test_drop_path_draws_and_scales_as_torchvision_stochastic_depth():
    from torchvision.ops import StochasticDepth

    from bitnetcnn.nn.drop_path import DropPath

    x = torch.randn(64, 3, 4, 4)
    ours, theirs = DropPath(0.3).train(), StochasticDepth(0.3, "row").train()
    torch.manual_seed(5)
    a = ours(x)
    torch.manual_seed(5)
    b = theirs(x)
    assert torch.equal(a, b)
    dropped = (a.flatten(1) == 0).all(1)
    assert 0 < dropped.sum() < 64  # some samples dropped, not all
    assert torch.allclose(a[~dropped], x[~dropped] / 0.7)
    assert torch.equal(ours.eval()(x), x)


def test_a_ternary_layer_configured_with_act_bits_quantizes_its_input():
    """TernaryConv2d(..., quant=TernaryQuant(act_bits=8)) said act_bits=8 and ran float inputs."""
    from bitnetcnn.nn import ActQuantizer
    from bitnetcnn.quant import TernaryQuant

    codes = torch.randint(-1, 2, (4, 3, 3, 3))
    conv = TernaryConv2d(codes, torch.rand(4), quant=TernaryQuant(act_bits=8))
    assert isinstance(conv.act_quant, ActQuantizer) and conv.act_quant.bits == 8 and conv.act_bits == 8
    linear = TernaryLinear.from_codes(nn.Linear(6, 2), torch.randint(-1, 2, (2, 6)), torch.rand(2), None,
                                      TernaryQuant(act_bits=4))
    assert isinstance(linear.act_quant, ActQuantizer) and linear.act_quant.bits == 4
    assert isinstance(TernaryLinear(torch.randint(-1, 2, (2, 6)), torch.rand(2)).act_quant, nn.Identity)


def test_a_channel_of_zero_codes_converts_with_scale_one():
    """Its 1e-8 floor made an int8 runtime's bias step (input scale x weight scale) so fine that the bias overflowed
    int32; any scale computes the same zeros."""
    conv = BitConv2d(3, 4, 3, bias=True)
    with torch.no_grad():
        conv.weight[2] = 0
    ternary = TernaryConv2d.from_bit(conv.eval())
    assert ternary.channel_scale()[2] == 1.0 and not ternary.codes()[2].any()
    assert_same_function(conv, ternary, torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        assert torch.equal(conv(torch.randn(2, 3, 8, 8))[:, 2], ternary(torch.randn(2, 3, 8, 8))[:, 2])


def test_layers_made_inside_an_eval_model_compute_in_eval_mode():
    """bitify(model.eval(), act_bits=8) made Bit layers in training mode: an "eval" forward quantized with each batch's
    absmax and moved the running scales."""
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    model = bitify(float_model, act_bits=8)
    model(torch.randn(8, 3, 8, 8))  # a training step sets the quantizers' running scales
    model.eval()
    again = bitify(copy.deepcopy(float_model).eval(), act_bits=8)  # an eval model in
    assert not any(m.training for m in again.modules())
    again.load_state_dict(model.state_dict())  # the trained running scales
    x = torch.randn(2, 3, 8, 8) * 5
    before = [q.running_scale.clone() for q in again.modules() if isinstance(q, bitnetcnn.nn.ActQuantizer)]
    with torch.no_grad():
        again(x)  # an eval forward, which must not move the running scales (checked below)
        # in float64: the converted model sums integer codes exactly, the Bit model dequantized floats, and in
        # float32 a value on the next quantizer's rounding boundary may round one step apart on some CPU's kernels
        as64, x64 = copy.deepcopy(again).double(), x.double()
        assert torch.allclose(as64(x64), convert_to_ternary(as64, int32_biases=False)(x64), rtol=1e-7, atol=1e-9)
    after = [q.running_scale for q in again.modules() if isinstance(q, bitnetcnn.nn.ActQuantizer)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert not any(m.training for m in convert_to_bit(convert_to_ternary(model)).modules())


def test_bitify_keeps_frozen_layers_frozen_and_tied_weights_tied():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    head = nn.Linear(4, 2)
    head.requires_grad_(False)
    model = bitify(nn.Sequential(a, nn.ReLU(), b, head))
    assert model[0].weight is model[2].weight and sum(p.numel() for p in model.parameters()) == 16 + 4 + 4 + 10
    assert not model[3].weight.requires_grad and not model[3].bias.requires_grad and model[0].weight.requires_grad


def test_bitify_keeps_a_weight_tied_to_a_layer_it_leaves_in_float_and_leaves_the_input_model_alone():
    """The tie map covered converted layers only: a weight shared with a skipped layer got its own copy, and the two
    drifted apart in training without a word."""
    float_model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    float_model[2].weight = float_model[0].weight
    model = bitify(float_model, skip=["0"])
    assert isinstance(model[2], BitLinear) and type(model[0]) is nn.Linear
    assert model[2].weight is model[0].weight and sum(p.numel() for p in model.parameters()) == 64 + 8 + 8
    assert model[0].weight is not float_model[0].weight  # a copy unless inplace
    assert float_model[2].weight is float_model[0].weight and type(float_model[2]) is nn.Linear


def test_a_converted_layer_built_from_a_training_bit_layer_uses_the_trained_running_scale():
    """The input quantizer came over in training mode, so the layer scaled each batch by its own max until someone
    called .eval() (convert_to_ternary and loading did; from_bit and the constructor did not)."""
    torch.manual_seed(0)
    bit = BitLinear(16, 4, act_bits=8)
    bit(torch.randn(32, 16))  # a training step sets the running scale
    ternary = TernaryLinear.from_bit(bit)
    assert not ternary.act_quant.training
    x = 3 * torch.randn(2, 16)  # a batch whose max is not the running one
    with torch.no_grad():
        torch.testing.assert_close(ternary(x), bit.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act_bits", [None, 8])
def test_a_converted_convolution_takes_an_unbatched_image_as_its_bit_layer_does(act_bits):
    """nn.Conv2d takes (C, H, W); the integer path scaled dimension 1 of it (H, not the channels): wrong values,
    a wrong shape, or an error, depending on the sizes."""
    torch.manual_seed(0)
    bit = BitConv2d(4, 6, 3, padding=1, act_bits=act_bits)
    bit(torch.randn(8, 4, 6, 6))
    bit.eval()
    ternary = TernaryConv2d.from_bit(bit)
    for size in [(4, 6, 6), (4, 6, 1), (4, 6, 5)]:
        x = torch.randn(*size)
        with torch.no_grad():
            y = ternary(x)
            torch.testing.assert_close(y, ternary(x[None])[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(y, bit(x), rtol=1e-4, atol=1e-4)


def test_bitify_records_what_create_model_must_build_again():
    model = bitify(bitnetcnn.create_model("bitnet_cnn", width=8, quant="fp"), act_bits=8, scale_op="mean")
    args = model.model_args
    assert (args["quant"], args["act_bits"], args["scale_op"]) == ("ternary", 8, "mean")
    rebuilt = bitnetcnn.create_model(**args)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_a_float64_model_converts_without_rounding_its_scales_and_biases_to_float32():
    torch.manual_seed(0)
    bit = BitLinear(64, 8, dtype=torch.float64).eval()
    ternary = TernaryLinear.from_bit(bit)
    x = torch.randn(4, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ternary(x), bit(x), rtol=1e-12, atol=1e-12)  # 3.6e-8 off through float32
    assert ternary.scale.dtype == ternary.bias.dtype == torch.float64


def test_convert_to_bit_keeps_the_models_dtype():
    model = convert_to_ternary(bitnetcnn.create_model("bitnet_cnn", width=8).eval()).to(torch.float64)
    bit = convert_to_bit(model)
    assert {p.dtype for p in bit.parameters()} == {torch.float64}
    with torch.no_grad():
        bit(torch.randn(2, 1, 28, 28, dtype=torch.float64))


def test_an_inverted_residuals_shortcut_moves_the_running_scale_once_a_step():
    """The shortcut and the expansion both ran the expansion's quantizer: a momentum of 0.19, not 0.1."""
    from bitnetcnn.models.blocks import InvertedResidual
    from bitnetcnn.models.quant_spec import QuantSpec

    block = InvertedResidual(QuantSpec(act_bits=8), 8, 8, 1)
    quantizer = block.conv_pw_exp.conv.act_quant
    quantizer.running_scale.fill_(1.0)
    x = torch.randn(4, 8, 6, 6)
    block(x)
    expected = 0.9 * 1.0 + 0.1 * x.abs().max() / 127
    assert torch.allclose(quantizer.running_scale, expected)


@pytest.mark.parametrize("training", [True, False])
def test_an_empty_batch_passes_an_act_quantized_model_as_torch_layers_take_it(training):
    """An empty batch (the last shard of a split, a filter that kept nothing) raised in the quantizer's absmax,
    where torch.nn's own layers return an empty output; nor may it move the running scale."""
    from bitnetcnn.nn import ActQuantizer

    torch.manual_seed(0)
    model = bitnetcnn.create_model("bitnet_cnn", width=4, act_bits=8).train()
    model(torch.randn(4, 1, 28, 28))
    model.train(training)
    scales = [q.running_scale.clone() for q in model.modules() if isinstance(q, ActQuantizer)]
    with torch.no_grad():
        out = model(torch.randn(0, 1, 28, 28))
    assert out.shape == (0, 10)
    assert all(torch.equal(a, q.running_scale) for a, q in zip(scales, [q for q in model.modules()
                                                                       if isinstance(q, ActQuantizer)]))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # summary's forward of inf * 0
@pytest.mark.parametrize("scale_op, bad, pow2", [("median", "nan", False), ("mean", "inf", False),
                                                  ("median", "-inf", False), ("mean", "nan", True)])
def test_a_weight_with_nan_or_infinity_is_refused_by_conversion_with_its_layer(scale_op, bad, pow2):
    """A non-finite weight became a channel of zero codes and scale 1: the Bit model answered NaN, the converted
    one finite numbers from its bias alone, and saving and loading it raised nothing."""
    model = nn.Sequential(nn.Identity(), BitConv2d(3, 4, 3, scale_op=scale_op, pow2=pow2)).eval()
    with torch.no_grad():
        model[1].weight[2, 0, 0, 0] = float(bad)
    with pytest.raises(ValueError, match=r"layer '1': the weight has NaN or infinite values in output channel\(s\) "
                                         r"\[2\]: it has no ternary codes"):
        convert_to_ternary(model)
    with pytest.raises(ValueError, match=r"^the model: the weight has NaN"):
        convert_to_ternary(model[1])
    with pytest.raises(ValueError, match=r"layer '1': the weight has NaN or infinite values"):
        bitnetcnn.summary(model, input_size=(3, 8, 8))


@pytest.mark.parametrize("build", [lambda: BitLinear(4, 0), lambda: BitLinear(0, 3),
                                   lambda: BitConv2d(3, 0, 3), lambda: BitLinear(4, 0, scale_op="median")])
def test_a_layer_without_weights_is_refused_when_built(build):
    """torch allows a Linear of zero features; a ternary one failed later in torch's reshape or median."""
    with pytest.raises(ValueError, match="at least one input and one output channel"):
        build()


def test_a_converted_layer_in_training_mode_keeps_its_activation_grid():
    """A converted model is for inference: .train() moved its 8-bit running scale, which the bias was aligned to."""
    bit = warm_up(BitConv2d(3, 4, 3, act_bits=8), torch.randn(8, 3, 6, 6))
    ternary = TernaryConv2d.from_bit(bit)
    x = 5 * torch.randn(2, 3, 6, 6)
    before, scale = ternary(x), ternary.act_quant.running_scale.clone()
    ternary.train()
    assert ternary.training and torch.equal(ternary(x), before)
    assert torch.equal(ternary.act_quant.running_scale, scale)


def test_option_strings_are_refused_not_read_as_true():
    """bool("False") is True: pow2="False" gave power-of-two scales and fp_ends="False" float ends."""
    with pytest.raises(ValueError, match="pow2 must be True or False, not 'False'"):
        BitLinear(4, 4, pow2="False")
    with pytest.raises(ValueError, match="pow2 must be True or False"):
        bitify(nn.Sequential(nn.Linear(4, 4)), pow2="False")
    with pytest.raises(ValueError, match="fp_ends must be True or False, not 'False'"):
        bitnetcnn.create_model("bitnet_cnn", width=4, fp_ends="False")
    assert BitLinear(4, 4, pow2=1).pow2 is True and bitnetcnn.create_model("bitnet_cnn", width=4, fp_ends=0)


@pytest.mark.parametrize("codes", [torch.full((2, 3), 0.7), torch.full((2, 3), 255), torch.full((2, 3), 2)])
def test_a_layer_built_from_codes_refuses_codes_that_are_not_ternary(codes):
    """int8 wrapped 255 to -1 and truncated 0.7 to 0 before the check."""
    with pytest.raises(ValueError, match=r"codes in \{-1, 0, 1\}"):
        TernaryLinear(codes, torch.ones(2), None)


@pytest.mark.parametrize("cls, like", [(TernaryLinear, nn.Linear(3, 2)), (TernaryConv2d, nn.Conv2d(3, 2, 1))])
def test_codes_of_another_shape_than_the_replaced_layer_are_refused(cls, like):
    with pytest.raises(ValueError, match=r"codes \(3, 2.*do not fit the layer's weight \(2, 3"):
        cls.from_codes(like, torch.zeros(3, 2, *like.weight.shape[2:], dtype=torch.int8), torch.ones(3), None,
                       bitnetcnn.quant.TernaryQuant())


def test_integer_code_sums_are_taken_only_where_float32_holds_them_exactly():
    """A sum of fan-in 8-bit codes times ternary ones reaches fan-in x 127: beyond 2**24 float32 rounds it, and the
    layer said it computed exactly where it did not (a Linear after flattening 64x64x64 features has 262,144 inputs)."""
    bit = BitLinear(140_000, 2, act_bits=8)
    bit.train()(torch.randn(4, 140_000))
    layer = convert_to_ternary(nn.Sequential(bit.eval()))[0]
    x = torch.randn(1, 140_000)
    assert not sums_exact(x, layer.weight[0].numel()) and sums_exact(x.double(), layer.weight[0].numel())
    assert sums_exact(torch.randn(1, 1000), 1000)


def test_converting_activation_quantizers_that_saw_no_training_batch_warns():
    """Their scale is each batch's absmax: an image alone and in a batch got other outputs (0.85% apart), no word."""
    model = bitnetcnn.create_model("bitnet_cnn", width=4, act_bits=8)
    with pytest.warns(UserWarning, match=r"11 activation quantizers \(stem\.conv\.act_quant and 10 more\) saw no training"):
        convert_to_ternary(copy.deepcopy(model).eval())
    with torch.no_grad():
        model.train()(torch.randn(4, 1, 28, 28))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_to_ternary(model.eval())


def test_a_model_on_the_meta_device_is_refused_with_what_to_do():
    """torch's own error spoke of nonzero() and a flag that would make it fake the answer."""
    with torch.device("meta"):
        model = bitnetcnn.create_model("bitnet_cnn", width=4)
    with pytest.raises(ValueError, match=r"layer '.*': the weight is on the meta device.*model\.to_empty"):
        convert_to_ternary(model.eval())


def test_bitify_takes_one_skip_name_and_names_what_it_leaves():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv1d(2, 2, 1), nn.Flatten(), nn.LazyLinear(3))
    model[3] = nn.Linear(2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bit = bitify(model, skip="3")  # one pattern, not the letters of a string
    said = " ".join(str(w.message) for w in caught)
    assert type(bit[3]) is nn.Linear and isinstance(bit[0], BitConv2d), bit
    assert "1 layer of other kinds stay in full precision: 1 (Conv1d)" in said, said
    with pytest.warns(UserWarning, match=r"ternary already \(1 Bit layers\) and bitify leaves their settings"):
        bitify(bit, skip="3", act_bits=8)
    # a name of several letters: "fc" would match a layer named "f" or "c" as letters of a string
    named = nn.Sequential()
    named.add_module("f", nn.Linear(3, 3))
    named.add_module("fc", nn.Linear(3, 3))
    named.add_module("c", nn.Linear(3, 3))
    kept = bitify(named, skip="fc")
    assert [type(m).__name__ for m in kept] == ["BitLinear", "Linear", "BitLinear"]


def test_bitify_keeps_in_float_the_layers_whose_weight_their_parent_reads_itself():
    """torchvision's Swin attention passes ``qkv.weight`` to a function, and nn.TransformerEncoderLayer's fast path
    (eval, no gradients) reads ``linear1.weight``: as Bit layers they computed in float (the Bit model equalled the
    float one) and converted to ternary (0.42 off on the encoder layer), with no warning naming them."""
    class ReadsItsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(F.linear(x, self.qkv.weight, self.qkv.bias))

    for model, read in ((ReadsItsWeight(), ["qkv"]),
                        (nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0), ["linear1", "linear2"])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bit = bitify(model.eval())
        said = " ".join(str(w.message) for w in caught)
        for name in read:
            assert type(bit.get_submodule(name)) is nn.Linear, name
            assert f"{name} (Linear, its weight read by its parent's forward)" in said, said
        x = torch.randn(2, 5, 8 if read == ["qkv"] else 16)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the encoder layer has nothing left to convert, and says so
            torch.testing.assert_close(convert_to_ternary(bit)(x), bit(x), atol=1e-5, rtol=0)
    assert isinstance(bitify(ReadsItsWeight()).head, BitLinear)  # the layer it calls is made ternary


def test_convert_to_ternary_returns_an_inference_model_and_an_eval_layer_s_quantizer_still_learns_when_training():
    """The converted model is for inference: eval mode even from a model in training mode. A Bit layer in eval mode
    whose input quantizer is set training (calibrating its running scale inside a frozen model) updates the scale
    on the float path, not on the exact-sums path that reads the scale as it is."""
    model = bitnetcnn.create_model("bitnet_cnn", width=4, act_bits=8).train()
    assert not convert_to_ternary(model).training and not any(m.training for m in convert_to_ternary(model).modules())
    layer = BitLinear(16, 4, act_bits=8).eval()
    layer.act_quant.train()
    with torch.no_grad():  # no gradient asked for: nothing but the quantizer's own pass could update it
        layer(torch.randn(8, 16))
        first = layer.act_quant.running_scale.clone()
        layer(torch.randn(8, 16) * 10)
    assert first > 0 and layer.act_quant.running_scale > first


@pytest.mark.parametrize("layer_type", ["conv", "linear"])
def test_a_converted_8bit_layer_computes_its_integer_sums_exactly_in_float32(layer_type):
    """A converted layer with an 8-bit input sums integer codes, then scales once: within a few float32 roundings of
    the exact result (float64 on the codes), as an int8 runtime computes it. On the dequantized input (the layers
    before) 29% of these 2048-input outputs missed this bound, and such errors flipped the published MobileNetV2's
    predictions against float64 and onnxruntime on 0.9% of the CIFAR-100 test images."""
    torch.manual_seed(0)
    if layer_type == "conv":
        bit, x = BitConv2d(2048, 64, 1, act_bits=8), torch.randn(4, 2048, 6, 6) * 3
    else:
        bit, x = BitLinear(2048, 64, act_bits=8), torch.randn(16, 2048) * 3
    bit.train()(x)  # sets the quantizer's running scale
    layer = convert_to_ternary(bit.eval()).eval()
    codes, step = layer.act_quant.grid(x)
    weights = layer.codes().double()
    sums = F.conv2d(codes.double(), weights) if layer_type == "conv" else F.linear(codes.double(), weights)
    shape = (1, -1, 1, 1) if layer_type == "conv" else (1, -1)
    scaled = sums * (step.double() * layer.channel_scale().double()).view(shape)
    bias = layer.bias.double().view(shape)
    error = (layer(x).double() - (scaled + bias)).abs()
    assert (error <= 4 * torch.finfo(torch.float32).eps * (scaled.abs() + bias.abs())).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_8bit_model_and_its_conversion_agree(dtype):
    """A half-precision Bit model with 8-bit activations once changed its function at conversion: the activation
    grid's step (trained in float32) was cast to the model's dtype (0.0900591 -> 0.0898438 in bf16), and the biases
    were snapped to an int32 grid that half precision cannot hold (a BatchNorm shift moved by a whole bf16 step).
    The step now stays float32 and half-precision biases keep their trained values."""
    torch.manual_seed(0)
    bit = nn.Sequential(BitConv2d(8, 16, 3, padding=1, bias=False, act_bits=8, device=None, dtype=dtype),
                        nn.BatchNorm2d(16, dtype=dtype), nn.ReLU(), nn.Flatten(),
                        BitLinear(16 * 6 * 6, 10, act_bits=8, dtype=dtype))
    with torch.no_grad():
        for _ in range(3):  # training batches set the running scales and BatchNorm statistics
            bit(torch.randn(32, 8, 6, 6, dtype=dtype) * 3.3)
    bit.eval()
    ternary = convert_to_ternary(bit)
    assert ternary[0].act_quant.running_scale.dtype == torch.float32
    assert torch.equal(ternary[0].act_quant.running_scale, bit[0].act_quant.running_scale)
    x = torch.randn(64, 8, 6, 6, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(ternary(x), bit(x))
    # a model cast after it was built keeps its grid's step in float32 too (the step of a float64 model: float64)
    assert bit.to(dtype)[0].act_quant.running_scale.dtype == torch.float32
    assert bit.double()[0].act_quant.running_scale.dtype == torch.float64


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def test_a_converted_layer_with_8_bit_inputs_passes_the_gradient_to_its_input_as_its_bit_layer_does():
    """On its input's integer codes it cut the gradient: a residual model's saliency came from the shortcut alone
    (3.3 off the Bit model's), and a plain one could not backward at all."""
    torch.manual_seed(0)
    bit = warm_up(bitify(_Residual(), act_bits=8), torch.randn(2, 4, 6, 6))
    ternary = convert_to_ternary(bit)
    x = torch.randn(2, 4, 6, 6)
    grads = []
    for model in (bit, ternary):
        given = x.clone().requires_grad_()
        model(given).square().sum().backward()
        grads.append(given.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-4)
    conv = ternary.conv
    codes, step = conv.act_quant.grid(x)
    exact = rescaled(conv._weighted(codes, torch.sign(conv.weight), None), step, conv.channel_scale(), conv.bias, -3)
    with torch.no_grad():  # without a gradient the exact integer path
        assert torch.equal(ternary(x), exact + x)
    # and with one the same values: saliency maps and adversarial inputs are of the function inference computes
    assert torch.equal(ternary(x.clone().requires_grad_()).detach(), exact + x)


def test_a_converted_layer_with_8_bit_inputs_under_float16_autocast_stays_finite():
    """Its integer codes were summed in float16 by autocast: past 65504 the outputs were inf."""
    torch.manual_seed(0)
    linear = nn.Linear(1024, 4)
    with torch.no_grad():
        linear.weight.copy_(0.02 * (torch.rand(4, 1024) + 0.2))  # mostly positive: large sums of codes
    x = 0.5 + 0.5 * torch.rand(8, 1024)
    bit = warm_up(bitify(nn.Sequential(linear), act_bits=8), x)
    ternary = convert_to_ternary(bit)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        expected, got = bit(x), ternary(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)


def test_a_converted_convolution_refuses_the_state_of_another_kernel_shape_as_nn_conv2d_does():
    """``weight_packed`` is flat bytes: a (3, 1) kernel's codes loaded into a (1, 3) one, and a 3x3 convolution's
    into a 1x1 one of 36 inputs, without a word."""
    def converted(conv):
        return convert_to_ternary(bitify(nn.Sequential(conv)))

    tall = converted(nn.Conv2d(4, 8, (3, 1), padding=(1, 0)))
    with pytest.raises(RuntimeError, match=r"0.weight_packed: it packs the codes of a weight shaped \(8, 4, 3, 1\), "
                                           r"the current model's is \(8, 4, 1, 3\)"):
        converted(nn.Conv2d(4, 8, (1, 3), padding=(0, 1))).load_state_dict(tall.state_dict())
    with pytest.raises(RuntimeError, match=r"weight shaped \(8, 4, 3, 3\), the current model's is \(8, 36, 1, 1\)"):
        converted(nn.Conv2d(36, 8, 1)).load_state_dict(converted(nn.Conv2d(4, 8, 3)).state_dict())
    same = converted(nn.Conv2d(4, 8, (3, 1), padding=(1, 0)))
    buffer = io.BytesIO()
    torch.save(tall.state_dict(), buffer)  # the shape travels with a saved state dict
    same.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert torch.equal(same[0].weight, tall[0].weight)


@pytest.mark.parametrize("scale_op", ["median", "mean"])
def test_a_float64_converted_layer_made_trainable_keeps_its_scales_unrounded(scale_op):
    """``to_bit`` computed the latent weight in float32: a float64 model's scales came back 5e-8 apart."""
    torch.manual_seed(0)
    bit = bitify(nn.Sequential(nn.Conv2d(8, 4, 3, dtype=torch.float64)), scale_op=scale_op).eval()
    with torch.no_grad():
        bit[0].weight.normal_()
    ternary = convert_to_ternary(bit)
    again = convert_to_bit(ternary).eval()
    assert again[0].weight.dtype == torch.float64
    assert torch.equal(again[0].ternary_state()[0], ternary[0].codes())
    torch.testing.assert_close(again[0].ternary_state()[1], ternary[0].channel_scale(), rtol=1e-13, atol=0)


def test_bitify_skips_a_shared_layer_under_any_of_its_names_and_moves_backward_hooks():
    """A layer registered as both ``a`` and ``b``: skip=("b",) made it ternary anyway and warned that 'b' named no
    module. And backward hooks (Grad-CAM's) were dropped silently: only forward hooks moved to the Bit layer."""
    import warnings as w

    from bitnetcnn import bitify

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            conv = nn.Conv2d(3, 3, 1)
            self.a, self.b = conv, conv

        def forward(self, x):
            return self.b(self.a(x))

    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        model = bitify(Twice(), skip=("b",))
    assert type(model.a) is nn.Conv2d and model.a is model.b
    assert not [str(c.message) for c in caught if "name no module" in str(c.message)]

    calls = []
    float_model = nn.Sequential(nn.Conv2d(3, 4, 3))
    float_model[0].register_full_backward_hook(lambda m, gi, go: calls.append("backward"))
    float_model[0].register_full_backward_pre_hook(lambda m, go: calls.append("pre"))
    bit = bitify(float_model)
    bit(torch.randn(1, 3, 8, 8, requires_grad=True)).sum().backward()
    assert sorted(calls) == ["backward", "pre"]


def test_bitify_warns_when_the_bit_layers_there_keep_other_settings():
    from bitnetcnn import bitify
    from bitnetcnn.nn import BitConv2d

    model = nn.Sequential(BitConv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    with pytest.warns(UserWarning, match=r"had 1 Bit layer already, which keep their settings .*quantizes two ways"):
        bitify(model, act_bits=8, scale_op="mean")


def test_bitify_of_a_converted_model_says_it_is_converted_already():
    """It said the model had 'no nn.Conv2d or nn.Linear', true but no help: the way back is convert_to_bit."""
    from bitnetcnn import bitify

    converted = convert_to_ternary(bitify(nn.Sequential(nn.Conv2d(3, 4, 3))).eval())
    with pytest.warns(UserWarning, match=r"is converted already .*convert_to_bit\(model\)"):
        bitify(converted)


@pytest.mark.parametrize("name, kwargs, side", [("bitnet_cnn", dict(width=4, act_bits=8), 28),
                                                ("bit_resnet18", dict(act_bits=8), 32),
                                                ("bit_convnextv2", dict(act_bits=4, pow2=True), 28)])
def test_a_bit_model_with_quantized_activations_computes_in_evaluation_what_its_converted_model_computes(
        name, kwargs, side):
    """The converted layers summed their input's integer codes exactly and the Bit layers rounded each product of
    the dequantized input: the two disagreed on the top class (ConvNeXt: 3 of 4 images, logits 0.24 apart on 0.43;
    the published MobileNetV2: 1.9% of the test images), and a converted model asked for an input gradient
    computed the Bit model's function (2% of the predictions changed when the input required a gradient)."""
    torch.manual_seed(0)
    model = bitnetcnn.create_model(name, **kwargs)
    x = torch.randn(4, 1 if name == "bitnet_cnn" else 3, side, side)
    with torch.no_grad():
        model.train()(x)
    model.eval()
    converted = convert_to_ternary(copy.deepcopy(model), int32_biases=False)  # the biases as trained: no snap
    with torch.no_grad():
        expected = converted(x)
        assert torch.equal(model(x), expected)
    assert torch.equal(model(x).detach(), expected)  # with a gradient to the weights: the same values
    given = x.clone().requires_grad_()
    out = converted(given)
    assert torch.equal(out.detach(), expected)
    out.square().sum().backward()
    assert given.grad.abs().sum() > 0  # the float path's gradient reaches the input


def test_bitify_says_why_an_attention_block_s_output_projection_stays_float():
    """nn.MultiheadAttention reads out_proj's weight itself and never calls it: the warning blamed a forward of its
    own or a parametrization, neither of which it has."""
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.warns(UserWarning, match=r"0\.out_proj \(NonDynamicallyQuantizableLinear\).*read by their parent "
                                         r"instead of or besides being called \(nn\.MultiheadAttention's out_proj"):
        bitify(model)


def test_a_converted_8bit_linear_layers_bias_is_a_whole_number_of_int32_steps():
    """A TernaryLinear with an 8-bit input and no BatchNorm after it (a classifier) snaps its own bias onto the
    int8 runtime's int32 grid, input scale x weight scale / 64, moving it by at most half a step. The MobileNetV2
    snap test's one such layer (its classifier) still had its initial bias 0, which lies on every grid."""
    from bitnetcnn.quant.integer import CODE_GAIN

    torch.manual_seed(0)
    bit = BitLinear(32, 6, act_bits=8)
    with torch.no_grad():
        bit.bias.uniform_(-2, 2)
    warm_up(bit, 3 * torch.randn(64, 32))
    trained = convert_to_ternary(bit, int32_biases=False)
    layer = convert_to_ternary(bit)
    assert torch.equal(trained.bias, bit.bias)
    step = (layer.act_quant.running_scale.float() * layer.channel_scale().float() / CODE_GAIN).double()
    units = layer.bias.double() / step
    assert ((units - units.round()).abs() <= 1e-3).all(), units
    moved = (layer.bias.double() - bit.bias.double()).abs()
    assert (moved <= step / 2 * (1 + 1e-3)).all() and (moved > 0).all()


def test_a_registered_builder_that_bitifies_a_torchvision_model_saves_files_that_load(tmp_path):
    """bitify made each Bit layer with a fresh, initialized weight, then put the float layer's own back: a builder
    that bitifies allocated twice its model, over load_checkpoint's construction budget, so save_checkpoint wrote
    files load refused as damaged ("larger than this file can hold"). Now the Bit layer is made around the float
    layer's own parameters: nothing allocated, and no random numbers drawn."""
    import torchvision

    from bitnetcnn.models.registry import _REGISTRY, register_model

    def tv_mobilenet(num_classes: int = 10, in_chans: int = 3, spec=None, **kwargs):
        model = torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=1.0)
        return bitify(model, quant=spec.config) if spec.ternary else model

    register_model(num_classes=10)(tv_mobilenet)
    try:
        x = torch.randn(2, 3, 32, 32)
        for form in ("bit", "ternary"):
            model = bitnetcnn.create_model("tv_mobilenet").eval()
            model = convert_to_ternary(model) if form == "ternary" else model
            path = bitnetcnn.save_checkpoint(model, tmp_path / f"{form}.bnc")
            with torch.no_grad():
                assert torch.equal(bitnetcnn.load_checkpoint(path)(x), model(x)), form
    finally:
        _REGISTRY.pop("tv_mobilenet", None)
    float_model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=1.0)
    torch.manual_seed(0)
    bitify(float_model)
    after_bitify = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_bitify, torch.rand(3))  # bitify drew no random numbers


def test_bitify_names_every_layer_it_leaves_float_that_holds_a_weight_of_its_own():
    """A layer of another kind holding a weight matrix (timm's CondConv2d: 89% of efficientnet_cc_b0_4e's weights;
    nn.MultiheadAttention's in_proj_weight) stayed float without a word: only convolutions and nn.Bilinear were
    named."""

    class RoutedConv(nn.Module):  # CondConv2d's shape: experts' weights mixed per sample, then one convolution
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 8 * 3 * 3 * 3))

        def forward(self, x):
            return F.conv2d(x, self.weight.mean(0).view(8, 3, 3, 3), padding=1)

    model = nn.Sequential(RoutedConv(), nn.Conv2d(8, 8, 1))
    with pytest.warns(UserWarning, match=r"0 \(.*RoutedConv: a weight of its own\)") as caught:
        bit = bitify(model)
    assert isinstance(bit[1], BitConv2d) and not isinstance(bit[0], BitConv2d)
    with pytest.warns(UserWarning, match=r"0 \(MultiheadAttention: a weight of its own\)"):
        bitify(nn.Sequential(nn.MultiheadAttention(8, 2)))
    assert len([w for w in caught if "a weight of its own" in str(w.message)]) == 1


def test_converting_with_power_of_two_scales_a_model_trained_without_them_warns():
    """Each channel's scale rounded to a power of two moves its gain by up to 1.41x, compounding layer after layer
    (top-1 agreement with the Bit model 3% to 58% on torchvision models): the model trained with pow2 converts
    silently, the one without is warned about, with what to do."""
    trained = bitify(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)), pow2=False).eval()
    with pytest.warns(UserWarning, match=r"2 layers \(0 and 1 more\) were trained without power-of-two scales.*"
                                         r"train or fine-tune with pow2=True"):
        convert_to_ternary_p2(trained)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_to_ternary(trained)
        convert_to_ternary_p2(bitify(nn.Sequential(nn.Conv2d(3, 8, 3)), pow2=True).eval())


def test_a_bit_layer_built_on_a_device_keeps_its_activation_quantizer_there():
    layer = BitConv2d(3, 8, 3, act_bits=8, device="meta")
    assert layer.act_quant.running_scale.device.type == "meta"
    assert BitLinear(4, 4, act_bits=8, device="meta").act_quant.running_scale.device.type == "meta"


def test_a_ternary_layer_refuses_a_negative_or_misshaped_scale():
    """The integer-code path takes each weight's sign as its code and multiplies by the scale again: a negative
    scale cancelled there, so a hand-built layer gave +y on that path and -y on the float one (autocast, a huge
    fan-in, no 8-bit quantizer), without a word. One scale for four channels was refused and stays so."""
    from bitnetcnn.nn import TernaryLinear

    codes = torch.tensor([[1, 0, -1, 1], [0, 1, 1, -1]], dtype=torch.int8)
    with pytest.raises(ValueError, match=r"scale has negative values \(\[-0.5\]\).*flip the codes"):
        TernaryLinear(codes, torch.tensor([-0.5, 0.25]))
    with pytest.raises(ValueError, match=r"scale has \(1,\) values for 2 output channels"):
        TernaryLinear(codes, torch.tensor([0.5]))
    assert TernaryLinear(codes, torch.tensor([0.0, 0.25])).weight[0].abs().sum() == 0  # a dead channel: scale 0


def test_activation_codes_round_to_the_nearest_step_and_a_quantizer_that_never_saw_data_uses_the_batch():
    """Rounding to nearest (floor would move every code down by up to a step); an 8-bit quantizer in eval mode
    that never saw a training batch takes the batch's own absmax, not a zero scale (NaN outputs)."""
    from bitnetcnn.nn.act_quant import ActQuantizer
    from bitnetcnn.quant.activation import activation_codes

    assert activation_codes(torch.tensor([0.9, -0.4, 2.6, -2.6]), torch.tensor(1.0), 8).tolist() == [1, 0, 3, -3]
    x = torch.tensor([0.5, -1.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whatever it says of its unset scale, the outputs must be the batch's grid
        out = ActQuantizer(8).eval()(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.round(x * 127) / 127)
