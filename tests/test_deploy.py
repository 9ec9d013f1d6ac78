"""The deployment path: BN folding, int8 compile (onnxruntime), ONNX export and its refusals, the CLI commands."""

import functools
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from bitnetcnn import TernaryConv2d, TernaryLinear, bitify, convert_to_ternary, create_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from bitnetcnn.deploy import NotDeployableError, compile, export_onnx, fold_batchnorm  # noqa: E402


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorms with non-trivial statistics, negative and zero gammas included (a fold must handle them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g))
                m.weight[0] = 0.0
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


@functools.lru_cache(maxsize=2)
def _mnist_split(train: bool):
    """MNIST digits from the bundled mnist_demo (10,000 train, 2,000 test): the deploy tests need no real data."""
    from bitnetcnn.data import get_dataset_spec
    from bitnetcnn.settings import data_root

    spec = get_dataset_spec("mnist_demo")
    return spec, spec.reader(data_root(None), train, False)


def _mnist(train: bool, n: int):
    from bitnetcnn.normalization import normalize

    spec, split = _mnist_split(train)
    idx = torch.randperm(len(split.images), generator=torch.Generator().manual_seed(1))[:n]
    return normalize(split.images[idx], spec.mean, spec.std), split.labels[idx]


@pytest.fixture(scope="module")
def mnist_model():
    """bitnet_cnn (narrow) with BN statistics and activation scales from real MNIST images, converted."""
    x, _ = _mnist(True, 256)
    models = {}
    for key, kwargs in {"plain": {}, "pow2": {"pow2": True}, "act8": {"act_bits": 8, "act": "relu"}}.items():
        torch.manual_seed(0)
        m = create_model("bitnet_cnn", width=16, **kwargs).train()
        with torch.no_grad():
            for i in range(0, 256, 128):
                m(x[i:i + 128])  # BN running statistics and ActQuantizer running scales from real images
        models[key] = convert_to_ternary(m.eval())
    return models, x[:256]


@pytest.fixture(scope="module")
def deployed_plain(mnist_model):
    models, calib = mnist_model
    return compile(models["plain"], calib)


# --- BN folding -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"pow2": True}, {"fp_ends": True}, {"act_bits": 8}])
def test_fold_batchnorm_is_exact(kwargs):
    model = _randomize_bn(create_model("bitnet_cnn", width=8, **kwargs)).eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "act_quant") and hasattr(m.act_quant, "running_scale"):
                m.act_quant.running_scale.fill_(0.05)
    converted = convert_to_ternary(model)
    folded = fold_batchnorm(converted)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in converted.modules()), "fold must not change its input"
    before, after = dict(converted.named_modules()), dict(folded.named_modules())
    for name, m in after.items():
        if hasattr(m, "codes") and name in before and hasattr(before[name], "codes"):
            assert torch.equal(m.codes().abs() <= before[name].codes().abs(), torch.ones_like(m.codes(), dtype=bool))
            assert bool((m.channel_scale() > 0).all())
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref, out = converted(x), folded(x)
    if kwargs.get("act_bits"):  # quantized activations: a 1-ulp change may move a rounding, nothing more
        assert (ref.argmax(1) == out.argmax(1)).all()
    else:
        assert torch.allclose(ref, out, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    # Layer by layer too, each folded conv given its unfolded twin's input: with random statistics the logits
    # hardly depend on the input (they move ~1e-6 from one random batch to another), so a wrong fold of an early
    # layer could pass above.
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    unfolded = [m for m in before.values() if isinstance(getattr(m, "norm", None), nn.BatchNorm2d)]
    hooks = [m.register_forward_hook(lambda m, args, output: seen.__setitem__(m, (args[0].clone(), output.clone())))
             for m in unfolded]
    with torch.no_grad():
        converted(x)
        for h in hooks:
            h.remove()
        names = {m: name for name, m in before.items()}
        for m, (given, expected) in seen.items():
            got = after[names[m]](given)
            assert not torch.equal(expected, torch.zeros_like(expected))
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item()), names[m]
    assert len(seen) == len(unfolded) >= 7


def test_fold_flips_codes_for_negative_gamma():
    conv = create_model("bitnet_cnn", width=8).eval()
    conv = _randomize_bn(conv)
    converted = convert_to_ternary(conv)
    bn = converted.stem.norm
    folded = fold_batchnorm(converted).stem.conv
    negative = bn.weight < 0
    assert negative.any()
    before = converted.stem.conv.codes()
    assert torch.equal(folded.codes()[negative], -before[negative])
    assert torch.equal(folded.codes()[~negative & (bn.weight != 0)], before[~negative & (bn.weight != 0)])
    assert (folded.codes()[bn.weight == 0] == 0).all()


def test_the_graph_input_is_quantized_only_on_the_models_own_grid(mnist_model):
    """A calibrated graph reads the normalized image in float (its first convolution runs in float): a u8 grid
    measured on it would round every pixel a second time. A model whose first layer has an 8-bit quantizer reads it
    on that quantizer's grid, clamped at -127 steps first, as the converted model does."""
    from bitnetcnn.deploy.compile import to_onnx_graph
    from bitnetcnn.deploy.onnx_graph import INPUT_NAME

    models, calib = mnist_model

    def readers(graph, tensor=INPUT_NAME):
        return sorted((n.op_type, n.output[0]) for n in graph.graph.node if tensor in n.input)

    assert [op for op, _ in readers(to_onnx_graph(models["plain"], calib)[0])] == ["Conv"]
    graph = to_onnx_graph(models["act8"])[0]
    (clip, clamped), = readers(graph)
    assert clip == "Clip" and [op for op, _ in readers(graph, clamped)] == ["QuantizeLinear"]


# --- compile: agreement with the converted model ------------------------------------------------------------------------


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


@pytest.mark.parametrize("key", ["plain", "pow2"])
def test_compile_agrees_with_converted_model_on_mnist(mnist_model, deployed_plain, key):
    models, calib = mnist_model
    model = models[key]
    deployed = deployed_plain if key == "plain" else compile(model, calib)
    assert deployed.info["int8"] and deployed.info["act_scales"] == "calibration"
    x, _ = _mnist(False, 1000)
    with torch.no_grad():
        ref = model(x)
    out = deployed(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _agreement(ref, out) >= 0.99
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_calibration_normalizes_int64_pixels_as_uint8_ones(mnist_model):
    """int64 pixels (randint, torch.tensor(list)) went to calibration raw (ranges of 0..255, the int8 graph at 7.8%
    accuracy against 99.4%, no word), while the deployed model normalized them."""
    from bitnetcnn.deploy.calibration import as_batches

    models, _ = mnist_model
    _, split = _mnist_split(False)
    pixels = split.images[:64]
    want = as_batches(pixels, models["plain"])
    for other in (pixels.long(), pixels.int(), pixels.numpy().astype(np.int64)):
        got = as_batches(other, models["plain"])
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="integer images must be pixels in 0..255"):
        as_batches(pixels.long() - 1, models["plain"])
    # one tensor of many images is split into batches (onnxruntime holds a batch's activations at once); the batches
    # of an iterable are kept as given
    assert [len(b) for b in as_batches(pixels, models["plain"], batch_size=24)] == [24, 24, 16]
    assert [len(b) for b in as_batches([pixels[:40], pixels[40:]], models["plain"], batch_size=24)] == [40, 24]


def test_a_container_holding_a_parameter_of_its_own_is_not_taken_for_a_plain_container():
    """A module of unknown kind with children is skipped as a container only when it holds no state itself: one that
    scales its children's output by a parameter of its own computes with it, which the exporter does not know."""
    from bitnetcnn.deploy.checks import NotDeployableError, check_deployable

    class Scaled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.gain = inner, torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return self.inner(x) * self.gain

    model = convert_to_ternary(create_model("bitnet_cnn", width=4).eval())
    check_deployable(model)
    model.head = Scaled(model.head)
    with pytest.raises(NotDeployableError, match="layer 'head' .*Scaled.* cannot be mapped"):
        check_deployable(model)


