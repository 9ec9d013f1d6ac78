"""scripts/: the tools that carry a data set to a lent GPU machine in bounded pieces, run a GPU window, and publish a
trained weight."""

import hashlib
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def npz_chunks():
    return _script("npz_chunks")


def test_a_data_set_split_into_bounded_chunks_joins_to_the_same_arrays(npz_chunks, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (37, 4, 4, 3), dtype=np.uint8), "y_train": np.arange(37),
              "names": np.array(["apple", "bee"]), "scalar": np.array(3.5),
              "empty": np.zeros((0, 3), np.uint8)}  # no rows to cut: its join died in np.concatenate
    np.savez_compressed(tmp_path / "d.npz", **arrays)
    manifest = npz_chunks.split(tmp_path / "d.npz", tmp_path / "chunks", max_bytes=1200)
    carried = tmp_path / "carried"  # what the other machine holds after one call per carry folder
    carried.mkdir()
    for k in range(manifest["carry_folders"]):
        folder = tmp_path / "chunks" / f"carry.{k}"
        assert sum(f.stat().st_size for f in folder.iterdir() if f.name != "manifest.json") <= 1200
        for f in folder.iterdir():
            (carried / f.name).write_bytes(f.read_bytes())
    # each folder filled before the next (a chunk costs its 128-byte header too): x_train's 37 rows of 48 bytes go
    # 22 + 15, y_train's 37 rows of 8 bytes fill carry.1 with 28 and go on in carry.2 with the small arrays
    assert manifest["carry_folders"] == 3
    assert [p["carry"] for p in manifest["arrays"]["x_train"]["parts"]] == [0, 1]
    assert [p["carry"] for p in manifest["arrays"]["y_train"]["parts"]] == [1, 2]
    out = npz_chunks.join(carried, tmp_path / "joined" / "d.npz")
    with np.load(out) as joined:
        assert sorted(joined.files) == sorted(arrays)
        for key, value in arrays.items():
            assert joined[key].dtype == value.dtype and np.array_equal(joined[key], value)
    damaged = carried / manifest["arrays"]["x_train"]["parts"][1]["file"]
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    with pytest.raises(SystemExit, match="x_train.001.npy is damaged"):
        npz_chunks.join(carried, tmp_path / "again.npz")
    damaged.unlink()
    with pytest.raises(SystemExit, match="x_train.001.npy is missing"):
        npz_chunks.join(carried, tmp_path / "again.npz")


def test_publishing_measures_the_weight_ships_it_and_prints_its_registry_object(tmp_path, capsys):
    """The figures are measured here on the test set (not copied from the run), written into the shipped file's
    header, and the printed PretrainedCfg is the shipped file's, sha256 and size included."""
    import torch

    import bitnetcnn
    from bitnetcnn import class_names, hub
    from bitnetcnn.checkpoint.pretrained_cfg import PretrainedCfg, TrainingStep
    from bitnetcnn.train.evaluate import evaluate_checkpoint

    publish_weight = _script("publish_weight")
    torch.manual_seed(0)
    model = bitnetcnn.convert_to_ternary(bitnetcnn.create_model("bitnet_cnn", width=8).eval())
    trained = bitnetcnn.save_checkpoint(model, tmp_path / "run" / "best_ternary.bnc", {
        "dataset": "mnist_demo", "accuracy": 0.5, "ternary_eval": {"top1": 0.5, "top5": 0.9},
        "command": "bitnetcnn train --dataset mnist_demo",
        "training": [{"command": "bitnetcnn train --dataset mnist_demo", "wall_time_s": 12.5, "hardware": "a CPU"}]})
    assert publish_weight.main([str(trained), "--entry", "bitnet_mnist", "--tag", "demo",
                                "--out-dir", str(tmp_path / "shipped"), "--note", "the init file was X"]) == 0
    printed = capsys.readouterr().out
    shipped = tmp_path / "shipped" / "bitnet_mnist.bnc"
    cfg = eval(printed.split("\n", 1)[1].split(" = ", 1)[1],  # noqa: S307 - the source it prints for hub.py
               {"PretrainedCfg": PretrainedCfg, "TrainingStep": TrainingStep, "class_names": class_names})
    measured = evaluate_checkpoint(str(trained))
    data = shipped.read_bytes()
    assert (cfg.top1, cfg.top5, cfg.test_images) == (measured["top1"], measured["top5"], measured["images"])
    assert (cfg.sha256, cfg.file_size, cfg.file) == (hashlib.sha256(data).hexdigest(), len(data), shipped.name)
    assert (cfg.tag, cfg.hub_entry, cfg.licence, cfg.class_names) == ("demo", "bitnet_mnist", "MIT", class_names.DIGITS)
    noted = "bitnetcnn train --dataset mnist_demo  # the init file was X"  # --note: in the last step and the command
    assert cfg.training == (TrainingStep(noted, 12.5, "a CPU"),) and cfg.command == noted
    assert "class_names=class_names.DIGITS," in printed
    loaded = bitnetcnn.load_checkpoint(shipped)
    own = loaded.pretrained_cfg  # the header says the same as the registry object, but for the file's own bytes
    assert own == PretrainedCfg(**{**cfg.to_dict(), "file": None, "file_size": None, "sha256": None})
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))

    with pytest.raises(ValueError, match="unknown hub entry 'bitnet_resnet19'.*bitnet_resnet18"):
        publish_weight.publish(trained, "bitnet_resnet19", "demo", out_dir=tmp_path / "no")
    with pytest.raises(ValueError, match="holds a bitnet_cnn, but 'bitnet_resnet18' serves bit_resnet18"):
        publish_weight.publish(trained, "bitnet_resnet18", "demo", out_dir=tmp_path / "no")
    assert not (tmp_path / "no").exists() and hub.PRETRAINED_DIR != tmp_path / "shipped"


