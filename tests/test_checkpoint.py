"""Checkpoints: bit-identical round trips for every registered model and form, strict errors, other file kinds."""

import hashlib
import importlib.metadata
import io
import json
import warnings
import zipfile

import numpy as np
import pytest
import torch

import bitnetcnn
from bitnetcnn import CheckpointError, bitify, convert_to_ternary, convert_to_ternary_p2, create_model, list_models
from bitnetcnn.checkpoint import read_checkpoint_header
from bitnetcnn.checkpoint import ternary_codec
from bitnetcnn.checkpoint.format import HEADER_NAME, TENSORS_NAME
from bitnetcnn.nn import BitConv2d, BitLinear, TernaryConv2d, TernaryLinear
from bitnetcnn.nn.convert import replace_modules


def _inputs(model, batch=2):
    c, h, w = model.model_config.input_size
    return torch.randn(batch, c, h, w)


def _assert_same_outputs(a, b, x):
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert torch.equal(ya, yb)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3.4K-parameter BitNetCNN, converted, saved once."""
    torch.manual_seed(0)
    model = convert_to_ternary(create_model("bitnet_cnn", width=4).eval())
    path = tmp_path_factory.mktemp("ckpt") / "tiny.bnc"
    bitnetcnn.save_checkpoint(model, path, {"dataset": "mnist", "accuracy": 0.5, "command": "bitnetcnn train"})
    return model, path


def _random_ternary(name, pow2):
    """``name`` in converted form with random codes and scales, built without convert_to_ternary's cost.

    (convert_to_ternary itself is exercised on bitnet_cnn below.) The layers come from the public constructors with
    the Bit layer's geometry, not from anything the loader uses.
    """
    model = create_model(name).eval()
    rng = np.random.default_rng(0)

    def rule(_, module):
        if not isinstance(module, (BitConv2d, BitLinear)):
            return None
        shape = tuple(module.weight.shape)
        codes = rng.choice(np.array([-1, 0, 1], np.int8), p=[0.35, 0.3, 0.35], size=shape)
        scale = torch.rand(shape[0]) * 0.1 + 0.01
        bias = None if module.bias is None else torch.randn(shape[0])
        quant = module.quant.with_pow2(pow2)
        codes = torch.from_numpy(codes)
        if isinstance(module, BitLinear):
            return TernaryLinear(codes, scale, bias, quant=quant)
        return TernaryConv2d(codes, scale, bias, module.stride, module.padding, module.dilation, module.groups,
                             module.padding_mode, quant=quant)

    model, _ = replace_modules(model, rule, inplace=True)
    return model


@pytest.mark.parametrize("name", list_models())
def test_round_trip_ternary_and_pow2_every_registered_model(name, tmp_path):
    for pow2 in (False, True):
        if name == "bitnet_cnn":
            model = create_model(name).eval()
            converted = (convert_to_ternary_p2 if pow2 else convert_to_ternary)(model)
        else:
            converted = _random_ternary(name, pow2)
        path = bitnetcnn.save_checkpoint(converted, tmp_path / f"{name}_{pow2}.bnc")
        loaded = bitnetcnn.load_checkpoint(path)
        _assert_same_outputs(converted, loaded, _inputs(converted, batch=1))
        assert loaded.model_args == converted.model_args
        assert loaded.state_dict().keys() == converted.state_dict().keys()
        for key, value in converted.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        assert [type(m) for m in loaded.modules()] == [type(m) for m in converted.modules()]
        assert any(getattr(m, "pow2", False) for m in loaded.modules()) == pow2


def test_float32_power_of_two_layers_among_bfloat16_layers_come_back_float32(tmp_path):
    """A power-of-two layer's dtype was written only when not float32, and a file without it is read as its most
    common dtype: float32 ternary layers among bf16 BatchNorms came back bf16, their biases rounded."""
    model = convert_to_ternary_p2(create_model("bitnet_cnn", width=8).eval())
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.to(torch.bfloat16)
    loaded = bitnetcnn.load_checkpoint(bitnetcnn.save_checkpoint(model, tmp_path / "mixed.bnc"))
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == value.dtype and torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("quant", ["ternary", "fp"])
def test_round_trip_bit_and_float_models(quant, tmp_path):
    model = create_model("bitnet_cnn", quant=quant, act_bits=8 if quant == "ternary" else None)
    model.train()
    model(torch.randn(4, 1, 28, 28))  # moves BatchNorm and activation-quantizer statistics
    model.eval()
    path = bitnetcnn.save_checkpoint(model, tmp_path / "m.bnc")
    loaded = bitnetcnn.load_checkpoint(path)
    _assert_same_outputs(model, loaded, torch.randn(3, 1, 28, 28))
    assert read_checkpoint_header(path)["form"] == ("bit" if quant == "ternary" else "float")
    assert all(p.requires_grad for p in loaded.parameters())
    # the trainable Bit model of a loaded checkpoint converts to the same ternary model
    if quant == "ternary":
        _assert_same_outputs(convert_to_ternary(model), convert_to_ternary(loaded), torch.randn(2, 1, 28, 28))


def test_act_bits_model_round_trips_converted(tmp_path):
    model = create_model("bitnet_cnn", width=8, act_bits=8).train()
    model(torch.randn(8, 1, 28, 28))
    converted = convert_to_ternary(model.eval())
    loaded = bitnetcnn.load_checkpoint(bitnetcnn.save_checkpoint(converted, tmp_path / "a.bnc"))
    _assert_same_outputs(converted, loaded, torch.randn(2, 1, 28, 28))


def test_header_holds_what_the_issue_asks(tiny):
    model, path = tiny
    header = read_checkpoint_header(path)
    assert header["architecture"]["name"] == "bitnet_cnn"
    assert bitnetcnn.create_model(**header["architecture"]["args"]).model_args == model.model_args
    assert header["num_classes"] == 10
    assert header["input"] == {"size": [1, 28, 28], "mean": [0.1307], "std": [0.3081]}
    assert header["quantization"]["scale_op"] == "median"
    assert "stem.conv" in header["quantization"]["ternary_layers"]
    assert header["metrics"] == {"dataset": "mnist", "accuracy": 0.5, "command": "bitnetcnn train"}
    assert header["library_version"] == bitnetcnn.__version__ == importlib.metadata.version("bitnetcnn")
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted([HEADER_NAME, TENSORS_NAME])
        assert hashlib.sha256(z.read(TENSORS_NAME)).hexdigest() == header["tensors"]["sha256"]
    loaded = bitnetcnn.load_checkpoint(path)
    assert loaded.checkpoint_header["metrics"]["accuracy"] == 0.5


def test_saved_file_has_ordinary_permissions(tiny):
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert tiny[1].stat().st_mode & 0o777 == 0o666 & ~umask


def test_saving_is_deterministic(tiny, tmp_path):
    model, path = tiny
    again = bitnetcnn.save_checkpoint(model, tmp_path / "again.bnc",
                                      {"dataset": "mnist", "accuracy": 0.5, "command": "bitnetcnn train"})
    assert again.read_bytes() == path.read_bytes()


def test_save_needs_a_registry_model(tmp_path):
    with pytest.raises(ValueError, match="model_args"):
        bitnetcnn.save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.bnc")


def test_loading_uses_no_pickle(tiny, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    bitnetcnn.load_checkpoint(tiny[1])


@pytest.mark.parametrize(
    "make",
    [
        lambda: BitConv2d(6, 10, 3, stride=2, padding=1, bias=True),
        lambda: BitConv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False, padding_mode="reflect"),
        lambda: BitConv2d(4, 6, (1, 5), act_bits=8),
        lambda: BitLinear(7, 5),
        lambda: BitLinear(9, 3, bias=False, pow2=True),
    ],
)
@pytest.mark.parametrize("pow2", [False, True])
def test_a_ternary_layer_from_codes_equals_the_converted_bit_layer(make, pow2):
    """What the loader builds (``from_codes`` in place of a Bit layer) is what conversion builds (``from_bit``)."""
    bit = make().eval()
    cls = TernaryConv2d if isinstance(bit, BitConv2d) else TernaryLinear
    reference = cls.from_bit(bit, pow2)
    codes = reference.codes().numpy()
    fast = cls.from_codes(bit, codes, reference.channel_scale(), reference.bias, reference.quant)
    assert type(fast) is type(reference)
    assert repr(fast) == repr(reference)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value)
        assert fast.state_dict()[key].dtype == value.dtype
    assert torch.equal(fast.weight, reference.weight)
    own = {k: v for k, v in vars(reference).items() if not k.startswith("_")}
    assert {k: v for k, v in vars(fast).items() if not k.startswith("_")} == own
    x = torch.randn(2, 6, 9, 9) if isinstance(bit, BitConv2d) and bit.in_channels == 6 else None
    if x is not None:
        assert torch.equal(fast(x), reference(x))


def test_codec_round_trips_odd_shapes_and_skewed_statistics():
    rng = np.random.default_rng(0)
    layers = [
        ("a", rng.integers(-1, 2, (5, 3, 3, 3)).astype(np.int8)),
        ("b", rng.choice([-1, 0, 1], p=[0.05, 0.9, 0.05], size=(7, 11)).astype(np.int8)),
        ("c", np.zeros((4, 2, 7, 7), np.int8)),
        ("d", rng.integers(-1, 2, (3, 1, 5, 1)).astype(np.int8)),
        ("e", rng.integers(-1, 2, (2, 2, 1, 4)).astype(np.int8)),
        ("f", np.ones((1, 1), np.int8)),
    ]
    for streams in (None, 1, 3, 64):
        arrays, meta = ternary_codec.encode_ternary(layers, streams)
        decoded = ternary_codec.decode_ternary(arrays, json.loads(json.dumps(meta)))
        for name, codes in layers:
            assert decoded[name].dtype == np.int8 and np.array_equal(decoded[name], codes), (name, streams)


def test_codec_codes_skewed_weights_below_entropy_of_uniform():
    rng = np.random.default_rng(1)
    codes = rng.choice([-1, 0, 1], p=[0.1, 0.8, 0.1], size=(64, 64, 3, 3)).astype(np.int8)
    arrays, _ = ternary_codec.encode_ternary([("w", codes)])
    bits = sum(a.nbytes for a in arrays.values()) * 8 / codes.size
    assert bits < 1.0  # order-0 entropy of (0.1, 0.8, 0.1) is 0.92 bits


def test_ternary_data_coded_in_far_fewer_streams_than_the_encoder_uses_is_refused_not_decoded_for_minutes():
    """A description that declares one rANS stream for a large model is consistent (it decodes), but one decoding
    step a symbol would take minutes for a ResNet-18 (a crafted or damaged file): refused up to 4,096 symbols a
    stream, with the stream count the encoder would have used. Nothing else in the decoder notices it."""
    rng = np.random.default_rng(0)
    at_limit = rng.integers(-1, 2, (8, 1536)).astype(np.int8)  # 8 rows of 512 chunks: 4,096 symbols
    over = rng.integers(-1, 2, (8, 1560)).astype(np.int8)  # 4,160 symbols
    arrays, meta = ternary_codec.encode_ternary([("w", at_limit)], streams=1)
    assert np.array_equal(ternary_codec.decode_ternary(arrays, meta)["w"], at_limit)
    arrays, meta = ternary_codec.encode_ternary([("w", over)], streams=1)
    with pytest.raises(ValueError, match=r"4,160 symbols in 1 rANS streams \(the encoder uses 8\): not decoded"):
        ternary_codec.decode_ternary(arrays, meta)


def test_a_checkpoint_whose_ternary_codes_declare_one_rans_stream_is_refused_by_name(tmp_path, monkeypatch):
    """The same refusal from ``load_checkpoint``: a file written (here by an encoder made to use one stream) whose
    layers would take one decoding step a symbol is a CheckpointError naming the file, not a long wait."""
    model = convert_to_ternary(create_model("bitnet_cnn", width=16).eval())  # 12,126 symbols
    monkeypatch.setattr(ternary_codec, "_choose_streams", lambda symbols: 1)
    bitnetcnn.save_checkpoint(model, tmp_path / "one_stream.bnc")
    monkeypatch.undo()
    _raises(tmp_path / "one_stream.bnc", "symbols in 1 rANS streams", "not decoded")


# ------------------------------------------------------------------------------------------------------- errors


def _rezip(path, out, header=None, tensors=None):
    with zipfile.ZipFile(path) as z:
        head, data = z.read(HEADER_NAME), z.read(TENSORS_NAME)
    head = head if header is None else json.dumps(header(json.loads(head))).encode()
    data = data if tensors is None else tensors(data)
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(HEADER_NAME, head)
        z.writestr(TENSORS_NAME, data)
    return out


def _raises(path, *words):
    with pytest.raises(CheckpointError) as info:
        bitnetcnn.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    return message


def test_truncated_file(tiny, tmp_path):
    data = tiny[1].read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.bnc"
        bad.write_bytes(data[:cut])
        _raises(bad)


def test_corrupted_byte_is_caught_by_the_zip_crc(tiny, tmp_path):
    data = bytearray(tiny[1].read_bytes())
    with zipfile.ZipFile(tiny[1]) as z:
        info = z.getinfo(TENSORS_NAME)
    data[info.header_offset + 30 + len(TENSORS_NAME) + 40] ^= 0x10
    bad = tmp_path / "flip.bnc"
    bad.write_bytes(bytes(data))
    _raises(bad)


def test_tampered_tensors_fail_the_hash(tiny, tmp_path):
    def change(data):
        data = bytearray(data)
        data[-3] ^= 1
        return bytes(data)

    _raises(_rezip(tiny[1], tmp_path / "t.bnc", tensors=change), "sha256")


def test_wrong_architecture(tiny, tmp_path):
    def other_width(h):
        h["architecture"]["args"]["width"] = 8
        return h

    def other_model(h):
        h["architecture"]["args"] = dict(name="bit_resnet18", num_classes=10, in_chans=1)
        h["architecture"]["name"] = "bit_resnet18"
        return h

    def unknown(h):
        h["architecture"]["args"]["name"] = "no_such_model"
        return h

    _raises(_rezip(tiny[1], tmp_path / "w.bnc", header=other_width), "wrong architecture")
    _raises(_rezip(tiny[1], tmp_path / "o.bnc", header=other_model), "wrong architecture")
    _raises(_rezip(tiny[1], tmp_path / "u.bnc", header=unknown), "no_such_model")


def test_bad_headers(tiny, tmp_path):
    cases = {
        "json": lambda h: "not json {",
        "format": lambda h: {**h, "format": "other"},
        "version": lambda h: {**h, "format_version": h["format_version"] + 1},  # the first newer one
        "coding": lambda h: {**h, "ternary_coding": None},
        # types a crafted file may give, each of which escaped as a TypeError or was accepted
        "version_true": lambda h: {**h, "format_version": True},
        "version_negative": lambda h: {**h, "format_version": -3},
        "form": lambda h: {**h, "form": "quantum"},
        "layer_dtype": lambda h: {**h, "quantization": {**h["quantization"], "ternary_layers": {
            k: {**v, "dtype": ["x"]} for k, v in h["quantization"]["ternary_layers"].items()}}},
        "tensor_bytes": lambda h: {**h, "tensors": {**h["tensors"], "bytes": "12"}},
    }
    for name, change in cases.items():
        if name == "json":
            with zipfile.ZipFile(tiny[1]) as z:
                data = z.read(TENSORS_NAME)
            bad = tmp_path / "j.bnc"
            with zipfile.ZipFile(bad, "w") as z:
                z.writestr(HEADER_NAME, b"not json {")
                z.writestr(TENSORS_NAME, data)
        else:
            bad = _rezip(tiny[1], tmp_path / f"{name}.bnc", header=change)
        _raises(bad, "header")


def test_a_safetensors_entry_with_a_dtype_of_another_json_type_is_a_checkpoint_error(tiny, tmp_path):
    """``"dtype": ["F32"]`` in the tensors' own header (with the file's sha256 made to match) escaped as
    "TypeError: unhashable type: 'list'"."""
    with zipfile.ZipFile(tiny[1]) as z:
        data = z.read(TENSORS_NAME)
    n = int.from_bytes(data[:8], "little")
    table = json.loads(data[8 : 8 + n])
    first = next(k for k in table if k != "__metadata__")
    table[first]["dtype"] = ["F32"]
    head = json.dumps(table).encode()
    crafted = len(head).to_bytes(8, "little") + head + data[8 + n :]

    def matching(h):
        return {**h, "tensors": {**h["tensors"], "bytes": len(crafted),
                                 "sha256": hashlib.sha256(crafted).hexdigest()}}

    _raises(_rezip(tiny[1], tmp_path / "dtype.bnc", header=matching, tensors=lambda d: crafted), "bad entry for")


def test_missing_file_and_not_a_checkpoint(tmp_path):
    _raises(tmp_path / "absent.bnc", "cannot read")
    _raises(tmp_path, "is a folder, not a checkpoint file")
    bitnetcnn.save_checkpoint(create_model("bitnet_cnn", width=4), tmp_path / "best_ternary.bnc")
    _raises(tmp_path, f"is a folder: a run folder? its model is {tmp_path / 'best_ternary.bnc'}")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    _raises(junk)


def test_plain_state_dict_files(tmp_path):
    model = create_model("bitnet_cnn", width=4).eval()
    for form, m in (("bit", model), ("ternary", convert_to_ternary(model)), ("pow2", convert_to_ternary_p2(model))):
        path = tmp_path / f"{form}.pt"
        torch.save(m.state_dict(), path)
        with pytest.raises(CheckpointError, match="model_name"):
            bitnetcnn.load_checkpoint(path)
        loaded = bitnetcnn.load_checkpoint(path, model_name="bitnet_cnn", width=4)
        _assert_same_outputs(m, loaded, torch.randn(2, 1, 28, 28))
        with pytest.raises(CheckpointError, match="wrong architecture"):
            bitnetcnn.load_checkpoint(path, model_name="bitnet_cnn", width=8)


def test_seed_layout_in_a_plain_zip_is_mapped(tmp_path):
    """A synthetic checkpoint in the seed's layout (int8 weight + [O,1,1] scale), zipped as the seed publishes."""
    model = convert_to_ternary(create_model("bitnet_cnn", width=4).eval())
    state = {}
    for key, value in model.state_dict().items():
        layer = key.rsplit(".", 1)[0]
        module = model.get_submodule(layer)
        if isinstance(module, (TernaryConv2d, TernaryLinear)):
            if key.endswith("weight_packed"):
                state[layer + ".weight"] = module.codes()
            elif key.endswith(".scale"):
                state[key] = value.reshape(-1, 1, 1) if isinstance(module, TernaryConv2d) else value
            else:
                state[key] = value
        else:
            state[key] = value
    buffer = io.BytesIO()
    torch.save({"model": state, "acc_tern": 0.25}, buffer)
    path = tmp_path / "bit_netcnn_small_mnist_ternary.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bit_netcnn_small_mnist_ternary_val_acc@25.00.pt", buffer.getvalue())
    loaded = bitnetcnn.load_checkpoint(path, width=4)
    assert loaded.checkpoint_header["metrics"]["accuracy"] == 0.25
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    with pytest.raises(CheckpointError, match="wrong architecture"):
        bitnetcnn.load_checkpoint(path)  # the default width (32) does not fit
    with pytest.raises(CheckpointError, match="unknown model 'bitnet_cnnn'. Did you mean bitnet_cnn.*Registered "
                                              "models: .*bit_resnet18"):
        bitnetcnn.load_checkpoint(path, model_name="bitnet_cnnn")  # a typo gets the names it may have meant


