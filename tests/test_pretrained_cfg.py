"""model.pretrained_cfg: written into the header, derived for older files, and used by eval, export, deploy and
summary instead of the registry's defaults."""

import io
import json
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import bitnetcnn
from bitnetcnn import PretrainedCfg, cli, convert_to_ternary, create_model, hub
from bitnetcnn.checkpoint.format import HEADER_NAME
from bitnetcnn.checkpoint.read import read_checkpoint_header
from bitnetcnn.data.catalog import get_dataset_spec
from bitnetcnn.deploy.calibration import dataset_for
from bitnetcnn.train.evaluate import accuracy, evaluate_checkpoint

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
    # an older file's class names that do not fit its classes are left out (its data set's own take their place)
    def misnamed(header):
        header.pop("pretrained_cfg")
        header["class_names"] = ["zero", "one"]
    cfg = bitnetcnn.load_checkpoint(_rezip_header(demo_checkpoint[1], tmp_path / "misnamed.bnc", misnamed)).pretrained_cfg
    assert len(cfg.class_names) == cfg.num_classes == 10


def test_a_malformed_section_is_a_checkpoint_error(demo_checkpoint, tmp_path):
    for change in ({"model": 3}, {"top1": "high"}, {"mean": []}, {"training": ["cmd"]}, {"model": "bit_resnet18"},
                   {"model_kwargs": {"width": 16}}, {"num_classes": 100},
                   # names that do not fit the classes (predict failed on its first image: an IndexError)
                   {"class_names": ["zero", "one"]}):
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


def test_eval_scores_with_the_checkpoints_own_normalization_and_leaves_a_model_as_it_was(tmp_path):
    """A trained model whose file records another normalization than its data set's is scored on inputs so
    normalized (the random model above scores alike either way, so this one is trained); accuracy() leaves the
    model in its mode and refuses to score no images (0.0 was returned, as if the model were wrong)."""
    trained = hub.load("bitnet_mnist", pretrained=True)
    path = tmp_path / "shifted.bnc"
    bitnetcnn.save_checkpoint(trained, path, {"dataset": "mnist_demo", "mean": MEAN, "std": STD})
    test, spec = get_dataset_spec("mnist_demo").reader(None, False, False), get_dataset_spec("mnist_demo")
    own = accuracy(trained, test.images, test.labels, MEAN, STD)
    assert own["top1"] != accuracy(trained, test.images, test.labels, spec.mean, spec.std)["top1"]
    assert evaluate_checkpoint(str(path))["top1"] == own["top1"]
    trained.train()
    accuracy(trained, test.images[:3], test.labels[:3], MEAN, STD)
    assert trained.training
    with pytest.raises(ValueError, match="no images to evaluate on"):
        accuracy(trained, test.images[:0], test.labels[:0], MEAN, STD)


def test_calibration_and_check_images_are_normalized_with_the_checkpoints_own_mean_and_std(demo_checkpoint):
    """Deployment's calibration and check images (``model_inputs``) take the weights' own normalization: with the
    data set's, an int8 graph's activation ranges are measured on inputs the model never sees."""
    from bitnetcnn.deploy.calibration import dataset_images, model_inputs
    from bitnetcnn.normalization import normalize

    model, path = demo_checkpoint
    inputs, labels = model_inputs(bitnetcnn.load_checkpoint(path), "mnist_demo", 8, train=False)
    images, same_labels, spec = dataset_images("mnist_demo", 8, False, img_size=28, in_chans=1)
    assert tuple(spec.mean) != tuple(MEAN) and torch.equal(labels, same_labels)
    torch.testing.assert_close(inputs, normalize(images, MEAN, STD), rtol=0, atol=0)


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


def _fashion_bit_checkpoint(tmp_path) -> Path:
    """A trainable (Bit) model saved as trained on Fashion-MNIST at 32 px, with its names and accuracy."""
    from bitnetcnn.class_names import FASHION_MNIST

    torch.manual_seed(0)
    return bitnetcnn.save_checkpoint(create_model("bitnet_cnn", width=8).eval(), tmp_path / "bit.bnc", {
        "dataset": "fashion_mnist", "mean": [0.286], "std": [0.353], "input_size": [1, 32, 32],
        "class_names": list(FASHION_MNIST), "accuracy": 0.9, "tag": "fm"})