def test_the_deployed_model_reads_uint8_images_as_calibration_does_and_refuses_unnormalized_floats(
        mnist_model, deployed_plain, tmp_path):
    """uint8 images were cast to float and run unnormalized (17% agreement); they are normalized with the model's
    mean and std, as calibration normalizes them. Calibration pixels 0..255 passed as floats (8.8% agreement, no word)
    are refused, and so are check images of an export."""
    from bitnetcnn.normalization import normalize

    models, _ = mnist_model
    spec, split = _mnist_split(False)
    pixels = split.images[:200]
    normalized = normalize(pixels, spec.mean, spec.std)
    assert torch.equal(deployed_plain(pixels), deployed_plain(normalized))
    assert np.array_equal(deployed_plain.run_numpy(pixels.numpy()), deployed_plain.run_numpy(normalized.numpy()))
    # int64 pixels (torchvision.io, numpy arithmetic) too: they ran unnormalized (15.6% accuracy, no word)
    assert torch.equal(deployed_plain(pixels.long()), deployed_plain(normalized))
    assert np.array_equal(deployed_plain.run_numpy(pixels.numpy().astype(np.int32)),
                          deployed_plain.run_numpy(normalized.numpy()))
    with pytest.raises(ValueError, match="integer images must be pixels in 0..255"):
        deployed_plain(pixels.long() * 2)
    with pytest.raises(ValueError, match=r"calibration images span 0..255, .* pass uint8 images"):
        compile(models["plain"], pixels.float())
    with pytest.raises(ValueError, match=r"check_inputs span 0..255"):
        export_onnx(models["plain"], tmp_path / "m.onnx", check_inputs=pixels.float())
    assert not (tmp_path / "m.onnx").exists()
    # the deployed model's own call ran float pixels 0..255 unnormalized, without a word
    with pytest.raises(ValueError, match=r"images span 0..255, .* pass uint8 images"):
        deployed_plain(pixels.float())
    with pytest.raises(ValueError, match=r"images span 0..255"):
        deployed_plain.run_numpy(pixels.numpy().astype(np.float32))
    # pixels in 0..1 not normalized (ToTensor's output) lie inside MNIST's normalized range: they ran (14%), no word
    with pytest.warns(UserWarning, match=r"images all lie in 0..1, as pixels not yet normalized do"):
        deployed_plain(pixels.float() / 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deployed_plain(normalized)
    # one image (C, H, W), or images of another size, reached onnxruntime ("Invalid rank for input: 3")
    with pytest.raises(ValueError, match=r"batches shaped \(N, 1, 28, 28\), not \(1, 28, 28\): add the batch"):
        deployed_plain(normalized[0])
    with pytest.raises(ValueError, match=r"not \(28, 28\): add the batch and channel dimensions"):  # was "resize"
        deployed_plain(normalized[0, 0])
    with pytest.raises(ValueError, match=r"not \(2, 1, 32, 32\): resize them first"):
        deployed_plain.run_numpy(np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"not \(2, 3, 28, 28\): give 1-channel images \(greyscale"):  # was "resize"
        deployed_plain.run_numpy(np.zeros((2, 3, 28, 28), np.float32))
    # calibration or check images of another size were refused deep inside onnxruntime
    with pytest.raises(ValueError, match=r"calibration images are 1x32x32 but the model takes 1x28x28"):
        compile(models["plain"], torch.nn.functional.pad(normalized, (2, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"check_inputs are 1x32x32 but the model takes 1x28x28"):
        export_onnx(models["plain"], tmp_path / "m.onnx", check_inputs=torch.nn.functional.pad(normalized, (2,) * 4))


def test_a_model_without_weights_of_other_channels_than_its_registry_default_records_no_normalization():
    """A 3-channel bitnet_cnn has no normalization of its own: the registry's is MNIST's one value, which the ONNX
    metadata recorded and uint8 images were normalized with. None is known now: uint8 images are refused."""
    from bitnetcnn.checkpoint.pretrained_cfg import input_normalization

    model = convert_to_ternary(create_model("bitnet_cnn", in_chans=3, img_size=32, width=4).eval())
    assert input_normalization(model) is None
    assert input_normalization(convert_to_ternary(create_model("bitnet_cnn", width=4).eval())) is not None
    with pytest.raises(ValueError, match="uint8 images need the model's mean and std"):
        compile(model, torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))


def test_compile_int8_graph_is_fused_and_weights_are_ternary_codes(mnist_model, deployed_plain):
    from onnx import numpy_helper

    models, _ = mnist_model
    deployed = deployed_plain
    ops = {n.op_type for n in deployed.onnx_model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    inits = {i.name: numpy_helper.to_array(i) for i in deployed.onnx_model.graph.initializer}
    codes = inits["stage2.conv_dw.conv.weight_quantized"]
    assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-64, 0, 64}  # codes * CODE_GAIN
    folded = fold_batchnorm(models["plain"]).stage2.conv_dw.conv
    assert np.array_equal(codes, folded.codes().numpy() * 64)
    assert np.array_equal(inits["stage2.conv_dw.conv.weight_scale"] * 64, folded.channel_scale().numpy())


def test_act8_model_deploys_without_calibration_and_matches_top1(mnist_model):
    models, _ = mnist_model
    model = models["act8"]
    deployed = compile(model)  # no calibration: the model's own 8-bit scales
    assert deployed.info["act_scales"] == "model quantizers"
    x, _ = _mnist(False, 2000)
    with torch.no_grad():
        ref = model(x)  # the fake-quantized evaluation
    out = deployed(x)
    assert _agreement(ref, out) == 1.0


def test_act8_model_exports_its_float_graph_with_its_quantizers(mnist_model):
    """The float graph keeps the model's 8-bit quantizers; their absmax once had no ONNX form and the export failed."""
    models, _ = mnist_model
    model = models["act8"]
    deployed = compile(model, int8=False)
    assert any(n.op_type == "Round" for n in deployed.onnx_model.graph.node)  # the quantizers are in the graph
    x, _ = _mnist(False, 500)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(deployed(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("name, kwargs", [("bit_mobilenetv2", dict(width_mult=0.25)), ("bit_resnet18", {})])
def test_act8_silu_model_whose_last_activation_is_pooled_deploys_without_calibration(name, kwargs):
    """The model quantizes the pooled mean, not what is pooled: the last SiLU (Sigmoid, Mul), the residual add
    before it in a ResNet, and the pooling run in float, and need no range."""
    torch.manual_seed(0)
    bit = create_model(name, num_classes=10, act="silu", act_bits=8, **kwargs)
    bit.train()
    with torch.no_grad():
        for _ in range(3):
            bit(torch.randn(16, 3, 32, 32))  # sets the quantizers' running scales (and the BN statistics)
    model = convert_to_ternary(bit.eval())
    deployed = compile(model)
    graph = deployed.onnx_model.graph
    producer = {t: n for n in graph.node for t in n.output}
    pools = [n for n in graph.node if n.op_type in ("GlobalAveragePool", "ReduceMean")]
    assert pools and all(producer[p.input[0]].op_type == "Mul" for p in pools)  # not a DequantizeLinear
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        assert _agreement(model(x), deployed(x)) >= 0.95
    # its sigmoids' ranges (and a ResNet's sums) are derived, not its own grids: "auto" chooses as for any graph
    assert deployed.info["model_integers"] is False and "model's own" not in deployed.backend_reason


def _with_statistics(bit: nn.Module, input_size: tuple, batch: int = 64) -> nn.Module:
    """``bit`` with trained-like BatchNorms (gammas 0.5-1.5, betas +-0.5) and its quantizers' running scales and
    the BN statistics from a few batches, in eval mode."""
    with torch.no_grad():
        for m in bit.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        bit.train()
        for _ in range(3):
            bit(torch.randn(batch, *input_size))
    return bit.eval()


def _act8_mobilenetv2() -> nn.Module:
    """A converted 8-bit-activation MobileNetV2 x0.5 with trained-like statistics: one tie rounded otherwise
    anywhere shows in its logits."""
    torch.manual_seed(0)
    return _with_statistics(create_model("bit_mobilenetv2", num_classes=10, act_bits=8, width_mult=0.5), (3, 32, 32))


def test_act8_mobilenetv2_deploys_to_the_integers_its_converted_model_computes():
    """With a quantizer at every point the int8 graph requantizes (the residual branch's output and the shortcut's
    input too) and its biases on the int32 grid, onnxruntime computes the converted model's integers: the logits
    match to float rounding. Either missing, the chaotic 8-bit network lands about 2% away (the published
    MobileNetV2 with its biases as trained flips 2.86% of its CIFAR-100 predictions, docs/deploy.md). OpenVINO
    rounds some requantizations otherwise, so ``compile``'s "auto" takes onnxruntime for such a model."""
    bit = _act8_mobilenetv2()
    residual = [m for m in bit.features if m.use_residual]
    assert residual and all(hasattr(m.conv_pw, "out_quant") for m in residual)
    model = convert_to_ternary(bit)
    x = torch.randn(200, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    deployed = compile(model, backend="onnxruntime")
    error = ((torch.as_tensor(deployed(x)) - ref).norm(dim=1) / ref.norm(dim=1)).max().item()
    assert error < 1e-5, error
    auto = compile(model)
    assert auto.info["model_integers"] and auto.backend == "onnxruntime", auto.backend_reason
    assert "model's own" in auto.backend_reason
    # calibrated, its ranges are the images' (not the model's integers), whatever backend it is given
    assert not compile(model, calibration=x[:16], backend="onnxruntime").info["model_integers"]
    from bitnetcnn.deploy.backends import openvino_status

    if openvino_status()[0]:  # asked for by name, OpenVINO runs it, with a warning that says what it costs
        with pytest.warns(UserWarning, match="OpenVINO rounds some requantizations otherwise"):
            assert compile(model, backend="openvino").backend == "openvino"


@pytest.mark.parametrize("act_bits", [None, 4, 8])
def test_only_an_8bit_mobilenetv2_quantizes_its_residual_stream(act_bits):
    """The residual outputs and shortcuts are quantized to match an int8 graph: float and 4-bit models keep the
    function and the state dict they had (the seed's checkpoints load key for key)."""
    model = create_model("bit_mobilenetv2", num_classes=10, width_mult=0.25, act_bits=act_bits)
    keys = [k for k in model.state_dict() if "out_quant" in k]
    shortcuts = [m.quantize_shortcut for m in model.features if m.use_residual]
    assert shortcuts and all(shortcuts) == bool(keys) == (act_bits == 8)


def _act8_bitnet_cnn_with_conv_biases() -> nn.Module:
    """BitNetCNN's convolutions have biases of their own before their BatchNorms (MobileNetV2's are zero): a snap of
    that bias after the BatchNorm's moves the folded bias off its grid."""
    torch.manual_seed(0)
    bit = create_model("bitnet_cnn", width=8, act_bits=8)
    with torch.no_grad():
        for m in bit.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.3, 0.3)
    return _with_statistics(bit, (1, 28, 28))


@pytest.mark.parametrize("build, layers", [(_act8_mobilenetv2, 30), (_act8_bitnet_cnn_with_conv_biases, 5)])
def test_the_int32_bias_snap_moves_each_bias_by_at_most_half_a_step(build, layers):
    """``convert_to_ternary`` puts the folded bias of an 8-bit layer on its int32 grid (input scale x weight scale
    / 64), by at most half a step; ``int32_biases=False`` leaves the model as trained."""
    from bitnetcnn.quant.integer import int32_bias_step

    bit = build()
    exact, snapped = convert_to_ternary(bit, int32_biases=False), convert_to_ternary(bit)
    checked = moved = 0
    for a, b in zip(fold_batchnorm(exact).modules(), fold_batchnorm(snapped).modules()):
        if isinstance(b, (TernaryConv2d, TernaryLinear)) and b.bias is not None:
            step = int32_bias_step(b.act_quant.running_scale, b.channel_scale())
            units = b.bias.double() / step
            # On the grid, to float32 precision: folding rounds the bias a few float32 ulps away from it, which is
            # ~1e-7 of the bias (0.004 of a step for a bias of 37,000 steps; measured up to 0.0104 on an AVX2 CPU).
            ulps = 8 * torch.finfo(torch.float32).eps * units.abs()
            assert ((units - units.round()).abs() <= 0.01 + ulps).all()
            assert ((b.bias.double() - a.bias.double()).abs() <= step / 2 * (1 + 1e-3) + 1e-9).all()
            checked += 1
            moved += not torch.equal(a.bias, b.bias)
    assert checked > layers and moved > layers


@pytest.mark.parametrize("name, kwargs", [("bitnet_cnn", dict(width=16, act="relu")),
                                          ("bit_mobilenetv2", dict(width_mult=0.25, act="relu6"))])
def test_every_point_kept_in_float_computes_the_float_model(name, kwargs, tmp_path):
    """quantize_static folds a ReLU (or ReLU6's Clip) into the grid of the QuantizeLinear after it: removing that
    pair must put the activation back, so a graph with every point in float computes what the model computes; an
    exported int8 file keeps the record of what was folded."""
    import onnx

    from bitnetcnn.deploy.int8 import keep_in_float
    from bitnetcnn.deploy.runtime import DeployedModel

    torch.manual_seed(0)
    size = 28 if name == "bitnet_cnn" else 32
    chans = 1 if name == "bitnet_cnn" else 3
    bit = create_model(name, num_classes=10, **kwargs).train()
    with torch.no_grad():
        for _ in range(3):
            bit(torch.randn(16, chans, size, size))  # BN statistics
    model = convert_to_ternary(bit.eval())
    x = torch.randn(32, chans, size, size)
    export_onnx(model, tmp_path / "m.onnx", int8=True, calibration=x[:16], check_inputs=x[16:])
    graph = onnx.load(tmp_path / "m.onnx")
    activation = "Relu" if name == "bitnet_cnn" else "Clip"
    folded = sum(n.op_type == activation for n in graph.graph.node)
    points = {n.input[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"}
    floated = keep_in_float(graph, points)
    assert not any(n.op_type == "QuantizeLinear" for n in floated.graph.node)
    assert sum(n.op_type == activation for n in floated.graph.node) > folded  # the folded ones are back
    with torch.no_grad():
        want, got = model(x), DeployedModel(floated, threads=1)(x)
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()


def test_keep_in_float_keeps_the_pairs_it_cannot_undo():
    """A pair whose dequantized tensor is a graph output keeps it (the output's name would go), and so does a pair
    that stands for a folded Clip whose bounds are computed in the graph (it cannot be rebuilt)."""
    import json

    from onnx import TensorProto, helper

    from bitnetcnn.deploy.int8 import FOLDED_ACTIVATIONS, keep_in_float

    def qdq(src, dst):
        return [helper.make_node("QuantizeLinear", [src, "s", "z"], [f"{src}_q"]),
                helper.make_node("DequantizeLinear", [f"{src}_q", "s", "z"], [dst])]

    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("z", TensorProto.UINT8, [], [0])]
    value = helper.make_tensor_value_info
    nodes = [*qdq("x", "x_dq"), helper.make_node("Neg", ["x_dq"], ["t"]), *qdq("t", "y")]
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])],
                              inits)
    model = helper.make_model(graph)
    entry = model.metadata_props.add()
    entry.key, entry.value = FOLDED_ACTIVATIONS, json.dumps({"x": {"op": "Clip", "unknown_bounds": True}})
    kept = keep_in_float(model, {"x", "t"})
    assert [n.op_type for n in kept.graph.node] == ["QuantizeLinear", "DequantizeLinear", "Neg", "QuantizeLinear",
                                                     "DequantizeLinear"]


def test_compile_without_calibration_needs_quantizers(mnist_model):
    models, _ = mnist_model
    with pytest.raises(NotDeployableError, match="calibration"):
        compile(models["plain"])


# --- refusals ----------------------------------------------------------------------------------------------------------


def test_refuses_unconverted_models(tmp_path):
    bit = create_model("bitnet_cnn", width=8).eval()
    with pytest.raises(NotDeployableError, match="convert_to_ternary"):
        export_onnx(bit, tmp_path / "m.onnx")
    with pytest.raises(NotDeployableError, match="convert_to_ternary"):
        compile(bit, torch.randn(4, 1, 28, 28))
    fp = create_model("bitnet_cnn", width=8, quant="fp").eval()
    with pytest.raises(NotDeployableError, match="no TernaryConv2d"):
        export_onnx(fp, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


class _Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.gain


def test_refuses_layers_it_cannot_map(tmp_path):
    model = convert_to_ternary(create_model("bitnet_cnn", width=8)).eval()
    model.head.insert(0, _Odd())
    with pytest.raises(NotDeployableError, match=r"head\.0.*cannot be mapped"):
        export_onnx(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("int8", [False, True])
def test_refuses_a_batchnorm_without_running_statistics(int8):
    """Such a BatchNorm normalizes each batch by its own statistics in eval mode: an image's output depended on the
    images beside it, in the converted and the deployed model alike, without a word (export failed on a "dynamic
    batch axis" instead)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    model = convert_to_ternary(bitify(model, act_bits=8 if int8 else None)).eval()
    with pytest.raises(NotDeployableError, match=r"BatchNorm '1' keeps no running statistics"):
        compile(model, torch.randn(8, 3, 8, 8), input_size=(3, 8, 8), int8=int8)


def test_refuses_4bit_activations_for_int8(tmp_path):
    model = convert_to_ternary(create_model("bitnet_cnn", width=8, act_bits=4)).eval()
    with pytest.raises(NotDeployableError, match="4 bits"):
        export_onnx(model, tmp_path / "m.onnx", int8=True, calibration=torch.randn(8, 1, 28, 28))


# --- ONNX export ---------------------------------------------------------------------------------------------------------


def test_the_export_check_refuses_a_graph_whose_outputs_depend_on_the_batch_size(monkeypatch):
    """A graph whose batch axis is broken (here: a session adding the batch size to every output) is refused, where
    the full-batch comparison alone could still pass (an offset moves no argmax)."""
    import bitnetcnn.deploy.export as export_module

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()

    class BatchDependent:
        def run(self, _, feeds):
            (x,) = feeds.values()
            with torch.no_grad():
                return [model(torch.from_numpy(x)).numpy() + len(x) * (len(x) < 8)]

    monkeypatch.setattr(export_module, "make_session", lambda graph, threads: BatchDependent())
    x = torch.randn(8, 1, 2, 2)
    with pytest.raises(ValueError, match="outputs depend on the batch size; the dynamic batch axis is broken"):
        export_module.check_against_model(None, model, x)
    monkeypatch.setattr(BatchDependent, "run", lambda self, _, feeds: [model(torch.from_numpy(
        next(iter(feeds.values())))).detach().numpy()])
    assert export_module.check_against_model(None, model, x)["agreement"] == 1.0


@pytest.mark.parametrize("int8", [False, True])
def test_export_onnx_runs_with_dynamic_batch(mnist_model, tmp_path, int8):
    models, calib = mnist_model
    model = models["plain"]
    x, _ = _mnist(False, 300)
    path = tmp_path / "model.onnx"
    report = export_onnx(model, path, int8=int8, calibration=calib if int8 else None, check_inputs=x)
    assert path.exists() and report.real_images and report.agreement >= (0.95 if int8 else 0.99)
    assert report.images == 300  # the images given, not a few random ones
    if not int8:  # batches as compile() takes them ("too many values to unpack" before)
        again = export_onnx(model, tmp_path / "again.onnx", check_inputs=[x[:100], x[100:]])
        assert (again.images, again.agreement) == (300, report.agreement)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x[:7]).numpy()
    for batch in (1, 7):
        (out,) = session.run(None, {"input": x[:batch].numpy()})
        assert out.shape == (batch, 10)
        if not int8:
            np.testing.assert_allclose(out, ref[:batch], rtol=1e-3, atol=1e-4 * np.abs(ref).max())
        else:
            assert (out.argmax(1) == ref[:batch].argmax(1)).mean() >= 0.85
    graph = __import__("onnx").load(str(path))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["bitnetcnn.int8"] == ("true" if int8 else "false")
    # the scales of the pairs kept in float went with them: a runtime warns of every initializer no node reads
    read = {name for node in graph.graph.node for name in node.input}
    assert [t.name for t in graph.graph.initializer if t.name not in read] == []


def test_a_saved_deployed_model_carries_its_input_size_and_normalization(deployed_plain, tmp_path):
    """``DeployedModel.save`` wrote the bare graph: a user of the file could not tell the mean and std that
    ``export`` writes into its own files."""
    import json

    from bitnetcnn.data import get_dataset_spec

    path = deployed_plain.save(tmp_path / "fast.onnx")
    meta = {p.key: p.value for p in __import__("onnx").load(str(path)).metadata_props}
    spec = get_dataset_spec("mnist")
    assert json.loads(meta["bitnetcnn.mean"]) == pytest.approx(list(spec.mean))
    assert json.loads(meta["bitnetcnn.std"]) == pytest.approx(list(spec.std))
    assert json.loads(meta["bitnetcnn.input_size"]) == [1, 28, 28] and meta["bitnetcnn.int8"] == "true"


def test_export_refuses_to_write_a_model_that_disagrees(mnist_model, tmp_path):
    models, _ = mnist_model
    x, _ = _mnist(False, 100)
    with pytest.raises(ValueError, match="nothing was written"):
        export_onnx(models["plain"], tmp_path / "m.onnx", check_inputs=x, min_agreement=1.01)
    assert not (tmp_path / "m.onnx").exists()


def test_export_of_an_8bit_model_refuses_a_graph_that_keeps_the_top_1_but_not_the_logits(mnist_model, tmp_path,
                                                                                        monkeypatch):
    """With activation quantizers only top-1 agreement was checked (a near-tie may round otherwise in onnxruntime),
    so a graph that shifted every logit by the same amount, which keeps every top-1, was written without a word. The
    median image must match to 0.1% of the largest logit."""
    import copy

    import bitnetcnn.deploy.export as export

    models, _ = mnist_model
    model = models["act8"]
    x, _ = _mnist(False, 200)
    export_onnx(model, tmp_path / "ok.onnx", check_inputs=x)  # the model's own graph passes
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.head[3].bias += 1.0  # every logit one higher (the classifier): the same top-1 everywhere
    graph_of = export.to_onnx_graph
    monkeypatch.setattr(export, "to_onnx_graph", lambda m, *args, **kwargs: graph_of(shifted, *args, **kwargs))
    with pytest.raises(ValueError, match=r"the median image differs by .* nothing was written"):
        export_onnx(model, tmp_path / "m.onnx", check_inputs=x)
    assert not (tmp_path / "m.onnx").exists()


def test_export_checks_a_float_graph_to_99_percent_and_a_thousandth_of_the_logits_and_an_int8_one_to_95(
        mnist_model, tmp_path, monkeypatch):
    """The thresholds in numbers, on a check that reports them (the graph itself is the model's): a float graph at
    98% agreement or 1% off the largest logit is refused; an int8 graph at 96% passes (near-ties of untrained
    models), at 94% not."""
    import bitnetcnn.deploy.export as export

    models, _ = mnist_model
    x, _ = _mnist(False, 20)
    report = {"agreement": 1.0, "rel_diff": 0.0, "median_rel_diff": 0.0, "max_abs_diff": 0.0, "batch_sizes": [20]}
    for int8, changes, refused in ((False, {"agreement": 0.98}, "top-1 agreement 98.00% < 99%"),
                                   (False, {"rel_diff": 0.01}, "is 1.00% of the largest logit"),
                                   (True, {"agreement": 0.94}, "top-1 agreement 94.00% < 95%"),
                                   (True, {"agreement": 0.96, "rel_diff": 0.5}, None),
                                   (False, {"agreement": 0.995, "rel_diff": 0.0009}, None)):
        monkeypatch.setattr(export, "check_against_model", lambda *args, **kwargs: dict(report, **changes))
        path = tmp_path / f"{int8}-{len(changes)}.onnx"
        if refused:
            with pytest.raises(ValueError, match=re.escape(refused)):
                export_onnx(models["plain"], path, int8=int8, calibration=x if int8 else None, check_inputs=x)
        else:
            export_onnx(models["plain"], path, int8=int8, calibration=x if int8 else None, check_inputs=x)
            assert path.exists()


# --- CLI ---------------------------------------------------------------------------------------------------------------


def test_cli_bench_writes_json(tmp_path, capsys):
    import json

    from bitnetcnn.cli import main

    out = tmp_path / "bench.json"
    # The deploy variant is compile(), tested above; here the command, the timing loop, sizes and the JSON.
    assert main(["bench", "bitnet_cnn", "--batch-sizes", "1", "4", "1", "--budget", "0", "--variants", "bit_eval",
                 "ternary", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["batch_size"] for r in report["results"]] == [1, 4]  # a size given twice is timed once
    assert set(report["results"][0]["variants"]) == {"fp32_eager", "bit_eval", "ternary"}
    assert report["results"][0]["variants"]["fp32_eager"]["speedup_vs_fp32"] == 1.0
    sizes = report["sizes"]
    assert sizes["ternary"]["disk_bytes"] < sizes["fp32_eager"]["disk_bytes"] / 4
    assert "vs fp32" in capsys.readouterr().out


def test_cli_bench_times_a_bfloat16_checkpoint_in_float32_and_says_so(tmp_path, capsys):
    """A bf16 file's layers met bench's float32 images: "Input type (float) and bias type (c10::BFloat16)"."""
    import json

    from bitnetcnn import hub, save_checkpoint
    from bitnetcnn.cli import main

    save_checkpoint(hub.load("bitnet_mnist", pretrained=True).to(torch.bfloat16), tmp_path / "bf16.bnc")
    out = tmp_path / "bench.json"
    assert main(["bench", str(tmp_path / "bf16.bnc"), "--batch-sizes", "2", "--budget", "0", "--variants",
                 "bit_eval", "ternary", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"][0]["variants"]) == {"fp32_eager", "bit_eval", "ternary"}
    assert "bf16.bnc is stored in bfloat16: timed in float32" in " ".join(report["notes"])
    assert "stored in bfloat16" in capsys.readouterr().out


def test_export_names_an_unknown_data_set_before_warning_about_it(tmp_path, capsys):
    from bitnetcnn.cli import main

    assert main(["export", "bitnet_mnist", "-o", str(tmp_path / "m.onnx"), "--dataset", "mnistt"]) == 2
    captured = capsys.readouterr()
    assert "unknown data set 'mnistt'. Did you mean mnist" in captured.err
    assert "warning" not in captured.err + captured.out  # it said "trained on mnist, not mnistt" first


def test_bench_refuses_more_threads_than_cpus_and_skips_what_a_float_model_lacks(tmp_path, capsys, monkeypatch):
    """OpenVINO caps its threads at the CPUs this process may use, PyTorch and onnxruntime do not: a --threads above
    them compared unlike runs. A float checkpoint has no Bit or ternary form: those rows timed the float model again."""
    import json

    import bitnetcnn.deploy.bench as bench_module
    from bitnetcnn import save_checkpoint
    from bitnetcnn.cli import main

    monkeypatch.setattr(bench_module, "usable_cores", lambda: 2)
    assert main(["bench", "bitnet_cnn", "--threads", "3", "--budget", "0"]) == 2
    assert "--threads 3, but this process may use 2 CPUs" in capsys.readouterr().err
    path = save_checkpoint(create_model("bitnet_cnn", width=4, quant="fp").eval(), tmp_path / "fp.bnc",
                           {"dataset": "mnist"})
    out = tmp_path / "bench.json"
    assert main(["bench", str(path), "--batch-sizes", "1", "--budget", "0", "--threads", "1", "--variants",
                 "bit_eval", "ternary", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"][0]["variants"]) == {"fp32_eager"}
    assert any("bit_eval and ternary skipped" in note for note in report["notes"])
    # the default variants: the deploy rows are skipped too (compile refuses a model without ternary layers)
    assert main(["bench", str(path), "--batch-sizes", "1", "--budget", "0", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"][0]["variants"]) == {"fp32_eager"}
    assert any(note.startswith("deploy_onnxruntime") and "skipped" in note for note in report["notes"])
    # compile refuses this model: bench names no backend it would pick (it said "picks auto")
    assert not any("compile(backend='auto')" in note for note in report["notes"]) and report["auto_backend"] is None
    assert "compile(backend='auto')" not in capsys.readouterr().out


def test_bench_of_one_deploy_backend_does_not_claim_what_auto_picks(tmp_path, capsys):
    """Timed alone, a backend was reported as "compile(backend='auto') picks auto"."""
    from bitnetcnn.deploy.backends import choose_backend
    from bitnetcnn.deploy.bench import bench, format_report

    report = bench("bitnet_cnn", (1,), budget_s=0, calibrate=8, variants=("deploy_onnxruntime",))
    text = format_report(report)
    assert "picks auto" not in text
    # a deployed model's size is its graph's: its runtime's memory was reported as that, unmeasured
    assert report["sizes"]["deploy_onnxruntime"]["memory_bytes"] is None
    assert "the memory its runtime holds is not measured" in text
    if choose_backend("auto")[0] == "auto":  # OpenVINO usable: auto would measure, and the bench did not
        assert report["auto_backend"] is None and "bench both deploy variants" in text
    else:
        assert report["auto_backend"] == "onnxruntime"


def test_cli_bench_deploys_an_act8_model_as_compile_does(tmp_path):
    """``bench`` times the graph ``compile(model)`` builds: an 8-bit-activation model from its own scales (no
    calibration), and it names onnxruntime as "auto"'s choice for it, as compile makes it."""
    import json

    from bitnetcnn import save_checkpoint
    from bitnetcnn.cli import main
    from bitnetcnn.deploy.compile import OWN_SCALES_REASON

    import bitnetcnn.deploy.bench as bench_module
    from bitnetcnn.checkpoint.pretrained_cfg import input_normalization

    model = convert_to_ternary(_act8_mobilenetv2())
    path = save_checkpoint(model, tmp_path / "act8.bnc")
    out = tmp_path / "bench.json"
    timed, timing = [], bench_module._time

    def time_and_look(fns, *args):  # what is timed is compile()'s model, its check of the input included
        timed.append(fns["deploy_onnxruntime"].normalization)
        return timing(fns, *args)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(bench_module, "_time", time_and_look)
        assert main(["bench", str(path), "--batch-sizes", "1", "--budget", "0", "--variants", "deploy_onnxruntime",
                     "--json", str(out)]) == 0
    assert timed == [input_normalization(model)] and timed[0] is not None
    report = json.loads(out.read_text())
    assert report["calibration"].startswith("nothing: the model's own")
    assert (report["auto_backend"], report["auto_backend_reason"]) == ("onnxruntime", OWN_SCALES_REASON)


def test_cli_export_refuses_a_bit_checkpoint_in_one_line(tmp_path, capsys):
    from bitnetcnn.checkpoint import save_checkpoint
    from bitnetcnn.cli import main

    path = save_checkpoint(create_model("bitnet_cnn", width=8), tmp_path / "bit.bnc")
    assert main(["export", str(path), "--format", "onnx", "-o", str(tmp_path / "m.onnx"), "--check", "0"]) == 2
    err = capsys.readouterr().err
    assert "convert_to_ternary" in err and "Traceback" not in err


def test_cli_export_refuses_calibration_for_a_float_graph(tmp_path, capsys):
    """--calibrate without --int8 was parsed and then ignored: a user asking for calibration got none."""
    from bitnetcnn.cli import main

    assert main(["export", "bitnet_mnist", "-o", str(tmp_path / "m.onnx"), "--calibrate", "64"]) == 2
    err = capsys.readouterr().err
    assert "--calibrate 64 sets the int8 graph's activation ranges: add --int8" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_warns_that_calibration_replaces_an_act8_model_s_own_scales(mnist_model, tmp_path, capsys):
    """`export --int8 --calibrate 64` of bitnet_mobilenetv2 wrote a graph agreeing on 95.4% of the images where its
    own scales give 99.8%, without a word."""
    from bitnetcnn import save_checkpoint
    from bitnetcnn.cli import main

    models, _ = mnist_model
    for key, warned in (("act8", True), ("plain", False)):
        save_checkpoint(models[key], tmp_path / f"{key}.bnc", {"dataset": "mnist_demo"})
        assert main(["export", str(tmp_path / f"{key}.bnc"), "-o", str(tmp_path / f"{key}.onnx"), "--int8",
                     "--calibrate", "64", "--check", "64", "--min-agreement", "0.5"]) == 0
        said = capsys.readouterr()
        assert ("has 8-bit activation scales of its own" in said.out + said.err) is warned, said


@pytest.mark.parametrize("value", ["2", "0", "-1", "nan"])
def test_cli_export_refuses_an_agreement_that_is_not_a_fraction(value, capsys, tmp_path):
    """--min-agreement 2 would blame the model for missing 200%; 0, -1 and nan would turn the check off."""
    from bitnetcnn.cli import main

    with pytest.raises(SystemExit):
        main(["export", "bitnet_mnist", "-o", str(tmp_path / "m.onnx"), "--min-agreement", value])
    assert not (tmp_path / "m.onnx").exists()
    assert f"--min-agreement: {value} is not a fraction in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bench", "bitnet_mnist", "--json", "DIR"], ["convert", "x.bnc", "-o", "DIR"],
                                  ["export", "bitnet_mnist", "-o", "DIR"]])
def test_cli_refuses_a_folder_as_the_file_to_write_before_any_work(argv, capsys, tmp_path):
    from bitnetcnn.cli import main

    with pytest.raises(SystemExit):
        main([str(tmp_path) if a == "DIR" else a for a in argv])
    assert f"{tmp_path} is a folder: give the path of a file to write" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bench", "bitnet_mnist", "--json", "OUT"], ["export", "bitnet_mnist", "-o", "OUT"]])
def test_cli_refuses_a_path_under_a_file_before_any_work(argv, capsys, tmp_path):
    """The calibration or the timing ran first, then writing failed with "[Errno 17] File exists"."""
    from bitnetcnn.cli import main

    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "notes.txt" / "sub" / "x.out") if a == "OUT" else a for a in argv])
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["export", "bench"])
def test_cli_export_and_bench_never_write_over_the_model_they_read_nor_a_checkpoint(command, capsys, tmp_path):
    """`export m.bnc -o m.bnc` replaced the checkpoint by its ONNX graph, `bench m.bnc --json m.bnc` by JSON, and
    either replaced a run's last.ckpt without a word."""
    from bitnetcnn import save_checkpoint
    from bitnetcnn.cli import main

    torch.manual_seed(0)
    model = convert_to_ternary(create_model("bitnet_cnn", width=4).eval())
    path = save_checkpoint(model, tmp_path / "m.bnc", {"dataset": "mnist"})
    other = tmp_path / "last.ckpt"
    other.write_bytes(b"a run's checkpoint")
    before = path.read_bytes()
    flag = "-o" if command == "export" else "--json"
    extra = ["--check", "0"] if command == "export" else ["--budget", "0", "--batch-sizes", "1"]
    assert main([command, str(path), flag, str(path), *extra]) == 2
    assert "is the model being read" in capsys.readouterr().err
    assert main([command, str(path), flag, str(other), *extra]) == 2
    assert "exists and is not a" in capsys.readouterr().err
    assert path.read_bytes() == before and other.read_bytes() == b"a run's checkpoint"
    if command == "bench":  # nor the record of a run beside its last.ckpt, though it ends in .json
        (tmp_path / "args.json").write_text("{}")
        assert main([command, str(path), flag, str(tmp_path / "args.json"), *extra]) == 2
        assert "is a training run's record (--resume reads it)" in capsys.readouterr().err
        assert (tmp_path / "args.json").read_text() == "{}"