def test_weights_taken_before_the_runs_last_epoch_say_so_in_their_recipe(tmp_path):
    """A best model from before the run's last epoch (a run still going, or a last epoch that scored lower): the
    recipe's last command then says which epoch of how many the weights are (rerunning it trains them all), from the
    run's record or, in older files, its command."""
    import torch

    import bitnetcnn

    publish_weight = _script("publish_weight")
    torch.manual_seed(0)
    model = bitnetcnn.convert_to_ternary(bitnetcnn.create_model("bitnet_cnn", width=8).eval())

    def published(name: str, command: str, **recorded):
        saved = bitnetcnn.save_checkpoint(model, tmp_path / name / "best_ternary.bnc", {
            "dataset": "mnist_demo", "command": command, **recorded,
            "training": [{"command": command, "wall_time_s": 12.5, "hardware": "a CPU"}]})
        return publish_weight.publish(saved, "bitnet_mnist", "demo", out_dir=tmp_path / name / "shipped").command

    old = published("old", "bitnetcnn train --dataset mnist_demo --epochs 24", epoch=11)
    assert old == "bitnetcnn train --dataset mnist_demo --epochs 24  # the weights of epoch 12 of 24, the best of " \
                  "those validated by then"
    budgeted = published("budget", "bitnetcnn train --time-budget 5  # the time budget gave 7 epochs", epoch=2,
                         epochs=7)
    assert budgeted.endswith("# the time budget gave 7 epochs; the weights of epoch 3 of 7, the best of those "
                             "validated by then")
    assert published("done", "bitnetcnn train --epochs 4", epoch=3, epochs=4) == "bitnetcnn train --epochs 4"
    # an older budgeted file: its --epochs is the budget's cap, the budget's note says the run's length
    finished = "bitnetcnn train --time-budget 5 --epochs 30  # the time budget gave 7 epochs"
    assert published("old-budget", finished, epoch=6) == finished
    # published again (another tag, say): the note is not repeated
    again = publish_weight.publish(tmp_path / "old" / "shipped" / "bitnet_mnist.bnc", "bitnet_mnist", "demo2",
                                   out_dir=tmp_path / "again")
    assert again.command == old