# ------------------------------------------------------------------------------- round trips and one-line errors


def test_save_refuses_a_model_its_model_args_do_not_build(tmp_path):
    model = create_model("bitnet_cnn", width=4).eval()
    model.head[-1] = BitLinear(model.head[-1].in_features, 5)  # a new head; model_args still say 10 classes
    for m in (model, convert_to_ternary(model)):
        with pytest.raises(ValueError) as info:
            bitnetcnn.save_checkpoint(m, tmp_path / "m.bnc")
        message = str(info.value)
        assert "is [10, 32] in create_model(**model_args) but [5, 32] in the model" in message, message
        assert "num_classes=" in message and "model_args" in message
    assert not (tmp_path / "m.bnc").exists()


def test_save_refuses_a_header_load_would_refuse(tmp_path):
    model = create_model("bitnet_cnn", width=4).eval()
    with pytest.raises(ValueError, match="header would be .* bytes, over the"):
        bitnetcnn.save_checkpoint(model, tmp_path / "m.bnc", {"notes": "x" * (5 << 20)})


def test_model_name_and_arguments_must_agree_with_a_bitnetcnn_file(tiny):
    path = tiny[1]
    message = _raises_with(path, {"model_name": "bit_resnet18"})
    assert "holds a bitnet_cnn model, not the bit_resnet18 asked for" in message
    message = _raises_with(path, {"width": 8})
    assert "width=8 (the file's model has width=4)" in message
    message = _raises_with(path, {"act": "silu"})
    assert "act='silu' (the file's model does not set act)" in message
    loaded = bitnetcnn.load_checkpoint(path, model_name="bitnet_cnn", width=4, num_classes=10)
    assert loaded.model_args["width"] == 4


