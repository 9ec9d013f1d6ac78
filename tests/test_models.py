"""The model zoo: every architecture builds, trains, converts; counts match independent references and the seed."""

import io
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from bitnetcnn import BitConv2d, BitLinear, convert_to_ternary, create_model, get_model_config, list_models
from bitnetcnn.models.convnextv2 import SIZES
from conftest import real_data_root, require_real_data

MODELS = list_models()
BIT_LAYERS = (BitConv2d, BitLinear)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(build, *args, **kwargs) -> nn.Module:
    """Build without allocating or initializing weights: enough to count parameters and read shapes."""
    with torch.device("meta"):
        return build(*args, **kwargs)


def cifar_stem_torchvision(arch: str) -> nn.Module:
    """torchvision's ResNet for 100 classes with the CIFAR stem (3x3 stride-1 conv1, no max-pool)."""
    model = getattr(torchvision.models, arch)(num_classes=100)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def test_registry_has_the_zoo():
    assert {"bitnet_cnn", "bit_resnet18", "bit_resnet34", "bit_resnet50", "bit_mobilenetv2", "bit_convnextv2"} <= set(
        MODELS
    )
    assert get_model_config("bitnet_cnn").input_size == (1, 28, 28)
    assert get_model_config("bit_resnet18").input_size == (3, 32, 32)


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(ValueError, match="bit_resnet18"):
        create_model("bit_resnet_18")


# Each model meets each input size and each class count once: (in_chans, side, classes).
SHAPES = [(1, 28, 10), (3, 32, 100), (3, 64, 200)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_chans,side,classes", SHAPES)
def test_builds_for_each_input_size_and_class_count(name, in_chans, side, classes):
    # On the meta device: shapes propagate through the whole network without computing anything.
    model = on_meta(create_model, name, num_classes=classes, in_chans=in_chans, img_size=side)
    out = model(torch.empty(2, in_chans, side, side, device="meta"))
    assert out.shape == (2, classes)
    features = model.forward_features(torch.empty(2, in_chans, side, side, device="meta"))
    assert features.dim() == 4 and model.forward_head(features).shape == (2, classes)


@pytest.mark.parametrize("name", MODELS)
def test_training_lowers_the_loss_and_conversion_keeps_the_function(name):
    in_chans = get_model_config(name).input_size[0]
    model = create_model(name, num_classes=10).train()
    for m in model.modules():  # one function before and after the step: two dropout masks made MobileNetV2's loss
        if isinstance(m, nn.Dropout):  # rise after the step for 3 seeds in 10 (on an AVX-512 EPYC for seed 0)
            m.p = 0.0
    x, y = torch.randn(4, in_chans, 16, 16), torch.arange(4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert nn.functional.cross_entropy(model(x), y) < loss
        model.eval()
        expected = model(x)
        got = convert_to_ternary(model, inplace=True)(x)
    assert torch.isfinite(expected).all()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("name", MODELS)
def test_full_precision_twin_and_float_ends(name):
    ternary = on_meta(create_model, name)
    fp = on_meta(create_model, name, quant="fp")
    ends = on_meta(create_model, name, fp_ends=True)
    assert not any(isinstance(m, BIT_LAYERS) for m in fp.modules())
    assert n_params(fp) == n_params(ternary) == n_params(ends)
    layers = [m for m in ternary.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(isinstance(m, BIT_LAYERS) for m in layers), "every conv and linear layer is ternary by default"
    float_layers = [m for m in ends.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, BIT_LAYERS)]
    assert len(float_layers) == 2 and isinstance(float_layers[0], nn.Conv2d) and isinstance(float_layers[1], nn.Linear)
    assert float_layers[0].in_channels == get_model_config(name).input_size[0]


@pytest.mark.parametrize("arch,expected_m", [("resnet18", 11.22), ("resnet34", 21.33), ("resnet50", 23.71)])
def test_resnet_counts_and_shapes_match_torchvision(arch, expected_m):
    ours = on_meta(create_model, f"bit_{arch}", num_classes=100, quant="fp")
    reference = on_meta(cifar_stem_torchvision, arch)
    assert n_params(ours) == n_params(reference)
    assert round(n_params(ours) / 1e6, 2) == expected_m
    shapes = lambda m: Counter(tuple(p.shape) for p in m.parameters())  # noqa: E731
    assert shapes(ours) == shapes(reference)


def test_mobilenetv2_count_is_torchvision_plus_the_seed_extras():
    ours = on_meta(create_model, "bit_mobilenetv2", num_classes=100, quant="fp")
    reference = on_meta(torchvision.models.mobilenet_v2, num_classes=100)
    # The seed keeps the first block's 32->32 expansion (conv + BatchNorm) and biases on the stem and head convs.
    extras = 32 * 32 + 2 * 32 + 32 + 1280
    assert n_params(ours) == n_params(reference) + extras
    assert round(n_params(ours) / 1e6, 2) == 2.35


@pytest.mark.parametrize("size,expected_m", [("atto", 3.7), ("femto", 5.2), ("pico", 9.1), ("nano", 15.6), ("tiny", 28.6)])
def test_convnextv2_sizes_match_the_paper_at_imagenet_scale(size, expected_m):
    model = on_meta(create_model, "bit_convnextv2", num_classes=1000, size=size, img_size=224)
    assert round(n_params(model) / 1e6, 1) == expected_m


@pytest.mark.parametrize("side, last", [(28, (2, 2)), (112, (3, 3)), (224, (7, 7))])
def test_convnextv2_pads_odd_maps_behind_its_small_input_stem_only(side, last):
    """Above 64 px the 4x4 stem is ConvNeXt V2's, and so is its downsampling: a 112 px input's 7x7 map was padded
    to 8x8 (a 4x4 last stage where the reference network has 3x3; logits 0.8 apart from the same weights)."""
    model = create_model("bit_convnextv2", size="atto", quant="fp", img_size=side).eval()
    seen = []
    model.stages[-1].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        model(torch.randn(1, 3, side, side))
    assert seen == [last]


@pytest.mark.parametrize("width", [5, 10, 32])
def test_bitnet_cnn_blocks_widen_by_their_expand_ratio_at_any_width(width):
    """MobileNet's rounding to multiples of 8 widened a width-10 model's blocks 2.4x and a width-5 one's 3.2x, where
    expand_ratio=2.0 says twice (the seed's in_c * expand)."""
    model = create_model("bitnet_cnn", width=width, quant="fp")
    hidden = [stage.conv_pw_exp.conv.out_channels for stage in (model.stage1, model.stage2, model.stage3)]
    assert hidden == [2 * width, 4 * width, 8 * width]  # each stage's input (width, 2x, 4x) times 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_new_classifier_takes_the_models_dtype(dtype):
    """The fresh head was float32 in any model: a float64 or bf16 model failed at its first batch ("mat1 and mat2
    must have the same dtype")."""
    from bitnetcnn.models.classifier import new_classifier

    model = new_classifier(create_model("bitnet_cnn", width=8).to(dtype).eval(), 5)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28, dtype=dtype))
    assert out.shape == (2, 5) and out.dtype == dtype