def test_a_published_header_names_no_path_of_the_machine_that_trained_it(tmp_path, capsys, monkeypatch):
    """Run folders given by absolute paths become runs/NAME in every recorded command, --data-dir goes; any other
    absolute path (inside a word too) is refused rather than shipped."""
    import bitnetcnn
    from bitnetcnn.checkpoint.read import native_header

    publish_weight = _script("publish_weight")
    stage1 = "bitnetcnn train --dataset mnist_demo --data-dir /srv/me/data --out=/home/me/runs/stage1"
    stage2 = ("bitnetcnn train --dataset mnist_demo --init /home/me/runs/stage1/best_ternary.bnc --teacher "
              "/home/me/runs/fp/best_ternary.bnc --out /home/me/runs/stage2 --time-budget 2  # the time budget gave 3 "
              "epochs")
    model = bitnetcnn.convert_to_ternary(bitnetcnn.create_model("bitnet_cnn", width=8).eval())
    trained = bitnetcnn.save_checkpoint(model, tmp_path / "best_ternary.bnc", {
        "dataset": "mnist_demo", "command": stage2, "init": {"file": "best_ternary.bnc", "command": stage1},
        "training": [{"command": stage1, "wall_time_s": 1.0}, {"command": stage2, "wall_time_s": 2.0}]})
    assert publish_weight.main([str(trained), "--entry", "bitnet_mnist", "--tag", "demo",
                                "--out-dir", str(tmp_path / "shipped")]) == 0
    header = native_header(tmp_path / "shipped" / "bitnet_mnist.bnc")
    assert "/home/me" not in json.dumps(header) and "/srv/me" not in json.dumps(header)
    rerun2 = ("bitnetcnn train --dataset mnist_demo --init runs/stage1/best_ternary.bnc --teacher "
              "runs/fp/best_ternary.bnc --out runs/stage2 --time-budget 2  # the time budget gave 3 epochs")
    assert [s.command for s in bitnetcnn.load_checkpoint(tmp_path / "shipped" / "bitnet_mnist.bnc").pretrained_cfg
            .training] == ["bitnetcnn train --dataset mnist_demo --out runs/stage1", rerun2]
    assert header["metadata"]["init"]["command"] == "bitnetcnn train --dataset mnist_demo --out runs/stage1"
    portable = publish_weight.portable_command
    recipe: dict = {}  # two run folders of one name stay two runs, in every command of the recipe
    assert [portable(c, recipe) for c in ("bitnetcnn train --out /a/x/fp", "bitnetcnn train --out /b/x/fp",
                                          "bitnetcnn train --teacher /b/x/fp/best_ternary.bnc --init /a/x/fp/last.ckpt")
            ] == ["bitnetcnn train --out runs/fp", "bitnetcnn train --out runs/x-fp",
                  "bitnetcnn train --teacher runs/x-fp/best_ternary.bnc --init runs/fp/last.ckpt"]
    assert [portable(f"bitnetcnn train --out {folder}", recipe) for folder in ("/x-fp", "/fp")] == [
        "bitnetcnn train --out runs/x-fp-2", "bitnetcnn train --out runs/fp-2"]  # no parent left to tell them apart
    assert portable("bitnetcnn train --out runs/a") == "bitnetcnn train --out runs/a"
    assert portable("bitnetcnn train --teacher=/x/Downloads/fp.bnc") == "bitnetcnn train --teacher fp.bnc"
    assert portable("bitnetcnn train --dataset imagefolder --data-dir imgs") == (
        "bitnetcnn train --dataset imagefolder --data-dir imgs")  # there it names the data set: kept
    for machine in ("python /tmp/x.py --out runs/a", "bitnetcnn train --dataset imagefolder --data-dir /srv/imgs",
                    shlex.join(["bitnetcnn", "train", "--model-kwargs", '{"init": "/home/me/w.pt"}']),
                    "bitnetcnn train --out ~/runs/a", shlex.join(["bitnetcnn", "train", "--out", "C:\\runs\\a"])):
        with pytest.raises(ValueError, match="names a path of this machine"):
            portable(machine)
    # refused before the test-set evaluation, which takes minutes for a CIFAR model
    refused = bitnetcnn.save_checkpoint(model, tmp_path / "refused.bnc", {"dataset": "mnist_demo",
                                                                          "command": "python /tmp/x.py"})
    monkeypatch.setattr(publish_weight, "evaluate_model", lambda *a, **k: pytest.fail("evaluated first"))
    with pytest.raises(ValueError, match="names a path of this machine"):
        publish_weight.publish(refused, "bitnet_mnist", "demo", out_dir=tmp_path / "no")
    capsys.readouterr()