def _raises_with(path, kwargs):
    with pytest.raises(CheckpointError) as info:
        bitnetcnn.load_checkpoint(path, **kwargs)
    return str(info.value)


def test_truncated_file_says_so_in_one_line(tiny, tmp_path):
    data = tiny[1].read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 30, len(data) - 1):
        bad = tmp_path / f"cut{cut}.bnc"
        bad.write_bytes(data[:cut])
        message = _raises(bad, "again")
        assert ("truncated or damaged" if cut else "empty") in message and "seek" not in message, message
        assert "\n" not in message


class NotATensor:
    pass


def test_files_holding_objects_are_not_unpickled_and_no_weights_only_advice(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"model": NotATensor()}, path)
    message = _raises(path, "objects other than tensors", "NotATensor", "will not unpickle")
    assert "weights_only" not in message and "\n" not in message


def test_a_lightning_checkpoint_says_how_to_convert_it(tmp_path):
    model = create_model("bitnet_cnn", width=4)
    path = tmp_path / "run" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "epoch": 3,
                "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"model": "bitnet_cnn"}}, path)
    message = _raises(path, "this is a Lightning training checkpoint of a run", f"bitnetcnn convert {path}",
                      "--resume", f"there is no {path.parent}/best_ternary.bnc")  # where it was deleted
    assert "model_name" not in message
    bitnetcnn.save_checkpoint(convert_to_ternary(model.eval()), path.parent / "best_ternary.bnc")
    _raises(path, f"the run's best model is {path.parent}/best_ternary.bnc")  # what a --quant fp run's user can read


