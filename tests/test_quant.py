"""Property tests of the quantization math."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnetcnn.quant import (
    EPS,
    channel_scale,
    fake_quantize_activation,
    fake_quantize_weight,
    pack_2bit,
    pack_base3,
    pow2_exponent,
    pow2_scale,
    ternary_quantize,
    unpack_2bit,
    unpack_base3,
)
from bitnetcnn.quant.activation import absmax_scale

shapes = st.one_of(
    st.tuples(st.integers(1, 8), st.integers(1, 16)),
    st.tuples(st.integers(1, 8), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
)


def weights(shape, seed, zero_channels=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 10 ** torch.empty(()).uniform_(-4, 2, generator=g)
    w[:zero_channels] = 0
    return w


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31), scale_op=st.sampled_from(["median", "mean"]),
       pow2=st.booleans(), zeros=st.integers(0, 2))
def test_codes_and_scales(shape, seed, scale_op, pow2, zeros):
    w = weights(shape, seed, zero_channels=zeros)
    codes, scale = ternary_quantize(w, scale_op, pow2)
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    assert scale.shape == (w.shape[0],) + (1,) * (w.dim() - 1)
    assert torch.all(scale > 0) and torch.isfinite(scale).all()
    assert torch.all(codes[: min(zeros, w.shape[0])] == 0)  # zero channels are safe: codes 0, no NaN
    if pow2:
        exps = torch.log2(scale)
        assert torch.equal(exps, torch.round(exps))
    # the sign of every non-zero code follows the weight
    nz = codes != 0
    assert torch.equal(torch.sign(w)[nz].to(torch.int8), codes[nz])


def test_scale_ops_match_definition():
    w = torch.tensor([[1.0, -2.0, 3.0, -10.0], [0.0, 0.0, 0.0, 0.0]])
    assert channel_scale(w, "mean").flatten().tolist() == pytest.approx([4.0, EPS])
    assert channel_scale(w, "median").flatten().tolist() == pytest.approx([2.0, EPS])  # lower median, as torch


def test_pow2_scale_is_nearest_power_of_two_in_log_space():
    s = torch.tensor([0.3, 0.75, 1.0, 5.0])
    assert pow2_scale(s).tolist() == [0.25, 1.0, 1.0, 4.0]
    assert pow2_exponent(s).dtype == torch.int8


def test_fake_quant_forward_is_ternary_and_gradient_straight_through():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    q = fake_quantize_weight(w)
    codes, scale = ternary_quantize(w)
    assert torch.allclose(q, codes * scale)
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_clipped_ste_zeroes_gradient_outside_clip():
    w = torch.tensor([[0.1, 0.2, -0.3, 5.0]], requires_grad=True)
    fake_quantize_weight(w, "median", ste="clipped", clip=1.5).sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_clipped_ste_passes_the_gradient_at_the_clip_itself():
    """The docstring's rule, ``|W| > clip * s`` zeroed: a weight exactly at the clip still learns (scale 2, clip 1.5:
    the edge 3.0 is exact in floating point, so ``<`` for ``<=`` fails here)."""
    w = torch.tensor([[1.0, 2.0, -3.0, 8.0]], requires_grad=True)
    fake_quantize_weight(w, "median", ste="clipped", clip=1.5).sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_activation_quant_grid_and_ste():
    x = torch.linspace(-1, 1, 101, requires_grad=True)
    for bits in (8, 4):
        scale = absmax_scale(x, bits)
        y = fake_quantize_activation(x, scale, bits)
        levels = torch.round(y.detach() / scale)
        assert levels.abs().max() <= 2 ** (bits - 1) - 1
        assert torch.allclose(levels * scale, y.detach())
        assert len(y.detach().unique()) <= 2 ** bits - 1
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(g, torch.ones_like(x))


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 300), seed=st.integers(0, 2**31))
def test_packing_round_trips_for_every_length(n, seed):
    codes = torch.randint(-1, 2, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    p2, p3 = pack_2bit(codes), pack_base3(codes)
    assert p2.dtype == p3.dtype == torch.uint8
    assert p2.numel() == math.ceil(n / 4) and p3.numel() == math.ceil(n / 5)
    assert torch.equal(unpack_2bit(p2, n), codes)
    assert torch.equal(unpack_base3(p3, n), codes)


def test_packed_byte_layout_is_stable():
    # checkpoints store these bytes: digit (code + 1) of code i sits at bits 2i..2i+1, base 3 likewise, lowest first
    codes = torch.tensor([-1, 0, 1, 1, 1], dtype=torch.int8)
    assert pack_2bit(codes).tolist() == [0 | 1 << 2 | 2 << 4 | 2 << 6, 2]
    assert pack_base3(codes).tolist() == [0 + 1 * 3 + 2 * 9 + 2 * 27 + 2 * 81]
    assert torch.equal(unpack_2bit(pack_2bit(codes), 5), codes)


def test_packing_rejects_non_ternary():
    with pytest.raises(ValueError, match="codes in"):
        pack_2bit(torch.tensor([0, 2]))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown scale_op 'max'.*'median'"):
        channel_scale(torch.ones(2, 2), "max")
    with pytest.raises(ValueError, match="unknown ste"):
        fake_quantize_weight(torch.ones(2, 2), ste="tanh")


def test_one_quantization_config_validated_where_it_is_made():
    from bitnetcnn import BitConv2d, convert_to_ternary, create_model
    from bitnetcnn.quant import DEFAULT_QUANT, TernaryQuant

    for bad, message in [(dict(scale_op="max"), "unknown scale_op 'max'"), (dict(act_bits=3), "unsupported act_bits 3"),
                         (dict(ste="tanh"), "unknown ste 'tanh'"), (dict(ste_clip=0), "ste_clip must be"),
                         (dict(pow2="yes"), "pow2 must be True or False")]:
        with pytest.raises(ValueError, match=message):
            TernaryQuant(**bad)
    with pytest.raises(ValueError, match="unknown scale_op 'max'"):
        BitConv2d(1, 1, 1, scale_op="max")
    q = TernaryQuant(scale_op="mean", act_bits=8)
    layer = BitConv2d(2, 3, 1, quant=q)
    assert layer.quant is q and (layer.scale_op, layer.act_bits, layer.act_quant.bits) == ("mean", 8, 8)
    assert BitConv2d(2, 3, 1).quant == DEFAULT_QUANT
    assert BitConv2d(2, 3, 1, quant=q, pow2=True).quant == TernaryQuant(scale_op="mean", act_bits=8, pow2=True)
    # conversion keeps each layer's own config; --pow2 is recorded in the layers and in model_args alike
    model = create_model("bitnet_cnn", width=8, scale_op="mean").eval()
    converted = convert_to_ternary(model)
    assert converted.stem.conv.quant == TernaryQuant(scale_op="mean")
    p2 = convert_to_ternary(model, pow2=True)
    assert p2.stem.conv.quant == TernaryQuant(scale_op="mean", pow2=True) and p2.model_args["pow2"] is True
    assert model.model_args["pow2"] is False and converted.model_args["pow2"] is False


def test_power_of_two_scales_keep_a_weight_gone_nan_visible():
    """round(log2(NaN)) cast to int8 was 0: a diverged channel became scale 1 and computed 0 without a word."""
    w = torch.randn(3, 8)
    w[1, 2] = float("nan")
    _, scale = ternary_quantize(w, "mean", pow2=True)
    assert torch.isnan(scale[1]).all() and torch.isfinite(scale[[0, 2]]).all()
    with pytest.raises(ValueError, match=r"1 channel\(s\) \(1\) have the scale nan.*not finite"):
        pow2_exponent(scale.reshape(-1))
    assert pow2_exponent(torch.tensor([0.3, 1.0, 5.0])).tolist() == [-2, 0, 2]


def test_float16_activations_quantize_zeros_to_zero_and_keep_tiny_values():
    """A float16 step of 1e-8 rounds to 0: zeros became 0/0 = NaN and values under ~4e-6 went to 0."""
    zeros = torch.zeros(2, 5, dtype=torch.float16)
    out = fake_quantize_activation(zeros, absmax_scale(zeros, 8), 8)
    assert out.dtype == torch.float16 and torch.equal(out, zeros)
    tiny = torch.tensor([1e-6, -2e-6, 3e-7], dtype=torch.float16)
    expected = fake_quantize_activation(tiny.float(), absmax_scale(tiny, 8), 8).half()
    assert torch.equal(fake_quantize_activation(tiny, absmax_scale(tiny, 8), 8), expected)
    assert fake_quantize_activation(tiny, absmax_scale(tiny, 8), 8).abs().min() > 0


def test_the_straight_through_forward_is_exactly_the_quantized_value():
    """``w + (q - w).detach()`` rounds off the grid where |w| > 2s: an eval-mode Bit model run with gradients on
    differed from its converted twin."""
    torch.manual_seed(0)
    w = (torch.randn(16, 288) * torch.rand(16, 1) * 3).requires_grad_()
    codes, scale = ternary_quantize(w.detach(), "median")
    out = fake_quantize_weight(w, "median")
    assert torch.equal(out, codes.float() * scale)
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    x = (torch.randn(4, 300) * 30).requires_grad_()
    scale = absmax_scale(x, 8)
    fq = fake_quantize_activation(x, scale, 8)
    assert torch.equal(fq, fake_quantize_activation(x.detach(), scale, 8))
    fq.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_codes_outside_the_ternary_set_are_refused_before_any_cast():
    for bad in (torch.tensor([255, 0, 257]), torch.tensor([0.7, 0.0]), torch.tensor([-2, 1], dtype=torch.int8)):
        for pack in (pack_2bit, pack_base3):
            with pytest.raises(ValueError, match=r"ternary packing needs codes in \{-1, 0, 1\}"):
                pack(bad)


def test_activation_bits_must_be_an_int():
    from bitnetcnn.nn import ActQuantizer
    from bitnetcnn.quant import TernaryQuant

    for bits in (8.0, True):
        with pytest.raises(ValueError, match="unsupported act_bits"):
            TernaryQuant(act_bits=bits)
        with pytest.raises(ValueError, match="unsupported act_bits"):
            ActQuantizer(bits)


# --- values a mutation of the arithmetic left unchecked (each assertion fails under one such change) ----------------


def test_ternary_codes_round_to_the_nearest_code_against_the_exact_scale_even_with_power_of_two_scales():
    """round, not truncation: 0.8 of the scale is a 1 (truncation made it 0); and with pow2 the codes are taken
    against the exact scale (0.65 here), the power of two (0.5) multiplies them only."""
    codes, scale = ternary_quantize(torch.tensor([[0.6, -0.6, 0.4, 1.4]]), "mean")  # scale 0.75
    assert codes.tolist() == [[1, -1, 1, 1]] and scale.flatten().tolist() == pytest.approx([0.75])
    codes, scale = ternary_quantize(torch.tensor([[1.0, 1.0, 0.3, 0.3]]), "mean", pow2=True)
    assert codes.tolist() == [[1, 1, 0, 0]] and scale.flatten().tolist() == [0.5]  # against 0.5: [1, 1, 1, 1]


def test_activation_codes_are_symmetric_and_the_first_batch_sets_the_running_scale():
    """The grid is [-qmax, qmax] (an int8 runtime's symmetric range: -128 would be off it), and the running scale
    starts at the first batch's absmax, not a momentum step away from 0."""
    from bitnetcnn.nn import ActQuantizer
    from bitnetcnn.quant.activation import activation_codes

    assert activation_codes(torch.tensor([-1000.0, 1000.0]), torch.tensor(1.0), 8).tolist() == [-127, 127]
    assert activation_codes(torch.tensor([-1000.0]), torch.tensor(1.0), 4).tolist() == [-7]
    quantizer = ActQuantizer(8).train()
    quantizer(torch.tensor([0.5, -2.0]))
    assert quantizer.running_scale.item() == pytest.approx(2.0 / 127)
    quantizer(torch.tensor([4.0]))
    assert quantizer.running_scale.item() == pytest.approx(0.9 * 2.0 / 127 + 0.1 * 4.0 / 127)


@pytest.mark.parametrize("scale_op", ["median", "mean"])
@pytest.mark.parametrize("pow2", [False, True])
def test_ternary_quantization_of_tiny_weights_is_the_same_up_to_their_scale(scale_op, pow2):
    """Scaling a layer's weights by a power of two scales its ternary scale by it and leaves the codes alone, down
    to weights of ~1e-6 (a layer trained with strong weight decay): the floor that keeps an all-zero channel off NaN
    must sit far below any real scale, not round such a layer's codes to zero. (The property test only checks the
    signs of the non-zero codes, and a too-high floor just makes them all 0.)"""
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    codes, scale = ternary_quantize(w, scale_op, pow2)
    assert codes.ne(0).float().mean() > 0.5
    factor = 2.0**-20  # ~1e-6, exact in float32: every division and median scales exactly
    tiny_codes, tiny_scale = ternary_quantize(w * factor, scale_op, pow2)
    assert torch.equal(tiny_codes, codes)
    assert torch.equal(tiny_scale, scale * factor)


def test_the_clipped_straight_through_mask_is_taken_against_the_exact_scale_even_with_power_of_two_scales():
    """As the codes are, the clipped estimator's window |W| <= clip * s is measured against the exact scale, so a
    weight's gradient does not depend on the scale's format: here the exact scales 0.7 and 0.75 round to the powers
    of two 0.5 and 1.0, which would stop the 1.0 (beyond 1.5 * 0.5) and let the 1.3 through (within 1.5 * 1.0)."""
    w = torch.tensor([[0.7, -0.7, 0.7, 1.0, 0.2, 3.0],
                      [-0.75, 0.75, 0.75, 1.3, 0.2, -0.1]], requires_grad=True)
    expected = [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]]
    assert channel_scale(w).flatten().tolist() == pytest.approx([0.7, 0.75])
    assert pow2_scale(channel_scale(w)).flatten().tolist() == [0.5, 1.0]
    for pow2 in (False, True):
        w.grad = None
        fake_quantize_weight(w, "median", pow2=pow2, ste="clipped", clip=1.5).sum().backward()
        assert w.grad.tolist() == expected, pow2


def test_the_clipped_ste_passes_gradients_inside_the_layers_own_scale_op():
    """Weights within clip (1.5) times the channel's scale get the gradient, the scale being the layer's own: with
    the median (0.1) the 0.3 weight is cut, where the mean (0.52) would let it through; every other test's weights
    gave both masks alike."""
    from bitnetcnn.quant.ternary import fake_quantize_weight

    w = torch.tensor([[0.1, 0.1, 0.1, 0.3, -2.0]], requires_grad=True)  # median |w| 0.1, mean 0.52
    fake_quantize_weight(w, "median", ste="clipped").sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]


def test_a_power_of_two_exponent_refuses_a_zero_scale_and_an_infinite_scale_stays_infinite():
    """A zero scale has no exponent (stored as -128 it would be a silent 2**-128); pow2_scale leaves infinities."""
    from bitnetcnn.quant.scale import pow2_exponent, pow2_scale

    with pytest.raises(ValueError, match=r"1 channel\(s\) \(1\)"):
        pow2_exponent(torch.tensor([0.5, 0.0]))
    assert pow2_scale(torch.tensor([float("inf"), 0.3])).tolist() == [float("inf"), 0.25]
