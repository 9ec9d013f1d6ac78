"""torch.hub: hubconf.py entry points, pretrained weights (shipped, downloaded and cached, or missing)."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

import bitnetcnn
from bitnetcnn import BitConv2d, PretrainedCfg, TernaryConv2d, cli, convert_to_ternary, create_model, hub
from bitnetcnn.nn import ActQuantizer
from conftest import require_real_data
from realdata import accuracy

REPO = str(Path(__file__).resolve().parents[1])
SEED_NAMES = ["bitnet_mnist", "bitnet_resnet18", "bitnet_resnet50", "bitnet_mobilenetv2", "bitnet_convnextv2"]


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = convert_to_ternary(create_model("bitnet_cnn", width=8).eval())
    path = tmp_path_factory.mktemp("hub") / "mnist.bnc"
    bitnetcnn.save_checkpoint(model, path, {"dataset": "mnist", "accuracy": 0.1})
    return model, path


def test_hubconf_lists_the_seed_names_and_every_other_registered_model():
    hubconf = torch.hub._import_module("hubconf", str(Path(REPO) / "hubconf.py"))  # what torch.hub.load does
    names = [f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith("_")]  # torch.hub.list
    assert hubconf.dependencies == ["torch", "numpy", "safetensors"]
    for name in SEED_NAMES:
        assert name in names
    covered = {e.model for e in hub.SEED_ENTRIES}
    for model in bitnetcnn.list_models():
        assert model in covered or model in names
    assert "bit_resnet34" in names
    doc = hubconf.bitnet_resnet18.__doc__
    assert "pretrained" in doc and "ternary" in doc


def test_pretrained_bitnet_mnist_through_torch_hub_scores_on_the_bundled_digits():
    """The shipped weights, through torch.hub, on the 2,000 MNIST test digits bundled as mnist_demo (no real data
    needed): they must classify them as well as their metadata says they classify all 10,000."""
    from bitnetcnn.data.catalog import get_dataset_spec
    from bitnetcnn.settings import data_root

    model = torch.hub.load(REPO, "bitnet_mnist", source="local", pretrained=True)
    assert isinstance(model.stem.conv, TernaryConv2d)
    cfg = model.pretrained_cfg
    assert cfg.dataset == "mnist" and cfg.top1 >= 0.996 and cfg.training
    demo = get_dataset_spec("mnist_demo").reader(data_root(None), False, False)
    assert len(demo.labels) == 2000
    acc = accuracy(model, demo.images.numpy(), demo.labels.numpy(), cfg.mean, cfg.std)
    assert acc >= cfg.top1 - 0.005, (acc, cfg.top1)  # 2,000 of the 10,000: within half a point


def test_checkpoint_path_gives_the_converted_or_the_trainable_model(mnist_checkpoint):
    model, path = mnist_checkpoint
    x = torch.randn(2, 1, 28, 28)
    converted = torch.hub.load(REPO, "bitnet_mnist", source="local", checkpoint_path=str(path))
    assert isinstance(converted.stem.conv, TernaryConv2d)
    trainable = torch.hub.load(REPO, "bitnet_mnist", source="local", checkpoint_path=str(path), ternary=False)
    assert isinstance(trainable.stem.conv, BitConv2d)
    assert all(p.requires_grad for p in trainable.parameters())
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
        assert torch.equal(convert_to_ternary(trainable)(x), model(x))
    assert converted.checkpoint_header["metrics"]["accuracy"] == 0.1


def test_new_classes_need_the_trainable_model(mnist_checkpoint):
    _, path = mnist_checkpoint
    with pytest.raises(ValueError, match="ternary=False"):
        hub.load("bitnet_mnist", checkpoint_path=path, num_classes=5)
    model = hub.load("bitnet_mnist", checkpoint_path=path, num_classes=5, ternary=False)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    assert model.model_args["num_classes"] == 5


def test_wrong_model_for_the_entry(mnist_checkpoint):
    with pytest.raises(ValueError, match="not the bit_resnet18"):
        hub.load("bitnet_resnet18", checkpoint_path=mnist_checkpoint[1])


def test_without_weights():
    model = torch.hub.load(REPO, "bitnet_mnist", source="local", num_classes=3)
    assert isinstance(model.stem.conv, TernaryConv2d)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 3)
    assert isinstance(hub.load("bitnet_mnist", ternary=False).stem.conv, BitConv2d)
    def acts(model):
        kinds = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.SiLU)
        return {type(m).__name__ for m in model.modules() if isinstance(m, kinds)}
    assert acts(hub.load("bitnet_resnet18", ternary=False)) == {"ReLU"}  # as its published weights
    mnv2 = hub.load("bitnet_mobilenetv2", ternary=False)
    assert acts(mnv2) == {"ReLU6"} and mnv2.model_args["act_bits"] == 8  # as its published weights
    for name in ("bitnet_resnet50", "bitnet_convnextv2"):  # no weights published for these yet
        with pytest.raises(hub.PretrainedWeightsUnavailable, match="no pretrained weights yet"):
            hub.load(name, pretrained=True)


def _with_url(monkeypatch, url, sha256):
    weights = dataclasses.replace(hub.BITNET_MNIST, file="remote_mnist.bnc", url=url, sha256=sha256)
    entry = hub.HubEntry("bitnet_mnist", "bitnet_cnn", {}, weights)
    monkeypatch.setattr(hub, "SEED_ENTRIES", (entry,) + hub.SEED_ENTRIES[1:])


def test_download_verify_and_cache(mnist_checkpoint, tmp_path, monkeypatch, capsys):
    _, path = mnist_checkpoint
    monkeypatch.setenv("BITNETCNN_CACHE", str(tmp_path / "cache"))
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    _with_url(monkeypatch, path.as_uri(), good)
    model = hub.load("bitnet_mnist", pretrained=True)
    cached = tmp_path / "cache" / "hub" / "remote_mnist.bnc"
    assert f'Downloading: "{path.as_uri()}" to {cached}' in capsys.readouterr().err  # progress=True, the default
    assert cached.read_bytes() == path.read_bytes()
    assert isinstance(model.stem.conv, TernaryConv2d)
    # offline now: the cached copy is used
    _with_url(monkeypatch, "http://127.0.0.1:9/remote_mnist.bnc", good)
    assert hub.pretrained_path("bitnet_mnist") == cached
    # offline and not cached: a clear error that says where to put the file
    cached.unlink()
    with pytest.raises(hub.PretrainedWeightsUnavailable, match="cannot download .* no cached copy"):
        hub.load("bitnet_mnist", pretrained=True)
    # a download whose hash differs is not kept
    _with_url(monkeypatch, path.as_uri(), "0" * 64)
    with pytest.raises(hub.PretrainedWeightsUnavailable, match="sha256"):
        hub.pretrained_path("bitnet_mnist")
    assert not cached.exists()


def test_downloads_without_a_sha256_from_different_addresses_are_cached_apart(mnist_checkpoint, tmp_path,
                                                                               monkeypatch):
    """Without a published sha256 nothing tells two files of one name apart: a weight republished at
    ``.../v2/remote_mnist.bnc`` was served the copy of ``.../v1/remote_mnist.bnc`` cached before it."""
    import io
    import urllib.request

    class Response(io.BytesIO):
        headers: dict = {}

    served = {"https://example.org/v1/remote_mnist.bnc": b"first", "https://example.org/v2/remote_mnist.bnc": b"second"}
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response(served[url]))
    monkeypatch.setenv("BITNETCNN_CACHE", str(tmp_path / "cache"))
    paths = []
    for url in served:
        _with_url(monkeypatch, url, None)
        paths.append(hub.pretrained_path("bitnet_mnist", progress=False))
    assert [p.read_bytes() for p in paths] == [b"first", b"second"]
    assert all(p.name == "remote_mnist.bnc" for p in paths)


def test_hub_load_attaches_the_published_weights_metadata():
    model = torch.hub.load(REPO, "bitnet_mnist", source="local", pretrained=True)
    cfg = model.pretrained_cfg
    assert isinstance(cfg, PretrainedCfg) and cfg == hub.BITNET_MNIST
    assert (cfg.name, cfg.dataset, cfg.input_size, cfg.mean, cfg.std) == (
        "bitnet_mnist.mnist", "mnist", (1, 28, 28), (0.1307,), (0.3081,))
    assert cfg.num_classes == len(cfg.class_names) == 10 and cfg.test_images == 10000
    assert [s.wall_time_s for s in cfg.training] == [5028.0, 668.0] and cfg.command.startswith("bitnetcnn train")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top1 = 1.0
    with pytest.raises(TypeError):
        cfg.model_kwargs["act_bits"] = 8
    trainable = torch.hub.load(REPO, "bitnet_mnist", source="local", pretrained=True, ternary=False)
    assert trainable.pretrained_cfg == hub.BITNET_MNIST


def test_checkpoint_path_carries_the_files_own_metadata(mnist_checkpoint):
    cfg = hub.load("bitnet_mnist", checkpoint_path=mnist_checkpoint[1]).pretrained_cfg
    assert (cfg.dataset, cfg.top1, cfg.model_kwargs["width"]) == ("mnist", 0.1, 8)
    new_head = hub.load("bitnet_mnist", checkpoint_path=mnist_checkpoint[1], num_classes=5, ternary=False)
    assert (new_head.pretrained_cfg.num_classes, new_head.pretrained_cfg.top1) == (5, None)
    assert new_head.pretrained_cfg.model_kwargs["num_classes"] == 5  # the kwargs build the model it describes
    assert new_head.pretrained_cfg.input_size == (1, 28, 28)  # the inputs stay the file's


def test_list_pretrained():
    published = bitnetcnn.list_pretrained()
    assert published == [hub.BITNET_MNIST, hub.BITNET_RESNET18_CIFAR100, hub.BITNET_MOBILENETV2_CIFAR100]
    assert [w.hub_entry for w in published] == [e.name for e in hub.entries().values() if e.pretrained]
    for w in published:
        assert w.file or w.url
        assert w.sha256 and w.file_size and w.top1 and w.training and w.licence


def test_shipped_weights_match_their_registry_object():
    """The file's bytes (sha256, size) and what its header says (figures, inputs, architecture, command)."""
    for w in bitnetcnn.list_pretrained():
        path = hub.PRETRAINED_DIR / w.file
        data = path.read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (w.sha256, w.file_size)
        own = bitnetcnn.load_checkpoint(path).pretrained_cfg  # derived from the file's header alone
        for field in ("model", "model_kwargs", "dataset", "input_size", "mean", "std", "num_classes", "top1", "top5"):
            assert getattr(own, field) == getattr(w, field), field
        assert own.command == w.command
        # every stage, the teachers' included (MobileNetV2's object left out the ResNet-18's four); the object may
        # complete what an older header lacks (MNIST's first command without --out, its time and hardware)
        assert len(own.training) == len(w.training), w.name
        assert all(published.command.startswith(step.command) for step, published in zip(own.training, w.training))