# ------------------------------------------------------------------------------------ quantized layers, by name


def test_saving_a_bit_model_that_model_args_would_rebuild_unquantized_is_refused(tmp_path):
    # a float model made ternary with bitify (float pre-training, then ternary fine-tuning) records the Bit settings,
    # so it saves and loads as the same model
    model = bitnetcnn.bitify(create_model("bitnet_cnn", width=4, quant="fp")).eval()
    loaded = bitnetcnn.load_checkpoint(bitnetcnn.save_checkpoint(model, tmp_path / "bitified.bnc"))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # model_args that say quant='fp' all the same: the tensors fit create_model(quant='fp'), which would load them
    # into plain convolutions, silently unquantized
    model.model_args = {**model.model_args, "quant": "fp"}
    with pytest.raises(ValueError, match="BitConv2d here but not in create_model"):
        bitnetcnn.save_checkpoint(model, tmp_path / "stale.bnc")


def test_saving_a_bit_model_with_a_layer_quantized_otherwise_is_refused(tmp_path):
    model = create_model("bitnet_cnn", width=4)
    layer = next(m for m in model.modules() if isinstance(m, BitConv2d))
    layer.scale_op = "mean" if layer.scale_op == "median" else "median"
    with pytest.raises(ValueError, match="quantizes with"):
        bitnetcnn.save_checkpoint(model, tmp_path / "mixed.bnc")
    # every layer set to train otherwise (a clipped STE, which create_model does not take): the message named each
    # layer (kilobytes) and advised editing model_args, which cannot express it; the converted model saves
    clipped = bitify(create_model("bitnet_cnn", width=4, quant="fp"), ste="clipped")
    with pytest.raises(ValueError, match=r"; and \d+ more\. Its Bit layers train with settings create_model does "
                                         r"not give them: save the converted model") as refused:
        bitnetcnn.save_checkpoint(clipped, tmp_path / "clipped.bnc")
    assert len(str(refused.value)) < 1500
    bitnetcnn.save_checkpoint(convert_to_ternary(clipped.eval()), tmp_path / "converted.bnc")