def test_export_leaves_the_callers_model_in_its_mode(tmp_path):
    torch.manual_seed(0)
    model = convert_to_ternary(create_model("bitnet_cnn", width=4).eval()).train()
    export_onnx(model, tmp_path / "m.onnx", check_inputs=torch.randn(8, 1, 28, 28))
    assert model.training


def test_an_fp_ends_models_float_layers_quantize_on_the_ternary_layers_plus_minus_64_range():
    """Full-range int8 weights of an fp_ends classifier overflowed the 16-bit pair sums of AVX2 kernels without
    VNNI: a 12% logit error and 0% top-1 agreement on such a CPU, without a word."""
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = convert_to_ternary(create_model("bitnet_cnn", width=8, fp_ends=True).eval())
    x = torch.randn(64, 1, 28, 28)
    deployed = compile(model, x[:32], backend="onnxruntime")
    inits = {i.name: numpy_helper.to_array(i) for i in deployed.onnx_model.graph.initializer}
    floats = [k for k in inits if k.endswith("weight_quantized") and ("stem" in k or "head" in k or "fc" in k)]
    assert floats and all(np.abs(inits[k]).max() <= 64 for k in floats), floats
    with torch.no_grad():
        ref = model(x)
    error = ((torch.as_tensor(deployed(x)) - ref).abs().max() / ref.abs().max()).item()
    assert error < 0.05, error


