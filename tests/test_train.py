"""Training runs end to end on the bundled demo data: run folder, repeatability, distillation, errors, resume
after SIGKILL, two-process DDP on the CPU."""

import contextlib
import csv
import hashlib
import json
import argparse
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bitnetcnn
from bitnetcnn import load_checkpoint
from bitnetcnn.cli import main
from bitnetcnn.machine import cpu_info
from bitnetcnn.train.evaluate import evaluate_checkpoint
from bitnetcnn.nn import ActQuantizer
from bitnetcnn.train.module import BitClassifier
from bitnetcnn.data.datamodule import ImageDataModule
from bitnetcnn.train.run import SettingsError, TrainSettings, build, train
from bitnetcnn.train.recorded_command import command_with_note

QUICK = dict(dataset="mnist_demo", batch_size=32, limit_train=128, limit_eval=128, progress=False)


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


class Killed(Exception):
    """Stands in for a kill: raised at the start of a training batch, the run leaves what a SIGKILL there would."""


def _train_killed_at(settings: TrainSettings, epoch: int, batch: int) -> None:
    """Train until the start of ``batch`` in ``epoch``, where the run dies."""

    def die(module, batch_, batch_idx):
        if module.current_epoch == epoch and batch_idx == batch:
            raise Killed

    with pytest.MonkeyPatch.context() as m:
        m.setattr(BitClassifier, "on_train_batch_start", die, raising=False)
        with pytest.raises(Killed):
            train(settings)


def test_the_command_line_of_any_settings_gives_back_those_settings(monkeypatch):
    """``TrainSettings.as_command()`` (what a run started from Python records) parsed by ``bitnetcnn train``, for
    every setting changed at once (values that start with "-" included)."""
    import dataclasses
    import shlex

    every = TrainSettings(
        model="bit_resnet18", dataset="cifar100", data_dir="d", download=True, out="runs/x y", epochs=24,
        batch_size=256, optimizer="sgd", lr=0.15, wd=1e-05, momentum=0.8, warmup_epochs=1, label_smoothing=0.1,
        mixup=0.2, cutmix=1.0, rotate=0.0, zoom=0.05, elastic=3.5, ema=0.998, scale_op="mean", pow2=True,
        act_bits=8, fp_ends=True, model_kwargs={"act": "silu", "width_mult": 1.4}, num_classes=100, img_size=32,
        img_channels=1, eval_ternary=False, val_every=4, save_every=0.0, time_budget=8.0, kd=True,
        teacher=["runs/a b/t.bnc", "-t2.bnc"], kd_alpha=0.7, kd_temperature=2.0, kd_hints=0.5, init="-i.bnc",
        amp=True, channels_last=False, accelerator="cpu", devices="2", num_nodes=2, strategy="ddp", seed=3,
        limit_train=100, limit_eval=50, progress=False, hflip=False, mean=[0.12345678, -0.5], std=[0.25, 1.0])
    # --quant fp refuses the ternary layers' flags; --compile is refused with --kd-hints
    teacher = TrainSettings(quant="fp", epochs=3, compile=True, compile_mode="reduce-overhead")
    changed = set(every.changed()) | set(teacher.changed())
    assert changed == {f.name for f in dataclasses.fields(TrainSettings)}  # a new field joins here
    settings = [TrainSettings(), every, teacher, TrainSettings(channels_last=True, pow2=1)]
    for s in settings:
        seen = {}
        monkeypatch.setattr("bitnetcnn.train.run.train", lambda got, **kw: seen.update(settings=got, **kw))
        assert main(shlex.split(s.as_command())[1:]) == 0
        assert seen["settings"] == s, s.as_command()
        assert seen["command"] == s.as_command()  # the command line records itself as typed


@pytest.mark.parametrize("flags, message", [
    (["--momentum", "0.8"], "--momentum 0.8 is SGD's: --optimizer adamw does not use it"),
    # given at the default's value, the command still records them (a recipe's flags copied onto another run)
    (["--momentum", "0.9"], "--momentum 0.9 is SGD's: --optimizer adamw does not use it"),
    (["--kd-alpha", "0.5"], "--kd-alpha shapes distillation, which needs --kd"),
    (["--quant", "fp", "--scale-op", "median"], "--quant fp trains full-precision layers, so --scale-op would not"),
    (["--kd-temperature", "2"], "--kd-temperature shapes distillation, which needs --kd"),
    (["--quant", "fp", "--act-bits", "8", "--pow2"], "--quant fp trains full-precision layers, so --pow2 and --act-bits"),
    (["--quant", "fp", "--fp-ends"], "--quant fp trains full-precision layers, so --fp-ends would not be used"),
    (["--kd", "--teacher", "t.bnc", "--kd-alpha", "0"], "--kd-alpha 0 without --kd-hints leaves the teacher out"),
    (["--kd", "--teacher", "t.bnc", "--kd-hints", "1", "--compile"], "--kd-hints reads the student's features outside"),
    (["--compile-mode", "reduce-overhead"], "--compile-mode reduce-overhead chooses how --compile compiles: add"),
    (["--kd", "--teacher", "t.bnc", "--kd-alpha", "0", "--kd-hints", "1", "--kd-temperature", "2"],
     "--kd-temperature 2 softens the logits of --kd-alpha's term, which --kd-alpha 0 leaves out"),
    (["--kd", "--teacher", "t.bnc", "--kd-alpha", "1", "--label-smoothing", "0.1"],
     "--label-smoothing 0.1 smooths the cross-entropy, which --kd-alpha 1 leaves out of the loss"),
    (["--epochs", "2", "--warmup-epochs", "4"], "--warmup-epochs 4 of a 2-epoch run: the learning rate would never"),
    (["--accelerator", "tpu"], "unknown --accelerator 'tpu': choose one of auto, cpu, gpu"),  # torch_xla's traceback
])
def test_flags_the_run_would_leave_unused_are_refused(capsys, flags, message):
    _one_line_error(capsys, ["train", "--no-progress", *flags], message)


def test_train_writes_a_complete_run_folder_and_is_repeatable(tmp_path):
    results = train(TrainSettings(out=str(tmp_path / "a"), epochs=2, **QUICK))
    run = tmp_path / "a"
    for name in ("metrics.csv", "metrics.png", "last.ckpt", "best_ternary.bnc", "results.json", "args.json"):
        assert (run / name).is_file(), name
    assert (run / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert results["epochs"] == 2 and 0 <= results["ternary_acc"] <= 1 and results["model_bytes"] > 0
    # started from Python, the run records the command line that repeats it (not the calling program's argv)
    assert results["command"] == TrainSettings(out=str(tmp_path / "a"), epochs=2, **QUICK).as_command()
    assert results["wall_time_s"] > 0
    # the saved model evaluates and the Lightning checkpoint converts from the command line
    assert main(["eval", str(run / "best_ternary.bnc"), "--batch-size", "500"]) == 0
    assert main(["convert", str(run / "last.ckpt"), "--pow2", "-o", str(tmp_path / "p2.bnc")]) == 0
    p2 = load_checkpoint(tmp_path / "p2.bnc")
    assert any(hasattr(m, "scale_exp") for m in p2.modules())
    assert p2.checkpoint_header["metrics"]["dataset"] == "mnist_demo"
    assert p2.pretrained_cfg.top1 is None  # other scales: its accuracy is not the run's
    assert main(["convert", str(run / "last.ckpt"), "-o", str(tmp_path / "t.bnc")]) == 0
    assert load_checkpoint(tmp_path / "t.bnc").pretrained_cfg.top1 == results["ternary_acc"]  # the run's last step
    # a last.ckpt of another step than the run's figures (written inside an epoch, or by a run extended since)
    (run / "results.json").write_text(json.dumps(dict(results, step=results["step"] - 1)))
    assert main(["convert", str(run / "last.ckpt"), "-o", str(tmp_path / "t2.bnc")]) == 0
    assert load_checkpoint(tmp_path / "t2.bnc").pretrained_cfg.top1 is None
    again = train(TrainSettings(out=str(tmp_path / "b"), epochs=2, **QUICK))
    assert read_metrics(tmp_path / "b")[1]["train_loss"] == rows[1]["train_loss"]  # --seed makes runs repeatable
    assert again["param_checksums"] == results["param_checksums"]


def test_a_run_converted_without_its_best_model_keeps_the_runs_own_normalization(tmp_path):
    """Without best_ternary.bnc (deleted, not copied, or a --save-every checkpoint before the first validation),
    convert recorded the data set's mean and std, not the run's --mean/--std: eval, predict and export then fed the
    model inputs normalized otherwise than it was trained on."""
    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=1, mean=[0.5], std=[0.25], **QUICK))
    assert load_checkpoint(run / "best_ternary.bnc").pretrained_cfg.mean == (0.5,)
    (run / "best_ternary.bnc").unlink()
    assert main(["convert", str(run / "last.ckpt"), "-o", str(tmp_path / "t.bnc")]) == 0
    cfg = load_checkpoint(tmp_path / "t.bnc").pretrained_cfg
    assert (cfg.dataset, cfg.mean, cfg.std) == ("mnist_demo", (0.5,), (0.25,))


def test_the_command_line_defaults_are_the_settings_defaults():
    """`bitnetcnn train` and `train(TrainSettings())` train the same demo: the defaults live in two places."""
    from dataclasses import fields

    from bitnetcnn.cli import build_parser
    from bitnetcnn.train.run import DEFAULT_LR

    args = vars(build_parser().parse_args(["train"]))
    settings = TrainSettings()
    shared = [f.name for f in fields(TrainSettings) if f.name in args]
    assert len(shared) > 30
    assert {name: args[name] for name in shared} == {name: getattr(settings, name) for name in shared}
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    lr_help = next(a.help for a in train_parser._actions if a.dest == "lr")
    stated = {opt: float(lr) for lr, opt in re.findall(r"([0-9.e-]+) for (\w+)", lr_help)}
    assert stated == DEFAULT_LR, lr_help


def test_a_fine_tune_records_what_it_started_from_in_its_checkpoint(tmp_path):
    """A multi-stage recipe (train, then fine-tune with --init, twice) can be read back from the last header."""
    first = train(TrainSettings(out=str(tmp_path / "a"), epochs=1, **QUICK), command="bitnetcnn train STAGE-1")
    train(TrainSettings(out=str(tmp_path / "b"), epochs=1, init=str(tmp_path / "a" / "best_ternary.bnc"), **QUICK),
          command="bitnetcnn train STAGE-2")
    train(TrainSettings(out=str(tmp_path / "c"), epochs=1, init=str(tmp_path / "b" / "best_ternary.bnc"), **QUICK),
          command="bitnetcnn train STAGE-3")
    model = load_checkpoint(tmp_path / "c" / "best_ternary.bnc")
    header = model.checkpoint_header
    assert header["metrics"]["command"] == "bitnetcnn train STAGE-3"
    # the recipe, oldest first, each command with its wall time and the machine it ran on
    steps = model.pretrained_cfg.training
    assert [step.command for step in steps] == [f"bitnetcnn train STAGE-{i}" for i in (1, 2, 3)]
    assert all(step.wall_time_s > 0 and cpu_info()["model"] in step.hardware and "32-true" in step.hardware
               for step in steps)
    assert model.pretrained_cfg.test_images == QUICK["limit_eval"]
    assert model.pretrained_cfg.class_names == tuple("0123456789")  # what each output means, from the data set
    stage2 = header["metadata"]["init"]
    assert stage2["file"] == "best_ternary.bnc" and stage2["command"] == "bitnetcnn train STAGE-2"
    assert stage2["init"]["command"] == "bitnetcnn train STAGE-1"
    assert stage2["init"]["accuracy"] == pytest.approx(first["best_ternary_acc"])
    assert "init" not in stage2["init"]


def test_ema_run_saves_the_averaged_model_it_validated(tmp_path, capsys):
    from bitnetcnn.train.run import build

    settings = TrainSettings(out=str(tmp_path / "ema"), epochs=2, ema=0.9, **QUICK)
    results = train(settings)
    saved = load_checkpoint(tmp_path / "ema" / "best_ternary.bnc")
    data, _ = build(settings)
    data.setup("fit")
    correct = total = 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            x, y = data.on_after_batch_transfer(batch, 0)
            correct += int((saved(x).argmax(-1) == y).sum())
            total += len(y)
    assert correct / total == pytest.approx(saved.checkpoint_header["metrics"]["accuracy"], abs=1e-6)
    assert results["best_ternary_acc"] == pytest.approx(saved.checkpoint_header["metrics"]["accuracy"], abs=1e-6)
    # last.ckpt holds the average as its weights and the raw weights beside them, so --resume goes on with both
    ckpt = torch.load(tmp_path / "ema" / "last.ckpt", weights_only=False)
    raw, averaged = ckpt["current_model_state"], ckpt["state_dict"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())
    # a resume with nothing left to train (a finished run, or one killed before its results.json) writes the same
    # results: its checksums were once the raw weights' (Lightning loads them, and only a training end averages)
    (tmp_path / "ema" / "results.json").unlink()
    again = train(TrainSettings(out=str(tmp_path / "ema"), progress=False), resume=True)
    assert again["param_checksums"] == results["param_checksums"]
    # last.ckpt's own figures: metrics.csv's are rounded to 6 decimals (0.12109375 came back as 0.121094)
    assert {k: again[k] for k in ("float_acc", "ternary_acc")} == {k: results[k] for k in ("float_acc", "ternary_acc")}
    assert "nothing left to train: the run has trained its 2 epochs" in capsys.readouterr().out
    with pytest.raises(SettingsError, match="--ema 1.5"):
        train(TrainSettings(out=str(tmp_path / "bad"), epochs=1, ema=1.5, **QUICK))
    assert not (tmp_path / "bad").exists()


def test_ramped_ema_forgets_the_first_steps():
    from bitnetcnn.train.schedule import warmup_ema

    average = warmup_ema(0.999)
    # a batch-norm variance that starts at 1 and settles at 0.02 after 20 steps, as early in training
    values = [torch.tensor(1.0 if n < 20 else 0.02) for n in range(300)]
    ema = values[0].clone()
    for n, v in enumerate(values[1:], start=1):
        ema = average(ema, v, torch.tensor(n))
    assert float(ema) < 0.03  # a plain EMA with decay 0.999 would still be at 0.76


@pytest.mark.parametrize("native_bf16", [False, True])
def test_amp_on_a_cpu_without_bf16_arithmetic_warns(monkeypatch, capsys, native_bf16):
    from bitnetcnn.train import run

    monkeypatch.setattr(run, "_cpu_has_bf16", lambda: native_bf16)
    assert run._precision(TrainSettings(amp=True), "cpu") == "bf16-mixed"
    assert ("without native bf16" in capsys.readouterr().err) is not native_bf16
    assert run._precision(TrainSettings(amp=False), "cpu") == "32-true"
    assert capsys.readouterr().err == ""


def test_an_amp_run_validates_its_ternary_model_in_float32_as_its_saved_file_is_evaluated(tmp_path, monkeypatch):
    """Validation ran the ternary model under bf16 autocast: results.json and the file's header said 83.10%, and
    ``bitnetcnn eval`` of the same file (float32, as deployed) 82.95%; the best epoch was chosen by bf16 figures."""
    from bitnetcnn.train import module

    seen = set()
    convert = module.convert_to_ternary

    def spied(model):
        ternary = convert(model)
        ternary.register_forward_pre_hook(lambda m, args: seen.add((torch.is_autocast_enabled("cpu"), args[0].dtype)))
        return ternary

    monkeypatch.setattr(module, "convert_to_ternary", spied)
    run = tmp_path / "run"
    results = train(TrainSettings(out=str(run), epochs=1, dataset="mnist_demo", batch_size=64, limit_train=256,
                                  progress=False, amp=True, model_kwargs={"width": 8}))
    assert seen == {(False, torch.float32)}
    evaluated = evaluate_checkpoint(run / "best_ternary.bnc")
    assert evaluated["top1"] == pytest.approx(results["best_ternary_acc"], abs=1e-6)


def test_mixup_and_cutmix_touch_training_batches_only():
    module = BitClassifier("bitnet_cnn", 10, 1, mixup=0.2, cutmix=1.0)
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self, mix):
            super().__init__()
            self.mix = mix

        def forward(self, x, y):
            calls.append(1)
            return self.mix(x, y)

    module._mix = Spy(module._mix)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    module.training_step((x, y), 0)
    assert calls == [1]
    module.eval()
    module.on_validation_epoch_start()
    with torch.no_grad():
        module.validation_step((x, y), 0)
    assert calls == [1]