def test_a_file_whose_quantized_layers_are_not_its_architectures_is_refused(tmp_path):
    good = bitnetcnn.save_checkpoint(create_model("bitnet_cnn", width=4), tmp_path / "bit.bnc")
    assert bitnetcnn.load_checkpoint(good) is not None

    def drop_one(header):
        header["quantization"]["bit_layers"] = header["quantization"]["bit_layers"][1:]
        return header

    _raises(_rezip(good, tmp_path / "dropped.bnc", header=drop_one), "quantized layers", "load_state_dict")


def test_a_named_data_set_gives_its_own_normalization_and_an_unknown_one_warns(tmp_path):
    from bitnetcnn.normalization import FASHION_MNIST

    model = create_model("bitnet_cnn", width=4)  # the registry's inputs are MNIST's
    path = bitnetcnn.save_checkpoint(model, tmp_path / "fashion.bnc", {"dataset": "fashion_mnist"})
    header = read_checkpoint_header(path)
    assert (tuple(header["input"]["mean"]), tuple(header["input"]["std"])) == FASHION_MNIST
    with pytest.warns(UserWarning, match="'my_digits' but no 'mean' and 'std'"):
        bitnetcnn.save_checkpoint(model, tmp_path / "mine.bnc", {"dataset": "my_digits"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bitnetcnn.save_checkpoint(model, tmp_path / "given.bnc", {"dataset": "my_digits", "mean": [0.5], "std": [0.25]})


def test_a_scale_edited_in_place_is_refused_until_the_weight_is_refreshed(tiny, tmp_path):
    model = bitnetcnn.load_checkpoint(tiny[1])
    layer = next(m for m in model.modules() if isinstance(m, (TernaryConv2d, TernaryLinear)))
    layer.scale.mul_(2)  # forward still uses the cached weight; the file would record the new scale
    with pytest.raises(ValueError, match="refresh_weight"):
        bitnetcnn.save_checkpoint(model, tmp_path / "stale.bnc")
    layer.refresh_weight()
    again = bitnetcnn.load_checkpoint(bitnetcnn.save_checkpoint(model, tmp_path / "fresh.bnc"))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(again(x), model(x))


def test_saving_over_a_file_keeps_its_link_and_its_permissions(tmp_path):
    """Files are replaced whole (written beside, renamed in): a link given as the path was replaced by a file (its
    target kept the old model), and a private file became world-readable."""
    import os

    from bitnetcnn import create_model, load_checkpoint, save_checkpoint

    first, second = (create_model("bitnet_cnn", width=4) for _ in range(2))
    target = save_checkpoint(first, tmp_path / "real.bnc")
    os.chmod(target, 0o600)
    link = tmp_path / "link.bnc"
    link.symlink_to(target)
    save_checkpoint(second, link)
    assert link.is_symlink() and (target.stat().st_mode & 0o777) == 0o600
    assert torch.equal(load_checkpoint(target).stem.conv.weight, second.stem.conv.weight)
    umask = os.umask(0o022)
    try:
        fresh = save_checkpoint(first, tmp_path / "fresh.bnc")
    finally:
        os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.bnc", "link.bnc", "real.bnc"]  # no temporary left


def test_a_part_file_left_by_a_killed_writer_goes_with_the_next_write(tmp_path):
    """A SIGKILL inside a write leaves its hidden temporary file; the next write of the same file removes it before
    it writes, and keeps one of a writer still alive."""
    import os
    import signal
    import subprocess
    import sys

    from bitnetcnn.atomic import replacing, write_atomically

    target = tmp_path / "results.json"
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal
from bitnetcnn.atomic import replacing
with replacing({str(target)!r}) as tmp:
    tmp.write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".results.json.") and ".part" in left[0], left
    with replacing(target) as first:  # gone before the next write writes: on a full disk, it held the room that write
        assert sorted(p.name for p in tmp_path.iterdir()) == [first.name], "the dead writer's part is still there"
        first.write_text("{}")  # needed (a kill in a save left 1.3 MB on a 4 MB disk, and every resume failed there)
    with replacing(target) as alive:  # this process's own, still writing: kept by the write below
        write_atomically(target, "{}")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "results.json"])
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_file_that_cannot_be_made_is_named_as_asked_not_by_its_temporary_name(tmp_path, monkeypatch):
    """`convert m.bnc -o /proc/x.bnc` said "No such file or directory: '/proc/.x.bnc.0bbfd16a-9470....part.bnc'"."""
    import errno
    import os

    from bitnetcnn.atomic import write_atomically

    def refuse(path, *args):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionError, match=f"Permission denied: cannot write {tmp_path / 'model.bnc'}$"):
        write_atomically(tmp_path / "model.bnc", b"x")


