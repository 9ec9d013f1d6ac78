"""Names changed this release keep working for one more, with a DeprecationWarning that says what replaces them."""

import pytest
import torch

from bitnetcnn import BitConv2d, TernaryConv2d, bitify, create_model
from bitnetcnn.data import paths
from bitnetcnn.settings import data_root


def test_hub_pretrained_becomes_a_pretrained_cfg_of_the_entry():
    from bitnetcnn import hub

    with pytest.warns(DeprecationWarning, match="PretrainedCfg"):
        spec = hub.Pretrained(file="bitnet_mnist.bnc")
    entry = hub.HubEntry("mine", "bitnet_cnn", {}, spec)
    assert entry.pretrained.model == "bitnet_cnn" and entry.pretrained.file == "bitnet_mnist.bnc"
    with pytest.warns(DeprecationWarning):
        assert hub.Pretrained() is None


def test_ternary_layer_builds_what_from_codes_builds():
    from bitnetcnn.checkpoint.format import ternary_layer

    bit = BitConv2d(4, 6, 3, padding=1, scale_op="mean").eval()
    reference = TernaryConv2d.from_bit(bit)
    with pytest.warns(DeprecationWarning, match="from_codes"):
        layer = ternary_layer(bit, reference.codes().numpy(), reference.scale, reference.bias, False, "mean")
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(layer(x), reference(x)) and layer.quant == reference.quant


def test_old_positional_and_module_names():
    model = bitify(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), (), "mean", True, 8)
    assert model[0].quant.scale_op == "mean" and model[0].pow2 and model[0].act_bits == 8
    with pytest.warns(DeprecationWarning, match="bitnetcnn.settings.data_root"):
        assert paths.data_root("x") == data_root("x")


def test_deprecated_helpers_say_what_replaces_them():
    from bitnetcnn.quant import validate_scale_op

    with pytest.warns(DeprecationWarning, match=r"layer.quant.to_dict\(\)"):
        assert BitConv2d(1, 2, 3, scale_op="mean").quant_kwargs()["scale_op"] == "mean"
    with pytest.warns(DeprecationWarning, match="TernaryQuant"):
        assert validate_scale_op("mean") == "mean"
    assert create_model("bitnet_cnn", width=4, scale_op="mean").stem.conv.scale_op == "mean"


def test_models_layers_became_quant_spec():
    from bitnetcnn.models import layers, quant_spec

    with pytest.warns(DeprecationWarning, match="bitnetcnn.models.quant_spec.QuantSpec"):
        assert layers.QuantSpec is quant_spec.QuantSpec


def test_what_left_checkpoint_format_is_found_where_it_went():
    from bitnetcnn.checkpoint import format, read, write

    with pytest.warns(DeprecationWarning, match="bitnetcnn.checkpoint.write"):
        assert format.save_checkpoint is write.save_checkpoint
    with pytest.warns(DeprecationWarning, match="bitnetcnn.checkpoint.read"):
        assert format.native_header is read.native_header
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        format.nothing