def _inputs(cfg: PretrainedCfg) -> tuple:
    return cfg.dataset, cfg.input_size, cfg.mean, cfg.std, cfg.class_names


def test_saving_or_converting_a_loaded_model_keeps_its_data_sets_inputs(tmp_path):
    """Saved again with no metadata, or through `bitnetcnn convert`, a model keeps the inputs it was trained on:
    the registry's (MNIST's 28 px, its mean) would make eval, export and calibration normalize wrongly."""
    bit = _fashion_bit_checkpoint(tmp_path)
    source = bitnetcnn.load_checkpoint(bit).pretrained_cfg
    assert source.input_size == (1, 32, 32) and source.class_names[0] == "T-shirt/top"
    again = bitnetcnn.save_checkpoint(convert_to_ternary(bitnetcnn.load_checkpoint(bit)), tmp_path / "again.bnc")
    saved = bitnetcnn.load_checkpoint(again).pretrained_cfg
    assert _inputs(saved) == _inputs(source)
    assert saved.top1 is None  # an accuracy is the caller's to state: the model may have changed since
    assert cli.main(["convert", str(bit), "-o", str(tmp_path / "t.bnc")]) == 0
    converted = bitnetcnn.load_checkpoint(tmp_path / "t.bnc").pretrained_cfg
    assert _inputs(converted) == _inputs(source) and converted.top1 == 0.9
    # power-of-two scales compute another function: its accuracy is not the source's
    assert cli.main(["convert", str(bit), "--pow2", "-o", str(tmp_path / "p2.bnc")]) == 0
    p2 = bitnetcnn.load_checkpoint(tmp_path / "p2.bnc").pretrained_cfg
    assert _inputs(p2) == _inputs(source) and p2.top1 is None and p2.model_kwargs["pow2"] is True
    in_memory = bitnetcnn.convert_to_ternary_p2(bitnetcnn.load_checkpoint(bit)).pretrained_cfg
    assert in_memory.top1 is None and in_memory.model_kwargs["pow2"] is True


def test_a_loaded_model_saved_for_another_data_set_takes_that_data_sets_inputs_and_names(tmp_path):
    """Fine-tuned from Fashion-MNIST weights and saved as MNIST, a model kept Fashion's mean and labels: predict named
    digits "T-shirt/top", and export and calibration normalized with the wrong mean, without a word."""
    from bitnetcnn.class_names import DIGITS
    from bitnetcnn.normalization import BY_DATASET

    loaded = bitnetcnn.load_checkpoint(_fashion_bit_checkpoint(tmp_path))
    assert loaded.pretrained_cfg.class_names[0] == "T-shirt/top"
    mnist = bitnetcnn.load_checkpoint(bitnetcnn.save_checkpoint(loaded, tmp_path / "m.bnc", {"dataset": "mnist"}))
    cfg = mnist.pretrained_cfg
    assert cfg.dataset == "mnist" and (cfg.mean, cfg.std) == tuple(tuple(v) for v in BY_DATASET["mnist"])
    assert cfg.class_names == DIGITS and cfg.input_size == (1, 28, 28)
    # None in the metadata records nothing (names) or the default (inputs), not the weights' own
    header = read_checkpoint_header(bitnetcnn.save_checkpoint(loaded, tmp_path / "n.bnc", {
        "dataset": "fashion_mnist", "class_names": None}))
    assert header.get("class_names") is None  # loading gives Fashion-MNIST's, which bitnetcnn knows
    assert header["input"]["mean"] == [0.286]  # the same data set: the weights' own inputs stay