def test_an_entry_without_weights_builds_the_architecture_of_its_published_weights():
    """``pretrained=False`` (train from scratch) and ``pretrained=True`` give the same architecture: an entry whose
    default kwargs (e.g. the seed's SiLU) differ from the weight published for it would hand out another model."""
    def layout(model):
        return repr(model), [(k, tuple(v.shape)) for k, v in model.state_dict().items()]

    for w in bitnetcnn.list_pretrained():
        published = torch.hub.load(REPO, w.hub_entry, source="local", pretrained=True)
        fresh = torch.hub.load(REPO, w.hub_entry, source="local", pretrained=False)
        assert layout(fresh) == layout(published), w.name
        assert layout(torch.hub.load(REPO, w.hub_entry, source="local", ternary=False)) == layout(
            torch.hub.load(REPO, w.hub_entry, source="local", pretrained=True, ternary=False)), w.name


def test_keywords_the_weights_cannot_honour_are_refused(mnist_checkpoint):
    """docs/hub.md once said pretrained=True, act_bits=8 quantizes activations: it silently did not."""
    with pytest.raises(ValueError, match=r"act_bits=8 .*has act_bits=None.*ternary=False.*--act-bits 8"):
        torch.hub.load(REPO, "bitnet_mnist", source="local", pretrained=True, act_bits=8)
    path = mnist_checkpoint[1]
    with pytest.raises(ValueError, match=r"width=16 .*has width=8.*another architecture.*pretrained=False"):
        hub.load("bitnet_mnist", checkpoint_path=path, width=16)
    with pytest.raises(ValueError, match=r"act='relu' .*was built without act='relu'"):
        hub.load("bitnet_mnist", checkpoint_path=path, act="relu", ternary=False)
    with pytest.raises(ValueError, match="pow2=True"):
        hub.load("bitnet_mnist", checkpoint_path=path, pow2=True)
    # what the file holds (recorded, or the architecture's default) is accepted
    model = hub.load("bitnet_mnist", checkpoint_path=path, width=8, act_bits=None, act="silu", in_chans=1)
    assert isinstance(model.stem.conv, TernaryConv2d)
    # without weights the keywords build the model, as docs/hub.md shows
    quantized = torch.hub.load(REPO, "bitnet_mnist", source="local", act_bits=8)
    assert any(isinstance(m, ActQuantizer) for m in quantized.modules())