def test_convnextv2_last_stage_keeps_2x2_positions_at_32px():
    model = create_model("bit_convnextv2", size="atto").eval()
    seen = []
    model.stages[-1].register_forward_hook(lambda m, i, o: seen.append(o.shape[-2:]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen == [(2, 2)]
    with pytest.raises(ValueError, match="atto"):
        create_model("bit_convnextv2", size="huge")


def test_bitnet_cnn_depths_add_residual_blocks_and_keep_the_seed_layout_at_one():
    model = create_model("bitnet_cnn", depths=[1, 2, 3]).eval()
    assert [len(model.stage2), len(model.stage3)] == [2, 3]  # a strided block, then the residual ones
    assert not hasattr(model.stage1, "__len__")  # one block: unwrapped, the seed's key names
    assert [model.stage3[0].use_residual, model.stage3[1].use_residual, model.stage3[2].use_residual] == [
        False, True, True]
    extra = n_params(model) - n_params(create_model("bitnet_cnn"))
    assert extra == n_params(model.stage2[1]) + n_params(model.stage3[1]) + n_params(model.stage3[2])
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert list(model.model_args["depths"]) == [1, 2, 3]  # recorded, so checkpoints rebuild it
    for bad in ([1, 2], [1, 0, 1], [1, 1.5, 1]):
        with pytest.raises(ValueError, match="depths"):
            create_model("bitnet_cnn", depths=bad)


@pytest.mark.parametrize("name, kwargs, words", [
    ("bitnet_cnn", dict(width=0), r"width \(the stem's channels.*must be a positive integer"),
    ("bitnet_cnn", dict(width=-2), r"width \(the stem's channels.*must be a positive integer"),
    ("bitnet_cnn", dict(width="8"), r"width \(the stem's channels.*must be a positive integer"),
    ("bitnet_cnn", dict(expand_ratio=0), "expand_ratio must be a number above 0"),
    ("bit_mobilenetv2", dict(width_mult=0), "width_mult scales every layer's channels"),
    ("bit_mobilenetv2", dict(width_mult="1.4"), "width_mult scales every layer's channels"),
])
def test_widths_that_build_no_network_are_refused_in_words(name, kwargs, words):
    """`train --model-kwargs '{"width": 0}'` (or -2, or "8") ended in a traceback from torch, width 0 only in the
    first training step."""
    with pytest.raises(ValueError, match=words):
        create_model(name, **kwargs)


def test_model_args_rebuild_the_same_architecture():
    model = on_meta(create_model, "bit_mobilenetv2", num_classes=10, width_mult=1.4, act="silu")
    again = on_meta(create_model, **model.model_args)
    assert [(k, v.shape) for k, v in again.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]


# The seed's published checkpoints and the registry arguments that rebuild their architectures (docs/models.md).
SEED_MODELS = {
    "bit_netcnn_small_mnist_ternary.zip": ("bitnet_cnn", dict(num_classes=10, in_chans=1)),
    "bit_resnet_18_c100_ternary.zip": ("bit_resnet18", dict(num_classes=100, act="silu")),
    "bit_mobilenetv2_x140_c100_ternary.zip": (
        "bit_mobilenetv2",
        dict(num_classes=100, width_mult=1.4, act="silu", downsample_at="expand"),
    ),
}


def seed_state_dict(filename: str) -> dict:
    relative = f"seed-checkpoints/{filename}"
    beside_checkout = Path(__file__).resolve().parents[2] / "shared" / "data" / relative
    use_default = real_data_root() is None and beside_checkout.exists()
    path = beside_checkout if use_default else require_real_data(relative)
    with zipfile.ZipFile(path) as archive:
        obj = torch.load(io.BytesIO(archive.read(archive.namelist()[0])), weights_only=True)
    return obj.get("model", obj)


@pytest.mark.parametrize("filename", sorted(SEED_MODELS))
def test_registry_models_have_the_seed_checkpoints_layers(filename):
    seed = seed_state_dict(filename)
    name, kwargs = SEED_MODELS[filename]
    model = on_meta(create_model, name, **kwargs)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # The seed stores each ternary layer as int8 `weight` plus a per-channel `scale`; everything else is float.
    scales = {k for k in seed if k.endswith(".scale")}
    assert {k: tuple(v.shape) for k, v in seed.items() if k not in scales} == ours
    assert Counter(ours.values()) == Counter(tuple(v.shape) for k, v in seed.items() if k not in scales)
    modules = dict(model.named_modules())
    for key in scales:
        layer = modules[key.rsplit(".", 1)[0]]
        assert isinstance(layer, BIT_LAYERS) and seed[key].numel() == layer.weight.shape[0]
        assert seed[key[: -len("scale")] + "weight"].dtype == torch.int8
    assert len(scales) == sum(isinstance(m, BIT_LAYERS) for m in modules.values())


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_convnextv2_size_builds_on_32px(size):
    model = on_meta(create_model, "bit_convnextv2", size=size)
    assert model.head.out_features == 100


def test_create_model_refuses_a_bad_img_size_and_arguments_its_builder_sets():
    for bad in (0, -224, 2.5, True):
        with pytest.raises(ValueError, match="img_size must be a positive integer"):
            create_model("bit_resnet18", img_size=bad)
    with pytest.raises(ValueError, match=r"bit_resnet18 sets 'depths' itself .*pick another registered model"):
        create_model("bit_resnet18", depths=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="has no argument 'spec'"):
        create_model("bitnet_cnn", spec=None)
    # the list of valid arguments named depths and dims for ConvNeXt V2, which its builder sets from size
    with pytest.raises(ValueError, match=r"its arguments: drop_path_rate, img_size, size \(and num_classes"):
        create_model("bit_convnextv2", act="silu")
    with pytest.raises(ValueError, match=r"bit_convnextv2 sets 'dims' itself"):
        create_model("bit_convnextv2", dims=(8, 16, 32, 64))
    for name in ("bit_resnet18", "bit_mobilenetv2", "bitnet_cnn"):  # it built every block linear, without a word
        with pytest.raises(ValueError, match=r"act=None would build .* without a nonlinearity"):
            create_model(name, act=None)


def test_summary_measures_a_model_at_the_size_it_was_built_for():
    from bitnetcnn import summary

    built = summary(create_model("bit_resnet18", img_size=128), print_fn=None)
    assert built.input_size == (3, 128, 128)


@pytest.mark.parametrize("act_bits", [None, 8, "fp"])
@pytest.mark.parametrize("name, kwargs", [("bitnet_cnn", dict(width=8)), ("bit_mobilenetv2", dict(width_mult=0.25)),
                                          ("bit_resnet18", {})])
def test_a_converted_model_or_a_full_precision_twin_scripts_and_computes_the_same(name, kwargs, act_bits):
    """BitNetCNN and MobileNetV2 without activation quantizers did not script: TorchScript knew no ActQuantizer
    for the shortcut's isinstance; their full-precision twins did not either ("Module 'Conv2d' has no attribute
    'act_quant'"). The README says converted models and full-precision twins script, ConvNeXt-V2 aside."""
    import warnings

    from bitnetcnn.checkpoint.pretrained_cfg import input_size_of

    torch.manual_seed(0)
    if act_bits == "fp":
        model = create_model(name, quant="fp", **kwargs).eval()
    else:
        model = convert_to_ternary(create_model(name, act_bits=act_bits, **kwargs).eval())
    x = torch.randn(2, *input_size_of(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation
        scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))


@pytest.mark.parametrize("rate", [-0.1, 1.5, True])
def test_convnext_names_the_drop_path_rate_it_was_given(rate):
    """It quoted one block's rate (1.5 read "not 1.0909...")."""
    with pytest.raises(ValueError, match=rf"drop_path_rate must be in \[0, 1\], not {rate!r}"):
        create_model("bit_convnextv2", drop_path_rate=rate)


def test_register_model_says_what_a_builder_takes():
    """A builder without ``spec`` registered, then create_model failed with "unexpected keyword argument 'spec'"."""
    from bitnetcnn.models.registry import _REGISTRY, register_model

    def lacks_spec(num_classes, in_chans):
        return nn.Linear(in_chans, num_classes)

    with pytest.raises(TypeError, match="must take the keyword argument.s. spec"):
        register_model(lacks_spec)
    assert "lacks_spec" not in _REGISTRY


def test_convnextv2_at_28_px_covers_every_position_and_keeps_a_2x2_last_stage():
    """Its unpadded 2x2 stride-2 downsamples took 28 px through 14 -> 7 -> 3 -> 1: the 7x7 map's last row and column
    were dropped and the last stage saw one position, what the 2x2 stem is there to avoid."""
    torch.manual_seed(0)
    model = create_model("bit_convnextv2", num_classes=10, in_chans=1, img_size=28, quant="fp").eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 1, 28, 28)).shape[-2:] == (2, 2)
    # even sides are left as they were: 32 px goes 16 -> 8 -> 4 -> 2 through the plain downsamples
    model32 = create_model("bit_convnextv2", num_classes=10, img_size=32, quant="fp").eval()
    y = torch.randn(2, 3, 32, 32)
    plain = model32.stages[0](model32.stem(y))
    for down, stage in zip(model32.downsample, model32.stages[1:]):
        plain = stage(down(plain))
    with torch.no_grad():
        assert torch.equal(model32.forward_features(y), plain)