def test_distillation_from_a_full_precision_teacher_changes_the_loss_and_gradients_by_kd_alpha(tmp_path, capsys):
    """The student's loss is (1 - a) * cross-entropy + a * T^2 * KL(teacher || student), and so are its gradients."""
    import torch.nn.functional as F

    train(TrainSettings(out=str(tmp_path / "teacher"), epochs=1, quant="fp", **QUICK))
    said = capsys.readouterr().out  # a --quant fp run was summed up as a Bit model run with --no-eval-ternary
    assert "best full-precision test accuracy" in said and "full-precision model: " in said
    assert "--no-eval-ternary" not in said and "Bit-model" not in said
    teacher = str(tmp_path / "teacher" / "best_ternary.bnc")  # an fp run saves its (float) model under this name
    data = ImageDataModule("mnist_demo", limit_train=32)
    data.setup()
    x = data.transform(data.train_split.images, training=False)
    y = data.train_split.labels.long()
    losses, grads = {}, {}
    for alpha in (0.0, 0.5, 1.0):
        torch.manual_seed(0)  # the same student weights each time
        # alpha 0 is plain cross-entropy, which --kd refuses: the run without --kd
        kd = dict(kd=True, teacher=[teacher], kd_alpha=alpha, kd_temperature=3.0) if alpha else {}
        _, module = build(TrainSettings(**kd, model_kwargs={"drop_rate": 0.0}, **QUICK))  # no dropout: one function
        module.train()
        loss = module.training_step((x, y), 0)
        loss.backward()
        losses[alpha] = loss.detach()
        grads[alpha] = torch.cat([p.grad.flatten() for p in module.model.parameters() if p.grad is not None])
        if alpha == 1.0:
            with torch.no_grad():
                student, soft = module.model(x), module.teacher(x)
    hard = F.cross_entropy(student, y)
    kl = F.kl_div(F.log_softmax(student / 3, -1), F.log_softmax(soft / 3, -1), reduction="batchmean",
                  log_target=True)
    assert torch.allclose(losses[0.0], hard, rtol=1e-5)
    assert torch.allclose(losses[1.0], 9 * kl, rtol=1e-5) and not torch.allclose(losses[1.0], hard, rtol=1e-2)
    assert torch.allclose(losses[0.5], (hard + 9 * kl) / 2, rtol=1e-5)
    assert not torch.allclose(grads[1.0], grads[0.0], rtol=1e-2, atol=1e-6)
    mixed = (grads[0.0] + grads[1.0]) / 2
    assert (grads[0.5] - mixed).abs().max() <= 1e-3 * mixed.abs().max(), (grads[0.5] - mixed).abs().max()
    # a teacher saved in bf16 (half the bytes to carry) teaches in float32 what it teaches in bf16
    full = load_checkpoint(teacher)
    half = str(tmp_path / "teacher-bf16.bnc")
    bitnetcnn.save_checkpoint(full.to(torch.bfloat16), half, full.checkpoint_header["metadata"])
    _, module = build(TrainSettings(kd=True, teacher=[half], **QUICK))
    assert {p.dtype for p in module.teacher.parameters()} == {torch.float32}
    with torch.no_grad():
        assert torch.allclose(module.teacher(x), load_checkpoint(half).float()(x), atol=1e-5)
    module.training_step((x, y), 0).backward()
    # --ema's average copies the student alone: a second teacher took memory and was never used
    from types import SimpleNamespace
    from bitnetcnn.train.callbacks import AverageOnTheTrainingDevice

    averaging = AverageOnTheTrainingDevice()
    averaging.setup(SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu"))), module, "fit")
    assert averaging._average_model.module.teacher is None and module.teacher is not None
    # and a whole run with distillation trains
    results = train(TrainSettings(out=str(tmp_path / "student"), epochs=1, kd=True, teacher=[teacher], **QUICK))
    assert results["epochs"] == 1
    # its header names the teacher by hash (a hub name's file changes when republished), and its recipe trains the
    # teacher first, that step noting the teacher it made
    recipe = load_checkpoint(tmp_path / "student" / "best_ternary.bnc").checkpoint_header["metadata"]
    taught = hashlib.sha256(Path(teacher).read_bytes()).hexdigest()
    assert [(t["file"], t["sha256"]) for t in recipe["teachers"]] == [("best_ternary.bnc", taught)]
    made_teacher, own = recipe["training"]
    assert made_teacher["command"].startswith(load_checkpoint(teacher).pretrained_cfg.command)
    assert made_teacher["command"].endswith(f"the teacher best_ternary.bnc (sha256 {taught[:12]}...)")
    assert "--kd" in own["command"] and "the teacher" not in own["command"]
    with pytest.raises(SettingsError, match="--kd needs --teacher"):
        train(TrainSettings(out=str(tmp_path / "x"), epochs=1, kd=True, **QUICK))


def test_teacher_with_other_classes_is_refused(tmp_path):
    teacher = bitnetcnn.create_model("bitnet_cnn", num_classes=7, in_chans=1, quant="fp")
    bitnetcnn.save_checkpoint(teacher, tmp_path / "t.bnc", {})
    with pytest.raises(SettingsError, match="teacher .* 7 classes but the student has 10"):
        train(TrainSettings(out=str(tmp_path / "s"), epochs=1, kd=True, teacher=str(tmp_path / "t.bnc"), **QUICK))


def test_teacher_trained_on_other_inputs_is_refused(tmp_path):
    """The teacher sees the student's batches: normalized otherwise, or of another size, its logits teach noise."""
    teacher = bitnetcnn.create_model("bitnet_cnn", in_chans=1, quant="fp")
    for name, inputs, message in (("m.bnc", {"mean": [0.5], "std": [0.5]}, r"a mean of \[0.5\] but this run feeds it "
                                   r"\[0.1307\] \(mnist_demo\)"),
                                  ("s.bnc", {"input_size": [1, 32, 32]}, r"inputs of \[1, 32, 32\] but this run feeds "
                                   r"it \[1, 28, 28\]")):
        bitnetcnn.save_checkpoint(teacher, tmp_path / name, inputs)
        with pytest.raises(SettingsError, match=message):
            train(TrainSettings(out=str(tmp_path / "s"), epochs=1, kd=True, teacher=str(tmp_path / name), **QUICK))


def test_a_teacher_without_metadata_gets_a_note_that_says_what_could_not_be_checked(tmp_path, capsys, monkeypatch):
    """A seed checkpoint loads without ``pretrained_cfg`` and passed every input check unseen: the seed's MNIST
    teacher scores 98.75% on MNIST as it was trained, 52.3% on the mean-0.5 inputs a run fed it, without a word."""
    from bitnetcnn.train import run

    teacher = bitnetcnn.create_model("bitnet_cnn", in_chans=1, quant="fp")
    bitnetcnn.save_checkpoint(teacher, tmp_path / "t.bnc", {})
    run.build(TrainSettings(kd=True, teacher=str(tmp_path / "t.bnc"), **QUICK))
    assert "records no input size" not in capsys.readouterr().err  # the file's metadata was checked
    monkeypatch.setattr(run, "load_checkpoint", lambda path: teacher)  # as load_checkpoint gives a seed file
    (tmp_path / "seed.zip").write_bytes(b"")
    run.build(TrainSettings(kd=True, teacher=str(tmp_path / "seed.zip"), **QUICK))
    err = capsys.readouterr().err
    assert f"teacher {tmp_path / 'seed.zip'} records no input size, normalization nor class names, so none could be checked" in err
    assert "trained on mnist_demo's classes at [1, 28, 28], normalized with mean [0.1307] and std [0.3081]" in err


def test_several_teachers_are_distilled_as_the_mean_of_their_logits(tmp_path):
    from bitnetcnn.train.distill import TeacherEnsemble
    from bitnetcnn.train.run import build

    paths = []
    for i, classes in enumerate((10, 10, 7)):
        torch.manual_seed(i)
        paths.append(str(tmp_path / f"t{i}.bnc"))
        bitnetcnn.save_checkpoint(bitnetcnn.create_model("bitnet_cnn", num_classes=classes, in_chans=1, quant="fp"),
                                  paths[-1], {})
    _, module = build(TrainSettings(kd=True, teacher=paths[:2], **QUICK))
    assert isinstance(module.teacher, TeacherEnsemble)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        single = [bitnetcnn.load_checkpoint(p).eval()(x) for p in paths[:2]]
        assert torch.allclose(module.teacher(x), (single[0] + single[1]) / 2, atol=1e-6)
        assert not torch.allclose(single[0], single[1])
    with pytest.raises(SettingsError, match="teacher .*t2.bnc predicts 7 classes"):
        build(TrainSettings(kd=True, teacher=paths, **QUICK))


def test_settings_saved_before_ensembles_resume_with_their_one_teacher():
    assert TrainSettings.from_dict({"kd": True, "teacher": "t.bnc"}).teacher == ["t.bnc"]
    assert TrainSettings.from_dict({"teacher": None}).teacher == []


def test_feature_hints_add_the_distance_between_student_and_teacher_features(tmp_path):
    """--kd-hints adds a standardized MSE between the feature maps before the pooling; it needs one teacher whose
    features have the student's shape."""
    from bitnetcnn.train.distill import feature_hint_loss
    from bitnetcnn.train.run import build

    for name, kwargs in (("twin", {}), ("w16", {"width": 16})):
        model = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1, quant="fp", **kwargs)
        bitnetcnn.save_checkpoint(model, tmp_path / f"{name}.bnc", {})
    twin, w16 = str(tmp_path / "twin.bnc"), str(tmp_path / "w16.bnc")
    _, module = build(TrainSettings(kd=True, teacher=[twin], kd_alpha=0.0, kd_hints=2.0, **QUICK))
    torch.manual_seed(0)
    batch = (torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    torch.manual_seed(1)
    with_hints = module.training_step(batch, 0)
    module.hparams.kd_hints = 0.0
    torch.manual_seed(1)
    without = module.training_step(batch, 0)
    with torch.no_grad():  # train mode, as in the steps: BatchNorm normalizes with the batch's statistics
        hint = feature_hint_loss([module.model.forward_features(batch[0])], [module.teacher.forward_features(batch[0])])
    assert float(hint) > 0.1
    assert torch.allclose(with_hints - without, 2.0 * hint, rtol=1e-4)
    with pytest.raises(SettingsError, match="w16.bnc has features of shape .* hints need a teacher of the student"):
        build(TrainSettings(kd=True, teacher=[w16], kd_hints=1.0, **QUICK))
    with pytest.raises(SettingsError, match="needs one teacher, not 2"):
        build(TrainSettings(kd=True, teacher=[twin, twin], kd_hints=1.0, **QUICK))
    with pytest.raises(SettingsError, match="--kd-hints needs --kd"):
        TrainSettings(kd_hints=1.0, **QUICK)


def test_init_fine_tunes_a_trained_model_and_may_add_8bit_activations(tmp_path):
    """--init loads a checkpoint's weights; with --act-bits 8 on a float-activation checkpoint the new quantizers
    start unset (quantization-aware fine-tuning). A checkpoint of another width is refused."""
    from bitnetcnn.train.run import build

    source = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1)
    with torch.no_grad():
        source.stem.conv.weight.mul_(3.0)
    bitnetcnn.save_checkpoint(source, tmp_path / "src.bnc", {})
    _, module = build(TrainSettings(init=str(tmp_path / "src.bnc"), act_bits=8, **QUICK))
    assert torch.equal(module.model.stem.conv.weight, source.stem.conv.weight)
    scales = [m.running_scale for m in module.model.modules() if isinstance(m, ActQuantizer)]
    assert scales and all(float(s) == 0.0 for s in scales)
    wide = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1, width=16)
    bitnetcnn.save_checkpoint(wide, tmp_path / "w16.bnc", {})
    with pytest.raises(SettingsError, match="built with width=16 but this run builds width=32"):
        build(TrainSettings(init=str(tmp_path / "w16.bnc"), **QUICK))


def test_init_with_other_activation_bits_keeps_each_quantizers_range(tmp_path):
    """An 8-bit checkpoint fine-tuned with --act-bits 4: its scales are 8-bit steps, which on a 4-bit grid clip at
    7/127 of the range the model saw. Each starts at the step that keeps its range."""
    from bitnetcnn.train.run import build

    source = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1, act_bits=8)
    quantizers = [m for m in source.modules() if isinstance(m, ActQuantizer)]
    with torch.no_grad():
        for k, m in enumerate(quantizers):
            m.running_scale.fill_(0.01 * (k + 1))
    bitnetcnn.save_checkpoint(source, tmp_path / "a8.bnc", {})
    _, module = build(TrainSettings(init=str(tmp_path / "a8.bnc"), act_bits=4, **QUICK))
    loaded = [m for m in module.model.modules() if isinstance(m, ActQuantizer)]
    assert [m.bits for m in loaded] == [4] * len(quantizers)
    for mine, theirs in zip(loaded, quantizers):
        assert float(mine.running_scale) * 7 == pytest.approx(float(theirs.running_scale) * 127, rel=1e-6)


def test_init_may_drop_activation_quantizers_and_start_a_float_run_from_a_converted_file(tmp_path):
    """Both changes are among the fine-tunable arguments, but --init of an --act-bits 8 file into a float-activation
    run, and of a converted file into a --quant fp run, were refused with a raw list of state-dict keys."""
    from bitnetcnn.train.run import build

    torch.manual_seed(0)
    bit = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1, act_bits=8).train()
    bit(torch.randn(4, 1, 28, 28))
    converted = bitnetcnn.convert_to_ternary(bit.eval())
    bitnetcnn.save_checkpoint(converted, tmp_path / "a8.bnc", {})
    _, module = build(TrainSettings(init=str(tmp_path / "a8.bnc"), **QUICK))  # float activations
    assert not any(isinstance(m, ActQuantizer) for m in module.model.modules())
    latent = converted.stem.conv.codes().float() * converted.stem.conv.channel_scale().view(-1, 1, 1, 1)
    assert torch.equal(module.model.stem.conv.weight, latent)
    _, module = build(TrainSettings(init=str(tmp_path / "a8.bnc"), quant="fp", **QUICK))  # a float model
    assert type(module.model.stem.conv) is torch.nn.Conv2d and torch.equal(module.model.stem.conv.weight, latent)


def test_init_refuses_a_checkpoint_whose_architecture_arguments_differ_with_the_same_shapes(tmp_path):
    """A ReLU checkpoint has the tensors of the default SiLU model: without the check it would load silently."""
    from bitnetcnn.train.run import build

    relu = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1, act="relu")
    bitnetcnn.save_checkpoint(relu, tmp_path / "relu.bnc", {})
    fits = """--model-kwargs '{"act": "relu"}'"""
    with pytest.raises(SettingsError, match=f"act='relu' but this run builds act='silu'.*{fits}"):
        build(TrainSettings(init=str(tmp_path / "relu.bnc"), **QUICK))
    _, module = build(TrainSettings(init=str(tmp_path / "relu.bnc"), model_kwargs={"act": "relu"}, **QUICK))
    assert torch.equal(module.model.stem.conv.weight, relu.stem.conv.weight)
    # a default checkpoint (depths=(1, 1, 1) from the signature) against --model-kwargs '{"depths": [1, 1, 1]}'
    bitnetcnn.save_checkpoint(bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1), tmp_path / "d.bnc", {})
    build(TrainSettings(init=str(tmp_path / "d.bnc"), model_kwargs={"depths": [1, 1, 1]}, **QUICK))
    # arguments a fine-tune may change (quantization, dropout) are not architecture
    _, module = build(TrainSettings(init=str(tmp_path / "relu.bnc"), model_kwargs={"act": "relu", "drop_rate": 0.3},
                                    scale_op="mean", **QUICK))


NO_GPU = not torch.cuda.is_available()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "bit_resnet81"], "unknown model 'bit_resnet81'"),
        (["--dataset", "cifar1000"], "unknown data set 'cifar1000'"),
        (["--num-classes", "100"], "--num-classes 100 but data set 'mnist_demo' has 10 classes"),
        (["--dataset", "cifar10", "--data-dir", "EMPTY"], "not found; looked in"),
        (["--epochs", "0"], "--epochs must be an integer >= 1, not 0"),
        # a nan mean trained to "diverged in epoch 0 ... lower --lr" (status 1); numpy's bound did not name --seed;
        # --gpus -5 was told as --devices; an empty --out or --init trained into the default folder, or from scratch
        (["--mean", "nan"], "--mean must be a finite number, not nan"),
        (["--seed", "99999999999999"], "--seed 99999999999999 is out of range: it must lie in [0, 4294967295]"),
        (["--gpus", "-5"], "--gpus -5: give a number of GPUs, -1 for all of them, or 0 for the CPU"),
        (["--init", ""], "--init is empty: give a path, or leave --init out"),
        (["--out", ""], "--out is empty: give a path, or leave --out out"),
        (["--out", "UNDER_A_FILE"], "a.png is a file, not a folder; give a folder for the run"),  # "[Errno 20]"
        (["--teacher", "", "--kd"], "--teacher is empty"),
        (["--epochs", "-1"], "--epochs must be an integer >= 1, not -1"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--lr", "inf"], "--lr must be a finite number, not inf"),
        (["--lr", "nan"], "--lr must be a finite number, not nan"),
        (["--lr", "-0.1"], "--lr -0.1 is out of range"),
        (["--lr", "0"], "--lr 0.0 is out of range: it must lie in (0, inf]"),  # each bound, not only past it
        (["--time-budget", "0"], "--time-budget 0.0 is out of range: it must lie in (0, inf]"),
        (["--seed", "4294967296"], "--seed 4294967296 is out of range: it must lie in [0, 4294967295]"),
        (["--cutmix", "-1"], "--cutmix -1.0 is out of range: it must lie in [0, inf]"),
        (["--epochs", "2", "--warmup-epochs", "2"], "--warmup-epochs 2 of a 2-epoch run: the learning rate would "
         "never reach its peak"),
        (["--label-smoothing", "1.5"], "--label-smoothing 1.5 is out of range"),
        (["--ema", "1"], "--ema 1.0 is out of range"),
        (["--devices", "0"], "--devices 0: give a number of devices"),
        (["--limit-train", "0"], "--limit-train must be an integer >= 1"),
        (["--limit-train", "64"], "the training set has 64 images, fewer than one batch of 128"),
        (["--limit-train", "200", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"],
         "the training set has 200 images, 100 for each of 2 processes: fewer than one batch of 128"),
        (["--limit-eval", "1", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"],
         "the test set has 1 images, fewer than the 2 processes that validate a share each"),
        (["--teacher", "t.bnc"], "--teacher is given without --kd"),
        (["--model-kwargs", '{"widht": 8}'], "bitnet_cnn has no argument 'widht'; its arguments: act, depths"),
        (["--model-kwargs", "[1, 2]"], "--model-kwargs must be a JSON object"),
        (["--model-kwargs", '{"num_classes": 10, "quant": "fp"}'], "--model-kwargs sets num_classes, quant, which the "
         "run takes from the data set (--num-classes checks it), --quant: leave them out of --model-kwargs"),
        (["--seed", "-1"], "--seed must be an integer >= 0, not -1"),
        (["--img-size", "64"], "--img-size sizes an imagefolder's images; 'mnist_demo' has its own size (28 px)"),
        (["--strategy", "bogus"], "You selected an invalid strategy name"),
        (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
        (["--model-kwargs", "act=relu"], "argument --model-kwargs: 'act=relu' is not valid JSON"),
        pytest.param(["--gpus", "2"], "this machine has no usable CUDA GPU",
                     marks=pytest.mark.skipif(not NO_GPU, reason="the machine has a GPU")),
    ],
)
def test_wrong_input_gets_a_clear_error(tmp_path, capsys, argv, message):
    """Exit status 2 and one line on stderr that says what was wrong, before any run folder is made."""
    (tmp_path / "a.png").write_bytes(b"")
    argv = [str(tmp_path) if a == "EMPTY" else str(tmp_path / "a.png" / "run") if a == "UNDER_A_FILE" else a
            for a in argv]
    with pytest.raises(SystemExit) if message.startswith("argument --") else _no_raise() as exit_:
        code = main(["train", "--out", str(tmp_path / "run"), "--no-progress", *argv])
    code = exit_.value.code if exit_ is not None else code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


class _no_raise:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _one_line_error(capsys, argv: list[str], message: str, code: int = 2) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_new_run_never_overwrites_a_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=1, **QUICK))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    _one_line_error(capsys, ["train", "--out", str(run), "--epochs", "1", "--limit-train", "256", "--no-progress"],
                    f"--out {run} already holds a run: continue it with --resume --out {run}, or give a fresh --out")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing replaced
    _one_line_error(capsys, ["train", "--out", str(run / "args.json"), "--no-progress"], "is a file, not a folder")
    # a folder a run left before its first last.ckpt was written (killed, or a full disk, after epoch 0's model and
    # metrics) takes a new run, as its error said: --resume has nothing to continue from
    early = tmp_path / "early"
    early.mkdir()
    for name in ("args.json", "best_ternary.bnc", "metrics.csv", "metrics.png"):
        (early / name).write_bytes((run / name).read_bytes())
    _one_line_error(capsys, ["train", "--resume", "--out", str(early), "--no-progress"],
                    f"--resume: {early / 'last.ckpt'} not found, though the run kept a model (best_ternary.bnc): the "
                    "run was stopped before its first checkpoint, or the file was moved (put it back to continue the "
                    "run); start it again without --resume (which replaces that model)")
    results = train(TrainSettings(out=str(early), epochs=2, **QUICK))
    assert [int(r["epoch"]) for r in read_metrics(early)] == [0, 1] and results["epochs"] == 2
    assert "a run that stopped before its first checkpoint left best_ternary.bnc, metrics.csv, metrics.png; this " \
           "run replaces them" in capsys.readouterr().out
    # a finished run whose last.ckpt was deleted (to save disk) was told to start again without --resume, which
    # then refused the folder as holding a run
    (early / "last.ckpt").unlink()
    _one_line_error(capsys, ["train", "--resume", "--out", str(early), "--no-progress"],
                    f"the run finished (results.json) and its checkpoint is gone, so it cannot continue; train on from "
                    f"its best model in a new folder (--init {early / 'best_ternary.bnc'} --out NEW_FOLDER)")
    _one_line_error(capsys, ["train", "--out", str(early), "--no-progress"],
                    f"holds a finished run whose last.ckpt is gone: give a fresh --out (--init {early / 'best_'}")