def test_a_bfloat16_converted_model_exports_and_compiles_in_float32(tmp_path):
    """A bf16 file loads as bf16 now; its graph mixed bf16 and float32 folded layers and onnxruntime refused it."""
    torch.manual_seed(0)
    model = convert_to_ternary(create_model("bitnet_cnn", width=8).eval())
    import copy

    half = copy.deepcopy(model).to(torch.bfloat16)
    x = torch.randn(8, 1, 28, 28)
    deployed = compile(half, int8=False, backend="onnxruntime")
    with torch.no_grad():
        ref = copy.deepcopy(half).float()(x)
    assert torch.allclose(torch.as_tensor(deployed(x)), ref, atol=1e-4)
    export_onnx(half, tmp_path / "m.onnx", check_inputs=x)
    assert next(half.parameters()).dtype == torch.bfloat16  # the caller's model is left as it was


def test_convnext_pointwise_layers_deploy_as_int8_ternary_codes(capsys):
    """The exporter stores a channels-last linear layer's weight transposed under a generated name; the int8 pass
    found no weight named for the layer and refused every ConvNeXt. onnxruntime's calibration also printed its
    progress into stdout, where a command's own output (--json) goes."""
    from onnx import numpy_helper

    torch.manual_seed(0)
    bit = create_model("bit_convnextv2", num_classes=10, act_bits=8).train()
    with torch.no_grad():
        for _ in range(2):
            bit(torch.randn(8, 3, 32, 32))
    model = convert_to_ternary(bit.eval())
    x = torch.randn(64, 3, 32, 32)
    capsys.readouterr()
    deployed = compile(model, x[:32], backend="onnxruntime")
    assert capsys.readouterr().out == ""
    inits = {i.name: numpy_helper.to_array(i) for i in deployed.onnx_model.graph.initializer}
    pointwise = [name for name, m in model.named_modules() if name.endswith(("pwconv1", "pwconv2"))]
    assert pointwise and all(set(np.unique(inits[f"{name}.weight_quantized"])) <= {-64, 0, 64} for name in pointwise)
    with torch.no_grad():
        assert _agreement(model(x), deployed(x)) >= 0.9