def test_a_replaced_file_and_its_folder_are_flushed_to_the_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    """A rename is atomic against a kill, not a host crash: on a file system that does not flush on rename (XFS) an
    unflushed last.ckpt renamed over the old one could come back empty, both versions lost."""
    import os

    from bitnetcnn.atomic import write_atomically

    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = write_atomically(tmp_path / "last.ckpt", b"weights")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert ".part" in events[0][1] and events[2][1] == str(tmp_path.resolve())
    assert target.read_bytes() == b"weights"


def test_a_tensor_of_another_kind_than_the_models_is_refused(tiny, tmp_path):
    """Names and shapes were checked, not types: a BatchNorm's running variance stored as int64 (with the hash
    made to fit) loaded, and the model failed at its first input with torch's words, no file named."""
    import hashlib

    from safetensors.torch import load as read_tensors, save as write_tensors

    with zipfile.ZipFile(tiny[1]) as z:
        tensors = read_tensors(z.read(TENSORS_NAME))
    name = next(k for k in tensors if k.endswith("running_var"))
    tensors[name] = tensors[name].long()
    data = write_tensors(tensors)

    def fitting_hash(h):
        h["tensors"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        return h

    _raises(_rezip(tiny[1], tmp_path / "k.bnc", header=fitting_hash, tensors=lambda _: data), name, "int64",
            "float32")


def test_a_zip_that_is_no_checkpoint_or_a_damaged_one_says_so(tiny, tmp_path):
    """Zips that are not checkpoints were refused with torch's internals ("torch.load failed: KeyError: 101",
    "file in archive is not in a subdirectory"), and so was a bitnetcnn file whose zip directory lost a name."""
    one = tmp_path / "one.bnc"
    with zipfile.ZipFile(one, "w") as z:
        z.writestr("readme.txt", "hello")
    _raises(one, "a zip holding one file, 'readme.txt', which is not a torch.save file")
    two = tmp_path / "two.bnc"
    with zipfile.ZipFile(two, "w") as z:
        z.writestr("a.txt", "a")
        z.writestr("b.txt", "b")
    _raises(two, "a zip that is neither a bitnetcnn checkpoint nor a torch.save file: it holds a.txt, b.txt")
    renamed = tmp_path / "renamed.bnc"
    with zipfile.ZipFile(tiny[1]) as src, zipfile.ZipFile(renamed, "w") as z:
        z.writestr("bitnetcnn.jsoX", src.read(HEADER_NAME))
        z.writestr(TENSORS_NAME, src.read(TENSORS_NAME))
    _raises(renamed, "a damaged bitnetcnn checkpoint", "copy or download it again")


def test_what_save_and_load_cannot_use_is_refused_before_the_work(tmp_path):
    """A str metadata failed in dict(): "dictionary update sequence element #0 has length 1"; an accuracy of 99.1
    (a percentage) was saved and pretrained_cfg.top1 read None; a meta-device model failed in "Cannot copy out of
    meta tensor"; torch.load's dict map_location failed in torch.device() after the whole file was read; a model
    of the user's own, not registered in this process, was "Did you mean ...?" with nothing about registering it."""
    model = bitnetcnn.create_model("bitnet_cnn", width=4)
    path = tmp_path / "m.bnc"
    with pytest.raises(TypeError, match="metadata must be a dict .*, not str 'mnist'"):
        bitnetcnn.save_checkpoint(model, path, "mnist")
    with pytest.raises(ValueError, match=r"accuracy must be .* in \[0, 1\], not 99.1 \(a percentage\? pass 0.991\)"):
        bitnetcnn.save_checkpoint(model, path, {"accuracy": 99.1})
    with torch.device("meta"):
        on_meta = bitnetcnn.create_model("bitnet_cnn", width=4)
    with pytest.raises(ValueError, match=r"on the meta device.*model\.to_empty"):
        bitnetcnn.save_checkpoint(on_meta, path)
    assert not path.exists()
    bitnetcnn.save_checkpoint(model, path, {"accuracy": 0.991})
    assert bitnetcnn.load_checkpoint(path).pretrained_cfg.top1 == 0.991
    with pytest.raises(ValueError, match=r"map_location=\{'cuda:0': 'cpu'\} is not a device"):
        bitnetcnn.load_checkpoint(path, map_location={"cuda:0": "cpu"})

    from bitnetcnn.models.registry import _REGISTRY, register_model

    @register_model
    def own_net(num_classes=10, in_chans=1, spec=None):
        return torch.nn.Sequential(torch.nn.Flatten(), spec.linear(in_chans * 28 * 28, num_classes))

    try:
        bitnetcnn.save_checkpoint(bitnetcnn.create_model("own_net"), tmp_path / "own.bnc")
    finally:
        _REGISTRY.pop("own_net")
    with pytest.raises(bitnetcnn.CheckpointError, match="unknown model 'own_net'.* import the module whose "
                                                        "@register_model defines it first"):
        bitnetcnn.load_checkpoint(tmp_path / "own.bnc")


def test_a_layer_of_almost_only_zero_codes_round_trips():
    """A code seen once among 90,000 still needs a frequency of 1 in the rANS table: rounded to 0, it could not be
    coded (nothing checked a symbol so rare)."""
    from bitnetcnn.checkpoint.ternary_codec import decode_ternary, encode_ternary

    codes = np.zeros((300, 300), dtype=np.int8)
    codes[123, 45], codes[7, 7] = 1, -1
    arrays, coding = encode_ternary([("layer", codes)])
    assert np.array_equal(decode_ternary(arrays, coding)["layer"], codes)


def test_a_file_load_checkpoint_would_refuse_as_a_decode_bomb_is_not_written(tmp_path, monkeypatch):
    """A model of almost only zero codes coded into fewer bytes than the reader accepts for its weights: saved, it
    could not be loaded again. Here the reader's allowance is made small enough for a tiny model to reach it."""
    from bitnetcnn.quant import pack_2bit

    model = convert_to_ternary(create_model("bitnet_cnn", width=32).eval())  # 135,904 weights, ~1.2 kB coded
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (TernaryConv2d, TernaryLinear)):
                layer.weight_packed.copy_(pack_2bit(torch.zeros(layer.weight_shape, dtype=torch.int8)))
                layer.refresh_weight()
    monkeypatch.setattr(ternary_codec, "BUDGET_SLACK", 0)
    with pytest.raises(ValueError, match="almost all zero, and load_checkpoint refuses"):
        bitnetcnn.save_checkpoint(model, tmp_path / "z.bnc")
    assert not (tmp_path / "z.bnc").exists()
    monkeypatch.undo()
    bitnetcnn.save_checkpoint(model, tmp_path / "z.bnc")
    assert not any(m.codes().any() for m in bitnetcnn.load_checkpoint(tmp_path / "z.bnc").modules()
                   if isinstance(m, (TernaryConv2d, TernaryLinear)))