def test_resume_refuses_settings_that_cannot_take_effect_and_extends_epochs(tmp_path, capsys):
    from bitnetcnn.train.schedule import DEFAULT_LR, warmup_cosine

    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=1, **QUICK))
    resume = ["train", "--resume", "--out", str(run), "--no-progress"]
    _one_line_error(capsys, [*resume, "--lr", "0.5"], "--lr 0.5 (saved: the default, 0.01) cannot take effect")
    _one_line_error(capsys, [*resume, "--time-budget", "8"], "takes 1 epoch (args.json): leave --time-budget out")
    _one_line_error(capsys, [*resume, "--epochs", "0"], "--epochs must be an integer >= 1")
    (run / "args.json").write_text(json.dumps(dict(json.loads((run / "args.json").read_text()), epochs=2)))
    _one_line_error(capsys, [*resume, "--epochs", "1"], "was set for 2 epochs; give more than 2 to extend it")
    saved = (run / "args.json").read_text()
    (run / "args.json").write_text(json.dumps(dict(json.loads(saved), model_kwargs={"width": 8})))
    # it was Lightning's "size mismatch" for every layer
    assert main([*resume, "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"last.ckpt holds another model than .*args.json describes \(\d+ tensor\(s\) differ; "
                     r"model.stem.conv.weight: \(\d+, 1, 3, 3\) saved, \(8, 1, 3, 3\) built", err), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    (run / "args.json").write_text(saved)
    assert main([*resume, "--epochs", "3", "--time-budget", "8"]) == 2  # refused: no word of an extension
    assert "now runs to" not in capsys.readouterr().out
    capsys.readouterr()
    rates = []  # each step's rate: the first after the extension is the stretched cosine's, not the old end's 0
    with pytest.MonkeyPatch.context() as m:
        step = torch.optim.AdamW.step
        m.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (rates.append(self.param_groups[0]["lr"]),
                                                                   step(self, *a, **k))[1])
        assert main([*resume, "--epochs", "3"]) == 0  # extends the run: epochs 1 and 2 follow epoch 0
    assert "was set for 2 epochs; it now runs to 3" in capsys.readouterr().out  # an extension is said aloud
    steps, s = len(rates) // 2, TrainSettings()  # the steps of an epoch; the run's (default) schedule
    expected = [DEFAULT_LR[s.optimizer] * warmup_cosine(k, 3 * steps, int(s.warmup_epochs * steps))
                for k in range(steps, 3 * steps)]
    assert rates == pytest.approx(expected, rel=1e-6), rates[:2]
    assert [int(r["epoch"]) for r in read_metrics(run)] == [0, 1, 2]
    assert json.loads((run / "args.json").read_text())["epochs"] == 3
    # the recipe says so: the command alone reads --epochs 1 (args.json's 2 was never run)
    assert json.loads((run / "results.json").read_text())["command"].endswith("  # resumed with --epochs 3")


def test_a_resume_given_some_of_the_runs_own_flags_reads_the_others_from_the_run(tmp_path, capsys):
    """`--resume --out RUN --momentum 0.8` of an SGD run was refused as "SGD's: --optimizer adamw does not use
    it": the flags not given were checked at the parser's defaults, not the run's."""
    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=1, optimizer="sgd", momentum=0.8, **QUICK))
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--momentum", "0.8", "--epochs", "2"]) == 0
    assert [int(r["epoch"]) for r in read_metrics(run)] == [0, 1]
    _one_line_error(capsys, ["train", "--resume", "--out", str(run), "--momentum", "0.7"],
                    "--momentum 0.7 (saved: 0.8) cannot take effect")


def test_a_resume_may_turn_compile_off_and_repeat_a_default_it_ran_with(tmp_path, capsys):
    """A run started with --compile (on a GPU machine) could not be resumed where torch.compile fails: --compile was a
    switch with no way off. And `--resume --lr 0.01` of a run started without --lr (AdamW: 0.01) was refused."""
    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=1, **QUICK))
    saved = json.loads((run / "args.json").read_text())
    (run / "args.json").write_text(json.dumps({**saved, "compile": True, "compile_mode": "reduce-overhead"}))
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--no-compile", "--no-channels-last",
                 "--lr", "0.01", "--epochs", "2"]) == 0, capsys.readouterr().err
    args = json.loads((run / "args.json").read_text())
    assert (args["compile"], args["compile_mode"], args["channels_last"], args["lr"]) == \
        (False, "default", False, None)
    assert [int(r["epoch"]) for r in read_metrics(run)] == [0, 1]
    # from Python, naming the settings given
    args = json.loads((run / "args.json").read_text())
    (run / "args.json").write_text(json.dumps({**args, "compile": True, "compile_mode": "reduce-overhead"}))
    train(TrainSettings(out=str(run), epochs=3, progress=False), resume=True, given={"compile", "epochs"})
    args = json.loads((run / "args.json").read_text())
    assert (args["compile"], args["compile_mode"], args["epochs"]) == (False, "default", 3)


def test_resuming_a_finished_run_keeps_its_final_figures(tmp_path):
    # a retry loop that resumes a run which had already finished trains nothing; its results.json kept nulls
    run = tmp_path / "run"
    first = train(TrainSettings(out=str(run), epochs=1, **QUICK))
    assert first["float_acc"] is not None and first["ternary_acc"] is not None
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    again = json.loads((run / "results.json").read_text())
    assert again["step"] == first["step"]
    for key in ("float_acc", "ternary_acc"):  # from metrics.csv, which keeps 6 decimals
        assert again[key] == pytest.approx(first[key], abs=1e-6)


def test_a_resume_keeps_the_runs_progress_setting_unless_given(tmp_path):
    from bitnetcnn.train.run_folder import resumed_settings, write_settings

    tmp_path.joinpath("run").mkdir()
    write_settings(tmp_path / "run", TrainSettings(progress=False))
    out = str(tmp_path / "run")
    assert resumed_settings(TrainSettings(out=out), set()).progress is False
    assert resumed_settings(TrainSettings(out=out, progress=True), {"progress"}).progress is True  # --progress


def test_a_damaged_last_checkpoint_or_foreign_ckpt_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=1, **QUICK))
    whole = (run / "last.ckpt").read_bytes()
    # a whole zip that is not a training checkpoint (the run's best model, a state dict copied over it) gave torch's
    # "file in archive is not in a subdirectory" traceback, or Lightning's KeyError after args.json was rewritten
    args = (run / "args.json").read_text()
    for other, what in ((run / "best_ternary.bnc", "not a checkpoint torch can read"),
                        (tmp_path / "sd.pt", "not a Lightning training checkpoint")):
        if not other.exists():
            torch.save({"w": torch.zeros(1)}, other)
        (run / "last.ckpt").write_bytes(other.read_bytes())
        _one_line_error(capsys, ["train", "--resume", "--out", str(run), "--no-progress", "--epochs", "2"],
                        f"--resume: {run / 'last.ckpt'} is damaged ({what}")
        assert (run / "args.json").read_text() == args
    (run / "last.ckpt").write_bytes(whole[:5000])
    _one_line_error(capsys, ["train", "--resume", "--out", str(run), "--no-progress"],
                    f"--resume: {run / 'last.ckpt'} is damaged")
    _one_line_error(capsys, ["convert", str(run / "last.ckpt")], "is not a readable last.ckpt of a `bitnetcnn train` "
                                                                 "run (cut short or damaged: its zip archive cannot")
    assert "weights_only" not in capsys.readouterr().err
    # eval called it a run's checkpoint to convert, and convert's own message was torch's, cut mid-sentence
    _one_line_error(capsys, ["eval", str(run / "last.ckpt")], "a Lightning training checkpoint, cut short or damaged")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "pytorch-lightning_version": "2.5"}, tmp_path / "other.ckpt")
    _one_line_error(capsys, ["convert", str(tmp_path / "other.ckpt")], "is not a readable last.ckpt")
    with pytest.raises(SystemExit):  # refused as the argument is read, before any work
        main(["convert", str(run / "best_ternary.bnc"), "-o", str(run / "best_ternary.bnc" / "x.bnc")])
    assert f"{run / 'best_ternary.bnc'} is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch size must be a positive integer, not -5"):
        evaluate_checkpoint(str(run / "best_ternary.bnc"), batch_size=-5)
    with pytest.raises(SystemExit):
        main(["eval", str(run / "best_ternary.bnc"), "--batch-size", "-5"])
    err = capsys.readouterr().err
    assert "--batch-size: -5 is not a positive integer" in err and err.count("\n") == 1


def test_a_diverging_run_stops_and_never_saves_a_nan_model(tmp_path, capsys):
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), "--lr", "1e30", "--epochs", "2",
                             "--batch-size", "32", "--limit-train", "128", "--limit-eval", "64", "--no-progress"],
                    "training diverged in epoch 0: the weights are not finite", code=1)
    assert not (tmp_path / "run" / "best_ternary.bnc").exists() and not (tmp_path / "run" / "last.ckpt").exists()
    # nor inside an epoch: a mid-epoch save after the weights turned to NaN stops the run instead
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "often"), "--lr", "1e30", "--save-every", "1e-6",
                             "--batch-size", "32", "--limit-train", "128", "--limit-eval", "64", "--no-progress"],
                    "; last.ckpt keeps the last finite weights. Lower --lr", code=1)
    saved = torch.load(tmp_path / "often" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.isfinite(t).all() for t in saved.values() if t.is_floating_point())


def test_a_killed_and_resumed_run_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """Killed after epoch 1 of 3 (its checkpoint written), then resumed: the same metrics and the same weights."""
    whole = train(TrainSettings(out=str(tmp_path / "whole"), epochs=3, **QUICK))

    def die_at_epoch_2(self):
        if self.current_epoch == 2:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(BitClassifier, "on_train_epoch_start", die_at_epoch_2)
        with pytest.raises(Killed):
            train(TrainSettings(out=str(tmp_path / "cut"), epochs=3, **QUICK))
    assert [int(r["epoch"]) for r in read_metrics(tmp_path / "cut")] == [0, 1]
    resumed = train(TrainSettings(out=str(tmp_path / "cut"), progress=False), resume=True)

    def rows(run):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(tmp_path / run)]

    assert rows("cut") == rows("whole")
    assert resumed["param_checksums"] == whole["param_checksums"]


def test_the_main_command_prints_only_what_a_user_needs(tmp_path):
    done = subprocess.run(_cli("--out", str(tmp_path / "run"), "--epochs", "1", "--limit-train", "256",
                               "--limit-eval", "64"), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
    lines = [line for line in done.stdout.splitlines() if line]
    assert lines[0].startswith("epoch 0 (epochs 0-0)  lr ")  # --no-progress: a line an epoch instead of the bar
    assert [line.split(":")[0] for line in lines[1:]] == [
        "run folder", "best ternary test accuracy on 64 test images (--limit-eval)", "ternary model", "plot", "metrics",
        "results"], done.stdout


def test_a_run_says_what_its_figures_measured_and_a_bit_model_is_not_called_ternary(tmp_path, capsys):
    """results.json and a converted last.ckpt record how many test images the accuracy counts (a --limit-eval run
    measured a subset); a --no-eval-ternary run keeps its best Bit model and gives no ternary figure for it."""
    from bitnetcnn.train.convert_file import convert_file

    results = train(TrainSettings(out=str(tmp_path / "subset"), epochs=1, **QUICK))
    assert results["test_images"] == 128
    converted = load_checkpoint(convert_file(str(tmp_path / "subset" / "last.ckpt")))
    assert converted.pretrained_cfg.test_images == 128
    capsys.readouterr()
    results = train(TrainSettings(out=str(tmp_path / "bit"), epochs=1, eval_ternary=False, **QUICK))
    assert results["best_ternary_acc"] is None and results["best_float_acc"] is not None
    out = capsys.readouterr().out
    assert "best Bit-model test accuracy on 128 test images (--limit-eval)" in out
    # the file holds that Bit model: the line naming it said "ternary model"
    assert f"Bit model (not converted: `bitnetcnn convert` it): {tmp_path / 'bit' / 'best_ternary.bnc'}" in out
    assert "ternary model:" not in out


def test_an_image_folders_size_reaches_the_model(tmp_path):
    """--img-size 96 sized the images but not the model, which kept the 32-px stem (stride 1, no max-pool) its
    builder chooses by img_size; the run now builds the model for the data's size, which --model-kwargs may not
    contradict."""
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (100, 100), (10, 20, 30)).save(tmp_path / split / c / "a.png")
    _, module = build(TrainSettings(model="bit_resnet18", dataset="imagefolder", data_dir=str(tmp_path), img_size=96,
                                    batch_size=1))
    assert module.model.model_args["img_size"] == 96
    _, small = build(TrainSettings(model="bit_resnet18", dataset="imagefolder", data_dir=str(tmp_path), img_size=32,
                                   batch_size=1))
    assert module.model.stem.conv.kernel_size != small.model.stem.conv.kernel_size  # the ImageNet stem at 96 px
    with pytest.raises(SettingsError, match="--model-kwargs sets img_size, which the run takes from the data set"):
        TrainSettings(model_kwargs={"img_size": 64})


def test_a_resume_refuses_image_folders_of_other_classes(tmp_path):
    """--resume --data-dir OTHER went on training the same outputs on other folders' labels, without a word."""
    from PIL import Image

    for root, classes in (("a", ("cat", "dog")), ("b", ("ant", "bee"))):
        for split in ("train", "val"):
            for c in classes:
                (tmp_path / root / split / c).mkdir(parents=True)
                for k in range(4):
                    Image.new("RGB", (16, 16), (10 * k, 20, 30)).save(tmp_path / root / split / c / f"{k}.png")
    run = str(tmp_path / "run")
    train(TrainSettings(out=run, dataset="imagefolder", data_dir=str(tmp_path / "a"), img_size=16, epochs=1,
                        batch_size=4, progress=False))
    with pytest.raises(SettingsError, match=r"trained on the classes cat, dog .* but the data has ant, bee"):
        train(TrainSettings(out=run, epochs=2, data_dir=str(tmp_path / "b"), progress=False), resume=True,
              given={"out", "epochs", "data_dir"})


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bitnetcnn", "train", "--no-progress", *args]


