"""model.pretrained_cfg: written into the header, derived for older files, and used by eval, export, deploy and
summary instead of the registry's defaults."""

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

import bitnetcnn
from bitnetcnn import PretrainedCfg, cli, convert_to_ternary, create_model, hub
from bitnetcnn.checkpoint.format import HEADER_NAME
from bitnetcnn.data.catalog import get_dataset_spec
from bitnetcnn.deploy.calibration import dataset_for
from bitnetcnn.train.evaluate import accuracy

MEAN, STD = [0.5], [0.25]  # not MNIST's: the commands must take the checkpoint's own


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    """A small converted model saved as trained on mnist_demo (shipped), with its own normalization."""
    torch.manual_seed(0)
    model = convert_to_ternary(create_model("bitnet_cnn", width=8).eval())
    path = tmp_path_factory.mktemp("cfg") / "demo.bnc"
    bitnetcnn.save_checkpoint(model, path, {
        "dataset": "mnist_demo", "mean": MEAN, "std": STD, "accuracy": 0.25,
        "ternary_eval": {"top1": 0.25, "top5": 0.75}, "command": "bitnetcnn train --dataset mnist_demo",
        "tag": "demo", "licence": "MIT",
    })
    return model, path


def _rezip_header(src: Path, dst: Path, change) -> Path:
    """A copy of a checkpoint whose JSON header went through ``change`` (the tensors and their hash untouched)."""
    with zipfile.ZipFile(src) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    header = json.loads(entries[HEADER_NAME])
    change(header)
    entries[HEADER_NAME] = json.dumps(header).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return dst


def test_the_header_stores_it_and_loading_attaches_it(demo_checkpoint):
    _, path = demo_checkpoint
    header = bitnetcnn.checkpoint.read_checkpoint_header(path)
    section = header["pretrained_cfg"]
    assert (section["dataset"], section["mean"], section["std"], section["input_size"]) == (
        "mnist_demo", MEAN, STD, [1, 28, 28])
    assert (section["top1"], section["top5"], section["num_classes"], section["tag"]) == (0.25, 0.75, 10, "demo")
    assert section["training"] == [{"command": "bitnetcnn train --dataset mnist_demo", "wall_time_s": None,
                                    "hardware": None}]
    cfg = bitnetcnn.load_checkpoint(path).pretrained_cfg
    assert isinstance(cfg, PretrainedCfg)
    assert cfg == PretrainedCfg.from_dict(section) and cfg.to_dict() == section
    assert (cfg.mean, cfg.std, cfg.model_kwargs["width"], cfg.name) == ((0.5,), (0.25,), 8, "bitnet_cnn.demo")


def test_older_files_get_it_from_their_other_header_fields(demo_checkpoint, tmp_path):
    old = _rezip_header(demo_checkpoint[1], tmp_path / "old.bnc", lambda h: h.pop("pretrained_cfg"))
    assert bitnetcnn.load_checkpoint(old).pretrained_cfg == bitnetcnn.load_checkpoint(demo_checkpoint[1]).pretrained_cfg
    # the shipped MNIST file predates the section: its two-stage recipe comes from the --init lineage
    shipped = bitnetcnn.load_checkpoint(hub.PRETRAINED_DIR / "bitnet_mnist.bnc").pretrained_cfg
    assert shipped.dataset == "mnist" and len(shipped.training) == 2
    assert "--epochs 40" in shipped.training[0].command and "--init" in shipped.training[1].command


def test_a_malformed_section_is_a_checkpoint_error(demo_checkpoint, tmp_path):
    for change in ({"model": 3}, {"top1": "high"}, {"mean": []}, {"training": ["cmd"]}, {"model": "bit_resnet18"}):
        bad = _rezip_header(demo_checkpoint[1], tmp_path / "bad.bnc", lambda h: h["pretrained_cfg"].update(change))
        with pytest.raises(bitnetcnn.CheckpointError, match="pretrained_cfg"):
            bitnetcnn.load_checkpoint(bad)
    # a field from a newer version is left out, not an error
    newer = _rezip_header(demo_checkpoint[1], tmp_path / "new.bnc", lambda h: h["pretrained_cfg"].update(later=1))
    assert bitnetcnn.load_checkpoint(newer).pretrained_cfg == bitnetcnn.load_checkpoint(demo_checkpoint[1]).pretrained_cfg


def test_eval_without_dataset_uses_the_checkpoints_data_set_and_normalization(demo_checkpoint, capsys):
    model, path = demo_checkpoint
    assert cli.main(["eval", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["dataset"], result["mean"], result["std"]) == ("mnist_demo", MEAN, STD)
    test = get_dataset_spec("mnist_demo").reader(None, False, False)
    expected = accuracy(model, test.images, test.labels, MEAN, STD)
    assert (result["top1"], result["images"]) == (expected["top1"], len(test.labels))


def test_export_writes_the_checkpoints_own_mean_and_std(demo_checkpoint, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "demo.onnx"
    assert cli.main(["export", str(demo_checkpoint[1]), "-o", str(out), "--check", "200"]) == 0
    exported = onnx.load(str(out))
    meta = {p.key: p.value for p in exported.metadata_props}
    assert (json.loads(meta["bitnetcnn.mean"]), json.loads(meta["bitnetcnn.std"])) == (MEAN, STD)
    assert meta["bitnetcnn.dataset"] == "mnist_demo"
    assert json.loads(meta["bitnetcnn.pretrained_cfg"])["top1"] == 0.25
    assert "[0.5]" in exported.graph.doc_string or "[0.5]" in exported.doc_string


def test_deploy_and_summary_take_the_data_set_and_input_size_from_it(tmp_path):
    model = convert_to_ternary(create_model("bitnet_cnn", width=8).eval())
    path = bitnetcnn.save_checkpoint(model, tmp_path / "f.bnc", {"dataset": "fashion_mnist", "input_size": [1, 32, 32],
                                                                 "mean": [0.286], "std": [0.353]})
    loaded = bitnetcnn.load_checkpoint(path)
    assert dataset_for(loaded) == "fashion_mnist"  # guessed from one channel, it would be mnist
    assert bitnetcnn.summary(loaded, print_fn=None).input_size == (1, 32, 32)
    from bitnetcnn.deploy.calibration import as_batches
    from bitnetcnn.checkpoint.pretrained_cfg import input_size_of

    assert input_size_of(loaded) == (1, 32, 32)
    images = torch.full((2, 1, 32, 32), 255, dtype=torch.uint8)
    (batch,) = as_batches(images, loaded)
    assert batch[0, 0, 0, 0] == pytest.approx((1 - 0.286) / 0.353)


def test_it_is_frozen_hashable_and_survives_copies(demo_checkpoint):
    import copy
    import pickle

    cfg = bitnetcnn.load_checkpoint(demo_checkpoint[1]).pretrained_cfg
    assert copy.deepcopy(cfg) == cfg == pickle.loads(pickle.dumps(cfg))
    assert hash(cfg) == hash(copy.deepcopy(cfg))
    assert bitnetcnn.convert_to_bit(bitnetcnn.load_checkpoint(demo_checkpoint[1])).pretrained_cfg == cfg
    with pytest.raises(TypeError):
        cfg.model_kwargs["width"] = 16
    buf = io.BytesIO()
    torch.save(cfg, buf)  # a model carrying it can still be torch.save'd