def test_a_file_whose_entries_deflate_past_the_readers_bomb_ratio_is_written_so_that_it_loads(tmp_path):
    """3 MB of repetitive metadata (or a zeroed float model's tensors) deflate over 32:1, which load_checkpoint
    refuses as a decompression bomb: save_checkpoint wrote such a file, which then never loaded. Those entries are
    stored uncompressed; the others stay deflated."""
    model = convert_to_ternary(create_model("bitnet_cnn", width=8).eval())
    path = bitnetcnn.save_checkpoint(model, tmp_path / "notes.bnc", metadata={"notes": "a" * 3_000_000})
    assert bitnetcnn.load_checkpoint(path).checkpoint_header["metadata"]["notes"] == "a" * 3_000_000
    with zipfile.ZipFile(path) as z:
        kinds = {i.filename: i.compress_type for i in z.infolist()}
    assert kinds == {HEADER_NAME: zipfile.ZIP_STORED, TENSORS_NAME: zipfile.ZIP_DEFLATED}
    zeros = create_model("bitnet_cnn", quant="fp", width=64)
    with torch.no_grad():
        for p in zeros.parameters():
            p.zero_()
    path = bitnetcnn.save_checkpoint(zeros, tmp_path / "zeros.bnc")
    loaded = bitnetcnn.load_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), zeros.state_dict().values()))
    with zipfile.ZipFile(path) as z:
        assert z.getinfo(TENSORS_NAME).compress_type == zipfile.ZIP_STORED