def test_calibration_on_a_number_of_images_that_is_no_multiple_of_the_batch(mnist_model):
    """`export --int8 --calibrate 100` failed inside onnxruntime's percentile calibrator ("inhomogeneous shape"):
    the images went in as batches of 64 and 36."""
    models, calib = mnist_model
    for n in (100, 67):  # batches of 50; of 1 (67 is prime)
        deployed = compile(models["plain"], calib[:n], backend="onnxruntime")
        assert deployed.info["calibration_images"] == n


def test_cli_export_says_what_was_asked_for_once_and_knows_mnist_demo_is_mnist(tmp_path, capsys, monkeypatch):
    """`--check 0` (asked for) still raised a Python UserWarning; `--dataset mnist_demo` on an MNIST weight warned
    of another input distribution; without MNIST, int8 export did not point at the bundled sample."""
    import warnings

    from bitnetcnn.cli import main

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["export", "bitnet_mnist", "-o", str(tmp_path / "m.onnx"), "--check", "0"]) == 0
        assert main(["export", "bitnet_mnist", "-o", str(tmp_path / "m.onnx"), "--dataset", "mnist_demo",
                     "--check", "20"]) == 0
    assert not [w for w in seen if issubclass(w.category, UserWarning)], [str(w.message) for w in seen]
    err = capsys.readouterr().err
    assert "--check 0: the export is checked on random inputs only" in err and "another input distribution" not in err
    monkeypatch.setenv("BITNETCNN_DATA", str(tmp_path / "nothing"))
    assert main(["export", "bitnet_mnist", "-o", str(tmp_path / "q.onnx"), "--int8"]) == 2
    assert "or --dataset mnist_demo, the bundled sample of MNIST" in capsys.readouterr().err