def test_a_full_precision_model_records_no_ternary_settings_it_does_not_use():
    """quant='fp' built float layers and recorded act_bits=8, pow2=True in model_args (and so in a checkpoint's
    header): a model without a quantizer described as 8-bit. The hub's fp twin of bitnet_mobilenetv2 (whose entry
    says act_bits=8) is one such model."""
    from bitnetcnn.nn import ActQuantizer

    model = create_model("bit_mobilenetv2", quant="fp", act_bits=8, pow2=True, fp_ends=True, scale_op="mean")
    assert not any(isinstance(m, ActQuantizer) for m in model.modules())
    args = model.model_args
    assert (args["quant"], args["act_bits"], args["pow2"], args["fp_ends"]) == ("fp", None, False, False)
    assert create_model(**{k: v for k, v in args.items()}).model_args == args


def test_a_builder_registered_again_replaces_itself_and_another_under_its_name_is_refused():
    """A notebook cell run twice raised "registered twice", with no way round but a new name or a restart."""
    from bitnetcnn.models.registry import _REGISTRY, register_model

    def make(width):
        def my_net(num_classes=10, in_chans=3, spec=None):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
        my_net.__qualname__ = "my_net"  # as a cell defines it, at the top level
        return my_net

    try:
        register_model(make(1))
        register_model(make(2))  # the cell again
        elsewhere = make(3)
        elsewhere.__module__ = "someone_elses"
        with pytest.raises(ValueError, match=r"'my_net' is registered twice, by .*\.my_net and by someone_elses\.my_net"):
            register_model(elsewhere)
    finally:
        _REGISTRY.pop("my_net", None)


