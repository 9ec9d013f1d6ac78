"""bitnetcnn.summary: per-layer rows whose totals add up, on Bit, converted and full-precision models."""

import math
import warnings

import pytest
import torch
from torch import nn

import bitnetcnn
from bitnetcnn import convert_to_ternary, convert_to_ternary_p2, create_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_totals(result, params: int) -> None:
    assert result.params == sum(r.params for r in result.rows) == params
    assert result.macs == sum(r.macs for r in result.rows)
    assert result.fp32_bytes == pytest.approx(sum(r.fp32_bytes for r in result.rows)) == 4 * params
    assert result.packed_bytes == pytest.approx(sum(r.packed_bytes for r in result.rows))


@pytest.fixture(scope="module")
def bit_model():
    torch.manual_seed(0)
    return create_model("bitnet_cnn")


def test_bit_model_rows_and_totals(bit_model):
    result = bitnetcnn.summary(bit_model, print_fn=None)
    check_totals(result, n_params(bit_model))
    rows = {r.name: r for r in result.rows}
    stem, head = rows["stem.conv"], rows["head.3"]
    assert stem.output_shape == (32, 28, 28) and stem.bits == 2 and stem.ternary_weights == 32 * 9
    assert stem.macs == 28 * 28 * 32 * 9
    assert head.output_shape == (10,) and head.macs == 256 * 10
    # packed: 2 bits a weight, a float32 scale per output channel, float32 bias
    assert head.packed_bytes == (2560 * 2 + 10 * 32 + 10 * 32) / 8
    assert rows["stem.norm"].bits is None and rows["stem.norm"].params == 64
    assert result.ternary_weights == 135_904  # the seed's MNIST checkpoint holds as many int8 ternary weights
    assert result.fp32_bytes / result.packed_bytes > 9
    assert 0 < result.zero_share < 1


def test_converted_model_matches_its_bit_model(bit_model):
    bit = bitnetcnn.summary(bit_model, print_fn=None)
    converted = bitnetcnn.summary(convert_to_ternary(bit_model), print_fn=None)
    check_totals(converted, n_params(bit_model))
    assert [(r.name, r.output_shape, r.params, r.macs, r.packed_bytes, r.zero_weights) for r in converted.rows] == [
        (r.name, r.output_shape, r.params, r.macs, r.packed_bytes, r.zero_weights) for r in bit.rows
    ]
    p2 = bitnetcnn.summary(convert_to_ternary_p2(bit_model), print_fn=None)
    scales = sum(r.output_shape[0] for r in bit.rows if r.bits == 2)
    assert p2.packed_bytes == pytest.approx(bit.packed_bytes - scales * 3)  # int8 exponents instead of float32


def test_full_precision_model_and_a_plain_torch_model():
    fp = create_model("bit_mobilenetv2", quant="fp")
    result = bitnetcnn.summary(fp, (3, 32, 32), print_fn=None)
    check_totals(result, n_params(fp))
    assert result.ternary_weights == 0 and result.packed_bytes == result.fp32_bytes
    assert {r.bits for r in result.rows} == {32, None}
    # 2x2 positions at 32 px, where the 1x1 head convolution maps 320 to 1280 channels
    assert next(r for r in result.rows if r.name == "head_conv.conv").macs == 2 * 2 * 320 * 1280
    total = str(result).splitlines()[len(result.rows) + 3]  # the head, a rule, the rows, a rule
    assert total.split()[:6] == ["Total", "-", f"{n_params(fp):,}", "-", "32.00", f"{result.fp32_bytes / 1024:,.1f}"]
    assert "packed (no ternary weights to pack)" in str(result)  # not "1.0x smaller"

    # A plain model with parameters owned by a container and a layer used twice.
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4))
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x)) * self.gain

    plain = Scaled()
    result = bitnetcnn.summary(plain, (4,), print_fn=None)
    check_totals(result, 24)
    assert {r.name: r.macs for r in result.rows} == {"fc": 32, "Scaled": 0}


def test_a_tied_weight_counts_once_and_its_layers_both_compute():
    """``b.weight = a.weight`` ties two layers to one tensor: the parameters, memory and zero share count it once
    (as ``model.parameters()`` does), the MACs count both layers' work."""
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    result = bitnetcnn.summary(nn.Sequential(a, b), (8,), print_fn=None)
    check_totals(result, 8 * 8 + 8 + 8)
    assert [r.params for r in result.rows] == [72, 8] and result.macs == 2 * 64
    bit = bitnetcnn.bitify(nn.Sequential(a, b))
    bit[1].weight = bit[0].weight
    result = bitnetcnn.summary(bit, (8,), print_fn=None)
    check_totals(result, n_params(bit))
    assert result.ternary_weights == 64 and result.packed_bytes == (64 * 2 + 8 * 32 + 2 * 8 * 32) / 8