def test_a_full_disk_leaves_an_earlier_export_and_bench_report_whole(tmp_path, monkeypatch):
    """`export -o` and `bench --json` wrote in place: a full disk left a cut file where a good one had been."""
    import errno
    import pathlib

    from bitnetcnn.deploy.bench import write_json

    report = tmp_path / "bench.json"
    report.write_text('{"good": 1}')

    def half(self, data, *args, **kwargs):
        with open(self, "w") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", half)
    with pytest.raises(OSError, match=f"No space left on device .writing {report}"):
        write_json({"new": list(range(100))}, report)
    monkeypatch.undo()
    assert report.read_text() == '{"good": 1}' and [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_a_bitified_torchvision_resnet_folds_its_batchnorms_and_deploys_in_int8():
    """torchvision's BasicBlock keeps conv1 and bn1 as attributes, not in an nn.Sequential: BatchNorm folding found
    no pair there, the ONNX optimizer fused each BatchNorm into its ternary weight, and int8 compilation refused
    with "the exported weight is not codes * scale". Pairs now come from the forward's data flow too (torch.fx)."""
    import torchvision

    torch.manual_seed(0)
    model = bitify(torchvision.models.resnet18(num_classes=10))
    with torch.no_grad():
        for _ in range(3):  # training batches settle the BatchNorm statistics
            model(torch.randn(16, 3, 32, 32))
    ternary = convert_to_ternary(model.eval())
    folded = fold_batchnorm(ternary)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        ref = ternary(x)
        assert torch.allclose(folded(x), ref, rtol=0, atol=1e-5 * ref.abs().max())
    # the input size from the calibration images: a bitified model names none (compile asked for input_size)
    deployed = compile(ternary, torch.randn(64, 3, 32, 32))
    assert _agreement(ref, deployed(x)) >= 0.95


class _SharedConv(nn.Module):
    """One convolution in two branches, each with its own BatchNorm (a shared detection head)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn1, self.bn2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.BatchNorm2d(8), \
            nn.Linear(8, 4)

    def forward(self, x):
        return self.fc((self.bn1(self.conv(x)) + self.bn2(self.conv(x.flip(-1)))).relu().mean((2, 3)))


class _SharedNorm(nn.Module):
    """One BatchNorm after two convolutions."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1), \
            nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc((self.bn(self.c1(x)) + self.bn(self.c2(x))).relu().mean((2, 3)))


@pytest.mark.parametrize("make", [_SharedConv, _SharedNorm])
def test_a_layer_used_twice_is_not_folded_and_deploys_as_the_model_computes(make):
    """Both BatchNorms were folded into the shared convolution (43% of the largest logit off, no word); a shared
    BatchNorm became nn.Identity after its first pair and the second failed ("'Identity' object has no attribute
    'num_features'")."""


    torch.manual_seed(0)
    model = make()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.bias.data.uniform_(-1, 1)
    ternary = convert_to_ternary(bitify(model).eval())
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        ref = ternary(x)
        assert torch.allclose(fold_batchnorm(ternary)(x), ref, rtol=0, atol=1e-5 * ref.abs().max())
    deployed = compile(ternary, int8=False, input_size=(3, 8, 8))
    assert torch.allclose(deployed(x), ref, rtol=0, atol=1e-5 * ref.abs().max())


def test_a_ternary_layer_used_twice_deploys_in_int8():
    """A layer registered under two names: the exporter names its one weight after the second, and int8 compilation
    refused it ("layer '2' was not found in the exported ONNX graph")."""


    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), conv, nn.ReLU(), conv, nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    ternary = convert_to_ternary(bitify(model).eval())
    deployed = compile(ternary, torch.randn(64, 3, 8, 8), input_size=(3, 8, 8), backend="onnxruntime")
    x = torch.randn(256, 3, 8, 8)
    with torch.no_grad():
        assert _agreement(ternary(x), deployed(x)) >= 0.95


class _AttributeLayers(nn.Module):
    """conv1/bn1 as attributes, as torchvision's ResNet holds them, and a Linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.bn1(self.conv1(x)).relu().mean((2, 3)))


def test_an_8_bit_activation_model_folds_the_batchnorm_after_an_attribute_convolution_and_deploys_in_int8():
    """torch.fx stepped into the TernaryLinear (its forward branches on its input) and the whole trace failed: no
    BatchNorm was folded, and int8 compile refused the model (a bitified torchvision ResNet-18 too) with "the
    exported weight is not codes * scale"."""


    torch.manual_seed(0)
    bit = bitify(_AttributeLayers(), act_bits=8).train()
    with torch.no_grad():
        for _ in range(3):
            bit(torch.randn(32, 3, 16, 16))
    ternary = convert_to_ternary(bit.eval())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fold_batchnorm(ternary).modules())
    deployed = compile(ternary, torch.randn(64, 3, 16, 16), input_size=(3, 16, 16), backend="onnxruntime")
    x = torch.randn(256, 3, 16, 16)
    with torch.no_grad():
        assert _agreement(ternary(x), deployed(x)) >= 0.95


def test_a_batchnorm_that_cannot_be_folded_is_named_when_int8_compile_refuses_the_model():
    """A BatchNorm1d after a Linear is left unfolded, and the ONNX optimizer merges it into the ternary weight: the
    refusal said only "the exported weight is not codes * scale"."""


    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16),
                          nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    ternary = convert_to_ternary(bitify(model).eval())
    with pytest.raises(NotDeployableError, match=r"the BatchNorm 5 could not be folded .* put each convolution and "
                                                 r"its BatchNorm2d side by side in one nn.Sequential, or deploy the "
                                                 r"float graph \(int8=False\)"):
        compile(ternary, torch.randn(16, 3, 8, 8), input_size=(3, 8, 8), backend="onnxruntime")
    deployed = compile(ternary, int8=False, input_size=(3, 8, 8), backend="onnxruntime")
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(deployed(x), ternary(x), atol=1e-5)
    # numpy's default float64, as __call__ takes it (onnxruntime refused it in its own words)
    assert np.allclose(deployed.run_numpy(x.double().numpy()), ternary(x).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_batchnorm_folding_keeps_the_models_dtype(dtype):
    """The folded ternary layers were float32 in any model: a float64 or bf16 model failed on its first input
    ("Input type (double) and bias type (float) should be the same")."""
    torch.manual_seed(0)
    model = create_model("bitnet_cnn", width=8)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28))
    ternary = convert_to_ternary(model.eval()).to(dtype)
    folded = fold_batchnorm(ternary)
    x = torch.randn(8, 1, 28, 28, dtype=dtype)
    with torch.no_grad():
        ref, out = ternary(x), folded(x)
    assert out.dtype == dtype
    tolerance = 1e-9 if dtype == torch.float64 else 0.05
    assert (out - ref).abs().max() <= tolerance * ref.abs().max()