def test_eval_and_predict_run_a_bfloat16_checkpoint_in_its_own_dtype(tmp_path):
    """A bf16 model loads as bf16; its float32 inputs made every forward fail in eval and predict."""
    from PIL import Image

    torch.manual_seed(0)
    model = convert_to_ternary(create_model("bitnet_cnn", width=8).eval())
    path = bitnetcnn.save_checkpoint(model.to(torch.bfloat16), tmp_path / "half.bnc", {"dataset": "mnist"})
    loaded = bitnetcnn.load_checkpoint(path)
    images, labels = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (16,))
    result = accuracy(loaded, images, labels, (0.1307,), (0.3081,))
    assert result["images"] == 16 and 0 <= result["top1"] <= result["top5"] <= 1
    Image.fromarray(images[0, 0].numpy()).save(tmp_path / "digit.png")
    from bitnetcnn.predict import predict_files

    (top,) = predict_files(loaded, [tmp_path / "digit.png"], top=3)
    assert len(top["top"]) == 3 and abs(sum(c["probability"] for c in top["top"])) <= 1.0 + 1e-3


def test_convert_pow2_refuses_a_model_whose_scales_are_already_fixed(tmp_path, capsys):
    converted = tmp_path / "t.bnc"
    assert cli.main(["convert", str(_fashion_bit_checkpoint(tmp_path)), "-o", str(converted)]) == 0
    capsys.readouterr()
    assert cli.main(["convert", str(converted), "--pow2", "-o", str(tmp_path / "p2.bnc")]) == 2
    assert "is already converted, its scales fixed" in capsys.readouterr().err
    assert not (tmp_path / "p2.bnc").exists()


def test_converting_a_runs_last_ckpt_records_its_data_sets_inputs(tmp_path):
    """A run's last.ckpt holds no inputs: they come from the run folder (a 3-channel CIFAR-10 run here, where the
    registry would say MNIST's one channel and 28 px)."""
    import lightning

    from bitnetcnn.train.module import BitClassifier

    run = tmp_path / "run"
    run.mkdir()
    module = BitClassifier("bitnet_cnn", 10, 3, {"width": 8})
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, run / "last.ckpt")
    (run / "args.json").write_text(json.dumps({"dataset": "cifar10"}))
    assert cli.main(["convert", str(run / "last.ckpt"), "-o", str(tmp_path / "c10.bnc")]) == 0
    cfg = bitnetcnn.load_checkpoint(tmp_path / "c10.bnc").pretrained_cfg
    spec = get_dataset_spec("cifar10")
    assert _inputs(cfg) == ("cifar10", (3, 32, 32), spec.mean, spec.std, spec.class_names)


def test_a_model_saved_without_inputs_for_its_channels_is_refused(tmp_path):
    model = convert_to_ternary(create_model("bitnet_cnn", in_chans=3, width=8).eval())
    with pytest.raises(ValueError, match=r"takes 3-channel images but the inputs to record are \[3, 28, 28\] with "
                                         r"mean \[0.1307\]"):
        bitnetcnn.save_checkpoint(model, tmp_path / "x.bnc")
    assert not (tmp_path / "x.bnc").exists()
    path = bitnetcnn.save_checkpoint(model, tmp_path / "x.bnc", {"mean": [0.5] * 3, "std": [0.25] * 3})
    assert bitnetcnn.load_checkpoint(path).pretrained_cfg.input_size == (3, 28, 28)


def test_eval_refuses_a_data_set_with_other_images_or_labels(demo_checkpoint, tmp_path):
    """Told before any image is read: a score on images or labels the model was not trained on means nothing."""
    from bitnetcnn.class_names import DIGITS
    from bitnetcnn.train.evaluate import evaluate_model

    model = convert_to_ternary(create_model("bitnet_cnn", width=8).eval())
    digits = bitnetcnn.load_checkpoint(bitnetcnn.save_checkpoint(
        model, tmp_path / "d.bnc", {"dataset": "mnist", "class_names": list(DIGITS)}))
    with pytest.raises(ValueError, match="has the classes 0, 1, 2, 3, 4 and 5 more but 'fashion_mnist' has "
                                         "T-shirt/top"):
        evaluate_model(digits, "fashion_mnist", data_dir=str(tmp_path / "nowhere"))
    large = bitnetcnn.load_checkpoint(bitnetcnn.save_checkpoint(
        model, tmp_path / "l.bnc", {"dataset": "mnist_demo", "input_size": [1, 32, 32]}))
    with pytest.raises(ValueError, match=r"takes 1x32x32 inputs \(its pretrained_cfg\) but 'mnist_demo' has 1x28x28"):
        evaluate_model(large)
    colour = convert_to_ternary(create_model("bitnet_cnn", in_chans=3, width=8).eval())
    with pytest.raises(ValueError, match="takes 3-channel images but 'mnist_demo' has 1-channel ones"):
        evaluate_model(colour, "mnist_demo")
    assert evaluate_model(bitnetcnn.load_checkpoint(demo_checkpoint[1]), "mnist_demo")["images"] > 0