def test_a_gpu_window_rehearsed_here_carries_the_data_trains_and_brings_back_the_small_files(npz_chunks, tmp_path):
    """scripts/gpu_window.sh as the device calls run it, on a tiny CIFAR-100-shaped set and the CPU: three carry
    calls (the last joins the npz), then a run whose model, metrics and evaluation land in $OUT, a file over the
    part size cut into parts that join back to it."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cifar100.npz", x_train=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
             y_train=rng.integers(0, 100, 64), x_test=rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
             y_test=rng.integers(0, 100, 32))
    manifest = npz_chunks.split(tmp_path / "cifar100.npz", tmp_path / "carry", max_bytes=110_000)
    assert manifest["carry_folders"] == 3
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "BITNETCNN_WINDOW_DATA": str(tmp_path / "home" / "data"), "BITNETCNN_WINDOW_RUNS": str(tmp_path / "runs"),
           "BITNETCNN_WINDOW_CARRY": str(tmp_path / "carry"), "BITNETCNN_WINDOW_PART_MB": "1"}
    window = ["bash", str(SCRIPTS / "gpu_window.sh")]
    for k in range(3):
        done = subprocess.run([*window, "carry", str(k)], env=env, capture_output=True, text=True, check=True)
    assert "wrote" in done.stdout and (tmp_path / "home" / "data" / "cifar100.npz").is_file()
    # a stand-in for nvidia-smi: how busy the GPU is goes into the log while the run trains
    probe = {"BITNETCNN_WINDOW_SMI": "echo 42 %, 1965 MiB", "BITNETCNN_WINDOW_GPU_S": "0.2"}
    done = subprocess.run([*window, "train", "r18", "--model", "bit_resnet18", "--epochs", "1", "--batch-size", "32",
                           "--accelerator", "cpu", "--save-every", "0"], env={**env, **probe}, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    back = tmp_path / "out" / "r18"
    # four files a run, so that two runs fit the eight files a call brings back; the log ends with the evaluation
    assert {f.name for f in back.iterdir() if ".part." not in f.name} == {"metrics.csv", "results.json", "train.log",
                                                                          "best_ternary.bnc.sha256"}
    log = (back / "train.log").read_text()
    assert json.loads(log[log.rindex("\n{"):])["images"] == 32  # the joined test set, all of it: nothing after it
    assert re.search(r"^gpu busy, memory at \d\d:\d\d:\d\d: 42 %, 1965 MiB$", log, re.M), log[-2000:]
    model = tmp_path / "runs" / "r18" / "best_ternary.bnc"
    parts = sorted(back.glob("best_ternary.bnc.part.*"))
    assert model.stat().st_size > 1024 * 1024 and len(parts) >= 2  # the ternary ResNet-18 takes about 2 MB
    joined = b"".join(p.read_bytes() for p in parts)
    assert hashlib.sha256(joined).hexdigest() == (back / "best_ternary.bnc.sha256").read_text().strip()
    assert joined == model.read_bytes()
    # a call killed at its limit (SIGKILL: no trap runs) has brought back copies made as it went
    killed = subprocess.Popen([*window, "train", "cut", "--model", "bitnet_cnn", "--epochs", "50", "--batch-size", "32",
                               "--accelerator", "cpu"], env={**env, "BITNETCNN_WINDOW_COPY_S": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120  # an epoch takes seconds here
    wanted = {"metrics.csv", "best_ternary.bnc", "train.log"}
    while not all((tmp_path / "out" / "cut" / name).exists() for name in wanted) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "runs" / "cut" / "results.json").exists()  # killed before its end
    assert wanted <= {f.name for f in (tmp_path / "out" / "cut").iterdir()}
    from bitnetcnn import load_checkpoint

    load_checkpoint(tmp_path / "out" / "cut" / "best_ternary.bnc")  # a whole file, not one cut short
    # and no temporary copy in $OUT, where it would take one of the eight files a call brings back
    assert not [f for f in (tmp_path / "out").rglob("*") if f.name.startswith(".") or f.suffix == ".tmp"]
    # a run that fails still brings back what it wrote (its log says why), and the call fails
    failed = subprocess.run([*window, "train", "bad", "--model", "no_such_model"], env=env, capture_output=True,
                            text=True)
    assert failed.returncode != 0
    assert "no_such_model" in (tmp_path / "out" / "bad" / "train.log").read_text()


def test_publishing_replaces_a_weight_only_when_told_and_refuses_what_is_not_converted(tmp_path):
    """A second publish of an entry (another tag too) wrote over the shipped file; a float or Bit model was measured
    and shipped as if ternary. A file saved before runs recorded their steps gets the early-epoch note too."""
    import torch

    import bitnetcnn

    publish_weight = _script("publish_weight")
    torch.manual_seed(0)
    bit = bitnetcnn.create_model("bitnet_cnn", width=8).eval()
    converted = bitnetcnn.save_checkpoint(bitnetcnn.convert_to_ternary(bit), tmp_path / "run" / "best_ternary.bnc",
                                          {"dataset": "mnist_demo", "epoch": 2,
                                           "command": "bitnetcnn train --dataset mnist_demo --epochs 8"})
    shipped = tmp_path / "shipped"
    cfg = publish_weight.publish(converted, "bitnet_mnist", "a", out_dir=shipped)
    assert cfg.command.endswith("--epochs 8  # the weights of epoch 3 of 8, the best of those validated by then")
    before = (shipped / "bitnet_mnist.bnc").read_bytes()
    with pytest.raises(ValueError, match=r"bitnet_mnist.bnc exists .*pass --force to replace it"):
        publish_weight.publish(converted, "bitnet_mnist", "b", out_dir=shipped)
    assert (shipped / "bitnet_mnist.bnc").read_bytes() == before
    assert publish_weight.publish(converted, "bitnet_mnist", "b", out_dir=shipped, force=True).tag == "b"
    assert sorted(p.name for p in shipped.iterdir()) == ["bitnet_mnist.bnc"]  # no part file left beside it
    for quant, kind in (("ternary", "Bit"), ("fp", "full-precision")):
        model = bitnetcnn.create_model("bitnet_cnn", width=8, quant=quant).eval()
        saved = bitnetcnn.save_checkpoint(model, tmp_path / f"{quant}.bnc", {"dataset": "mnist_demo"})
        with pytest.raises(ValueError, match=f"holds a {kind} model, not a converted ternary one"):
            publish_weight.publish(saved, "bitnet_mnist", "c", out_dir=tmp_path / "no")


def test_a_step_that_took_a_hub_name_names_the_file_an_earlier_step_made(tmp_path):
    """`--teacher bitnet_resnet18` serves whatever is published now: a recipe whose earlier step made the file the
    name served then (its note says so, with the sha256) names that step's file, so that rerunning the recipe
    distils from the rerun's model and not from the one published since."""
    import bitnetcnn

    publish_weight = _script("publish_weight")
    a = "bitnetcnn train --dataset mnist_demo --out /home/me/runs/a  # the teacher bitnet_mnist.bnc (sha256 aaaa...)"
    b = ("bitnetcnn train --dataset mnist_demo --kd --teacher bitnet_mnist --out /home/me/runs/b  # the time budget "
         "gave 3 epochs; the teacher bitnet_mnist.bnc (sha256 bbbb...)")
    c = "bitnetcnn train --dataset mnist_demo --init bitnet_mnist --kd --teacher=bitnet_mnist --out /home/me/runs/c"  # = too
    d = "bitnetcnn train --dataset mnist_demo --kd --teacher bitnet_resnet18 --out /home/me/runs/d"
    model = bitnetcnn.convert_to_ternary(bitnetcnn.create_model("bitnet_cnn", width=8).eval())
    trained = bitnetcnn.save_checkpoint(model, tmp_path / "best_ternary.bnc", {
        "dataset": "mnist_demo", "command": d, "epoch": 0, "epochs": 1,
        "training": [{"command": step, "wall_time_s": 1.0} for step in (a, b, c, d)]})
    cfg = publish_weight.publish(trained, "bitnet_mnist", "demo", out_dir=tmp_path / "shipped")
    assert [step.command for step in cfg.training] == [
        "bitnetcnn train --dataset mnist_demo --out runs/a  # the teacher bitnet_mnist.bnc (sha256 aaaa...)",
        "bitnetcnn train --dataset mnist_demo --kd --teacher runs/a/best_ternary.bnc --out runs/b  # the time budget "
        "gave 3 epochs; the teacher bitnet_mnist.bnc (sha256 bbbb...); it ran with --teacher bitnet_mnist, which "
        "named that file then (sha256 aaaa...)",
        "bitnetcnn train --dataset mnist_demo --init runs/b/best_ternary.bnc --kd --teacher runs/b/best_ternary.bnc "
        "--out runs/c  # it ran with --init bitnet_mnist, which named that file then (sha256 bbbb...); it ran with "
        "--teacher bitnet_mnist, which named that file then (sha256 bbbb...)",
        # no step made bitnet_resnet18's file: the name stays
        "bitnetcnn train --dataset mnist_demo --kd --teacher bitnet_resnet18 --out runs/d",
    ]
    assert cfg.command == cfg.training[-1].command