def test_a_damaged_checkpoint_in_an_unnamed_file_object_gives_a_checkpoint_error(tmp_path):
    """tempfile.TemporaryFile() and os.fdopen() files are named by a descriptor number: CheckpointError called
    os.fspath(3) on it and a TypeError escaped instead of the one error type reading promises."""
    import tempfile

    path = bitnetcnn.save_checkpoint(convert_to_ternary(create_model("bitnet_cnn", width=8).eval()), tmp_path / "m.bnc")
    with tempfile.TemporaryFile() as f:
        f.write(path.read_bytes()[:5000])
        f.seek(0)
        with pytest.raises(CheckpointError, match=r"^<checkpoint>: "):
            bitnetcnn.load_checkpoint(f)
    with tempfile.TemporaryFile() as f:
        f.write(path.read_bytes())
        f.seek(0)
        assert bitnetcnn.load_checkpoint(f).model_args["name"] == "bitnet_cnn"


def test_an_accuracy_of_one_is_a_fraction_and_is_saved(tmp_path):
    """A model that classified every test image right (accuracy 1.0, the top of [0, 1]) is saved, not refused."""
    model = create_model("bitnet_cnn", width=4)
    path = bitnetcnn.save_checkpoint(model, tmp_path / "perfect.bnc", metadata={"accuracy": 1.0})
    assert bitnetcnn.load_checkpoint(path).pretrained_cfg.top1 == 1.0


def test_an_accuracy_given_as_a_bool_is_refused(tmp_path):
    """True is an int to isinstance: {"accuracy": True} (a flag passed where the figure goes) must not be saved as 100%."""
    model = create_model("bitnet_cnn", width=4)
    with pytest.raises(ValueError, match=r"accuracy must be .* in \[0, 1\], not True"):
        bitnetcnn.save_checkpoint(model, tmp_path / "m.bnc", metadata={"accuracy": True})
    assert not (tmp_path / "m.bnc").exists()


def test_a_std_of_another_channel_count_than_the_models_is_refused(tmp_path):
    """Two std values for a one-channel model: the file would normalize (and export, calibrate) with a std that
    does not fit its images."""
    model = create_model("bitnet_cnn", width=4)
    with pytest.raises(ValueError, match=r"takes 1-channel images .* std \[0\.1, 0\.2\]"):
        bitnetcnn.save_checkpoint(model, tmp_path / "m.bnc", metadata={"std": [0.1, 0.2]})
    assert not (tmp_path / "m.bnc").exists()


def test_a_mean_of_none_in_the_metadata_means_the_models_default(tmp_path):
    """metadata={"mean": None} ("not recorded: use the default") saves the registry's mean, not a TypeError
    from iterating None."""
    from bitnetcnn.models import get_model_config

    default = [float(v) for v in get_model_config("bitnet_cnn").mean]
    path = bitnetcnn.save_checkpoint(create_model("bitnet_cnn", width=4), tmp_path / "m.bnc", metadata={"mean": None})
    assert read_checkpoint_header(path)["input"]["mean"] == default
    assert list(bitnetcnn.load_checkpoint(path).pretrained_cfg.mean) == default


def test_the_size_report_gives_bits_per_ternary_weight_not_bytes():
    """The report's bits per ternary weight are the coded bytes x 8 over the weights (about 1.2-2 bits for a
    converted model: the shipped MNIST weight's); in bytes they would read 8x too small."""
    from safetensors.torch import load as st_load

    from bitnetcnn.checkpoint.format import TERNARY_PREFIX
    from bitnetcnn.checkpoint.read import checkpoint_size_report
    from bitnetcnn.pretrained import BITNET_MNIST, PRETRAINED_DIR

    path = PRETRAINED_DIR / BITNET_MNIST.file
    with zipfile.ZipFile(path) as z:
        stored = st_load(z.read(TENSORS_NAME))
    coded = sum(v.numel() * v.element_size() for k, v in stored.items() if k.startswith(TERNARY_PREFIX))
    weights = sum(int(np.prod(m.weight_shape)) for m in bitnetcnn.load_checkpoint(path).modules()
                  if isinstance(m, (TernaryConv2d, TernaryLinear)))
    report = checkpoint_size_report(path)
    assert (report["ternary_coded_bytes"], report["ternary_weights"]) == (coded, weights)
    assert report["bits_per_ternary_weight"] == pytest.approx(coded * 8 / weights)
    assert 1.2 < report["bits_per_ternary_weight"] < 2


def test_saving_into_a_folder_that_does_not_exist_yet_makes_it(tmp_path):
    """save_checkpoint(model, "runs/new/best.bnc") before the run folder exists: the folder is made, not a
    FileNotFoundError raised."""
    path = tmp_path / "not" / "yet" / "m.bnc"
    bitnetcnn.save_checkpoint(create_model("bitnet_cnn", width=4), path)
    assert path.is_file() and bitnetcnn.load_checkpoint(path).model_args["width"] == 4


def test_a_map_location_of_none_loads_the_model_where_it_was_built(tiny):
    """map_location=None (documented: leave the model where it is built, the CPU) is no "not a device" error."""
    model, path = tiny
    loaded = bitnetcnn.load_checkpoint(path, map_location=None)
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    _assert_same_outputs(model, loaded, _inputs(model))