def test_calibration_refuses_images_of_another_size_than_the_models():
    from bitnetcnn.deploy.calibration import model_inputs

    model = convert_to_ternary(create_model("bitnet_cnn", width=8).eval())
    model.pretrained_cfg = PretrainedCfg(model="bitnet_cnn", dataset="mnist_demo", input_size=(1, 32, 32))
    with pytest.raises(ValueError, match="'mnist_demo' has 1x28x28 images but the model takes 1x32x32"):
        model_inputs(model, "mnist_demo", 8, False)
    model.pretrained_cfg = PretrainedCfg(model="bitnet_cnn", dataset="mnist_demo", input_size=(1, 28, 28))
    assert model_inputs(model, "mnist_demo", 8, False)[0].shape == (8, 1, 28, 28)


def test_older_files_with_the_registrys_inputs_are_named_as_such(tmp_path):
    """Files written before the inputs were checked may record the registry's (1x28x28 for a 3-channel bitnet_cnn
    trained on CIFAR-10): eval says so and how to repair the file, and the repair works."""
    from bitnetcnn.train.evaluate import evaluate_model

    model = convert_to_ternary(create_model("bitnet_cnn", in_chans=3, width=8).eval())
    spec = get_dataset_spec("cifar10")
    good = bitnetcnn.save_checkpoint(model, tmp_path / "good.bnc", {"dataset": "cifar10", "mean": list(spec.mean),
                                                                     "std": list(spec.std), "input_size": [3, 32, 32]})

    def registry_inputs(header):
        header["input"] = {"size": [1, 28, 28], "mean": [0.1307], "std": [0.3081]}
        header["pretrained_cfg"].update(input_size=[1, 28, 28], mean=[0.1307], std=[0.3081])

    old = bitnetcnn.load_checkpoint(_rezip_header(good, tmp_path / "old.bnc", registry_inputs))
    with pytest.raises(ValueError, match=r"records 1x28x28 inputs in its header but the model takes 3-channel images: "
                                         r"files written .* save it again"):
        evaluate_model(old, data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="its pretrained_cfg's, which a file written before these were checked"):
        bitnetcnn.save_checkpoint(old, tmp_path / "again.bnc")
    fixed = bitnetcnn.save_checkpoint(old, tmp_path / "fixed.bnc", {"input_size": [3, 32, 32], "mean": list(spec.mean),
                                                                     "std": list(spec.std)})
    assert _inputs(bitnetcnn.load_checkpoint(fixed).pretrained_cfg)[:4] == ("cifar10", (3, 32, 32), spec.mean, spec.std)


def test_class_names_must_name_every_class(tmp_path):
    with pytest.raises(ValueError, match="predicts 10 classes but the class names to record are 3"):
        bitnetcnn.save_checkpoint(create_model("bitnet_cnn", width=8), tmp_path / "x.bnc",
                                  {"class_names": ["a", "b", "c"]})