def test_summary_prints_a_table_and_leaves_the_model_as_it_was(bit_model):
    lines = []
    bit_model.train()
    bit_model.stem.norm.eval()  # a frozen BatchNorm inside a training model stays frozen
    before = {k: v.clone() for k, v in bit_model.state_dict().items()}
    result = bitnetcnn.summary(bit_model, print_fn=lines.append)
    assert bit_model.training and bit_model.stage1.conv_pw.norm.training and not bit_model.stem.norm.training
    assert all(torch.equal(v, bit_model.state_dict()[k]) for k, v in before.items())
    table = lines[0]
    assert table == str(result)
    assert "stage3.conv_pw.conv" in table and "BitConv2d" in table and "140,042" in table
    assert f"{math.log2(3):.2f}" in table
    with pytest.raises(ValueError, match="input_size"):
        bitnetcnn.summary(nn.Linear(2, 2), print_fn=None)


def test_the_summary_command_takes_a_checkpoint_as_saved(tmp_path, capsys):
    """--ternary shows a Bit checkpoint converted; --num-classes and --quant, which build a registry model, are
    refused for a file rather than ignored."""
    from bitnetcnn import save_checkpoint
    from bitnetcnn.cli import main

    path = save_checkpoint(create_model("bitnet_cnn", width=8), tmp_path / "bit.bnc")
    assert main(["summary", str(path), "--ternary"]) == 0
    assert "TernaryConv2d" in capsys.readouterr().out
    assert main(["summary", str(path), "--num-classes", "5", "--quant", "fp"]) == 2
    assert "--num-classes and --quant build a registry model;" in capsys.readouterr().err
    # a full-precision model has nothing --ternary converts: it printed the float table without a word
    assert main(["summary", "bitnet_cnn", "--quant", "fp", "--ternary"]) == 2
    assert "--ternary converts Bit layers, and bitnet_cnn is a full-precision model" in capsys.readouterr().err
    # a size far too large was torch's allocator traceback
    assert main(["summary", "bitnet_cnn", "--input-size", "1", "100000", "100000"]) == 2
    err = capsys.readouterr().err
    assert "error: out of memory (" in err and "ask for smaller images" in err and "Traceback" not in err, err