def test_a_calibration_that_cannot_fit_in_memory_is_refused_before_its_images_are_read(mnist_model, monkeypatch,
                                                                                        capsys, tmp_path):
    """onnxruntime's calibrator keeps every image's activations: `export --int8 --calibrate 99999999` read 60,000
    MNIST images and was killed by the kernel with 21 GB in use, no word; bench's random inputs failed allocating."""
    from bitnetcnn.cli import main
    from bitnetcnn.deploy import calibration

    models, _ = mnist_model
    with monkeypatch.context() as patch:  # first: without the check, the commands below would fill the memory
        patch.setattr(calibration, "available_memory", lambda: 2**20)
        with pytest.raises(ValueError, match=r"calibration on 64 images would keep about .* MiB an image"):
            compile(models["plain"], torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8))
    for argv in (["export", "bitnet_mnist", "-o", str(tmp_path / "m.onnx"), "--int8", "--calibrate", "99999999"],
                 ["bench", "bitnet_mnist", "--variants", "deploy_onnxruntime", "--calibrate", "99999999"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "calibration on 99,999,999 images would keep about" in err and "calibrate on fewer images" in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_refuses_activation_quantizers_that_never_saw_a_training_batch(tmp_path):
    """Their scale is each batch's absmax: the export blamed 'the dynamic batch axis is broken', and compile would
    give answers that depend on the other images of a batch."""
    model = convert_to_ternary(create_model("bitnet_cnn", width=8, act_bits=8), int32_biases=False).eval()
    with pytest.raises(NotDeployableError, match=r"never saw a training batch.*model\.train\(\); model\(images\)"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_without_its_test_images_says_so_once(tmp_path, capsys):
    """With the data set absent the command said it would check on random inputs, then export_onnx's Python
    UserWarning said the same again."""
    from bitnetcnn.cli import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["export", "bitnet_mnist", "-o", str(tmp_path / "m.onnx"), "--data-dir", str(tmp_path / "none"),
                     "--check", "64"]) == 0
    said = capsys.readouterr()
    assert "checking on random inputs" in said.out + said.err
    assert not [str(w.message) for w in caught if "no check_inputs given" in str(w.message)]
    assert (tmp_path / "m.onnx").is_file()


def test_folding_a_float_convolution_with_a_bias_keeps_the_bias_scaled_by_the_batchnorm():
    """The folded bias is bias * gamma / sigma + shift; every folded float stem so far had no bias, and bias + shift
    would have passed."""
    from bitnetcnn.deploy.fold import _fold_float

    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4)
    with torch.no_grad():
        conv.bias.uniform_(-2, 2)
        bn.weight.uniform_(0.5, 3), bn.bias.uniform_(-1, 1), bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 4)
    bn.eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(_fold_float(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_a_tensor_several_8_bit_quantizers_read_gets_the_widest_grid_clamped_where_the_model_clamps():
    """The widest, so that no reader clips; zero point 128, so the u8 grid stops at +127 steps as the model's
    symmetric quantizer does (0 would let a ReLU's output through up to 255 steps)."""
    from bitnetcnn.deploy.int8 import _activation_overrides

    assert _activation_overrides({"a": [0.1, 0.3, 0.2], "b": [0.05]}) == {"a": (0.3, 128), "b": (0.05, 128)}


def test_data_free_ranges_take_the_widest_reader_a_relu_s_zero_point_0_and_a_sigmoid_s_unit_range():
    """A tensor that flows into several 8-bit inputs (a ReLU before two poolings, and the convolution before it)
    takes the widest of their grids, so that no reader clips; a ReLU's output, never negative, gets zero point 0
    (the whole u8 grid on its values), any other derived tensor 128; a sigmoid's output spans [0, 1] in 255 steps.
    Only whole-model deployments reached this function, and none of these choices moved them past a threshold."""
    from onnx import TensorProto, helper

    from bitnetcnn.deploy.int8 import _data_free_overrides

    value = helper.make_tensor_value_info
    inits = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [2, 2, 1, 1], [0.5, -0.5, 0.25, 1.0]) for i in range(3)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["y"], name="conv0"),
             helper.make_node("Relu", ["y"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["a"], name="pool_a", kernel_shape=[1, 1]),
             helper.make_node("MaxPool", ["r"], ["b"], name="pool_b", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["a", "w1"], ["out_a"], name="conv_a"),
             helper.make_node("Conv", ["b", "w2"], ["out_b"], name="conv_b"),
             helper.make_node("Sigmoid", ["y"], ["s"], name="sigmoid"),
             helper.make_node("Mul", ["y", "s"], ["out_s"], name="gate")]
    shape = [1, 2, 4, 4]
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, shape)],
                              [value(o, TensorProto.FLOAT, shape) for o in ("out_a", "out_b", "out_s")], inits)
    # the 8-bit quantizers' own grids: the image, and the inputs of the two convolutions after the poolings
    known = {"x": (0.05, 128), "a": (0.1, 128), "b": (0.3, 128)}
    ranges = _data_free_overrides(graph, known, set())
    assert ranges == {**known, "y": (0.3, 128), "r": (0.3, 0), "s": (1.0 / 255.0, 0)}


@pytest.mark.parametrize("op", ["Conv", "MatMul"])
def test_a_float_layers_int8_weight_grid_is_per_output_channel_each_reaching_plus_minus_64(op):
    """An fp_ends stem's output channels can differ a hundredfold in magnitude: one grid for the whole tensor would
    leave the small channel a code or two (its weights rounded to 0, -1, +1); each channel gets its own grid on the
    +-64 range instead, whichever axis the exported node reads its output channels on (a MatMul's weight is stored
    transposed). The fp_ends deployment test only checks that no weight exceeds 64."""
    from onnx import helper, numpy_helper

    from bitnetcnn.deploy.int8 import _float_weight_grid, _int8_types

    rng = np.random.default_rng(0)
    weight = rng.uniform(-1, 1, (3, 2, 3, 3)).astype(np.float32) * np.array([1.0, 0.01, 0.3], np.float32).reshape(
        3, 1, 1, 1)
    if op == "MatMul":  # [in, out]: the output channels on axis 1
        weight = weight.reshape(3, -1).T.copy()
    node = helper.make_node(op, ["x", "w"], ["y"])
    grid = _float_weight_grid(numpy_helper.from_array(weight, "w"), node, _int8_types()[1])
    axis = 1 if op == "MatMul" else 0
    assert grid[0]["axis"] == axis and len(grid) == 3
    steps = np.array([float(c["scale"]) for c in grid], np.float32)
    assert all(int(c["zero_point"]) == 0 for c in grid)
    codes = np.round(np.moveaxis(weight, axis, 0).reshape(3, -1) / steps[:, None])
    assert np.abs(codes).max(axis=1).tolist() == [64, 64, 64]


def _relu_model_with_statistics(seed=0, **kwargs):
    torch.manual_seed(seed)
    return _with_statistics(create_model("bitnet_cnn", width=8, act="relu", **kwargs), (1, 28, 28), batch=32)


@pytest.mark.parametrize("act_bits", [None, 8])
def test_a_nearly_dead_batchnorm_channel_keeps_its_bias_in_the_int8_graph(act_bits):
    """A BatchNorm gamma of 1e-6 gives its folded channel a tiny weight scale, so the int32 bias grid (input scale x
    weight scale) cannot hold the channel's shift: onnxruntime clipped it to int32's limit, without a word."""
    bit = _relu_model_with_statistics(act_bits=act_bits)
    with torch.no_grad():
        for bn in [m for m in bit.modules() if isinstance(m, nn.BatchNorm2d)][1:]:
            bn.weight[:2] = 1e-6
            bn.bias[:2] = 1.0
    model = convert_to_ternary(bit)
    x = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x[64:])
    deployed = compile(model, backend="onnxruntime", **({} if act_bits == 8 else {"calibration": x[:64]}))
    error = ((deployed(x[64:]) - ref).abs().max() / ref.abs().max()).item()
    assert error < 0.03, error  # 0.29 (calibrated) and 0.23 (8-bit) before


def test_the_deployed_model_refuses_nan_and_infinite_images():
    model = convert_to_ternary(_relu_model_with_statistics())
    x = torch.randn(4, 1, 28, 28)
    deployed = compile(model, calibration=x, backend="onnxruntime")
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        deployed(x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        deployed.run_numpy(x.numpy())


def test_an_empty_batch_on_the_int8_convnext_gives_an_empty_output():
    """onnxruntime's multi-threaded kernels crashed the process (SIGSEGV) on it."""
    torch.manual_seed(0)
    model = convert_to_ternary(create_model("bit_convnextv2", num_classes=10).eval())
    deployed = compile(model, calibration=torch.randn(64, 3, 32, 32), backend="onnxruntime", threads=2)
    assert tuple(deployed(torch.zeros(0, 3, 32, 32)).shape) == (0, 10)


def test_empty_or_non_finite_calibration_and_check_images_are_named(tmp_path):
    """An empty calibration set failed with "max() arg is an empty sequence", empty check images with torch.cat's
    words, and a NaN check image as "the dynamic batch axis is broken"."""
    model = convert_to_ternary(_relu_model_with_statistics())
    x = torch.randn(8, 1, 28, 28)
    with pytest.raises(ValueError, match="calibration images are empty: pass some images"):
        compile(model, calibration=x[:0], backend="onnxruntime")
    with pytest.raises(ValueError, match="check_inputs are empty: pass some images"):
        export_onnx(model, tmp_path / "m.onnx", check_inputs=x[:0])
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="check_inputs hold NaN or infinite values"):
        export_onnx(model, tmp_path / "m.onnx", check_inputs=x)
    with pytest.raises(ValueError, match="calibration images hold NaN or infinite values"):
        compile(model, calibration=x, backend="onnxruntime")