def _zero_branch(norm: nn.BatchNorm2d) -> None:
    """A residual branch that adds nothing: its last BatchNorm scales and shifts to 0."""
    nn.init.zeros_(norm.weight)
    nn.init.zeros_(norm.bias)


def test_each_residual_block_adds_its_shortcut_and_the_bottleneck_strides_in_its_3x3():
    """With its branch adding nothing, a block gives its shortcut alone (through the activation): a block that
    dropped the shortcut gives 0 and trains as a plain deep stack. ResNet-50's stride sits in the 3x3 (v1.5, as
    torchvision's), not in the 1x1 reduction that would drop 3/4 of the positions before it."""
    from bitnetcnn.models.convnextv2 import Block
    from bitnetcnn.models.quant_spec import QuantSpec
    from bitnetcnn.models.resnet import BasicBlock, Bottleneck

    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    for cls in (BasicBlock, Bottleneck):
        block = cls(QuantSpec(), 16, 16 // cls.expansion, 1, "relu").eval()
        last = block.conv2 if cls is BasicBlock else block.conv_expand
        _zero_branch(last.norm)
        torch.testing.assert_close(block(x), torch.relu(x))
    r50 = create_model("bit_resnet50")
    first = r50.layer2[0]
    assert (first.conv_reduce.conv.stride, first.conv_transform.conv.stride) == ((1, 1), (2, 2))
    block = Block(QuantSpec(), 8).eval()
    nn.init.zeros_(block.pwconv2.weight)
    nn.init.zeros_(block.pwconv2.bias)
    y = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(block(y), y)


def test_architecture_details_that_change_no_shape_a_short_test_checks():
    """The 64-px inputs (Tiny ImageNet) keep the small-input stem (no max-pool); MobileNetV2's last layer is 1280
    wide below width 1 (the paper's); BitNetCNN keeps the seed's dropout; ConvNeXt's last block drops paths at the
    whole drop_path_rate, and odd maps are padded on their odd side."""
    from bitnetcnn.models.convnextv2 import _pad_to_even
    from bitnetcnn.models.registry import SMALL_INPUT_MAX

    assert SMALL_INPUT_MAX == 64
    assert isinstance(create_model("bit_resnet18", img_size=64).maxpool, nn.Identity)
    assert isinstance(create_model("bit_resnet18", img_size=65).maxpool, nn.MaxPool2d)
    assert create_model("bit_mobilenetv2", width_mult=0.5).head_conv.conv.out_channels == 1280
    assert [m.p for m in create_model("bitnet_cnn").modules() if isinstance(m, nn.Dropout)] == [0.1]
    convnext = create_model("bit_convnextv2", drop_path_rate=0.3)
    rates = [b.drop_path.p for stage in convnext.stages for b in stage]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert _pad_to_even(torch.zeros(1, 2, 7, 4)).shape == (1, 2, 8, 4)
    assert _pad_to_even(torch.zeros(1, 2, 4, 7)).shape == (1, 2, 4, 8)


def test_grn_is_convnext_v2s_global_response_normalization():
    """GRN(x) = gamma * (x * N(x)) + beta + x, N the channel's spatial L2 norm over the mean of those norms (the
    ConvNeXt V2 paper's equations 1-3), on channels-last input; at its start (gamma = beta = 0) the identity, which
    is all a freshly built model shows."""
    from bitnetcnn.models.convnextv2 import GRN

    torch.manual_seed(0)
    grn = GRN(6)
    nn.init.normal_(grn.gamma)
    nn.init.normal_(grn.beta)
    x = torch.randn(2, 5, 4, 6)  # N, H, W, C
    norms = x.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    expected = grn.gamma * (x * (norms / (norms.mean(dim=-1, keepdim=True) + 1e-6))) + grn.beta + x
    torch.testing.assert_close(grn(x), expected)