def test_the_commands_take_a_published_weight_by_its_entry_name(capsys, monkeypatch):
    """``bitnetcnn summary bitnet_resnet18`` shows the published model and ``bitnetcnn eval bitnet_mnist`` reproduces
    its published top-1; a name that is nothing the command reads is refused in one line with the names it takes."""
    assert cli.main(["summary", "bitnet_resnet18"]) == 0
    table = capsys.readouterr().out
    assert "TernaryConv2d" in table and "Input 3x32x32" in table and "11,220,132" in table
    assert cli.main(["summary", "bitnet_resnet18", "--input-size", "1", "32", "32"]) == 2
    assert "takes 3-channel images, not --input-size 1 ...: leave --input-size out" in capsys.readouterr().err
    assert cli.main(["eval", "bitnet_resnet19"]) == 2
    err = capsys.readouterr().err
    assert "'bitnet_resnet19' is not a file or a published weight (did you mean bitnet_resnet18?)" in err
    assert "bitnet_mnist, bitnet_resnet18" in err and "registry" not in err
    assert cli.main(["export", "bit_resnet19", "-o", "x.onnx"]) == 2
    assert "registry names: " in capsys.readouterr().err
    monkeypatch.chdir(Path(__file__).parent)  # no file named like the entry here
    require_real_data("MNIST/raw/t10k-images-idx3-ubyte")
    assert cli.main(["eval", "bitnet_mnist"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["dataset"], result["images"]) == ("mnist", 10000)
    assert abs(result["top1"] - hub.BITNET_MNIST.top1) <= 0.0005


def test_the_command_line_expands_a_tilde_refuses_empty_paths_and_ends_quietly_on_ctrl_c_or_a_closed_pipe(
        tmp_path, capsys, monkeypatch):
    """`-o ~/m.bnc` (bash leaves --output=~/x as it is) wrote a folder named ~ in the working directory; an empty
    model argument was "error: : cannot read the file"; Ctrl-C printed a 47-line traceback; `bitnetcnn models |
    head -1` said "error: [Errno 32] Broken pipe" (status 2); export --threads 100000 crashed the process."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    assert cli.main(["bench", "bitnet_mnist", "--batch-sizes", "1", "--budget", "0", "--variants", "ternary",
                     "--threads", "1", "--json", "~/b.json"]) == 0
    assert (tmp_path / "home" / "b.json").is_file() and not (tmp_path / "~").exists()
    (tmp_path / "home" / "m.bnc").write_bytes((hub.PRETRAINED_DIR / "bitnet_mnist.bnc").read_bytes())
    assert cli.main(["summary", "~/m.bnc"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", ""]) == 2
    assert "an empty model argument: give a checkpoint file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["convert", "bitnet_mnist", "-o", ""])
    assert "an empty path: give the path of a file to write" in capsys.readouterr().err

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "summary", interrupted)
    assert cli.main(["summary", "bitnet_mnist"]) == 130
    assert capsys.readouterr().err == "bitnetcnn summary: interrupted; no file was left half-written\n"

    def closed_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setitem(cli.COMMANDS, "models", closed_pipe)
    import sys

    stdout = sys.stdout
    try:
        assert cli.main(["models"]) == 0
    finally:
        sys.stdout = stdout
    assert capsys.readouterr().err == ""
    assert cli.main(["export", "bitnet_mnist", "--threads", "100000", "-o", "m.onnx"]) == 2
    assert "--threads 100000, but this process may use" in capsys.readouterr().err


def test_bitnetcnn_models_lists_what_can_be_built_and_what_is_published(capsys):
    """Which names exist and which have weights was only in the code and docs: ``bitnetcnn models`` lists every
    architecture with the sides it is built for, and every hub entry with its published accuracy, or none yet."""
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(lines) == set(bitnetcnn.list_models()) | set(hub.entries())
    assert "1x28x28  built for 28, 32 px, 10 classes by default. The seed's BitNetCNN" in lines["bitnet_cnn"]
    # a docstring's whole first paragraph, not its first line cut mid-sentence
    assert lines["bit_mobilenetv2"].endswith("width_mult=1.4, act='silu', downsample_at='expand' is the seed's "
                                             "published CIFAR-100 model.")
    for weights in hub.list_pretrained():
        assert f"{weights.dataset}: {weights.top1:.2%} top-1" in lines[weights.hub_entry]
    assert "no published weights yet" in lines["bitnet_convnextv2"]
    assert cli.main(["models", "bit_resnet*"]) == 0
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")} == {
        "bit_resnet18", "bit_resnet34", "bit_resnet50"}
    assert cli.main(["models", "resnet"]) == 2
    assert "no architecture or hub entry matches 'resnet'; there are bit_convnextv2" in capsys.readouterr().err


def test_pretrained_takes_a_bool_or_the_weights_tag_not_a_file(mnist_checkpoint):
    """pretrained="mine.bnc" was taken for True: the published weight loaded in the file's place, without a word."""
    _, path = mnist_checkpoint
    for wrong in (str(path), "imagenet", "False", 2):
        with pytest.raises(ValueError, match=r"takes pretrained=True or False \(its published weight's tag is "
                                             r"'mnist'\); load a file of your own with checkpoint_path="):
            torch.hub.load(REPO, "bitnet_mnist", source="local", pretrained=wrong)
    assert hub.load("bitnet_mnist", pretrained="mnist").pretrained_cfg.tag == "mnist"
    with pytest.raises(ValueError, match="it has no published weight"):
        hub.load("bitnet_resnet50", pretrained="cifar100")


def test_a_new_classifier_drops_the_files_identity_and_figures():
    model = hub.load("bitnet_mnist", pretrained=True, num_classes=5, ternary=False)
    cfg = model.pretrained_cfg
    assert (cfg.file, cfg.sha256, cfg.file_size, cfg.top1, cfg.num_classes) == (None, None, None, None, 5)
    assert cfg.name == "bitnet_cnn"  # not the published bitnet_mnist.mnist it no longer is
    assert getattr(model, "checkpoint_header", None) is None  # it described the file's 10-class head


def test_a_state_dict_that_fits_no_entry_arguments_says_which_were_tried_and_what_to_pass(tmp_path):
    """torch's key list, cut at 500 characters, was all it said: not that the entry had added act_bits=8, nor that a
    state dict needs the arguments of the model that saved it."""
    path = tmp_path / "sd.pt"
    torch.save(create_model("bit_mobilenetv2", act_bits=4, width_mult=0.5).state_dict(), path)
    with pytest.raises(bitnetcnn.CheckpointError, match=r"built as bit_mobilenetv2 with act_bits=8, width_mult=0.5 "
                       r"\(act_bits: the entry's default\), and without the entry's defaults: a state dict does not "
                       r"record its architecture; pass the create_model keywords of the model that saved it"):
        hub.load("bitnet_mobilenetv2", checkpoint_path=path, ternary=False, width_mult=0.5)
    model = hub.load("bitnet_mobilenetv2", checkpoint_path=path, ternary=False, width_mult=0.5, act_bits=4)
    assert model.model_args["act_bits"] == 4


def test_power_of_two_scales_drop_the_published_files_identity_header_and_figures():
    """docs/hub.md's own example: the pow2 model kept the published file's name, sha256 and header (99.63%,
    pow2 False), and an ONNX export of it carried them, though its logits moved by up to 16."""
    bit = hub.load("bitnet_mnist", pretrained=True, ternary=False)
    p2 = bitnetcnn.convert_to_ternary_p2(bit)
    cfg = p2.pretrained_cfg
    assert (cfg.name, cfg.file, cfg.sha256, cfg.file_size, cfg.top1, cfg.top5) == ("bitnet_cnn",) + (None,) * 5
    assert cfg.dataset == "mnist" and cfg.mean == hub.BITNET_MNIST.mean and cfg.model_kwargs["pow2"] is True
    assert cfg.training == hub.BITNET_MNIST.training  # how the weights it came from were trained stays
    assert getattr(p2, "checkpoint_header", None) is None
    assert hub.load("bitnet_mnist", pretrained=True).pretrained_cfg == hub.BITNET_MNIST  # the published one as it was


def test_a_keyword_no_model_takes_gets_create_models_words_not_advice_to_train_it(mnist_checkpoint):
    with pytest.raises(ValueError, match=r"act_bit=8: bitnet_cnn has no argument 'act_bit'; its arguments"):
        hub.load("bitnet_mnist", checkpoint_path=mnist_checkpoint[1], act_bit=8)
    with pytest.raises(ValueError, match=r"act_bits=None .*has act_bits=8.*--init \S+ without --act-bits \.\.\."):
        hub.load("bitnet_mobilenetv2", pretrained=True, act_bits=None)


def test_a_declared_weight_missing_from_the_package_says_the_installation_is_incomplete(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(hub.PretrainedWeightsUnavailable, match=r"should be at \S+bitnet_mnist.bnc, which is missing: "
                                                               "this installation of bitnetcnn is incomplete"):
        hub.load("bitnet_mnist", pretrained=True)


def test_a_cached_copy_that_fails_its_hash_is_named_when_no_download_can_replace_it(mnist_checkpoint, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("BITNETCNN_CACHE", str(tmp_path / "cache"))
    _with_url(monkeypatch, "http://127.0.0.1:9/remote_mnist.bnc", hashlib.sha256(b"other").hexdigest())
    cached = tmp_path / "cache" / "hub" / "remote_mnist.bnc"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(mnist_checkpoint[1].read_bytes())
    with pytest.raises(hub.PretrainedWeightsUnavailable, match="the cached copy at .* does not match the published"):
        hub.load("bitnet_mnist", pretrained=True)


def test_hubconf_warns_when_another_copy_of_bitnetcnn_is_already_imported(tmp_path):
    """torch.hub would serve the models and weights of the copy imported first, not the checkout's."""
    import shutil
    import subprocess
    import sys

    other = tmp_path / "other"
    shutil.copytree(Path(REPO) / "src" / "bitnetcnn", other / "bitnetcnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.bnc", "demo"))
    code = ("import warnings, torch, bitnetcnn; warnings.simplefilter('always'); "
            f"torch.hub.load({REPO!r}, 'bitnet_mnist', source='local', num_classes=3)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(other)})
    assert run.returncode == 0, run.stderr
    assert f"bitnetcnn was already imported from {other / 'bitnetcnn'}: torch.hub serves that copy's" in run.stderr


def test_a_folder_named_like_a_published_weight_does_not_hide_it(tmp_path, monkeypatch, capsys):
    """Only a file of that name is read instead (docs/hub.md); a folder made `summary bitnet_mnist` fail."""
    from bitnetcnn.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bitnet_mnist").mkdir()
    assert main(["summary", "bitnet_mnist"]) == 0
    assert "Packed KiB" in capsys.readouterr().out


def test_a_converted_models_classifier_is_not_resized_but_refused_with_what_to_do():
    """new_classifier on a converted model failed with a bare StopIteration (a TernaryLinear has no parameters)."""
    from bitnetcnn import convert_to_bit, convert_to_ternary, create_model
    from bitnetcnn.models.classifier import new_classifier

    model = convert_to_ternary(create_model("bitnet_cnn", width=4).eval())
    with pytest.raises(ValueError, match=r"is a TernaryLinear, which does not train: .*convert_to_bit\(model\)"):
        new_classifier(model, 5)
    resized = new_classifier(convert_to_bit(model), 5)
    assert resized.model_args["num_classes"] == 5 and resized(torch.randn(2, 1, 28, 28)).shape == (2, 5)


def test_a_hub_entry_without_weights_yet_is_said_so_by_the_commands(monkeypatch, capsys):
    """`bitnetcnn eval bitnet_resnet50` said "'bitnet_resnet50' is not a file or a published weight (did you mean
    bitnet_resnet18?)", as if the name were misspelt."""
    import bitnetcnn.hub as hub
    from bitnetcnn.cli import main

    others = [w for w in hub.list_pretrained() if w.hub_entry != "bitnet_mnist"]
    monkeypatch.setattr(hub, "list_pretrained", lambda: others)  # bitnet_mnist as a hub entry not trained yet
    assert main(["eval", "bitnet_mnist"]) == 2
    err = capsys.readouterr().err
    assert "bitnet_mnist has no published weights yet" in err and "bitnetcnn train --model bitnet_cnn" in err, err


def test_a_download_cut_off_or_a_cache_that_is_a_file_is_refused_and_nothing_cached(mnist_checkpoint, tmp_path,
                                                                                 monkeypatch):
    """A server that closed early raised nothing: half a file was cached and, without a sha256, trusted for good;
    a cache path that is a file was a bare NotADirectoryError, not PretrainedWeightsUnavailable with what to do."""
    import io
    import urllib.request

    _, path = mnist_checkpoint
    data = path.read_bytes()

    class CutOff(io.BytesIO):
        headers = {"Content-Length": str(len(data))}

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: CutOff(data[:len(data) // 2]))
    monkeypatch.setenv("BITNETCNN_CACHE", str(tmp_path / "cache"))
    _with_url(monkeypatch, "https://example.org/remote_mnist.bnc", None)
    with pytest.raises(hub.PretrainedWeightsUnavailable, match=f"cut off at {len(data) // 2:,} of {len(data):,} bytes"):
        hub.pretrained_path("bitnet_mnist")
    assert [p for p in (tmp_path / "cache" / "hub").rglob("*") if p.is_file()] == []
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("BITNETCNN_CACHE", str(tmp_path / "a-file"))
    with pytest.raises(hub.PretrainedWeightsUnavailable, match="set BITNETCNN_CACHE"):
        hub.pretrained_path("bitnet_mnist")


def test_a_ternary_flag_that_is_not_a_bool_and_a_missing_file_are_named():
    """ternary="False" (truthy) gave the converted model; a missing checkpoint_path was blamed on "a state dict does
    not record its architecture"."""
    with pytest.raises(ValueError, match=r"ternary='False': 'bitnet_mnist' takes ternary=True .* or False"):
        torch.hub.load(REPO, "bitnet_mnist", source="local", ternary="False")
    with pytest.raises(bitnetcnn.CheckpointError) as error:
        torch.hub.load(REPO, "bitnet_mnist", source="local", checkpoint_path="no/such/file.bnc")
    assert "No such file" in str(error.value) and "state dict" not in str(error.value)


def test_an_untrained_full_precision_model_from_the_hub_comes_as_built_without_a_warning():
    """quant="fp" has nothing to convert: the entry returns the float model itself, and says nothing of it (a
    conversion would warn "nothing was converted" over a deep copy)."""
    import warnings

    from bitnetcnn.nn import model_form

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = hub.load("bitnet_mnist", quant="fp")

    assert model_form(model) == "float" and model.model_args["quant"] == "fp"


def test_a_checkpoint_path_given_as_an_open_file_or_bytes_loads_as_the_path_does(tmp_path):
    """An open file went past the header check to the state-dict loader, whose retry read the exhausted stream and
    blamed "a state dict" (the entry's 8-bit MobileNetV2 file failed so, loaded from its path); bytes are named as
    such, not printed, where they hold another model."""
    path = bitnetcnn.save_checkpoint(convert_to_ternary(create_model("bit_mobilenetv2", width_mult=0.25).eval()),
                                     tmp_path / "m.bnc")
    expected = hub.load("bitnet_mobilenetv2", checkpoint_path=path).state_dict()
    with open(path, "rb") as f:
        opened = hub.load("bitnet_mobilenetv2", checkpoint_path=f)
    given = hub.load("bitnet_mobilenetv2", checkpoint_path=path.read_bytes())
    for model in (opened, given):
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.values()))
    with pytest.raises(ValueError, match=r"^the checkpoint given holds a bit_mobilenetv2 model, not the bitnet_cnn"):
        hub.load("bitnet_mnist", checkpoint_path=path.read_bytes())


def test_a_shipped_weight_whose_bytes_were_changed_is_refused_by_its_sha256(tmp_path, monkeypatch):
    """A shipped file damaged or edited after installation must not load as the published weight (nor fail deep in
    the zip reader): its sha256 names the problem and what to do."""
    damaged = bytearray((hub.PRETRAINED_DIR / "bitnet_mnist.bnc").read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    (tmp_path / "bitnet_mnist.bnc").write_bytes(bytes(damaged))
    monkeypatch.setattr(hub, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(hub.PretrainedWeightsUnavailable, match=r"bitnet_mnist.bnc: sha256 does not match the "
                                                               "published one; reinstall bitnetcnn"):
        hub.load("bitnet_mnist", pretrained=True)


def test_a_state_dict_of_float_activations_loads_with_the_callers_arguments_alone(tmp_path):
    """The bitnet_mobilenetv2 entry adds act_bits=8 (its published weights'), which a state dict of a model with
    float activations (the seed's kind) does not fit: it is loaded again with the caller's arguments alone."""
    saved = create_model("bit_mobilenetv2", act_bits=None, width_mult=0.25)
    path = tmp_path / "float_acts.pt"
    torch.save(saved.state_dict(), path)
    model = hub.load("bitnet_mobilenetv2", checkpoint_path=path, ternary=False, width_mult=0.25)
    assert model.model_args["act_bits"] is None and not any(isinstance(m, ActQuantizer) for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))


def test_a_full_precision_checkpoint_is_refused_for_the_converted_model_with_what_to_do(tmp_path):
    """ternary=True (the default) on a quant="fp" file has no Bit layers to convert: without the refusal it would
    come back as the float model, with no more than a "nothing was converted" warning."""
    path = bitnetcnn.save_checkpoint(create_model("bitnet_cnn", quant="fp", width=4), tmp_path / "fp.bnc")
    with pytest.raises(ValueError, match=r"fp.bnc holds a full-precision model; load it with ternary=False"):
        hub.load("bitnet_mnist", checkpoint_path=path)
    assert hub.load("bitnet_mnist", checkpoint_path=path, ternary=False).model_args["quant"] == "fp"


def test_the_published_weight_with_its_own_number_of_classes_loads_as_published():
    """num_classes=10, what the MNIST weight has, needs no new classifier: it is no change of classes needing
    ternary=False."""
    model = hub.load("bitnet_mnist", pretrained=True, num_classes=10)
    published = hub.load("bitnet_mnist", pretrained=True)
    assert isinstance(model.stem.conv, TernaryConv2d) and model.pretrained_cfg == hub.BITNET_MNIST
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), published.state_dict().values()))


def test_a_number_of_classes_that_is_no_count_is_refused_before_the_weights_load():
    """True, "5", 10.0 and -3 with pretrained=True failed inside torch ("empty(): argument 'size'", "negative
    dimension") or were taken (10.0 equals the file's 10), where pretrained=False refused them by name."""
    for wrong in (True, "5", 10.0, -3, 0):
        for pretrained in (True, False):
            with pytest.raises(ValueError, match=rf"num_classes must be a positive integer, not {wrong!r}"):
                hub.load("bitnet_mnist", pretrained=pretrained, num_classes=wrong, ternary=False)


def test_a_file_named_like_a_published_weight_is_read_instead_of_it(tmp_path, monkeypatch):
    """docs/hub.md: a file of that name in the working folder is what the commands read (`bitnetcnn eval
    bitnet_mnist` on one's own model file so named); the package's weight must not hide it."""
    monkeypatch.chdir(tmp_path)
    bitnetcnn.save_checkpoint(convert_to_ternary(create_model("bitnet_cnn", width=8).eval()), tmp_path / "bitnet_mnist")
    assert hub.published_file("bitnet_mnist") == "bitnet_mnist"
    assert hub.model_argument("bitnet_mnist", registry_names=False) == "bitnet_mnist"
    assert bitnetcnn.load_checkpoint(hub.model_argument("bitnet_mnist", registry_names=False)).model_args["width"] == 8