def test_convert_pow2_keeps_the_accuracy_of_a_model_trained_with_pow2_and_refuses_float_models(tmp_path, capsys):
    torch.manual_seed(0)
    trained_pow2 = bitnetcnn.save_checkpoint(create_model("bitnet_cnn", width=8, pow2=True).eval(),
                                             tmp_path / "p.bnc", {"dataset": "mnist_demo", "accuracy": 0.5})
    assert cli.main(["convert", str(trained_pow2), "--pow2", "-o", str(tmp_path / "p2.bnc")]) == 0
    assert bitnetcnn.load_checkpoint(tmp_path / "p2.bnc").pretrained_cfg.top1 == 0.5  # the function it validated
    fp = bitnetcnn.save_checkpoint(create_model("bitnet_cnn", width=8, quant="fp"), tmp_path / "fp.bnc")
    capsys.readouterr()
    assert cli.main(["convert", str(fp), "--pow2", "-o", str(tmp_path / "fp2.bnc")]) == 2
    assert "holds a full-precision model (--quant fp): it has no ternary layers to convert nor scales to round" in (
        capsys.readouterr().err)
    assert cli.main(["convert", str(fp), "-o", str(tmp_path / "fp3.bnc")]) == 2  # nor without --pow2: no "success"
    assert "it has no ternary layers to convert; it is usable as it is" in capsys.readouterr().err
    assert not (tmp_path / "fp3.bnc").exists()
    # a float run's last.ckpt too
    import lightning

    from bitnetcnn.train.module import BitClassifier

    (tmp_path / "run").mkdir()
    module = BitClassifier("bitnet_cnn", 10, 1, {"width": 8, "quant": "fp"})
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, tmp_path / "run" / "last.ckpt")
    assert cli.main(["convert", str(tmp_path / "run" / "last.ckpt"), "--pow2", "-o", str(tmp_path / "f.bnc")]) == 2
    assert "holds a full-precision model (--quant fp)" in capsys.readouterr().err


def test_a_size_or_data_set_other_than_the_weights_own_is_said_aloud(demo_checkpoint, tmp_path):
    from bitnetcnn.checkpoint.pretrained_cfg import input_size_of
    from bitnetcnn.deploy.commands import export_command

    model = bitnetcnn.load_checkpoint(demo_checkpoint[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert input_size_of(model, (1, 28, 28)) == (1, 28, 28)
    with pytest.warns(UserWarning, match=r"input_size \[1, 40, 40\] is not the \[1, 28, 28\]"):
        assert input_size_of(model, (1, 40, 40)) == (1, 40, 40)
    said = []
    export_command(str(demo_checkpoint[1]), str(tmp_path / "m.onnx"), dataset="fashion_mnist", check=0,
                   log=said.append)
    assert any("was trained on mnist_demo, not fashion_mnist" in line for line in said), said
    said.clear()  # mnist_demo is a sample of MNIST: the same images
    export_command(str(demo_checkpoint[1]), str(tmp_path / "m.onnx"), dataset="mnist", check=0, log=said.append)
    assert not any("was trained on" in line for line in said), said


def test_an_export_of_a_model_that_records_no_data_set_says_which_it_took_the_images_from(tmp_path):
    """A model saved without metadata (here 10 classes, 3 channels) is calibrated and checked on the data set its
    input size and classes suggest; that was a guess the command never owned up to."""
    from bitnetcnn.deploy.commands import export_command

    path = bitnetcnn.save_checkpoint(convert_to_ternary(create_model("bit_resnet18", num_classes=10).eval()),
                                     tmp_path / "bare.bnc")
    said = []
    export_command(str(path), str(tmp_path / "m.onnx"), check=8, log=said.append)
    assert any("records no data set; taking its images from cifar10, the data set of its input size and classes "
               "(give --dataset to choose)" in line for line in said), said


def test_an_accuracy_is_a_share_of_the_test_images_not_a_float32_metric():
    """bitnet_mnist's top-1 read 0.9962999820709229 (torchmetrics' float32, written as it came): a share of 10,000
    images is k / 10,000, and without the count it is kept to 6 decimals."""
    assert bitnetcnn.hub.BITNET_MNIST.top1 == 0.9963
    assert bitnetcnn.load_checkpoint(bitnetcnn.hub.PRETRAINED_DIR / "bitnet_mnist.bnc").pretrained_cfg.top1 == 0.9963
    assert PretrainedCfg("bitnet_cnn", top1=0.9962999820709229, top5=1.0, test_images=10_000).top1 == 0.9963
    assert PretrainedCfg("bitnet_cnn", top1=2 / 3, test_images=1_001).top1 == 667 / 1_001
    assert PretrainedCfg("bitnet_cnn", top1=0.12345678).top1 == 0.123457