def test_resume_after_sigkill_finishes_with_unbroken_metrics(tmp_path):
    run = tmp_path / "run"
    args = ["--out", str(run), "--epochs", "3", "--batch-size", "64", "--limit-train", "640", "--limit-eval", "128"]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(1.0)  # now inside epoch 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "results.json").exists()
    # as the interruption's hint says it: a run started with --no-progress resumes without the bar too
    done = subprocess.run([sys.executable, "-m", "bitnetcnn", "train", "--resume", "--out", str(run)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch 2 (epochs 0-2)" in done.stdout and "it/s" not in done.stderr + done.stdout
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 3
    assert [int(r["epoch"]) for r in read_metrics(run)] == [0, 1, 2]
    assert "--epochs 3" in results["command"] and "--resume" not in results["command"]  # the command that started it


def test_two_process_ddp_on_cpu_trains_one_model(tmp_path, capsys):
    """Both processes train one model, and take one decision on a time budget (the first process's): here the
    most --epochs allows, 2. Their validation counts each test image once, though the 513 images split unevenly
    (257 in two batches and 256 in one): the accuracy recorded is the saved model's on those images. Resumed in
    one process, its steps would be twice as many as its schedule counted: refused."""
    run = tmp_path / "ddp"
    done = subprocess.run(
        _cli("--out", str(run), "--epochs", "2", "--time-budget", "30", "--batch-size", "32", "--limit-train", "256",
             "--limit-eval", "513", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"),
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2 and results["epochs"] == 2
    assert json.loads((run / "args.json").read_text())["time_budget"] is None
    assert results["command"].endswith("--time-budget 30 --batch-size 32 --limit-train 256 --limit-eval 513 "
                                       "--accelerator cpu --devices 2 --strategy ddp  # the time budget gave 2 epochs")
    a, b = results["param_checksums"]
    assert a == b  # both ranks end with the same weights
    # without --out, the second process joins the folder the first one picked, and makes no runs/MODEL-DATASET-2
    plain = subprocess.run(_cli("--epochs", "1", "--batch-size", "32", "--limit-train", "64", "--limit-eval", "2",
                                "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"),
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["bitnet_cnn-mnist_demo"]
    model = load_checkpoint(run / "best_ternary.bnc")
    data = ImageDataModule("mnist_demo", limit_eval=513)
    data.setup()
    with torch.no_grad():
        predicted = model(data.transform(data.test_split.images, training=False)).argmax(1)
    correct = int((predicted == data.test_split.labels).sum())
    assert model.pretrained_cfg.top1 == pytest.approx(correct / 513, abs=1e-6)
    before = (run / "last.ckpt").read_bytes()
    _one_line_error(capsys, ["train", "--resume", "--out", str(run), "--epochs", "3", "--devices", "1",
                             "--no-progress"],
                    "--resume: the run trained in 2 processes (devices x nodes) and this resume starts 1: give "
                    "--devices and --num-nodes that make 2")
    assert (run / "last.ckpt").read_bytes() == before  # nothing recorded: args.json keeps the run's 2 epochs
    assert json.loads((run / "args.json").read_text())["epochs"] == 2


DIES_AT_EPOCH_0_BATCH_2 = """
import os, sys
from bitnetcnn.cli import main
from bitnetcnn.train.module import BitClassifier

def die(module, batch, batch_idx):  # every process dies there, as on a machine that went down
    if module.current_epoch == 0 and batch_idx == 2:
        os._exit(9)

BitClassifier.on_train_batch_start = die
sys.exit(main(sys.argv[1:]))
"""


def test_a_ddp_run_killed_inside_an_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    """--save-every holds in DDP runs too: both processes die inside epoch 0, the run resumes from the checkpoint of
    batch 2 in each process (the sampler hands each its share, less the batches it had trained) and ends with the
    weights of the uninterrupted run."""
    args = ["--epochs", "2", "--batch-size", "16", "--limit-train", "256", "--limit-eval", "64", "--save-every", "1e-6",
            "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    dies = tmp_path / "dies.py"
    dies.write_text(DIES_AT_EPOCH_0_BATCH_2)
    killed = subprocess.run([sys.executable, str(dies), "train", "--no-progress", "--out", str(tmp_path / "cut"),
                             *args], capture_output=True, text=True, timeout=600)
    assert killed.returncode == 9 and not (tmp_path / "cut" / "results.json").exists(), killed.stderr[-3000:]
    resumed = subprocess.run(_cli("--out", str(tmp_path / "cut"), "--resume"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "inside epoch 0 at batch 2 of 8" in resumed.stdout
    whole = subprocess.run(_cli("--out", str(tmp_path / "whole"), *args), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut, full = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("cut", "whole"))
    assert cut["world_size"] == 2 and cut["epochs"] == 2
    assert cut["param_checksums"] == full["param_checksums"]
    # the killed epoch's training loss and accuracy over both processes' batches, those before the kill too
    trained = ("train_loss", "train_acc")
    assert [{k: r[k] for k in trained} for r in read_metrics(tmp_path / "cut")] == \
        [{k: r[k] for k in trained} for r in read_metrics(tmp_path / "whole")]


RECORDS_AUGMENTATION = """
import hashlib, os, sys
import torch
from bitnetcnn.cli import main
from bitnetcnn.data.datamodule import ImageDataModule

transform = ImageDataModule.transform

def recording(self, images, training):  # what each process's augmentation draws from, batch by batch
    if training:
        with open(os.environ["DRAWS"] + "." + str(self.trainer.global_rank), "a") as f:
            f.write(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest() + "\\n")
    return transform(self, images, training)

ImageDataModule.transform = recording
sys.exit(main(sys.argv[1:]))
"""


def test_the_processes_of_a_ddp_run_augment_their_images_with_their_own_random_numbers(tmp_path):
    """Each process of a DDP run crops, flips and mixes its share of the batch with its own random numbers (seeded
    alike, both drew the same crop offsets and flips for their slots), and the draws go on from batch to batch. (A
    killed run resumes to the uninterrupted one's weights with every process's states:
    test_a_ddp_run_killed_inside_an_epoch_resumes_to_the_uninterrupted_weights.)"""
    script = tmp_path / "records.py"
    script.write_text(RECORDS_AUGMENTATION)
    done = subprocess.run([sys.executable, str(script), "train", "--no-progress", "--out", str(tmp_path / "run"),
                           "--epochs", "1", "--batch-size", "16", "--limit-train", "64", "--limit-eval", "2",
                           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "DRAWS": str(tmp_path / "draws")})
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = ((tmp_path / name).read_text().splitlines() for name in ("draws.0", "draws.1"))
    assert len(set(first)) == len(set(second)) == 2 and not set(first) & set(second)


FIRST_PROCESS_NEVER_MEETS = """
import os, sys, time
import torch.distributed
from bitnetcnn.cli import main

if os.environ.get("LOCAL_RANK", "0") == "0":  # the first process starts the second, then never joins it
    torch.distributed.init_process_group = lambda *args, **kwargs: time.sleep(600)
sys.exit(main(sys.argv[1:]))
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_the_processes_a_ddp_launcher_started_die_with_it(tmp_path):
    """A first process killed outright (SIGKILL) while the second was still meeting the process group left the
    second waiting for torch's 30-minute rendezvous timeout; now it dies with the process that started it."""
    script = tmp_path / "never_meets.py"
    script.write_text(FIRST_PROCESS_NEVER_MEETS)
    log = tmp_path / "log"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, str(script), "train", "--no-progress", "--out", str(tmp_path / "run"),
                                  "--epochs", "1", "--batch-size", "16", "--limit-train", "64", "--limit-eval", "2",
                                  "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"],
                                 stdout=out, stderr=subprocess.STDOUT)
    started: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while "GLOBAL_RANK: 1" not in log.read_text() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert "GLOBAL_RANK: 1" in log.read_text(), log.read_text()[-3000:]  # the second process is meeting it
        started = _children(first.pid)
        (second,) = started
        first.kill()
        first.wait()
        deadline = time.monotonic() + 30
        while Path(f"/proc/{second}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{second}").exists(), "the second process outlived the first by 30 s"
    finally:
        first.kill()
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


SIGNALS_AT_EPOCH_1_BATCH_2 = """
import os, signal, sys
from bitnetcnn.cli import main
from bitnetcnn.train.module import BitClassifier

def send(module, batch, batch_idx):
    if module.current_epoch == 1 and batch_idx == 2 and module.global_rank == 0:
        if os.environ["SIGNAL"] == "SIGINT":  # a terminal's Ctrl-C: every process of the foreground group
            os.killpg(os.getpgid(0), signal.SIGINT)
        else:  # kill, a scheduler: the first process alone
            os.kill(os.getpid(), signal.SIGTERM)

BitClassifier.on_train_batch_start = send
sys.exit(main(sys.argv[1:]))
"""


def _as_from_a_terminal() -> None:
    """A command started from a terminal has Ctrl-C's default action; one started by a process that ignores SIGINT
    inherits SIG_IGN (Lightning sets it on an interrupted fit, and an earlier test may leave it in this process),
    takes no Ctrl-C, and trained on to the end (exit 0): CI failed so once; with SIG_IGN set here, every time."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_ddp_run_stopped_by_sigterm_or_ctrl_c_saves_where_it_stands(tmp_path, signum):
    """``--strategy ddp``: SIGTERM to the first process crashed it (the handler meant for ddp_spawn's workers took
    its subprocesses for multiprocessing ones: AttributeError, exit 1, the batches since the last checkpoint lost),
    and Ctrl-C stopped every process at once, losing them too. Both now stop after the batch they came in, save
    there and exit 143 or 130 with the hint that names the batch; the run then resumes to its end."""
    script = tmp_path / "signals.py"
    script.write_text(SIGNALS_AT_EPOCH_1_BATCH_2)
    run = tmp_path / "run"
    stopped = subprocess.run([sys.executable, str(script), "train", "--no-progress", "--out", str(run), "--epochs", "2",
                              "--batch-size", "16", "--limit-train", "128", "--limit-eval", "64", "--accelerator",
                              "cpu", "--devices", "2", "--strategy", "ddp"], capture_output=True, text=True,
                             timeout=600, start_new_session=True, env={**os.environ, "SIGNAL": signum.name},
                             preexec_fn=_as_from_a_terminal)
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    how = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert f"the run was stopped by {how} in epoch 1 after 3 of 4 batches; continue it with" in stopped.stderr
    saved = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and saved["global_step"] == 4 + 3
    resumed = subprocess.run(_cli("--out", str(run), "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["epochs"] == 2


def test_a_process_another_launcher_started_is_not_taken_for_an_orphan():
    """A launcher's pid inherited by processes another launcher starts (torchrun's, from a notebook that trained in
    process first) names another parent than theirs: they go on, where they exited at once."""
    from bitnetcnn.train.callbacks import LAUNCHER_PID_ENV

    code = "from bitnetcnn.train.callbacks import die_with_the_launcher as d; d(); print('trains')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LOCAL_RANK": "1", LAUNCHER_PID_ENV: str(os.getpid() + 10**6)})
    assert (done.returncode, done.stdout) == (0, "trains\n"), done.stderr[-2000:]


def test_val_every_validates_every_nth_epoch_and_the_last(tmp_path, capsys):
    """--val-every 2 over 3 epochs validates epochs 1 and 2 (the last); epoch 0's row has no stale validation
    figures, and the best model comes from a validated epoch. Without a progress bar each row is printed too."""
    capsys.readouterr()
    results = train(TrainSettings(out=str(tmp_path / "run"), epochs=3, val_every=2, **QUICK))
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[0] for line in printed] == [f"epoch {e} (epochs 0-2)" for e in range(3)]
    assert "ternary acc" not in printed[0] and "ternary acc" in printed[1] and "ternary acc" in printed[2]
    rows = read_metrics(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert rows[0]["val_acc"] == "" and rows[0]["ternary_acc"] == "" and rows[0]["train_loss"] != ""
    assert rows[1]["ternary_acc"] != "" and rows[2]["ternary_acc"] != ""
    best = max(float(rows[1]["ternary_acc"]), float(rows[2]["ternary_acc"]))
    assert results["best_ternary_acc"] == pytest.approx(best, abs=1e-6)
    recorded = load_checkpoint(tmp_path / "run" / "best_ternary.bnc").checkpoint_header["metadata"]
    assert recorded["epoch"] in (1, 2) and recorded["epochs"] == 3  # which epoch of how many
    with pytest.raises(SettingsError, match="--val-every must be an integer >= 1"):
        TrainSettings(val_every=0)


def test_epochs_within_a_budget_count_the_epochs_and_the_validations_they_run():
    from bitnetcnn.train.time_budget import epochs_within

    # 10 s gone; 90 s left at 10 s an epoch: 9 more
    assert epochs_within(100, 10, 10, 0, 1, most=100) == 10
    assert epochs_within(100, 10, 10, 5, 1, most=100) == 7  # 6 more at 15 s (each validated)
    assert epochs_within(100, 10, 10, 5, 10, most=100) == 9  # 8 more and one validation (the last) = 85 s
    assert epochs_within(100, 10, 10, 0, 1, most=4) == 4  # at most --epochs
    assert epochs_within(5, 10, 10, 5, 1, most=100) == 1  # over budget already: the epoch run is the run
    # 2 done: epochs 2.. at 10 s, validated every 3rd (index 2, 5, ...) and the last
    assert epochs_within(100, 20, 10, 5, 3, most=100, done=2) == 8  # 6 more (60 s) + validations 2, 5, 7 (15 s)
    assert epochs_within(10, 20, 10, 5, 3, most=100, done=5) == 5  # over budget: never fewer than done
    # validations every 2nd epoch (index 1, 3, ...), costly: epoch 1 validates, so a third epoch does not fit
    assert epochs_within(15, 0, 1, 10, 2, most=10) == 2


def test_the_time_budget_keeps_its_margin_on_the_time_left_not_on_the_whole_budget():
    """The 5% margin is taken from what is left of the window once epoch 0 is timed: 50 s of 100 gone at 9.2 s an
    epoch leaves 47.5 s, 5 more epochs (6 in all); a margin on the whole window (95 s) would leave 45 s, 4 more."""
    from types import SimpleNamespace

    from bitnetcnn.train.time_budget import FitToTimeBudget

    decided = []
    budget = FitToTimeBudget(100.0, lambda: 50.0, val_every=100, decided=decided.append)
    budget._most = 50
    budget._validated = {0}
    trainer = SimpleNamespace(current_epoch=0, is_global_zero=False, fit_loop=SimpleNamespace(max_epochs=50),
                              strategy=SimpleNamespace(broadcast=lambda value, src=0: value))
    module = SimpleNamespace(fit_schedule=lambda epochs: None)
    budget._decide(trainer, module, 1, 9.2, 0.0, "test")
    assert decided == [6] and trainer.fit_loop.max_epochs == 6


def test_the_best_model_is_chosen_by_its_ternary_accuracy_and_a_tie_keeps_the_earlier(tmp_path, monkeypatch):
    """The file shipped is the ternary model, so its accuracy chooses it, not the Bit model's (they differ under
    --amp, where the Bit model validates in bf16); a later epoch that only ties does not replace it."""
    from types import SimpleNamespace

    import bitnetcnn.train.run_recorder as run_recorder

    monkeypatch.setattr(run_recorder, "plot_metrics", lambda *args: None)
    recorder = run_recorder.RunRecorder(tmp_path, save_model=None, command="bitnetcnn train", metadata={})
    saved = []
    recorder._save_best = lambda module, values, epoch: saved.append(epoch)
    module = SimpleNamespace(parameters=lambda: [torch.zeros(1)],
                             train_epoch_means=lambda: {"train_loss": 1.0, "train_acc": 0.5})
    for epoch, (bit, ternary) in enumerate([(0.90, 0.50), (0.50, 0.60), (0.95, 0.60)]):
        trainer = SimpleNamespace(sanity_checking=False, max_epochs=3, current_epoch=epoch, is_global_zero=True,
                                  global_step=epoch + 1, optimizers=[SimpleNamespace(param_groups=[{"lr": 0.1}])],
                                  default_root_dir=tmp_path, callback_metrics={
                                      "val_loss": 1.0, "val_acc": bit, "val_acc5": 1.0, "ternary_acc": ternary,
                                      "ternary_acc5": 1.0})
        recorder.on_validation_epoch_end(trainer, module)
        recorder.on_train_epoch_end(trainer, module)
    assert saved == [0, 1] and recorder.best_ternary == 0.60 and recorder.best_float == 0.95
    assert [float(r["ternary_acc"]) for r in read_metrics(tmp_path)] == [0.5, 0.6, 0.6]


def test_neighbouring_seeds_share_no_training_order_and_no_process_seed():
    """Seed 1's epoch 0 is not seed 0's epoch 1 (torch's DistributedSampler draws from seed + epoch), and seed 1's
    first process does not draw as seed 0's second (seed + rank would)."""
    from bitnetcnn.data.datamodule import EpochShuffle
    from bitnetcnn.train.randomness import process_seed

    def order(seed: int, epoch: int) -> list:
        return list(EpochShuffle(range(64), 8, seed, 0, 1, epoch=lambda: epoch, skip=lambda e: 0))

    assert order(1, 0) != order(0, 1) and order(0, 0) == order(0, 0) != order(0, 1)
    seeds = {process_seed(seed, rank) for seed in range(4) for rank in range(4)}
    assert len(seeds) == 16 and process_seed(5, 0) == 5


def test_the_time_budget_times_an_epoch_from_its_steps_and_leaves_the_validation_out(monkeypatch):
    """In numbers, on a fake clock: epoch 0 of 10 steps, the first 30 s (compiling), the others 2 s, then a 5 s
    validation: an epoch is 10 x 2 s (the timed steps are batches 5 to 9, five of them), validated apart; epoch 1,
    20 s and its 5 s validation, refines it to 20 s again (not 25: the validation is counted once)."""
    from types import SimpleNamespace

    import bitnetcnn.train.time_budget as time_budget

    now = [0.0]
    monkeypatch.setattr(time_budget, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    budget = time_budget.FitToTimeBudget(600.0, lambda: now[0], val_every=1, decided=lambda epochs: None)
    decisions = []
    budget._decide = lambda trainer, module, done, epoch_s, validation_s, basis: decisions.append(
        (done, epoch_s, validation_s))
    trainer = SimpleNamespace(current_epoch=0, num_training_batches=10, sanity_checking=False)
    module = SimpleNamespace(device=torch.device("cpu"))
    for batch in range(10):
        budget.on_train_batch_start(trainer, module, None, batch)
        now[0] += 30.0 if batch == 0 else 2.0
        budget.on_train_batch_end(trainer, module, None, None, batch)
    now[0] += 5.0
    budget.on_validation_end(trainer, module)
    budget.on_train_epoch_end(trainer, module)
    budget._epochs = budget.REFINE_FROM  # what the first decision gave (its _decide is the test's)
    trainer.current_epoch = 1
    now[0] += 20.0 + 5.0
    budget.on_validation_end(trainer, module)
    budget.on_train_epoch_end(trainer, module)
    assert decisions == [(1, pytest.approx(20.0), pytest.approx(5.0)), (2, pytest.approx(20.0), pytest.approx(5.0))]


def test_a_time_budget_sizes_the_run_and_its_schedule_after_timing_epoch_0(tmp_path, monkeypatch, capsys):
    """--time-budget times epoch 0 (validated, though --val-every would skip it) and ends the run and its cosine
    after the epochs that fit (here 2 of at most 5): the last epoch ends at the schedule's end, and args.json holds
    the decision, so a resume continues the same run. The command's setup (here a data set that takes 2 s to open)
    counts against the budget: a window holds it too. A budget already spent ends the run after epoch 0, measured."""
    import time

    import bitnetcnn.train.time_budget as time_budget
    from bitnetcnn.data.datamodule import ImageDataModule

    asked = {}

    def two_epochs(budget_s, elapsed_s, epoch_s, validation_s, val_every, most, done):
        asked.update(budget_s=budget_s, elapsed_s=elapsed_s, epoch_s=epoch_s, validation_s=validation_s,
                     val_every=val_every, most=most, done=done)
        return 2

    monkeypatch.setattr(time_budget, "epochs_within", two_epochs)
    setup, opened = ImageDataModule.setup, []

    def slow_setup(self, *args, **kwargs):
        if not opened:
            opened.append(time.sleep(2.0))
        return setup(self, *args, **kwargs)

    monkeypatch.setattr(ImageDataModule, "setup", slow_setup)
    run = tmp_path / "fit"
    train(TrainSettings(out=str(run), epochs=5, val_every=3, time_budget=10, optimizer="sgd", lr=0.1,
                        warmup_epochs=1, **QUICK))
    assert asked["epoch_s"] > 0 and asked["validation_s"] > 0
    assert (asked["val_every"], asked["most"], asked["done"]) == (3, 5, 1)
    assert 0 < asked["budget_s"] < 600 and asked["elapsed_s"] >= 2.0
    printed = capsys.readouterr().out
    assert "\nepoch 0 (epochs 0-1)  lr" in printed  # decided before epoch 0's row is written
    assert re.search(r"min for epoch 0 after ([2-9]|\d\d+) s of setup; an epoch takes", printed)
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert rows[0]["val_acc"] != "" and rows[1]["val_acc"] != ""
    assert float(rows[1]["lr"]) < 0.1 * 0.05  # the cosine ended with the run, not 3 epochs later
    saved = json.loads((run / "args.json").read_text())
    assert (saved["epochs"], saved["time_budget"]) == (2, None)

    monkeypatch.undo()
    spent = tmp_path / "spent"
    results = train(TrainSettings(out=str(spent), epochs=5, val_every=3, time_budget=1e-4, **QUICK))
    rows = read_metrics(spent)
    assert [int(r["epoch"]) for r in rows] == [0] and rows[0]["ternary_acc"] != ""
    assert results["best_ternary_acc"] == pytest.approx(float(rows[0]["ternary_acc"]), abs=1e-6)
    # its one epoch ran on the 5-epoch cosine, which never decayed: said, not left for the user to find
    assert "so the run takes 1 epoch; epoch 0 ran on the learning-rate schedule of --epochs 5" in capsys.readouterr().out
    with pytest.raises(SettingsError, match="--time-budget 0 is out of range"):
        TrainSettings(time_budget=0)


def test_every_process_of_a_budgeted_run_takes_the_first_process_decision(tmp_path, monkeypatch):
    """Processes time their own epochs and could decide differently near a boundary; all must take the first
    process's decision (``strategy.broadcast``), or DDP ranks would stop at different epochs and hang. Here this
    process would take 3 epochs, and the first process's decision, as the broadcast hands it over, is 2."""
    import bitnetcnn.train.time_budget as time_budget
    from lightning.pytorch.strategies import SingleDeviceStrategy

    monkeypatch.setattr(time_budget, "epochs_within", lambda *args: 3)
    handed = []
    def first_process_decides_2(self, obj, src=0):  # other broadcasts (checkpoint paths, flags) pass through
        if type(obj) is not int:
            return obj
        handed.append(obj)
        return 2

    monkeypatch.setattr(SingleDeviceStrategy, "broadcast", first_process_decides_2)
    run = tmp_path / "ranked"
    train(TrainSettings(out=str(run), epochs=5, time_budget=10, **QUICK))
    assert handed and handed[0] == 3
    assert [int(r["epoch"]) for r in read_metrics(run)] == [0, 1]
    assert json.loads((run / "args.json").read_text())["epochs"] == 2


def test_a_time_budget_run_killed_in_epoch_0_decides_when_resumed(tmp_path, monkeypatch):
    """The decision is taken at the end of epoch 0 by whichever process gets there: a run killed inside epoch 0
    times the steps it has left after its resume (here the last one) and records the decision as before."""
    settings = dict(QUICK, save_every=1e-6, epochs=2, time_budget=30, val_every=2)
    _train_killed_at(TrainSettings(out=str(tmp_path / "cut"), **settings), epoch=0, batch=2)
    assert json.loads((tmp_path / "cut" / "args.json").read_text())["time_budget"] == 30
    train(TrainSettings(out=str(tmp_path / "cut"), progress=False), resume=True)
    saved = json.loads((tmp_path / "cut" / "args.json").read_text())
    assert (saved["epochs"], saved["time_budget"]) == (2, None)
    rows = read_metrics(tmp_path / "cut")
    assert [r["val_acc"] != "" for r in rows] == [True, True]  # epoch 0 validated for the timing (--val-every 2)


def test_an_undecided_budget_run_resumed_with_more_epochs_records_what_the_budget_gave(tmp_path, monkeypatch,
                                                                                         capsys):
    """Killed before its budget decided, resumed with --epochs 8: the budget then gave 1 epoch, but the recipe said
    "the time budget gave 2 epochs; resumed with --epochs 8" (the cap it was killed under, and the new cap)."""
    import bitnetcnn.train.time_budget as time_budget

    monkeypatch.setattr(time_budget, "epochs_within", lambda *args: 1)
    settings = dict(QUICK, save_every=1e-6, epochs=2, time_budget=30)
    _train_killed_at(TrainSettings(out=str(tmp_path / "cut"), **settings), epoch=0, batch=2)
    capsys.readouterr()
    train(TrainSettings(out=str(tmp_path / "cut"), epochs=8, progress=False), resume=True, given={"epochs"})
    assert "its time budget decides it within 8 epochs" in capsys.readouterr().out
    assert json.loads((tmp_path / "cut" / "args.json").read_text())["epochs"] == 1
    command = json.loads((tmp_path / "cut" / "results.json").read_text())["command"]
    assert command.endswith("  # the time budget gave 1 epoch") and "resumed with" not in command, command


def test_a_budgeted_run_records_the_epochs_it_took_however_the_flag_was_typed_and_across_a_resume(tmp_path,
                                                                                                monkeypatch):
    """The recipe of a budgeted run says how many epochs the budget gave, though the command says it by an
    abbreviation argparse accepts (--time-b) and the run resumed after the decision, when its settings hold epochs
    and no budget any more."""
    import bitnetcnn.train.time_budget as time_budget

    monkeypatch.setattr(time_budget, "epochs_within", lambda *args: 2)
    run = tmp_path / "abbreviated"
    typed = ["train", "--out", str(run), "--epochs", "5", "--time-b", "10", "--save-every", "1e-6",
             "--dataset", "mnist_demo", "--batch-size", "32", "--limit-train", "128", "--limit-eval", "128",
             "--no-progress"]

    def die(module, batch, batch_idx):
        if module.current_epoch == 1 and batch_idx == 1:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(BitClassifier, "on_train_batch_start", die, raising=False)
        with pytest.raises(Killed):
            main(typed)
    assert json.loads((run / "args.json").read_text())["time_budget"] is None  # decided: 2 epochs
    assert main(["train", "--resume", "--out", str(run)]) == 0
    recorded = f"bitnetcnn {shlex.join(typed)}  # the time budget gave 2 epochs"
    assert json.loads((run / "results.json").read_text())["command"] == recorded
    assert load_checkpoint(run / "best_ternary.bnc").pretrained_cfg.training[-1].command == recorded


def test_a_time_budget_is_refined_after_epoch_1_and_decided_by_a_run_resumed_undecided(tmp_path, monkeypatch):
    """A run of 10 epochs or more decides again at the end of epoch 1, from that epoch's whole cost (here: down to
    3 epochs, the cosine ending with them). A run resumed after epoch 0 without a decision (killed between epoch 0's
    last step and its decision) decides when it starts."""
    import bitnetcnn.train.time_budget as time_budget

    calls = []

    def twelve_then_three(budget_s, elapsed_s, epoch_s, validation_s, val_every, most, done):
        calls.append((done, epoch_s > 0))
        return 12 if done == 1 else 3

    with monkeypatch.context() as m:
        m.setattr(time_budget, "epochs_within", twelve_then_three)
        train(TrainSettings(out=str(tmp_path / "refined"), epochs=20, time_budget=30, optimizer="sgd", lr=0.1,
                            warmup_epochs=1, **QUICK))
    assert calls == [(1, True), (2, True)]
    rows = read_metrics(tmp_path / "refined")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and float(rows[-1]["lr"]) < 0.1 * 0.05
    assert json.loads((tmp_path / "refined" / "args.json").read_text())["epochs"] == 3

    undecided = tmp_path / "undecided"
    with monkeypatch.context() as m:
        m.setattr(time_budget.FitToTimeBudget, "_decide", lambda *args: None)
        _train_killed_at(TrainSettings(out=str(undecided), epochs=3, time_budget=30, save_every=1e-6, **QUICK),
                         epoch=1, batch=2)
    assert json.loads((undecided / "args.json").read_text())["time_budget"] == 30
    train(TrainSettings(out=str(undecided), progress=False), resume=True)
    saved = json.loads((undecided / "args.json").read_text())
    assert (saved["epochs"], saved["time_budget"]) == (3, None)
    assert [int(r["epoch"]) for r in read_metrics(undecided)] == [0, 1, 2]


def test_a_budget_raised_after_epoch_1_and_killed_before_its_checkpoint_records_what_the_budget_gave(tmp_path,
                                                                                                    monkeypatch):
    """The budget's second decision (here 2 epochs, then 3) reaches args.json before epoch 1's last.ckpt: a run
    killed between the two resumed with 3 epochs from args.json against 2 in its checkpoint, and recorded "the time
    budget gave 2 epochs; resumed with --epochs 3", a --resume --epochs nobody gave and a recipe other than the run."""
    import bitnetcnn.train.run as run_module
    import bitnetcnn.train.time_budget as time_budget

    monkeypatch.setattr(time_budget.FitToTimeBudget, "REFINE_FROM", 2)
    monkeypatch.setattr(time_budget, "epochs_within", lambda budget_s, elapsed_s, epoch_s, validation_s, val_every,
                        most, done: 2 if done == 1 else 3)
    written = run_module.write_settings

    def killed_after_the_second_decision(out, settings, **record):
        written(out, settings, **record)
        if settings.epochs == 3:
            raise Killed

    run = tmp_path / "raised"
    with monkeypatch.context() as m:
        m.setattr(run_module, "write_settings", killed_after_the_second_decision)
        with pytest.raises(Killed):
            train(TrainSettings(out=str(run), epochs=20, time_budget=30, **QUICK))
        assert json.loads((run / "args.json").read_text())["epochs"] == 3
        with pytest.raises(Killed):  # and the resume killed too, before its first checkpoint
            train(TrainSettings(out=str(run), progress=False), resume=True)
    train(TrainSettings(out=str(run), progress=False), resume=True)
    assert [int(r["epoch"]) for r in read_metrics(run)] == [0, 1, 2]
    command = json.loads((run / "results.json").read_text())["command"]
    assert command.endswith("  # the time budget gave 3 epochs"), command


def test_a_resume_extending_the_run_killed_before_its_first_checkpoint_is_still_recorded_as_extended(tmp_path,
                                                                                                     monkeypatch):
    """`--resume --epochs 3` writes args.json before its first last.ckpt: killed between the two, the resume that
    finished the run (the command its hint prints) recorded the run as `--epochs 2`, with no word of the third
    epoch: a recipe that gives another model."""
    import bitnetcnn.train.run as run_module

    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=2, **QUICK))
    written = run_module.write_settings

    def killed_after_writing(out, settings, **record):
        written(out, settings, **record)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(run_module, "write_settings", killed_after_writing)
        with pytest.raises(Killed):
            train(TrainSettings(out=str(run), epochs=3, progress=False), resume=True, given={"epochs"})
    assert json.loads((run / "args.json").read_text())["epochs"] == 3
    train(TrainSettings(out=str(run), progress=False), resume=True)
    assert [int(r["epoch"]) for r in read_metrics(run)] == [0, 1, 2]
    command = json.loads((run / "results.json").read_text())["command"]
    assert command.endswith("  # resumed with --epochs 3"), command


def test_compile_wraps_the_training_forward_only_and_never_a_copy_of_another_model():
    """The compiled wrapper stays out of the state dict (checkpoints keep the model's names), and a deep copy of the
    module (as weight averaging makes) compiles its own model instead of calling the original's."""
    import copy

    module = BitClassifier("bitnet_cnn", 10, 1, compile=True)
    forward = module._training_forward()
    assert forward is not module.model and forward._orig_mod is module.model
    assert module._training_forward() is forward  # built once
    assert not any("_orig_mod" in k for k in module.state_dict())
    twin = copy.deepcopy(module)
    assert twin._training_forward()._orig_mod is twin.model
    plain = BitClassifier("bitnet_cnn", 10, 1)
    assert plain._training_forward() is plain.model


def test_compile_compiles_the_teacher_too_in_the_runs_mode_and_marks_each_cuda_graph_step(tmp_path, monkeypatch):
    """With --compile the teacher's forward is compiled as the student's is (eager, it is a launch per layer each
    step), both in --compile-mode; in a CUDA-graph mode each training step first tells the graphs a new step began,
    so they may reuse the memory of the last step's outputs. The loss is the eager module's."""
    teacher = tmp_path / "teacher.bnc"
    bitnetcnn.save_checkpoint(bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1, quant="fp"), teacher, {})
    compiled, steps = [], []

    class Compiled(torch.nn.Module):  # what torch.compile returns, without compiling: the test is about the wiring
        def __init__(self, model, mode):
            super().__init__()
            self._orig_mod, self.mode = model, mode
            compiled.append(self)

        def forward(self, x):
            return self._orig_mod(x)

    monkeypatch.setattr(torch, "compile", lambda model, mode=None: Compiled(model, mode))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    batch = (torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    losses = {}
    for mode in ("eager", "default", "reduce-overhead"):
        flags = dict(compile=True, compile_mode=mode) if mode != "eager" else {}
        torch.manual_seed(0)
        _, module = build(TrainSettings(kd=True, teacher=[str(teacher)], model_kwargs={"drop_rate": 0.0}, **flags,
                                        **QUICK))
        compiled.clear(), steps.clear()
        losses[mode] = [module.training_step(batch, i).detach() for i in range(2)]
        if mode == "eager":
            assert compiled == []
            continue
        assert [(c._orig_mod, c.mode) for c in compiled] == [(module.model, mode), (module.teacher, mode)]
        assert len(steps) == (2 if mode == "reduce-overhead" else 0)
        assert all(torch.equal(a, b) for a, b in zip(losses[mode], losses["eager"]))


def test_init_reads_a_plain_state_dict_into_the_runs_architecture(tmp_path):
    """A file without a bitnetcnn header (the seed's zip, a torch.save'd state dict) names no architecture: --init
    reads it into --model with the run's arguments, and the lineage names the file."""
    source = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1)
    with torch.no_grad():
        source.stem.conv.weight.mul_(3.0)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    _, module = build(TrainSettings(init=str(plain), act_bits=8, **QUICK))
    assert torch.equal(module.model.stem.conv.weight, source.stem.conv.weight)
    train(TrainSettings(out=str(tmp_path / "run"), init=str(plain), epochs=1, **QUICK))
    header = load_checkpoint(tmp_path / "run" / "best_ternary.bnc").checkpoint_header
    assert header["metadata"]["init"]["file"] == "plain.pt"
    with pytest.raises(SettingsError, match="does not fit bitnet_cnn"):
        build(TrainSettings(init=str(plain), model_kwargs={"width": 16}, **QUICK))


def test_an_init_file_of_another_width_names_the_first_tensor_that_does_not_fit(tmp_path, monkeypatch):
    """A seed zip is read as it was built (the seed's MobileNetV2 at width 1.4) and then into the run's model: the
    error named the last of 268 tensors that did not fit (the classifier), not the stem where the widths part."""
    from bitnetcnn.train import fine_tune

    wide = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1, width=16)
    monkeypatch.setattr(fine_tune, "is_bitnetcnn_checkpoint", lambda path: False)
    monkeypatch.setattr(fine_tune, "load_checkpoint", lambda path, **kwargs: wide)
    model = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1)
    with pytest.raises(SettingsError, match=r"--init seed\.zip does not fit bitnet_cnn with this run's arguments: "
                                            r"size mismatch for stem\.conv\.weight: .* \(and \d+ more tensors\)$"):
        fine_tune.load_init_weights(model, "seed.zip")


def test_on_a_gpu_the_progress_bar_reads_the_loss_back_every_20_steps_only():
    from bitnetcnn.train.run import _progress_bar

    (cpu_bar,) = _progress_bar(TrainSettings(accelerator="cpu"))
    assert cpu_bar.refresh_rate == 1  # on a CPU a refresh each step costs nothing
    assert _progress_bar(TrainSettings(accelerator="gpu", progress=False)) == []
    (bar,) = _progress_bar(TrainSettings(accelerator="gpu"))
    assert bar.refresh_rate == 20


def test_a_run_killed_inside_an_epoch_resumes_from_its_mid_epoch_checkpoint(tmp_path, monkeypatch):
    """--save-every writes last.ckpt inside epochs (here after every batch); a run killed in the middle of epoch 1
    resumes from it with the batches it had not trained, in the same order: the same weights as the uninterrupted
    run, and epoch 0's metrics unchanged."""
    every_batch = dict(QUICK, save_every=1e-6)
    whole = train(TrainSettings(out=str(tmp_path / "whole"), epochs=2, **every_batch))

    _train_killed_at(TrainSettings(out=str(tmp_path / "cut"), epochs=2, **every_batch), epoch=1, batch=2)
    saved = torch.load(tmp_path / "cut" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and saved["global_step"] == 4 + 2  # 4 batches an epoch; killed before the 3rd of epoch 1
    resumed = train(TrainSettings(out=str(tmp_path / "cut"), progress=False), resume=True)
    assert resumed["param_checksums"] == whole["param_checksums"]
    cut, full = read_metrics(tmp_path / "cut"), read_metrics(tmp_path / "whole")
    assert [int(r["epoch"]) for r in cut] == [0, 1]
    same = ("train_loss", "train_acc", "val_loss", "val_acc", "val_acc5", "ternary_acc", "ternary_acc5")
    assert cut[0] == {**full[0], "elapsed_s": cut[0]["elapsed_s"]}
    assert {k: cut[1][k] for k in same} == {k: full[1][k] for k in same}


def test_a_run_killed_after_an_epochs_row_but_before_its_checkpoint_keeps_the_whole_epochs_row(tmp_path, monkeypatch):
    """metrics.csv's row is written before the epoch's last.ckpt: a kill between them resumed from the checkpoint
    before the epoch's last batch, and the row written whole was replaced by one averaging that batch alone."""
    import bitnetcnn.train.run_recorder as recorder

    every_batch = dict(QUICK, save_every=1e-6)
    train(TrainSettings(out=str(tmp_path / "whole"), epochs=2, **every_batch))
    plot = recorder.plot_metrics

    def die_after_the_row(csv_path, plot_path):
        if csv_path.parent.name == "cut":
            raise Killed
        plot(csv_path, plot_path)

    with monkeypatch.context() as m:
        m.setattr(recorder, "plot_metrics", die_after_the_row)
        with pytest.raises(Killed):
            train(TrainSettings(out=str(tmp_path / "cut"), epochs=2, **every_batch))
    assert [int(r["epoch"]) for r in read_metrics(tmp_path / "cut")] == [0]  # the row was on disk at the kill
    assert torch.load(tmp_path / "cut" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 3
    train(TrainSettings(out=str(tmp_path / "cut"), progress=False), resume=True)
    cut, full = read_metrics(tmp_path / "cut"), read_metrics(tmp_path / "whole")
    assert [{**r, "elapsed_s": ""} for r in cut] == [{**r, "elapsed_s": ""} for r in full]


def test_a_new_run_in_a_folder_an_unfinished_run_left_never_takes_its_files_for_its_own(tmp_path):
    """A run that stopped before its first last.ckpt (a full disk) leaves epoch 0's model and metrics.csv row; a new run
    in that folder, stopped inside epoch 0 and resumed, kept the old file as its best model and its accuracy as the
    run's best, and its epoch 0 row took the old row's training loss and accuracy."""
    from bitnetcnn.checkpoint.read import native_header

    every_batch = dict(QUICK, save_every=1e-6)
    whole = train(TrainSettings(out=str(tmp_path / "whole"), epochs=1, **every_batch))
    early = tmp_path / "early"
    early.mkdir()
    old = bitnetcnn.create_model("bitnet_cnn")
    bitnetcnn.save_checkpoint(bitnetcnn.convert_to_ternary(old), early / "best_ternary.bnc",
                              metadata={"dataset": "mnist_demo", "accuracy": 0.999})  # better than any real one
    (early / "metrics.csv").write_text("epoch,step,lr,elapsed_s,train_loss,train_acc,val_loss,val_acc,val_acc5,"
                                       "ternary_acc,ternary_acc5\n0,4,0.001,1.0,9.0,0.5,9.0,0.999,1.0,0.999,1.0\n")
    _train_killed_at(TrainSettings(out=str(early), epochs=1, **every_batch), epoch=0, batch=2)
    assert not (early / "best_ternary.bnc").exists() and not (early / "metrics.csv").exists()
    resumed = train(TrainSettings(out=str(early), progress=False), resume=True)
    assert resumed["best_ternary_acc"] == whole["best_ternary_acc"] < 0.999
    assert native_header(early / "best_ternary.bnc")["metrics"]["accuracy"] == whole["best_ternary_acc"]
    assert [{**r, "elapsed_s": ""} for r in read_metrics(early)] == \
        [{**r, "elapsed_s": ""} for r in read_metrics(tmp_path / "whole")]


def _signal_at_epoch_1_batch_2(signum):
    """A ``on_train_batch_start`` that sends this process ``signum`` at the start of epoch 1's third batch."""
    start = BitClassifier.on_train_batch_start if hasattr(BitClassifier, "on_train_batch_start") else None

    def send(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 2:
            os.kill(os.getpid(), signum)
        return start(self, batch, batch_idx) if start else None

    return send


def test_a_run_stopped_by_sigterm_saves_where_it_stands_and_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch,
                                                                                              capsys):
    """SIGTERM (``kill``, a scheduler) in the middle of epoch 1, with the mid-epoch interval far off (10 minutes): the
    batch it came in finishes, last.ckpt is written after it, and the run stops with the hint to resume and exit
    status 143, and the resumed run is the uninterrupted one: the same weights and metrics."""
    whole = train(TrainSettings(out=str(tmp_path / "whole"), epochs=2, **QUICK))
    with monkeypatch.context() as m:
        m.setattr(BitClassifier, "on_train_batch_start", _signal_at_epoch_1_batch_2(signal.SIGTERM), raising=False)
        code = main(["train", "--out", str(tmp_path / "cut"), "--epochs", "2", "--batch-size", "32", "--limit-train",
                     "128", "--limit-eval", "128", "--no-progress"])
    assert code == 128 + signal.SIGTERM  # not 0: a script or scheduler must not take the run for finished
    err = capsys.readouterr().err
    assert "the run was stopped by SIGTERM in epoch 1 after 3 of 4 batches; continue it with" in err, err
    saved = torch.load(tmp_path / "cut" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and saved["global_step"] == 4 + 3  # batch 2 of epoch 1 trained, then saved
    # a run started before --img-size was refused for named data sets may have recorded one: it still resumes
    args = json.loads((tmp_path / "cut" / "args.json").read_text())
    (tmp_path / "cut" / "args.json").write_text(json.dumps({**args, "img_size": 32}))
    resumed = train(TrainSettings(out=str(tmp_path / "cut"), progress=False), resume=True)
    assert resumed["param_checksums"] == whole["param_checksums"]
    # the stopped epoch's training loss and accuracy too: they averaged the batches after the resume only
    same = ("train_loss", "train_acc", "val_loss", "val_acc", "ternary_acc")
    assert [{k: r[k] for k in same} for r in read_metrics(tmp_path / "cut")] == \
        [{k: r[k] for k in same} for r in read_metrics(tmp_path / "whole")]


def test_ctrl_c_saves_where_the_run_stands_and_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """Ctrl-C stopped at once: Lightning exited 1 and the run resumed from the last --save-every checkpoint, losing
    the batches after it, where SIGTERM saved where it stood. It now stops as SIGTERM does, with exit status 130."""
    whole = train(TrainSettings(out=str(tmp_path / "whole"), epochs=2, **QUICK))
    # Python's own handler, as in a terminal (Lightning leaves SIGINT ignored after an earlier test's Ctrl-C, and a
    # process that ignores it, as a background job of a script does, keeps ignoring it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with monkeypatch.context() as m:
            m.setattr(BitClassifier, "on_train_batch_start", _signal_at_epoch_1_batch_2(signal.SIGINT), raising=False)
            code = main(["train", "--out", str(tmp_path / "cut"), "--epochs", "2", "--batch-size", "32",
                         "--limit-train", "128", "--limit-eval", "128", "--no-progress"])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own again
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "the run was stopped by Ctrl-C in epoch 1 after 3 of 4 batches; continue it with" in err, err
    saved = torch.load(tmp_path / "cut" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and saved["global_step"] == 4 + 3  # batch 2 of epoch 1 trained, then saved
    resumed = train(TrainSettings(out=str(tmp_path / "cut"), progress=False), resume=True)
    assert resumed["param_checksums"] == whole["param_checksums"]


def test_a_run_killed_while_validating_resumes_to_validate_that_epoch(tmp_path, monkeypatch):
    """A mid-epoch checkpoint never follows an epoch's last batch: one there would record the epoch as done, and a
    run killed in the validation after it would resume past that epoch, leaving it unmeasured (the last epoch's
    figures null, its model never a candidate for best_ternary.bnc)."""
    every_batch = dict(QUICK, save_every=1e-6)
    whole = train(TrainSettings(out=str(tmp_path / "whole"), epochs=2, **every_batch))
    validate = BitClassifier.validation_step

    def die_validating_epoch_1(self, *args, **kwargs):
        if self.current_epoch == 1:
            raise Killed
        return validate(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(BitClassifier, "validation_step", die_validating_epoch_1)
        with pytest.raises(Killed):
            train(TrainSettings(out=str(tmp_path / "cut"), epochs=2, **every_batch))
    saved = torch.load(tmp_path / "cut" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4 + 3  # the mid-epoch save before epoch 1's last batch, not after it
    resumed = train(TrainSettings(out=str(tmp_path / "cut"), progress=False), resume=True)
    assert [int(r["epoch"]) for r in read_metrics(tmp_path / "cut")] == [0, 1]
    assert resumed["ternary_acc"] == whole["ternary_acc"] and resumed["param_checksums"] == whole["param_checksums"]


def test_an_ema_run_killed_inside_an_epoch_resumes_to_the_same_average(tmp_path):
    """With --ema, last.ckpt holds the average and the raw weights: the resumed run ends with the uninterrupted
    run's weights, average and best model."""
    every_batch = dict(QUICK, save_every=1e-6, ema=0.9)
    whole = train(TrainSettings(out=str(tmp_path / "whole"), epochs=2, **every_batch))
    _train_killed_at(TrainSettings(out=str(tmp_path / "cut"), epochs=2, **every_batch), epoch=1, batch=2)
    resumed = train(TrainSettings(out=str(tmp_path / "cut"), progress=False), resume=True)
    assert resumed["param_checksums"] == whole["param_checksums"]
    a, b = (load_checkpoint(tmp_path / run / "best_ternary.bnc").state_dict() for run in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_fine_tune_resumes_without_its_init_file_and_records_it_as_it_was(tmp_path):
    """--init is read when the run starts: a resume takes the weights from last.ckpt and the recipe it started from
    from the run's own record, so it needs the file no more, and a file changed since does not rewrite its past."""
    train(TrainSettings(out=str(tmp_path / "a"), epochs=1, **QUICK), command="bitnetcnn train STAGE-1")
    init = tmp_path / "init.bnc"
    init.write_bytes((tmp_path / "a" / "best_ternary.bnc").read_bytes())
    settings = dict(QUICK, epochs=2, save_every=1e-6, init=str(init))
    whole = train(TrainSettings(out=str(tmp_path / "whole"), **settings))
    _train_killed_at(TrainSettings(out=str(tmp_path / "cut"), **settings), epoch=0, batch=2)  # before any model
    init.unlink()
    resumed = train(TrainSettings(out=str(tmp_path / "cut"), progress=False), resume=True)
    assert resumed["param_checksums"] == whole["param_checksums"]
    recipe = load_checkpoint(tmp_path / "cut" / "best_ternary.bnc").checkpoint_header["metadata"]["init"]
    assert recipe["file"] == "init.bnc" and recipe["command"] == "bitnetcnn train STAGE-1"


def test_a_distillation_resumes_with_its_teacher_moved(tmp_path, capsys):
    """A resume needs the teacher: moved (another machine), the run says so and takes --teacher with where it is
    now, and ends as the uninterrupted run; another model given in its place, or a teacher still in its place, cannot
    be swapped in (and a refused resume leaves args.json as it was)."""
    train(TrainSettings(out=str(tmp_path / "t"), epochs=1, quant="fp", **QUICK))
    teacher = tmp_path / "teacher.bnc"
    teacher.write_bytes((tmp_path / "t" / "best_ternary.bnc").read_bytes())
    settings = dict(QUICK, epochs=2, save_every=1e-6, kd=True, teacher=[str(teacher)])
    whole = train(TrainSettings(out=str(tmp_path / "whole"), **settings))
    _train_killed_at(TrainSettings(out=str(tmp_path / "cut"), **settings), epoch=1, batch=2)
    moved = teacher.rename(tmp_path / "moved.bnc")
    with pytest.raises(SettingsError, match=f"the teacher {teacher} is not there; give --kd --teacher"):
        train(TrainSettings(out=str(tmp_path / "cut"), progress=False), resume=True)
    other = load_checkpoint(moved)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    bitnetcnn.save_checkpoint(other, tmp_path / "other.bnc")
    with pytest.raises(SettingsError, match="other.bnc holds other weights than the teacher this run distils from"):
        train(TrainSettings(out=str(tmp_path / "cut"), progress=False, kd=True, teacher=[str(tmp_path / "other.bnc")]),
              resume=True, given={"teacher"})
    resumed = train(TrainSettings(out=str(tmp_path / "cut"), progress=False, kd=True, teacher=[str(moved)]),
                    resume=True, given={"teacher"})
    assert resumed["param_checksums"] == whole["param_checksums"]
    assert json.loads((tmp_path / "cut" / "args.json").read_text())["teacher"] == [str(moved)]
    with pytest.raises(SettingsError, match="--teacher .* cannot take effect"):
        train(TrainSettings(out=str(tmp_path / "cut"), kd=True, teacher=[str(tmp_path / "t" / "best_ternary.bnc")]),
              resume=True, given={"teacher"})


def test_a_run_stopped_by_ctrl_c_or_an_error_says_how_to_continue_it(tmp_path, capsys):
    """Ctrl-C (Lightning exits with status 1 then, and printed nothing) and an error such as a full disk name where
    the run stopped and the --resume command that continues it; a run stopped before its first checkpoint says to
    start again, and a diverged run (which would diverge again) gets no hint."""
    def stop_with(exception: BaseException, epoch: int, batch: int):
        def stop(module, batch_, batch_idx):
            if module.current_epoch == epoch and batch_idx == batch:
                raise exception
        return stop

    run = tmp_path / "run"
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores Ctrl-C once it has caught one
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(BitClassifier, "on_train_batch_start", stop_with(KeyboardInterrupt(), 1, 2), raising=False)
            with pytest.raises(SystemExit):
                train(TrainSettings(out=str(run), epochs=2, save_every=1e-6, **QUICK))
    finally:
        signal.signal(signal.SIGINT, sigint)
    told = capsys.readouterr().err
    assert (f"the run was interrupted in epoch 1 after 2 of 4 batches; continue it with `bitnetcnn train --resume "
            f"--out {run}` (from last.ckpt, written ") in told
    assert train(TrainSettings(out=str(run)), resume=True)["epochs"] == 2

    with pytest.MonkeyPatch.context() as m:
        m.setattr(BitClassifier, "on_train_batch_start", stop_with(OSError(28, "No space left on device"), 0, 1),
                  raising=False)
        with pytest.raises(OSError):
            train(TrainSettings(out=str(tmp_path / "full"), epochs=2, **QUICK))
    assert "the run stopped on an error in epoch 0 after 1 of 4 batches; it wrote no last.ckpt yet: start it again" \
        in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as m:
        def unreadable(self):
            raise OSError(5, "Input/output error")

        m.setattr(ImageDataModule, "train_dataloader", unreadable)
        with pytest.raises(OSError):
            train(TrainSettings(out=str(tmp_path / "unread"), epochs=2, **QUICK))
    assert "the run stopped on an error before its first batch; it wrote no last.ckpt" in capsys.readouterr().err
    from bitnetcnn.train.divergence import TrainingDiverged
    with pytest.MonkeyPatch.context() as m:
        m.setattr(BitClassifier, "on_train_batch_start", stop_with(TrainingDiverged("nan"), 0, 1), raising=False)
        with pytest.raises(TrainingDiverged):
            train(TrainSettings(out=str(tmp_path / "nan"), epochs=2, **QUICK))
    assert "the run" not in capsys.readouterr().err


def test_a_run_resumed_inside_an_epoch_keeps_its_validation_schedule_and_progress_bar(tmp_path, monkeypatch, capfd):
    """Lightning calls no on_train_epoch_start for the epoch a run resumes inside: --val-every and the progress bar
    still hold for it (epoch 0 of a --val-every 2 run does not validate; the bar names the epoch and its length)."""
    settings = dict(QUICK, save_every=1e-6, val_every=2)
    _train_killed_at(TrainSettings(out=str(tmp_path / "cut"), epochs=2, **settings), epoch=0, batch=2)
    capfd.readouterr()
    train(TrainSettings(out=str(tmp_path / "cut"), progress=True), resume=True, given={"progress"})  # --progress
    bar = "".join(capfd.readouterr())
    assert "Epoch 0: 100%" in bar and "4/4" in bar
    assert f"resumed from {tmp_path / 'cut' / 'last.ckpt'} inside epoch 0 at batch 2 of 4, after" in bar
    rows = read_metrics(tmp_path / "cut")
    assert [r["val_acc"] != "" for r in rows] == [False, True]


def test_convert_never_writes_over_its_input_or_another_file_unless_told(tmp_path, capsys):
    """`convert run/last.ckpt -o run/last.ckpt` turned the resumable checkpoint into a .bnc; the --pow2 conversion
    had the same default name as the plain one and replaced it."""
    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=1, **QUICK))
    before = (run / "last.ckpt").read_bytes()
    _one_line_error(capsys, ["convert", str(run / "last.ckpt"), "-o", str(run / "last.ckpt")],
                    "last.ckpt is the file being converted: writing over it would lose it")
    assert main(["convert", str(run / "last.ckpt"), "-o", str(run / "best_ternary.bnc"), "--force"]) == 0  # another
    _one_line_error(capsys, ["convert", str(run / "last.ckpt"), "-o", str(run / "last.ckpt"), "--force"],
                    "is the file being converted")  # never the input
    assert (run / "last.ckpt").read_bytes() == before
    assert main(["convert", str(run / "last.ckpt")]) == 0 and main(["convert", str(run / "last.ckpt"), "--pow2"]) == 0
    assert (run / "last.ternary.bnc").is_file() and (run / "last.ternary-pow2.bnc").is_file()
    _one_line_error(capsys, ["convert", str(run / "last.ckpt")], "last.ternary.bnc exists: give -o another file, or "
                                                                 "--force to replace it")
    # --force replaced a run's args.json with a checkpoint (--resume then failed), and /dev/full with a file
    args = (run / "args.json").read_bytes()
    _one_line_error(capsys, ["convert", str(run / "last.ckpt"), "-o", str(run / "args.json"), "--force"],
                    "args.json exists and is not a .bnc file: --force replaces an earlier converted checkpoint")
    assert (run / "args.json").read_bytes() == args
    if Path("/dev/null").exists():
        with pytest.raises(SystemExit):  # argparse's refusal, before any work
            main(["convert", str(run / "last.ckpt"), "-o", "/dev/null", "--force"])
        assert "/dev/null is not a regular file (a device or a pipe)" in capsys.readouterr().err
    # a misspelt file was "cannot read the file: No such file or directory"; then a list of the published weights,
    # which convert refuses (converted already)
    _one_line_error(capsys, ["convert", "bitnet_mnst"], "'bitnet_mnst' is not a file: give a run's last.ckpt or a Bit "
                    "checkpoint (bitnetcnn train writes both in its run folder)")
    # a published weight was re-saved beside itself, into the installed package
    from bitnetcnn.hub import PRETRAINED_DIR
    shipped = sorted(PRETRAINED_DIR.iterdir())
    _one_line_error(capsys, ["convert", "bitnet_mnist"], "bitnet_mnist.bnc is a published weight, converted already")
    assert sorted(PRETRAINED_DIR.iterdir()) == shipped
    _one_line_error(capsys, ["train", "--init", "bitnet_mnst", "--out", str(tmp_path / "typo")],
                    "'bitnet_mnst' is not a file or a published weight (did you mean bitnet_mnist?)")
    _one_line_error(capsys, ["train", "--kd", "--teacher", "bitnet_mnst", "--out", str(tmp_path / "typo")],
                    "'bitnet_mnst' is not a file or a published weight")
    # a missing file was the reader's "cannot read the file: No such file or directory", naming no flag
    _one_line_error(capsys, ["train", "--init", str(tmp_path / "gone.bnc"), "--out", str(tmp_path / "gone")],
                    "--init " + str(tmp_path / "gone.bnc") + ": no such file; give a checkpoint file")
    _one_line_error(capsys, ["train", "--kd", "--teacher", str(tmp_path / "gone.bnc"), "--out", str(tmp_path / "gone")],
                    "--teacher " + str(tmp_path / "gone.bnc") + ": no such file; give a checkpoint file")
    assert not (tmp_path / "gone").exists()


def test_convert_reads_a_file_by_its_content_and_only_its_own_runs_figures(tmp_path, capsys):
    """A run's last.ckpt copied as run1.pt was refused as "a Lightning checkpoint: convert it"; a checkpoint moved
    into another run's folder took that run's command and accuracy; an --ema run's figures were dropped although
    its last.ckpt holds the average they measured."""
    import shutil

    run = tmp_path / "ema"
    results = train(TrainSettings(out=str(run), epochs=1, ema=0.9, **QUICK))
    shutil.copy(run / "last.ckpt", tmp_path / "run1.pt")
    assert main(["convert", str(tmp_path / "run1.pt"), "-o", str(tmp_path / "a.bnc")]) == 0
    assert main(["convert", str(run / "last.ckpt"), "-o", str(tmp_path / "ema.bnc")]) == 0
    assert load_checkpoint(tmp_path / "ema.bnc").pretrained_cfg.top1 == results["ternary_acc"]
    shutil.copy(run / "best_ternary.bnc", tmp_path / "m.ckpt")  # a .bnc under another suffix
    assert main(["convert", str(tmp_path / "m.ckpt"), "-o", str(tmp_path / "b.bnc")]) == 0
    other = tmp_path / "other"
    train(TrainSettings(out=str(other), epochs=1, act_bits=8, **QUICK))
    shutil.copy(run / "last.ckpt", other / "moved.ckpt")
    with pytest.warns(UserWarning, match=r"args.json is not the run of this checkpoint \(act_bits differ"):
        assert main(["convert", str(other / "moved.ckpt"), "-o", str(tmp_path / "c.bnc")]) == 0
    header = load_checkpoint(tmp_path / "c.bnc").checkpoint_header
    assert "--act-bits" not in json.dumps(header) and header["metrics"].get("accuracy") is None


def test_a_bfloat16_converted_model_loads_as_it_was_saved(tmp_path):
    """Its ternary layers were rebuilt in float32 beside bf16 BatchNorms: the loaded model failed on every input."""
    for dtype in (torch.bfloat16, torch.float16):
        for pow2 in (False, True):
            torch.manual_seed(0)
            model = bitnetcnn.convert_to_ternary(bitnetcnn.create_model("bitnet_cnn", width=8, pow2=pow2).eval())
            model = model.to(dtype)
            loaded = load_checkpoint(bitnetcnn.save_checkpoint(model, tmp_path / f"{dtype}{pow2}.bnc"))
            x = torch.randn(2, 1, 28, 28, dtype=dtype)
            with torch.no_grad():
                assert torch.equal(loaded(x), model(x))
            # mixed precision, bf16 layers beside float32 BatchNorms: a power-of-two layer (whose file holds no
            # float tensor of its own) took the file's most common float dtype, float32, and the loaded model
            # failed on its first input
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.float()
            with torch.no_grad():
                expected = model(x)
            loaded = load_checkpoint(bitnetcnn.save_checkpoint(model, tmp_path / f"mixed{dtype}{pow2}.bnc"))
            with torch.no_grad():
                assert torch.equal(loaded(x), expected)


def test_summary_of_a_registry_model_at_another_size_has_the_stem_train_builds_for_it(capsys):
    assert main(["summary", "bit_resnet18", "--input-size", "3", "224", "224"]) == 0
    printed = capsys.readouterr().out
    built = bitnetcnn.summary(bitnetcnn.create_model("bit_resnet18", img_size=224), (3, 224, 224), print_fn=None)
    assert f"{built.params:,}" in printed and built.macs < 2e9  # the ImageNet stem: 1.8 G MACs, not 27 G


def test_a_time_budget_never_cuts_a_run_inside_its_warm_up(tmp_path, monkeypatch, capsys):
    """A budget that fitted no more epochs than --warmup-epochs wrote settings its own rule refuses: the run died
    after epoch 0 with nothing saved, and its resume died the same way."""
    import bitnetcnn.train.time_budget as time_budget

    monkeypatch.setattr(time_budget, "epochs_within", lambda *args: 1)
    run = tmp_path / "short"
    results = train(TrainSettings(out=str(run), epochs=5, time_budget=10, warmup_epochs=1.5, **QUICK))
    assert "so the run takes 2 epochs (at least 2, to end the warm-up)" in capsys.readouterr().out
    assert results["epochs"] == 2 and (run / "best_ternary.bnc").is_file()
    assert json.loads((run / "args.json").read_text())["epochs"] == 2


def test_the_metrics_plot_numbers_epochs_as_the_csv_and_the_log_do():
    """The plot counted epochs from 1 while metrics.csv and the log lines count from 0: epoch 3 on the plot was the
    row and the log line of epoch 2."""
    from bitnetcnn.train.plot import series

    rows = [{"epoch": "0", "val_acc": "0.5"}, {"epoch": "1", "val_acc": ""}, {"epoch": "2", "val_acc": "0.7"}]
    assert series(rows, "val_acc") == ([0, 2], [0.5, 0.7])


def test_the_seeds_gpus_0_means_the_cpu(monkeypatch):
    """`--gpus 0` (the CPU in the seed and in Lightning 1.x) was refused as "--devices 0", a flag not typed."""
    import bitnetcnn.train.run as run

    seen = {}
    monkeypatch.setattr(run, "train", lambda settings, **kw: seen.update(settings=settings, given=kw["given"]) or {})
    main(["train", "--gpus", "0", "--no-progress"])
    assert seen["settings"].accelerator == "cpu" and seen["settings"].devices == "auto"
    assert "accelerator" in seen["given"]


def test_init_on_other_classes_loads_every_layer_but_a_fresh_classifier(tmp_path, capsys):
    """Transfer learning: --init of a file trained on 5 classes into a 10-class run was refused ("has num_classes=5
    but this run needs 10") with no way forward. Every other layer now starts from the file, the classifier afresh."""
    source = bitnetcnn.create_model("bitnet_cnn", num_classes=5, in_chans=1)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    bitnetcnn.save_checkpoint(source, tmp_path / "five.bnc", {})
    torch.manual_seed(0)
    fresh = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1)
    torch.manual_seed(0)
    _, module = build(TrainSettings(init=str(tmp_path / "five.bnc"), **QUICK))
    from bitnetcnn.models.classifier import classifier_name

    theirs, ours, new = source.state_dict(), module.model.state_dict(), fresh.state_dict()
    head = classifier_name(fresh)
    assert ours[f"{head}.weight"].shape[0] == 10
    assert all(torch.equal(ours[k], new[k]) for k in ours if k.startswith(f"{head}."))  # as a fresh model's
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith(f"{head}."))
    assert f"predicts 5 classes and this run 10: its classifier ({head}) starts afresh" in capsys.readouterr().err
    with pytest.raises(SettingsError, match=r"has in_chans=1 but this run needs in_chans=3"):
        build(TrainSettings(init=str(tmp_path / "five.bnc"), dataset="cifar10", data_dir=str(tmp_path / "none")))
    # another architecture's file said what differs but not the flag that fixes it
    with pytest.raises(SettingsError, match=r"has name='bitnet_cnn' but this run needs name='bit_resnet18' .*add "
                                            r"--model bitnet_cnn to fine-tune it"):
        build(TrainSettings(init=str(tmp_path / "five.bnc"), model="bit_resnet18", dataset="cifar10",
                            data_dir=str(tmp_path / "none")))


def test_a_fine_tune_of_a_named_data_set_takes_the_init_files_normalization_and_says_so(tmp_path, capsys):
    """A file trained with mean 0.5 fine-tuned on mnist_demo was fed MNIST's statistics without a word (an image
    folder's fine-tune took the file's, with a note); a file trained on the data set's own gives no note."""
    from bitnetcnn.train.run import _init_normalization

    model = bitnetcnn.create_model("bitnet_cnn", in_chans=1, width=8)
    for name, mean, std in (("half.bnc", [0.5], [0.5]), ("own.bnc", [0.1307], [0.3081])):
        bitnetcnn.save_checkpoint(model, tmp_path / name, {"mean": mean, "std": std, "input_size": [1, 28, 28]})
    s = _init_normalization(TrainSettings(init=str(tmp_path / "half.bnc"), **QUICK))
    assert (s.mean, s.std) == ([0.5], [0.5])
    assert ("was trained on inputs normalized with mean [0.5] and std [0.5]: this run's images are normalized so "
            "too, not with mnist_demo's [0.1307] and [0.3081]") in capsys.readouterr().err
    s = _init_normalization(TrainSettings(init=str(tmp_path / "own.bnc"), **QUICK))
    assert (s.mean, s.std) == (None, None) and capsys.readouterr().err == ""
    s = _init_normalization(TrainSettings(init=str(tmp_path / "half.bnc"), mean=[0.2], std=[0.3], **QUICK))
    assert (s.mean, s.std) == ([0.2], [0.3])


def test_a_greyscale_image_folder_fine_tunes_a_one_channel_model_and_evaluates(tmp_path):
    """Image folders were always read as RGB, so a one-channel weight (the MNIST models) could not be fine-tuned on
    greyscale pictures: --img-channels 1 reads them as one channel, and eval and deployment read them alike."""
    from PIL import Image

    for split in ("train", "val"):
        for k, c in enumerate(("dark", "light")):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(8):
                Image.new("L", (28, 28), 30 + 180 * k + i).save(tmp_path / "d" / split / c / f"{i}.png")
    source = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1, width=8)
    bitnetcnn.save_checkpoint(source, tmp_path / "mnist.bnc", {"dataset": "mnist", "mean": [0.1307], "std": [0.3081],
                                                              "input_size": [1, 28, 28]})
    settings = dict(dataset="imagefolder", data_dir=str(tmp_path / "d"), img_size=28, batch_size=4, epochs=1,
                    progress=False, model_kwargs={"width": 8}, init=str(tmp_path / "mnist.bnc"))
    with pytest.raises(SettingsError, match="has in_chans=1 but this run needs in_chans=3"):
        build(TrainSettings(**settings))
    train(TrainSettings(out=str(tmp_path / "run"), img_channels=1, **settings))
    model = load_checkpoint(tmp_path / "run" / "best_ternary.bnc")
    assert model.pretrained_cfg.input_size == (1, 28, 28)
    # the init file's normalization, not the folder's generic one (with which the published MNIST model scored 26%
    # on digits it scores 100% on), in args.json (a resume keeps it) and in the model
    assert (model.pretrained_cfg.mean, model.pretrained_cfg.std) == ((0.1307,), (0.3081,))
    saved = json.loads((tmp_path / "run" / "args.json").read_text())
    assert (saved["mean"], saved["std"]) == ([0.1307], [0.3081])
    train(TrainSettings(out=str(tmp_path / "own"), img_channels=1, mean=[0.5], std=[0.25], **settings))
    assert load_checkpoint(tmp_path / "own" / "best_ternary.bnc").pretrained_cfg.mean == (0.5,)
    assert TrainSettings(mean=[0.5], std=[0.25]).as_command().endswith("--mean 0.5 --std 0.25")
    with pytest.raises(SettingsError, match="--std 0.0 is out of range"):
        TrainSettings(std=[0.0])
    run = str(tmp_path / "run" / "best_ternary.bnc")
    assert evaluate_checkpoint(run, data_dir=str(tmp_path / "d"))["images"] == 16
    # its test images alone: the labels come from the model's class names (eval wanted a train/ beside val/)
    import shutil

    shutil.copytree(tmp_path / "d" / "val", tmp_path / "alone" / "val")
    alone = evaluate_checkpoint(run, data_dir=str(tmp_path / "alone"))
    assert alone["images"] == 16 and alone["top1"] == evaluate_checkpoint(run, data_dir=str(tmp_path / "d"))["top1"]
    (tmp_path / "alone" / "val" / "grey").mkdir()
    Image.new("L", (28, 28), 128).save(tmp_path / "alone" / "val" / "grey" / "0.png")
    with pytest.raises(ValueError, match=r"has class folders that the model's classes lack \(grey\)"):
        evaluate_checkpoint(run, data_dir=str(tmp_path / "alone"))
    with pytest.raises(SettingsError, match="--img-channels 2: an image folder is read as RGB .3. or greyscale .1."):
        TrainSettings(img_channels=2)
    with pytest.raises(SettingsError, match="--img-channels sets how an imagefolder's pictures are read"):
        train(TrainSettings(img_channels=1, out=str(tmp_path / "x"), **QUICK), given={"img_channels"})


def test_init_and_teacher_take_a_published_weights_hub_name(tmp_path, capsys):
    """`train --init bitnet_mnist` failed with "cannot read the file" where eval and export take the name."""
    assert main(["train", "--kd", "--teacher", "bitnet_mnist", "--init", "bitnet_mnist", "--epochs", "1",
                 "--limit-train", "64", "--limit-eval", "32", "--batch-size", "32", "--no-progress", "--out",
                 str(tmp_path / "kd")]) == 0
    assert main(["train", "--init", "bitnet_mnist", "--epochs", "1", "--limit-train", "64", "--limit-eval", "32",
                 "--batch-size", "32", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    header = load_checkpoint(tmp_path / "run" / "best_ternary.bnc").checkpoint_header["metadata"]
    assert header["init"]["file"] == "bitnet_mnist.bnc" and "--init bitnet_mnist" in header["command"]
    # the hub name's file today, by hash: a weight published later under the name is another file
    published = next(w for w in bitnetcnn.list_pretrained() if w.hub_entry == "bitnet_mnist")
    assert header["init"]["sha256"] == published.sha256
    kd = load_checkpoint(tmp_path / "kd" / "best_ternary.bnc").checkpoint_header["metadata"]
    assert [(t["file"], t["sha256"]) for t in kd["teachers"]] == [("bitnet_mnist.bnc", published.sha256)]
    # the teacher's recipe is the --init's: its steps once (as the run with --init alone has them), the last noting
    # the teacher it made (kept in --init's copy, which dropped the note before), then this run's
    assert len(header["training"]) == 3 and kd["training"][:-2] == header["training"][:-2]
    assert kd["training"][-2]["command"] == command_with_note(
        header["training"][-2]["command"], f"the teacher bitnet_mnist.bnc (sha256 {published.sha256[:12]}...)")
    assert kd["training"][-1]["command"] == kd["command"]


def test_convert_of_a_fine_tunes_last_ckpt_keeps_its_recipe(tmp_path):
    """`convert RUN/last.ckpt` of a fine-tune wrote no `init` and one training step, where the run's own
    best_ternary.bnc holds both stages: the recipe is read from the checkpoint's own record."""
    from bitnetcnn.train.convert_file import convert_file

    train(TrainSettings(out=str(tmp_path / "a"), epochs=1, **QUICK), command="bitnetcnn train STAGE-1")
    train(TrainSettings(out=str(tmp_path / "b"), epochs=1, init=str(tmp_path / "a" / "best_ternary.bnc"), **QUICK),
          command="bitnetcnn train STAGE-2")
    best = load_checkpoint(tmp_path / "b" / "best_ternary.bnc").pretrained_cfg
    converted = load_checkpoint(convert_file(str(tmp_path / "b" / "last.ckpt"))).pretrained_cfg
    assert [s.command for s in converted.training] == [s.command for s in best.training] == [
        "bitnetcnn train STAGE-1", "bitnetcnn train STAGE-2"]
    assert converted.training[1].hardware == best.training[1].hardware and converted.training[1].wall_time_s > 0
    assert load_checkpoint(tmp_path / "b" / "last.ternary.bnc").checkpoint_header["metadata"]["init"]["command"] == (
        "bitnetcnn train STAGE-1")


def _disk_fills_after(monkeypatch, nbytes: int = 10):
    """``Path.write_bytes`` writes ``nbytes`` and then fails as a full disk does."""
    import errno

    def write_bytes(self, data):
        with open(self, "wb") as f:
            f.write(bytes(data[:nbytes]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_last_ckpt_is_written_beside_itself_and_a_failed_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """Lightning's writer moved a temporary file from $TMPDIR into place: across file systems that is a copy into
    last.ckpt itself, which a kill or a full disk cut short, the previous checkpoint with it (the run could not
    resume). The run's writer replaces the file whole, and a full disk names the file it was writing."""
    from bitnetcnn.train.atomic_checkpoint import AtomicCheckpointIO

    used = []
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint",
                        lambda self, c, path, **kw: used.append(Path(path).name) or torch.save(c, path))
    train(TrainSettings(out=str(tmp_path / "run"), epochs=1, **QUICK))
    assert used == ["last.ckpt"]  # the run's checkpoints go through it
    monkeypatch.undo()
    last = tmp_path / "run" / "last.ckpt"
    before = last.read_bytes()
    _disk_fills_after(monkeypatch)
    with pytest.raises(OSError, match=f"No space left on device .writing {re.escape(str(last))}"):
        AtomicCheckpointIO().save_checkpoint({"state": 1}, last)
    assert last.read_bytes() == before and sorted(p.name for p in last.parent.iterdir() if "part" in p.name) == []


def test_init_and_teacher_files_given_with_a_tilde_are_found_and_an_unknown_users_tilde_is_no_traceback(
        tmp_path, monkeypatch):
    """`--init=~/m.bnc` (the shell expands no tilde after "=") was "no such file" though the file was there, as
    --out and every command's model argument expand it; `export -o '~nosuchuser/x.onnx'` ended in a traceback
    (Path.expanduser's RuntimeError): like the shell, such a path stays as written."""
    from bitnetcnn.cli import output_file
    from bitnetcnn.hub import weight_argument

    monkeypatch.setenv("HOME", str(tmp_path))
    assert weight_argument("~/m.bnc") == str(tmp_path / "m.bnc")  # how the command reads --init and --teacher
    assert output_file("~nosuchuser/x.onnx") == "~nosuchuser/x.onnx"


def test_an_out_folder_given_with_a_tilde_holds_the_whole_run(tmp_path, monkeypatch):
    """`--out "~/runs/x"` (quoted, or from Python) put last.ckpt in $HOME/runs/x (Lightning expands it) and every other
    file in a folder named "~" under the working folder: neither path could resume the run."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    train(TrainSettings(out="~/runs/x", epochs=1, **QUICK))
    run = tmp_path / "home" / "runs" / "x"
    assert {"last.ckpt", "args.json", "results.json", "best_ternary.bnc"} <= {p.name for p in run.iterdir()}
    assert not (tmp_path / "~").exists()
    # a resume reads that run's settings through the same path (the parser's defaults were taken instead)
    from bitnetcnn.train.run_folder import saved_run_values

    assert saved_run_values("~/runs/x")["limit_train"] == QUICK["limit_train"]


def test_a_resume_refuses_other_data_than_the_run_trained_and_tested_on(tmp_path):
    """A run resumed on half its images (another --data-dir) went past its schedule's end: the learning rate is
    counted in steps of the first data, and a run killed at 60% of its steps trained the rest at a rate of 0."""
    from bitnetcnn.train.run_folder import IMAGES_KEY, check_resumed_images, read_resume_record, resumed_settings

    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=1, **QUICK))
    record = read_resume_record(run / "last.ckpt")
    assert record[IMAGES_KEY] == [QUICK["limit_train"], QUICK["limit_eval"]]
    check_resumed_images(record, QUICK["limit_train"], QUICK["limit_eval"])
    with pytest.raises(SettingsError, match="the run trained on 128 images and tested on 128, and this resume reads "
                                            "64 and 128: give the --data-dir"):
        check_resumed_images(record, 64, QUICK["limit_eval"])
    check_resumed_images({IMAGES_KEY: None}, 64, 1)  # a run saved before the counts were kept
    # --download only fetches what is missing: a run moved to another machine may take it
    assert resumed_settings(TrainSettings(out=str(run), download=True), {"out", "download"}).download is True


def test_a_run_folder_in_use_is_refused_to_a_second_run_and_to_a_resume(tmp_path):
    """Two runs started into one --out at once both ran, and the folder mixed their files (args.json and metrics of
    one, last.ckpt and best model of the other); a --resume of a run still training in the background did the same."""
    from bitnetcnn.train.run_folder import hold_run_folder

    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=1, **QUICK))
    with hold_run_folder(run, resume=True):  # as the run in the background holds it
        with pytest.raises(SettingsError, match=rf"{re.escape(str(run))} is in use by another `bitnetcnn train` "
                                                rf"\(process {os.getpid()}\), still training there"):
            train(TrainSettings(out=str(run), epochs=2, progress=False), resume=True, given={"epochs"})
    results = train(TrainSettings(out=str(run), epochs=2, progress=False), resume=True, given={"epochs"})
    assert results["epochs"] == 2
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with hold_run_folder(fresh, resume=False), pytest.raises(SettingsError, match="is in use by another"):
        train(TrainSettings(out=str(fresh), epochs=1, **QUICK))
    with hold_run_folder(fresh, resume=False), pytest.raises(SettingsError, match="started at the same moment took "
                                                             ".*: start this one again .it takes the next free one."):
        with hold_run_folder(fresh, resume=False, picked=True):  # two runs without --out pick the same folder
            pass


def test_a_run_stopped_between_two_epochs_says_which_one_ended(tmp_path, capsys, monkeypatch):
    """Stopped after an epoch's end, the message named the next epoch, which never began, "after 4 of 4 batches"."""

    def stop_at_epoch_1(self):
        if self.current_epoch == 1:
            raise Killed

    monkeypatch.setattr(BitClassifier, "on_train_epoch_start", stop_at_epoch_1, raising=False)
    with pytest.raises(Killed):
        train(TrainSettings(out=str(tmp_path / "run"), epochs=2, **QUICK))
    assert "the run stopped on an error after epoch 0 ended; continue it with" in capsys.readouterr().err


def test_convert_of_a_run_whose_results_json_is_damaged_converts_and_names_the_file(tmp_path):
    """A results.json cut short (a full disk) made `convert RUN/last.ckpt` fail with "Expecting value: line 1 column
    1 (char 0)", naming no file; the model itself was whole."""
    from bitnetcnn.train.convert_file import convert_file

    train(TrainSettings(out=str(tmp_path / "run"), epochs=1, **QUICK))
    (tmp_path / "run" / "results.json").write_text("")
    with pytest.warns(UserWarning, match=rf"{re.escape(str(tmp_path / 'run' / 'results.json'))} is damaged \(not "
                                         "readable JSON"):
        out = convert_file(str(tmp_path / "run" / "last.ckpt"))
    assert load_checkpoint(out).pretrained_cfg.dataset == "mnist_demo"
    # a damaged args.json too: the data set and inputs come from the run's best model, not the registry's defaults
    (tmp_path / "run" / "args.json").write_text("[]")
    (tmp_path / "run" / "results.json").write_text("{}")  # (read: its warning is the one above)
    with pytest.warns(UserWarning, match="args.json is damaged"):
        cfg = load_checkpoint(convert_file(str(tmp_path / "run" / "last.ckpt"), force=True)).pretrained_cfg
    assert cfg.dataset == "mnist_demo" and cfg.class_names == tuple("0123456789")


def test_init_on_as_many_classes_of_other_names_starts_a_fresh_classifier(tmp_path, capsys):
    """Only the count was compared: ten folders named ant ... yak kept the digits' classifier without a word."""
    from PIL import Image

    names = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "ibex", "jay"]
    for split in ("train", "val"):
        for c in names:
            (tmp_path / "d" / split / c).mkdir(parents=True)
            Image.new("L", (8, 8), 20).save(tmp_path / "d" / split / c / "a.png")
    source = bitnetcnn.create_model("bitnet_cnn", num_classes=10, in_chans=1, width=8, img_size=8)
    bitnetcnn.save_checkpoint(source, tmp_path / "digits.bnc", {"dataset": "mnist"})
    _, module = build(TrainSettings(dataset="imagefolder", data_dir=str(tmp_path / "d"), img_size=8, img_channels=1,
                                    batch_size=2, model_kwargs={"width": 8}, init=str(tmp_path / "digits.bnc")))
    assert "names its classes otherwise than this run ('0' where this run has 'ant', ...): its classifier (head.3) " \
           "starts afresh" in capsys.readouterr().err
    assert not torch.equal(module.model.head[3].weight, source.head[3].weight)
    assert torch.equal(module.model.stem.conv.weight, source.stem.conv.weight)
    with pytest.raises(SettingsError, match=r"needs in_chans=3 \(model bitnet_cnn on the chosen data set\)$"):
        build(TrainSettings(dataset="cifar10", data_dir=str(tmp_path / "none"), init=str(tmp_path / "digits.bnc")))


def test_the_lightning_module_takes_the_run_settings_defaults():
    """BitClassifier built from Python had its own defaults (warmup 1.0 epochs, kd_alpha 0: a teacher set on it
    taught nothing); they are TrainSettings' now, as the command line's are."""
    import inspect

    from bitnetcnn.train.module import BitClassifier

    defaults = TrainSettings()
    names = {"model_name": "model", "weight_decay": "wd"}
    for name, p in inspect.signature(BitClassifier).parameters.items():
        if names.get(name, name) in defaults.__dataclass_fields__ and name not in ("channels_last", "num_classes", "model_kwargs"):
            assert p.default == getattr(defaults, names.get(name, name)), name


def test_a_ddp_run_records_what_its_saved_model_scores_and_each_image_once_in_its_loss(tmp_path):
    """Two processes: each scored its share of the test images with the ternary model converted before DDP had
    copied rank 0's batch-norm statistics to it (the recorded accuracy was not the saved model's: 57.75% recorded,
    57.20% by `bitnetcnn eval`), and val_loss averaged the processes' means over an uneven split (1001 images)."""
    from bitnetcnn.train.convert_file import run_model
    from bitnetcnn.train.evaluate import accuracy
    from bitnetcnn.train.run import build

    run = tmp_path / "run"
    settings = dict(model="bitnet_cnn", model_kwargs={"width": 8}, dataset="mnist_demo", limit_train=4000,
                    limit_eval=1001, batch_size=16, epochs=1, seed=0)
    done = subprocess.run(_cli("--out", str(run), *shlex.split(TrainSettings(**settings).as_command())[2:],
                               "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    data, _ = build(TrainSettings(**settings))
    data.setup()
    images, labels = data.test_split.images, data.test_split.labels
    mean, std = data.spec.mean, data.spec.std
    recorded = json.loads((run / "results.json").read_text())
    assert recorded["world_size"] == 2 and recorded["test_images"] == 1001
    saved = bitnetcnn.load_checkpoint(run / "best_ternary.bnc")
    assert accuracy(saved, images, labels, mean, std)["top1"] == pytest.approx(recorded["best_ternary_acc"], abs=1e-6)
    bit = run_model(run / "last.ckpt").eval()
    with torch.no_grad():
        x = (images.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        loss = torch.nn.functional.cross_entropy(bit(x), labels).item()
    assert float(read_metrics(run)[-1]["val_loss"]) == pytest.approx(loss, rel=1e-4)


def test_the_run_callbacks_pickle_for_ddp_spawn(tmp_path):
    """``--strategy ddp_spawn`` pickles the Trainer with its callbacks: the time budget's record of the epochs it
    gave and the EMA's averaging function were closures, and such a run stopped before its first step."""
    from bitnetcnn.train.run import _callbacks, _weight_averaging
    from bitnetcnn.train.run_recorder import RunRecorder

    s = TrainSettings(model="bitnet_cnn", dataset="mnist_demo", time_budget=1.0, ema=0.9)
    recorder = RunRecorder(tmp_path, None, "bitnetcnn train", {}, budgeted=True)
    callbacks = pickle.loads(pickle.dumps([*_callbacks(s, tmp_path, recorder, 0.0), *_weight_averaging(s)]))
    averaged = callbacks[-1]._kwargs["avg_fn"](torch.zeros(2), torch.ones(2), torch.tensor(0))  # the ramp: 1/10 of the first
    assert torch.allclose(averaged, torch.full((2,), 0.9))


def test_a_ddp_run_stopped_by_sigterm_sets_its_flag_without_a_collective_in_the_signal_handler(monkeypatch):
    """Lightning's SIGTERM handler broadcasts from inside the signal handler; with two processes that broadcast met
    no partner (the others were inside another collective) and 4 of 16 stopped runs hung or aborted. The handler
    train() installs only sets the flag, which the training loop broadcasts from rank 0 at the next step."""
    import lightning as L

    from bitnetcnn.train.run import _flag_sigterm_only

    def collective(*args, **kwargs):
        raise RuntimeError("a collective inside the signal handler")

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    monkeypatch.setattr(type(trainer), "world_size", property(lambda self: 2))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "broadcast", collective)
    connector = trainer._signal_connector
    connector.register_signal_handlers()
    try:
        with pytest.raises(RuntimeError, match="collective"):  # Lightning's own
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    finally:
        connector.teardown()
    _flag_sigterm_only(trainer)
    connector.register_signal_handlers()  # as fit() does: it reads the handler then
    try:
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    finally:
        connector.teardown()
    assert connector.received_sigterm


def test_a_run_folder_moved_elsewhere_resumes_without_lightnings_bookkeeping_warning(tmp_path):
    """ModelCheckpoint warned "The dirpath has changed ... won't be reloaded" on every resume of a moved or copied
    run folder: bookkeeping of top-k checkpoints a run that keeps one last.ckpt does not use."""
    import shutil
    import warnings

    train(TrainSettings(out=str(tmp_path / "here"), epochs=1, **QUICK))
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = train(TrainSettings(out=str(tmp_path / "there"), epochs=2, progress=False), resume=True,
                        given={"epochs"})
    assert results["epochs"] == 2
    assert not [w for w in caught if "dirpath has changed" in str(w.message)], [str(w.message) for w in caught]


def test_a_best_model_written_before_a_kill_stays_the_best_the_resumed_run_records(tmp_path):
    """best_ternary.bnc is written at an epoch's end before last.ckpt: a kill between the two resumed with the
    older best score, so a redone epoch that scored less (a GPU's is not bit-identical) passed as the run's best
    beside a file holding a better model, or replaced it with a worse one. Simulated: the file scores above the
    recorded best, as a lost epoch's would."""
    run = tmp_path / "run"
    first = train(TrainSettings(out=str(run), epochs=1, **QUICK))
    best = run / "best_ternary.bnc"
    model = load_checkpoint(best)
    bitnetcnn.save_checkpoint(model, best, {**model.checkpoint_header["metadata"], "accuracy": 0.999})
    written = best.read_bytes()
    assert first["best_ternary_acc"] < 0.999
    resumed = train(TrainSettings(out=str(run), epochs=2, progress=False), resume=True, given={"epochs"})
    assert resumed["best_ternary_acc"] == 0.999 and best.read_bytes() == written


def test_a_misspelt_flag_is_named_by_its_command_with_the_flag_meant(capsys):
    """`bitnetcnn train --datset mnist` said "bitnetcnn: error: unrecognized arguments", naming neither the command
    nor the flag meant, where a misspelt model or data set name gets "did you mean"."""
    with pytest.raises(SystemExit) as done:
        main(["train", "--datset", "mnist"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("bitnetcnn train: error: unrecognized arguments: --datset mnist (did you mean --dataset?)")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, a folder no file can be made in")
def test_an_output_in_a_folder_no_file_can_be_made_in_is_refused_before_the_work(capsys):
    """os.access says yes to root for such folders (/proc, /sys), so `bench --json /sys/bench.json` timed everything
    and then lost its JSON: the output folder is now tried with a file."""
    from bitnetcnn.cli import output_file

    with pytest.raises(argparse.ArgumentTypeError, match="/proc/bench.json cannot be written: /proc is not writable"):
        output_file("/proc/bench.json")


def test_a_schedule_refitted_by_the_time_budget_runs_its_next_step_on_the_new_cosine():
    """fit_schedule after epoch 0 changed the schedule's length, but the scheduler had already set the next step's
    rate from the old one: the first step of epoch 1 ran at 0.997 of the peak where the 2-epoch cosine says 0.64."""
    import math

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from bitnetcnn.train.schedule import warmup_cosine

    rates = {}

    class Refit(L.Callback):  # what FitToTimeBudget does when it decides after epoch 0
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 0:
                trainer.fit_loop.max_epochs = 2
                module.fit_schedule(2)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            rates[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    torch.manual_seed(0)
    module = BitClassifier("bitnet_cnn", 10, 1, dict(width=2, drop_rate=0.0), lr=0.01, warmup_epochs=0.3,
                           eval_ternary=False)
    data = DataLoader(TensorDataset(torch.randn(80, 1, 28, 28), torch.randint(0, 10, (80,))), batch_size=8)
    L.Trainer(accelerator="cpu", devices=1, max_epochs=20, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[Refit()]).fit(module, data)
    assert sorted(rates) == list(range(20))
    for step in range(10, 20):  # epoch 1: on the 2-epoch cosine of 20 steps, its warm-up of 3 steps kept
        assert rates[step] == pytest.approx(0.01 * warmup_cosine(step, 20, 3), rel=1e-9), step
    assert rates[10] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 7 / 17)))


def test_sgd_without_momentum_trains(tmp_path):
    """--momentum 0 passed the settings' check, then torch refused Nesterov without momentum after the data and
    the model were built."""
    results = train(TrainSettings(out=str(tmp_path / "run"), epochs=1, optimizer="sgd", momentum=0.0, **QUICK))
    assert results["best_ternary_acc"] is not None


def test_the_ema_average_is_made_on_the_device_the_run_trains_on():
    """Lightning makes the average in setup, before the strategy moves the module to the GPU: a GPU run's average
    lived in host memory and each step copied every weight there. Here the strategy's device is the meta device."""
    from types import SimpleNamespace

    from bitnetcnn.train.callbacks import AverageOnTheTrainingDevice

    module = BitClassifier("bitnet_cnn", 10, 1, dict(width=2), eval_ternary=False)
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))
    callback = AverageOnTheTrainingDevice()
    callback.setup(trainer, module, "fit")
    assert {p.device.type for p in callback._average_model.parameters()} == {"meta"}
    assert {p.device.type for p in module.parameters()} == {"cpu"}


def test_sigterm_to_a_ddp_spawn_run_stops_its_processes_and_the_command_waits_for_them(tmp_path):
    """Under --strategy ddp_spawn the command only waits for the processes that train: SIGTERM killed it alone, and
    they trained on as orphans after it had exited (status 143, no hint) and released the run folder, where a
    --resume was accepted and wrote beside them."""
    run = tmp_path / "run"
    command = subprocess.Popen(_cli("--out", str(run), "--model", "bitnet_cnn", "--model-kwargs", '{"width": 4}',
                                    "--dataset", "mnist_demo", "--limit-train", "512", "--limit-eval", "64",
                                    "--batch-size", "32", "--epochs", "50", "--no-progress", "--accelerator", "cpu",
                                    "--devices", "2", "--strategy", "ddp_spawn"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while not (run / "metrics.csv").exists() or len(read_metrics(run)) < 1:
            assert command.poll() is None and time.time() < deadline, command.communicate()[1][-3000:]
            time.sleep(0.2)
        children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent_of(p) == command.pid
                    and b"spawn_main" in (p / "cmdline").read_bytes()]  # the processes that train
        command.send_signal(signal.SIGTERM)
        _, err = command.communicate(timeout=300)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "the run was stopped by SIGTERM where its processes stood; continue it with" in err
    assert children and not [pid for pid in children if Path(f"/proc/{pid}").exists() and _parent_of(Path(
        f"/proc/{pid}")) is not None], "processes of the run outlived its command"
    rows = len(read_metrics(run))
    time.sleep(3)
    assert len(read_metrics(run)) == rows < 50


def _parent_of(proc: Path):
    """The parent pid of /proc/PID, None where it is gone (or a zombie, which runs nothing)."""
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[1])


def test_the_schedule_the_averaging_the_weight_decay_groups_and_top_5_in_numbers():
    """Warm-up reaches the peak at its last step and the cosine starts there (step/warmup wasted step 0 at rate 0);
    the EMA keeps decay of the average; weight decay spares every 1-d parameter (BatchNorm, biases); top-5 counts
    a label that is fifth."""
    from bitnetcnn.train.evaluate import accuracy
    from bitnetcnn.train.schedule import _ramped_ema, param_groups, warmup_cosine

    assert [warmup_cosine(s, 110, 10) for s in (0, 9, 10, 110)] == [0.1, 1.0, 1.0, 0.0]
    assert warmup_cosine(60, 110, 10) == pytest.approx(0.5)
    assert _ramped_ema(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(10_000), 0.9).item() == pytest.approx(0.1)
    assert _ramped_ema(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0), 0.9).item() == pytest.approx(0.9)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(2, 3))
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0
    assert sorted(p.dim() for p in decay["params"]) == [2, 4] and sorted(p.dim() for p in no_decay["params"]) == [1] * 4

    class Fixed(torch.nn.Module):  # logits ranking the classes 0 > 1 > ... > 6
        def forward(self, x):
            return torch.arange(7, 0, -1, dtype=torch.float32).expand(len(x), 7)

    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    result = accuracy(Fixed(), images, torch.tensor([0, 4, 5]), (0.5,), (0.5,))
    assert (result["top1"], result["top5"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_module_trains_with_the_weight_decay_and_label_smoothing_it_was_given(optimizer):
    """Settings that change no figure a short test run checks: each reaches the optimizer or the loss (a module
    that passed 0 as the decay, or left the smoothing out, trained on with the run recording them as given)."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    torch.manual_seed(0)
    module = BitClassifier("bitnet_cnn", num_classes=10, in_chans=1, model_kwargs={"width": 4, "drop_rate": 0.0},
                           optimizer=optimizer, weight_decay=0.0123, label_smoothing=0.3)
    module.trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=1, current_epoch=0)
    module.log = lambda *args, **kwargs: None
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.0123]
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    loss = module.training_step((x, y), 0)
    expected = F.cross_entropy(module.model(x).float(), y, label_smoothing=0.3)  # train mode: the same batch stats
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(expected, F.cross_entropy(module.model(x).float(), y))


def test_feature_hints_compare_standardized_maps_and_an_ensemble_averages_its_teachers():
    """A student map that is the teacher's up to a per-sample gain and offset matches it (loss 0: standardization
    takes both out); an ensemble of three gives the mean of their logits."""
    from bitnetcnn.train.distill import TeacherEnsemble, feature_hint_loss

    torch.manual_seed(0)
    teacher = torch.randn(4, 8, 3, 3)
    gain = torch.tensor([3.0, 0.5, 2.0, 7.0]).view(4, 1, 1, 1)
    offset = torch.tensor([5.0, -1.0, 0.0, 2.0]).view(4, 1, 1, 1)
    student = gain * teacher + offset  # each sample its own (standardized across the batch, they did not match)
    assert feature_hint_loss([student], [teacher]).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_hint_loss([torch.randn(4, 8, 3, 3)], [teacher]).item() > 0.5

    class Constant(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x):
            return torch.full((len(x), 2), self.value)

    ensemble = TeacherEnsemble([Constant(1.0), Constant(2.0), Constant(6.0)])
    assert ensemble(torch.zeros(2, 1)).tolist() == [[3.0, 3.0], [3.0, 3.0]]


def test_a_count_of_zero_is_refused_as_the_argument_is_read(capsys):
    """`predict --top 0` and `eval --batch-size 0` ask for nothing: refused as the argument is read, in one line
    naming the flag (as -5 is), not after the model was loaded."""
    from bitnetcnn.cli import build_parser

    for argv, flag in ((["predict", "bitnet_mnist", "x.png", "--top", "0"], "--top"),
                       (["eval", "bitnet_mnist", "--batch-size", "0"], "--batch-size")):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"{flag}: 0 is not a positive integer" in err and err.count("\n") == 1, err


def test_an_infinite_bench_budget_is_refused_before_any_work(capsys):
    """`bench --budget inf` would time each batch size forever: refused as the argument is read."""
    from bitnetcnn.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench", "bitnet_cnn", "--budget", "inf"])
    assert exit_.value.code == 2
    assert "--budget: inf is not a finite number of seconds >= 0" in capsys.readouterr().err
    assert build_parser().parse_args(["bench", "bitnet_cnn", "--budget", "0"]).budget == 0.0


def test_an_epochs_training_means_are_over_its_own_batches_alone():
    """A new epoch starts the sums again: carried on, epoch 1's train_loss and train_acc were running means since
    epoch 0 (1.95 / 28.5% where its own batches give 1.69 / 39.1% on the demo data)."""
    from types import SimpleNamespace

    from bitnetcnn.train.epoch_means import EpochMeans

    strategy = SimpleNamespace(root_device=torch.device("cpu"), reduce=lambda t, reduce_op: t)
    means = EpochMeans()
    means.add(0, torch.tensor(3.0), torch.tensor(0.25), 32)
    means.add(0, torch.tensor(1.0), torch.tensor(0.75), 32)
    assert means.means(strategy) == {"train_loss": 2.0, "train_acc": 0.5}
    means.add(1, torch.tensor(0.5), torch.tensor(1.0), 16)
    means.add(1, torch.tensor(1.5), torch.tensor(0.5), 48)
    assert means.means(strategy) == {"train_loss": 1.25, "train_acc": 0.625}


def test_a_new_run_refuses_a_folder_holding_either_of_a_runs_files_and_a_resume_refuses_another_batch_size(
        tmp_path):
    """A run killed after its first last.ckpt (no results.json yet) is a run to resume: a new run there would
    replace its checkpoint and best model. A resume with another --batch-size would change the steps of every epoch
    and the schedule with them: refused as the other settings that cannot take effect are."""
    from bitnetcnn.train.run_folder import check_new_run_folder, resumed_settings

    for name in ("last.ckpt", "results.json"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_bytes(b"x")
        if name == "results.json":
            (folder / "last.ckpt").write_bytes(b"x")  # a finished run (without it: "its last.ckpt is gone")
        with pytest.raises(SettingsError, match="already holds a run: continue it with --resume"):
            check_new_run_folder(folder)
    run = tmp_path / "run"
    train(TrainSettings(out=str(run), epochs=1, **QUICK))
    with pytest.raises(SettingsError, match=r"--batch-size 64 \(saved: 32\) cannot take effect"):
        resumed_settings(TrainSettings(out=str(run), epochs=1, **{**QUICK, "batch_size": 64}), {"batch_size"})
