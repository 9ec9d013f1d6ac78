"""The training benchmark (issue 17: "a benchmark prints the training epoch time and images per second on the current
device") runs end to end, with and without a teacher; its figures are measured, so only their presence is checked."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEACHER = ROOT / "src/bitnetcnn/pretrained/bitnet_mnist.bnc"


def run_train_throughput(*extra: str) -> str:
    command = [sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--model", "bitnet_cnn",
               "--dataset", "mnist_demo", "--synthetic", "--steps", "2", "--warmup", "1", "--val-batches", "1",
               "--batch-size", "16", "--accelerator", "cpu", *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("teacher", [False, True], ids=["alone", "distilled"])
def test_train_throughput_prints_the_epoch_time_and_images_per_second(teacher):
    out = run_train_throughput(*(["--teacher", str(MNIST_TEACHER)] if teacher else []))
    assert out.startswith("device: ")
    assert re.search(r"^training: +\d+\.\d img/s +\(\d+\.\d ms a step", out, re.M), out
    assert re.search(r"^validation: +\d+\.\d img/s", out, re.M), out
    assert re.search(r"^epoch \(10000 training \+ 2000 test images\): \d+\.\d s projected", out, re.M), out
    assert ("distilled from " + str(MNIST_TEACHER) in out) == teacher, out


def test_train_throughput_divides_by_the_steps_that_ran():
    """A split shorter than --warmup + --steps ended the epoch early, but the time was divided by --steps: a step
    4x faster than it was, and the epoch as much shorter."""
    command = [sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--model", "bitnet_cnn",
               "--model-kwargs", '{"width": 8}', "--dataset", "mnist_demo", "--steps", "20", "--warmup", "0",
               "--val-batches", "1", "--batch-size", "2500", "--accelerator", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"ms a step, 4 steps, all the split holds of the 20 asked for", done.stdout), done.stdout


def test_train_throughput_profiles_the_timed_steps():
    """--profile N: where a step's time goes (the GPU's busy share on a GPU; here the CPU's) and the N operations
    with the most host time, the convolutions among them."""
    out = run_train_throughput("--profile", "5")
    assert re.search(r"^no GPU kernels profiled \(a CPU run\): \d+\.\d ms a step", out, re.M), out
    assert "the 5 operations with the most host time over 2 steps:" in out, out
    table = out.split("over 2 steps:", 1)[1]
    assert "Self CPU" in table and "convolution" in table, out
    rows = [line for line in table.splitlines() if line.strip().startswith(("aten::", "Optimizer", "cuda"))]
    assert 1 <= len(rows) <= 5, out


def test_bn_reestimation_sets_each_batchnorm_to_the_statistics_of_the_given_images_and_nothing_else():
    """benchmarks/bn_reestimation.py's figure rests on this: the running mean and (unbiased) variance become those of
    all images' activations, whatever the earlier statistics and however the batches split them (a short last
    batch counts by its size); other modules stay in eval mode."""
    import importlib.util

    import torch
    from torch import nn

    spec = importlib.util.spec_from_file_location("bn_reestimation", ROOT / "benchmarks/bn_reestimation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    torch.manual_seed(0)
    dropout = nn.Dropout(0.5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), dropout, nn.BatchNorm2d(4)).eval()
    model[2].running_mean.fill_(5.0)
    model[2].running_var.fill_(9.0)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    bench.reestimate_bn(model, images, mean, std, batch=3)

    with torch.no_grad():
        features = model[0](bench.normalize(images, mean, std)).transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(model[2].running_mean, features.mean(1), rtol=1e-4, atol=1e-5)
    assert not model[2].training and not dropout.training
    # batches of 3 average per-batch unbiased variances; their mean is within a few percent of the whole set's
    torch.testing.assert_close(model[2].running_var, features.var(1), rtol=0.05, atol=1e-4)


def _benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, timer", [("train_throughput", "Timer"), ("data_loading", "StepTimer")])
def test_the_training_timers_count_every_timed_batchs_loading(name, timer):
    """Lightning fetches and augments a batch before its on_train_batch_start: a clock started there left the first
    timed batch's loading out (one of two with --batches 2, the README's data-loading figure)."""
    import time
    from types import SimpleNamespace

    import torch

    clock = getattr(_benchmark(name), timer)(1)
    module = SimpleNamespace(device=torch.device("cpu"))
    batch = (torch.zeros(4, 1), torch.zeros(4))
    clock.on_train_epoch_start(None, module)
    for i in range(3):
        time.sleep(0.05)  # the batch's fetch and augmentation
        if hasattr(clock, "on_train_batch_start"):
            clock.on_train_batch_start(None, module, batch, i)
        time.sleep(0.01)  # its step
        clock.on_train_batch_end(None, module, None, batch, i)
    start, end = (clock.train_start, clock.train_end) if name == "train_throughput" else (clock.start, clock.end)
    assert end - start >= 2 * 0.06, end - start  # both timed batches, each fetched and stepped


@pytest.mark.parametrize("script, args, message", [
    ("benchmarks/train_throughput.py", ["--model", "nosuch"], "argument --model: invalid choice: 'nosuch'"),
    ("benchmarks/train_throughput.py", ["--batch-size", "0"], "argument --batch-size: 0 is not a positive integer"),
    ("benchmarks/data_loading.py", ["--dataset", "nosuch"], "argument --dataset: invalid choice: 'nosuch'"),
    ("benchmarks/deploy_fidelity.py", ["--acts", "bogus"], "argument --acts: invalid choice: 'bogus'"),
    ("benchmarks/fuzz_checkpoint.py", ["--seconds", "-1"], "-1 is not a finite number of seconds"),
    ("benchmarks/bn_reestimation.py", ["--model", "nosuch"], "argument --model: invalid choice: 'nosuch'"),
    ("scripts/npz_chunks.py", ["split", "nothing-here.npz", "out"], "nothing-here.npz is not a file"),
    ("scripts/npz_chunks.py", ["join", ".", "x.npz"], "holds no manifest.json"),
])
def test_the_scripts_refuse_bad_arguments_in_one_line(script, args, message, tmp_path):
    """These gave a traceback (exit status 1) for a wrong name or file, and --seconds -1 'fuzzed' nothing and passed."""
    done = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