def test_calibration_images_and_memory_are_refused_just_past_their_bounds(monkeypatch):
    """check_normalized allows twice the normalized pixels' range on either side (noise, augmentation) and no more;
    check_calibration_memory refuses a calibration whose activations pass 80% of the memory available, and not one
    image less (the bounds themselves were untested: a mutation of either survived the suite)."""
    from bitnetcnn.deploy import calibration
    from bitnetcnn.deploy.calibration import check_calibration_memory, check_normalized

    mean, std = (0.5,), (0.25,)  # pixels 0..1 normalize to -2..2, so the margin is 8: -10..10 allowed
    check_normalized(torch.tensor([-9.9, 9.9]), mean, std)
    for outside in (-10.1, 10.1):
        with pytest.raises(ValueError, match="but the model's inputs, pixels in 0..1 normalized"):
            check_normalized(torch.tensor([0.0, outside]), mean, std)
    model = create_model("bitnet_cnn", width=8).eval()
    per_image = []
    hooks = [m.register_forward_hook(lambda m, i, o: per_image.append(o.numel() * 4))
             for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    available = 2**20
    monkeypatch.setattr(calibration, "available_memory", lambda: available)
    fits = int(0.8 * available // sum(per_image))
    check_calibration_memory(model, fits)
    with pytest.raises(ValueError, match=f"calibration on {fits + 1:,} images would keep"):
        check_calibration_memory(model, fits + 1)


def test_a_bias_too_near_int32s_limit_for_the_sums_it_is_added_to_is_found():
    """The room below int32's limit must hold the largest sum of products (fan-in x 255 x 64: u8 activations, weight
    codes x 64): a bias one short of that room is sent to float, one inside it kept (in numbers, fan-in 16)."""
    from onnx import TensorProto, helper, numpy_helper

    from bitnetcnn.deploy.int8 import _saturated_bias_nodes

    room = 2 ** 31 - 1 - 16 * 255 * 64

    def graph(bias: int):
        inits = [numpy_helper.from_array(np.array([bias], np.int32), "b_q"),
                 numpy_helper.from_array(np.ones((1, 16, 1, 1), np.int8), "w_q"),
                 numpy_helper.from_array(np.array(0.1, np.float32), "s")]
        nodes = [helper.make_node("DequantizeLinear", ["b_q", "s"], ["b"]),
                 helper.make_node("DequantizeLinear", ["w_q", "s"], ["w"]),
                 helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 1, 1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])
        return helper.make_graph(nodes, "g", [x], [y], inits)

    assert _saturated_bias_nodes(graph(room)) == {"conv"}
    assert _saturated_bias_nodes(graph(-room)) == {"conv"}
    assert _saturated_bias_nodes(graph(room - 1)) == set()


def _converted_after_batches(bit: nn.Module, input_size: tuple, batch: int = 32, batches: int = 5) -> nn.Module:
    """``bit`` converted after a few training-mode random batches (its BatchNorm statistics and quantizer scales)."""
    bit.train()
    with torch.no_grad():
        for _ in range(batches):
            bit(torch.randn(batch, *input_size))
    return convert_to_ternary(bit.eval())


def test_an_8_bit_input_below_minus_127_steps_clamps_there_in_the_int8_graph_as_in_the_model():
    """u8 with zero point 128 holds -128..127 steps; the model's symmetric quantizer clamps at +-127. A tensor that
    can be negative (here the image, read by an 8-bit linear layer) is clamped at -127 steps before its grid:
    without it an input past the running range by more than half a step on the negative side lands one step
    further than the model puts it."""
    torch.manual_seed(0)
    model = _converted_after_batches(bitify(nn.Sequential(nn.Flatten(), nn.Linear(4, 4)), act_bits=8), (1, 2, 2))
    step = model[1].act_quant.running_scale.item()
    x = torch.zeros(3, 1, 2, 2)
    x[1, 0, 0, 0], x[2, 0, 0, 0] = 200 * step, -200 * step
    deployed = compile(model, input_size=(1, 2, 2), backend="onnxruntime")
    assert deployed.info["model_integers"]
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(deployed(x)), model(x), rtol=0, atol=1e-6)


def test_a_sequential_subclass_whose_forward_takes_another_order_folds_by_its_data_flow():
    """An ``nn.Sequential`` subclass registered as (conv, bn, relu) whose forward computes relu(conv(bn(x))): its
    neighbours were folded as if the BatchNorm followed the convolution (29% of the largest logit off, 62% top-1
    agreement, no word). Only a plain Sequential's forward is its registration order; the subclass's goes by the
    traced forward, where no convolution feeds that BatchNorm."""
    from bitnetcnn.nn.batchnorm import conv_bn_pairs

    class PreActivation(nn.Sequential):
        def forward(self, x):
            return self[2](self[0](self[1](x)))

    torch.manual_seed(0)
    bit = bitify(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                               PreActivation(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
                               nn.Flatten(), nn.Linear(8 * 8 * 8, 5)))
    model = _converted_after_batches(bit, (3, 8, 8))
    assert list(conv_bn_pairs(model)) == []
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(model)(x), model(x))
        torch.testing.assert_close(torch.as_tensor(compile(model, int8=False, input_size=(3, 8, 8))(x)), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("affine", [True, False])
def test_an_8_bit_model_deploys_to_its_own_integers_with_batchnorms_with_or_without_an_affine_map(affine):
    """The int32 snap moved a BatchNorm's ``bias`` only: one without (``affine=False``) kept its folded shift
    (``-mean * f``) off the grid while compile still said ``model_integers`` (18% of the largest logit off on 80
    of 256 images). Its running mean now takes the move."""
    torch.manual_seed(0)
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(4 if i == 0 else 16, 16, 3, padding=1), nn.BatchNorm2d(16, affine=affine), nn.ReLU()]
    model = _converted_after_batches(bitify(nn.Sequential(*layers, nn.Flatten(), nn.Linear(16 * 8 * 8, 10)),
                                            act_bits=8), (4, 8, 8))
    deployed = compile(model, input_size=(4, 8, 8), backend="onnxruntime")
    assert deployed.info["model_integers"]
    x = torch.randn(256, 4, 8, 8).clamp(-2, 2)
    with torch.no_grad():
        ref = model(x)
    error = ((torch.as_tensor(deployed(x)) - ref).norm(dim=1) / ref.norm(dim=1)).max().item()
    assert error < 1e-5, error


def test_a_linear_layer_on_tokens_whose_output_is_pooled_keeps_its_product_in_float():
    """A linear layer on (N, L, C) tokens exports as MatMul then Add (its bias); before a mean over the tokens, both
    belong to the pooled tail, but quantize_static still quantized the MatMul's output, with the range of compile's
    all-zero placeholder image when no calibration is given: clipped to a third of its values (13% of the largest
    logit off; 0.7% after, where fc1's product takes a range derived through its bias and ReLU). As a convolution's
    output there, it stays float."""

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 2, stride=2)
            self.fc1, self.fc2, self.head = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 5)

        def forward(self, x):
            tokens = self.stem(x).flatten(2).transpose(1, 2)
            return self.head(self.fc2(torch.relu(self.fc1(tokens))).mean(1))

    torch.manual_seed(0)
    model = _converted_after_batches(bitify(Tokens(), act_bits=8), (3, 8, 8))
    deployed = compile(model, input_size=(3, 8, 8), backend="onnxruntime")
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    error = ((torch.as_tensor(deployed(x)) - ref).abs().max() / ref.abs().max()).item()
    assert error < 0.02


def test_a_convolution_whose_output_feeds_a_batchnorm_and_more_is_not_folded_and_folding_gives_an_eval_model():
    """``bn(y) + y`` with ``y = conv(x)``: folding the BatchNorm into the convolution would change the ``y`` the sum
    reads too; only a BatchNorm that alone reads the convolution's output is folded. The folded copy is in eval
    mode whatever the model's."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 5))

        def forward(self, x):
            y = self.conv(x)
            return self.head(self.bn(y) + y)

    torch.manual_seed(0)
    model = _converted_after_batches(bitify(Shared()), (3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    folded = fold_batchnorm(model.train())
    assert not folded.training
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x))


def test_a_tensor_of_calibration_images_is_split_into_batches_and_a_graphs_own_metadata_is_kept():
    """130 images in batches of 64 (one array of 130 would hold every activation of every image in memory at
    once); add_metadata keeps what the int8 graph noted itself (the activations it folded) beside its own keys."""
    import onnx

    from bitnetcnn.deploy.calibration import as_batches
    from bitnetcnn.deploy.onnx_graph import add_metadata

    assert [len(b) for b in as_batches(torch.randn(130, 1, 4, 4), batch_size=64)] == [64, 64, 2]
    graph = onnx.ModelProto()
    entry = graph.metadata_props.add()
    entry.key, entry.value = "bitnetcnn.folded_activations", "{}"
    model = convert_to_ternary(create_model("bitnet_cnn", width=8).eval())
    keys = {e.key: e.value for e in add_metadata(graph, model, {"input_size": [1, 28, 28]}).metadata_props}
    assert keys["bitnetcnn.folded_activations"] == "{}" and keys["bitnetcnn.input_size"] == "[1, 28, 28]"