def test_a_folder_named_after_a_model_does_not_hide_its_registry_name(tmp_path, monkeypatch, capsys):
    """A run folder named after its model made `summary bitnet_cnn` (and export, bench) fail: "is a folder, not a
    checkpoint file"."""
    from bitnetcnn.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bitnet_cnn").mkdir()
    assert main(["summary", "bitnet_cnn"]) == 0
    assert "BitConv2d" in capsys.readouterr().out
    pytest.importorskip("onnx")
    with warnings.catch_warnings():  # without the data set, "checked on random inputs only"
        warnings.simplefilter("ignore")
        assert main(["export", "bitnet_cnn", "-o", "m.onnx"]) == 0 and (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_converted_model_of_another_dtype_is_summarized(dtype):
    """A converted model whose first tensor is a buffer (no parameters): the sample took that uint8 packed weight's
    dtype as 'not floating' and was float32, so a float64 or bf16 model failed with a dtype error."""
    from bitnetcnn import bitify, convert_to_ternary

    model = convert_to_ternary(bitify(nn.Sequential(nn.Conv2d(3, 4, 3))).eval()).to(dtype)
    assert not list(model.parameters())
    result = bitnetcnn.summary(model, (3, 8, 8), print_fn=None)
    assert "TernaryConv2d" in str(result)


def test_an_image_size_without_its_channels_is_refused_not_summarized_as_one_channel_s_slice():
    """(H, W) for an image model: torch runs a convolution on an unbatched (C, H, W) sample, so the summary took
    the sample's first dimension for its batch and reported one channel's slice (27x too few MACs here)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = bitnetcnn.bitify(nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                         nn.ReLU(), nn.Conv2d(32, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    with pytest.raises(ValueError, match=r"one dimension short of a batched one: input_size must be \(C, H, W\)"):
        bitnetcnn.summary(net, (28, 28), print_fn=None)
    with FlopCounterMode(display=False) as flops:
        net(torch.zeros(1, 1, 28, 28))
    assert bitnetcnn.summary(net, (1, 28, 28), print_fn=None).macs == flops.get_total_flops() // 2
    for size in ((1, 28.7, 28), (1, 0, 28), (True, 28, 28)):
        with pytest.raises(ValueError, match="input_size must be positive whole numbers"):
            bitnetcnn.summary(net, size, print_fn=None)


def test_packed_bytes_are_the_converted_model_s_own_bytes_whole_bytes_a_layer():
    """Each layer's codes are packed four to a byte, its last byte padded: the packed size is what the converted
    model holds, running statistics aside (a width of 5 made 4,576.25 bytes of 4,578)."""
    model = convert_to_ternary(create_model("bitnet_cnn", width=5).eval())
    held = sum(v.numel() * v.element_size() for k, v in model.state_dict().items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert bitnetcnn.summary(model, print_fn=None).packed_bytes == held


def test_the_summary_command_builds_the_stem_of_the_larger_side_and_warns_for_weights_at_another_size(capsys):
    """``--input-size 3 224 192`` built the 32-px stem (stride 1, no pooling), 15x the MACs of the model
    ``bitnetcnn train`` builds for such images; published weights summarized at another size than theirs now say
    their accuracy does not carry over."""
    from bitnetcnn.cli import main

    assert main(["summary", "bit_resnet18", "--input-size", "3", "224", "192"]) == 0
    expected = bitnetcnn.summary(create_model("bit_resnet18", img_size=224), (3, 224, 192), print_fn=None)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in printed if line.startswith("stem.conv")] == [["stem.conv", "BitConv2d",
                                                                                       "64x112x96"]]
    assert f"{expected.macs / 1e9:.2f}G" == "1.55G" and f"  {expected.macs / 1e9:.2f}G  " in printed[-6]
    weights = bitnetcnn.hub.load("bitnet_mnist", pretrained=True)
    with pytest.warns(UserWarning, match=r"not the \[1, 28, 28\] these weights were trained and measured at"):
        bitnetcnn.summary(weights, (1, 32, 32), print_fn=None)


def test_the_macs_of_every_published_architecture_equal_torchs_flop_count():
    """The whole model against torch's own count: depthwise and grouped convolutions (MobileNetV2, ConvNeXt) divide
    by their groups, which a ResNet or a plain stack never shows."""
    from torch.utils.flop_counter import FlopCounterMode

    for name, kwargs in (("bit_mobilenetv2", {}), ("bit_convnextv2", {}), ("bitnet_cnn", {})):
        model = create_model(name, **kwargs).eval()
        size = bitnetcnn.get_model_config(name).input_size
        with FlopCounterMode(display=False) as flops:
            model(torch.zeros(1, *size))
        convs = flops.get_flop_counts()["Global"]
        counted = sum(v for op, v in convs.items() if "convolution" in str(op) or "mm" in str(op)) // 2
        assert bitnetcnn.summary(model, print_fn=None).macs == counted, name
    # a transposed convolution's work is its input's positions times in_channels x out_channels / groups x k x k
    model = nn.Sequential(nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2), nn.Conv2d(4, 8, 1))
    with FlopCounterMode(display=False) as flops:
        model(torch.zeros(1, 6, 5, 5))
    assert bitnetcnn.summary(model, (6, 5, 5), print_fn=None).macs == flops.get_total_flops() // 2


def test_the_summary_command_refuses_an_input_size_of_other_channels_than_the_files(capsys):
    """`summary bitnet_mnist --input-size 3 28 28`: a one-channel model given three channels gives no convolution's
    traceback but the one-line refusal that says to leave --input-size out."""
    from bitnetcnn.cli import main

    assert main(["summary", "bitnet_mnist", "--input-size", "3", "28", "28"]) == 2
    err = capsys.readouterr().err
    assert "takes 1-channel images, not --input-size 3 ...: leave --input-size out" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_summary_command_builds_the_large_input_stem_when_only_the_height_is_large(capsys):
    """--input-size 3 72 16: the larger side, 72 px (over 64), takes the ImageNet stem (7x7 stride 2 and a max-pool),
    as `bitnetcnn train` builds it for such images; the width alone would give the small-input stem and 4x the MACs.
    (--quant fp: the same stems, without the ternary quantization of 11M weights.)"""
    from bitnetcnn.cli import main

    assert main(["summary", "bit_resnet18", "--quant", "fp", "--input-size", "3", "72", "16"]) == 0
    printed = capsys.readouterr().out.splitlines()
    stem = [line.split()[:3] for line in printed if line.startswith("stem.conv")]
    assert stem == [["stem.conv", "Conv2d", "64x36x8"]], stem
