"""The deploy backends: onnxruntime and OpenVINO on the same int8 graph, what ``compile(backend="auto")`` picks and
says, the fallback without OpenVINO, and OpenVINO's agreement with the converted model (issue 20).

No timing is asserted: the choice logic is tested with given timings; speed is ``bitnetcnn bench``'s business.
"""

import sys

import pytest
import torch

import bitnetcnn
from bitnetcnn import convert_to_ternary, create_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from bitnetcnn.deploy import backends, compile  # noqa: E402
from bitnetcnn.machine import _parse_cpuinfo, cpu_info, format_cpu  # noqa: E402


def _has_openvino() -> bool:
    backends.openvino_status.cache_clear()
    return backends.openvino_status()[0]


needs_openvino = pytest.mark.skipif(not _has_openvino(),  # not installed, or installed and unable to start here
                                    reason=f"OpenVINO is not usable here: {backends.openvino_status()[1]}")


@pytest.fixture
def no_openvino(monkeypatch):
    """``import openvino`` fails as it does where the package is absent (a None entry in sys.modules)."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    backends.openvino_status.cache_clear()
    yield
    backends.openvino_status.cache_clear()


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return convert_to_ternary(create_model("bitnet_cnn", width=8).eval()), torch.randn(32, 1, 28, 28)


# --- the fallback ------------------------------------------------------------------------------------------------------


def test_auto_falls_back_to_onnxruntime_without_openvino(no_openvino, small_model):
    model, calib = small_model
    assert backends.openvino_status()[0] is False
    assert "not installed" in backends.openvino_status()[1]
    deployed = compile(model, calib)  # backend="auto"
    assert deployed.backend == "onnxruntime" and deployed.session is not None
    assert "openvino is not installed" in deployed.backend_reason
    assert deployed.info["backend"] == "onnxruntime" and "onnxruntime" in repr(deployed)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert (deployed(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.8


def test_explicit_openvino_without_the_package_says_how_to_install(no_openvino, small_model):
    model, calib = small_model
    with pytest.raises(ImportError, match="pip install openvino"):
        compile(model, calib, backend="openvino")


def test_unknown_backend_is_refused(small_model):
    model, calib = small_model
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        compile(model, calib, backend="tvm")
    for threads in (-1, 0, 2.5):  # -1 went to the runtime as is
        with pytest.raises(ValueError, match=rf"threads={threads}: give a number of threads, 1 or more"):
            compile(model, calib, threads=threads)


def test_explicit_onnxruntime_is_reported(small_model):
    model, calib = small_model
    deployed = compile(model, calib, backend="onnxruntime")
    assert (deployed.backend, deployed.backend_reason) == ("onnxruntime", "asked for")


@needs_openvino
def test_auto_without_avx2_keeps_onnxruntime(monkeypatch, small_model):
    monkeypatch.setattr(backends, "cpu_info", lambda: {"model": "old", "cores": 2, "flags": {"avx2": False}})
    deployed = compile(*small_model)
    assert deployed.backend == "onnxruntime" and "AVX2" in deployed.backend_reason


# --- what auto picks ----------------------------------------------------------------------------------------------------


@needs_openvino
@pytest.mark.parametrize("faster", ["openvino", "onnxruntime"])
def test_auto_keeps_the_backend_measured_faster_and_says_so(monkeypatch, small_model, faster):
    def fake_measure(runners, input_size, **kw):
        assert set(runners) == {"onnxruntime", "openvino"} and tuple(input_size) == (1, 28, 28)
        slow, fast = {1: 2.0, 32: 40.0}, {1: 1.0, 32: 30.0}
        return {k: (fast if k == faster else slow) for k in runners}

    # the module, not the function that bitnetcnn.deploy exports under the same name
    monkeypatch.setattr(sys.modules["bitnetcnn.deploy.compile"], "measure_backends", fake_measure)
    deployed = compile(*small_model)
    assert deployed.backend == faster and deployed.info["backend"] == faster
    assert deployed.backend_reason.startswith("auto: measured")
    assert "batch 32: openvino" in deployed.backend_reason
    assert deployed.info["backend_timings_ms"][faster] == {"1": 1.0, "32": 30.0}
    assert (deployed.session is None) == (faster == "openvino")


def test_pick_faster_uses_the_geometric_mean():
    # openvino 2x slower at batch 1, 3x faster at batch 32: geometric mean 1.22x for openvino
    name, reason = backends.pick_faster({"onnxruntime": {1: 1.0, 32: 30.0}, "openvino": {1: 2.0, 32: 10.0}})
    assert name == "openvino" and "1.22x" in reason
    name, _ = backends.pick_faster({"onnxruntime": {1: 1.0, 32: 30.0}, "openvino": {1: 4.0, 32: 10.0}})
    assert name == "onnxruntime"


# --- OpenVINO's numerics --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_mnist():
    """The shipped trained bitnet_cnn, converted, and the bundled mnist_demo images (no data set needed)."""
    from bitnetcnn import load_checkpoint
    from bitnetcnn.deploy.calibration import dataset_images
    from bitnetcnn.normalization import normalize
    from bitnetcnn.hub import PRETRAINED_DIR

    model = load_checkpoint(PRETRAINED_DIR / "bitnet_mnist.bnc")
    if any(type(m).__name__.startswith("Bit") and hasattr(m, "weight") for m in model.modules()):
        model = convert_to_ternary(model)
    model.eval()
    cal, _, spec = dataset_images("mnist_demo", 256, True)
    test, labels, _ = dataset_images("mnist_demo", 2000, False)
    return model, normalize(cal, spec.mean, spec.std), normalize(test, spec.mean, spec.std), labels


@needs_openvino
def test_openvino_agrees_with_the_converted_model_on_mnist_demo(shipped_mnist):
    model, cal, x, labels = shipped_mnist
    ov = compile(model, cal, backend="openvino")
    ort = compile(model, cal, backend="onnxruntime")
    assert ov.backend == "openvino" and ov.session is None and ov.info["backend_version"]
    with torch.no_grad():
        ref = torch.cat([model(x[i:i + 500]) for i in range(0, len(x), 500)])
    out_ov = torch.cat([ov(x[i:i + 500]) for i in range(0, len(x), 500)])
    out_ort = ort(x)
    assert out_ov.shape == ref.shape and out_ov.dtype == torch.float32
    assert (out_ov.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
    assert (out_ov.argmax(1) == out_ort.argmax(1)).float().mean() >= 0.99
    assert (out_ov.argmax(1) == labels).float().mean() >= 0.97  # a trained model, not only agreeing noise
    assert (out_ov - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out_ov - out_ort).abs().max() < 0.05 * out_ort.abs().max()


@needs_openvino
def test_openvino_batches_give_the_one_by_one_outputs(shipped_mnist):
    """One compiled model serves every batch size (dynamic batch axis); batching must not change order or values."""
    model, cal, x, _ = shipped_mnist
    ov = compile(model, cal, backend="openvino", threads=2)
    batch = x[:67]
    split = ov(batch)
    one_by_one = torch.cat([ov(batch[i:i + 1]) for i in range(len(batch))])
    torch.testing.assert_close(split, one_by_one, rtol=1e-4, atol=1e-4 * one_by_one.abs().max().item())
    assert ov.run_numpy(batch[:3].numpy()).shape == (3, 10)
    # an empty batch is answered with no logits, as onnxruntime answers it: OpenVINO handed back the last call's
    for deployed in (ov, compile(model, cal, backend="onnxruntime")):
        deployed(batch[:13])
        assert deployed(batch[:0]).shape == (0, 10) and deployed.run_numpy(batch[:0].numpy()).shape == (0, 10)


# --- CPU features and the bench report ----------------------------------------------------------------------------------


def test_cpu_flags_parse():
    text = ("processor : 0\nmodel name : Some Xeon\nflags : fpu sse avx2 avx512f avx512_vnni amx_tile amx_int8\n"
            "processor : 1\nmodel name : Some Xeon\nflags : fpu\n")
    parsed = _parse_cpuinfo(text)
    assert parsed["model"] == "Some Xeon" and "avx512_vnni" in parsed["flags"] and "avx_vnni" not in parsed["flags"]
    info = cpu_info()
    assert info["model"] and info["cores"] >= 1
    line = format_cpu({"model": "X", "cores": 4, "flags": {"avx2": True, "avx512_vnni": False, "amx": True}})
    assert line == "X, 4 cores: avx2 yes, avx512_vnni no, amx yes"


def test_bench_reports_cpu_flags_backends_and_auto_choice(tmp_path, capsys):
    import json

    from bitnetcnn.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "bitnet_cnn", "--batch-sizes", "2", "--budget", "0", "--calibrate", "16",
                 "--variants", "deploy", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    text = capsys.readouterr().out
    variants = set(report["results"][0]["variants"])
    expected = {"fp32_eager", "deploy_onnxruntime"} | ({"deploy_openvino"} if _has_openvino() else set())
    assert variants == expected
    assert report["auto_backend"] in ("onnxruntime", "openvino")
    assert f"compile(backend='auto') picks {report['auto_backend']}" in text
    flags = report["machine"]["cpu_flags"]
    if flags is not None:
        assert set(flags) == {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx"}
        assert f"avx2{'+' if flags['avx2'] else '-'}" in text
    assert f"CPU: {report['machine']['cpu']}" in text
    # a figure says what gave it and when: the package's version, the budget, the time (they were missing)
    assert report["machine"]["bitnetcnn"] == bitnetcnn.__version__ and report["budget_s"] == 0
    assert report["when"].endswith("+00:00")
    if "deploy_openvino" in variants:
        assert "openvino vs onnxruntime" in text


def test_bench_without_openvino_skips_it_and_says_why(no_openvino, tmp_path, capsys):
    from bitnetcnn.deploy.bench import bench, format_report

    report = bench("bitnet_cnn", (1,), budget_s=0, calibrate=8, variants=("deploy",))
    assert set(report["results"][0]["variants"]) == {"fp32_eager", "deploy_onnxruntime"}
    assert report["auto_backend"] == "onnxruntime" and "not installed" in report["auto_backend_reason"]
    assert any("deploy_openvino skipped" in n for n in report["notes"])
    assert "deploy_openvino skipped" in format_report(report)


def test_bench_keeps_only_quiet_rounds_when_there_are_enough():
    from bitnetcnn.deploy.bench import _foreign_cores, _quiet_rounds

    assert _quiet_rounds([0.0, 1.0, 0.1, None, 0.0]) == [0, 2, 4]
    assert _quiet_rounds([0.0, 1.0, 0.9, None, 0.0]) is None  # under 3 quiet rounds: all rounds count
    hz = __import__("os").sysconf("SC_CLK_TCK")
    # 2 s: all CPUs busy for 3 s of ticks, this process 1 s of them -> others used 1 core
    assert _foreign_cores((0, 0), (3 * hz, hz), 2.0) == pytest.approx(1.0)
    assert _foreign_cores(None, (1, 1), 1.0) is None


def test_a_bench_row_is_the_median_of_the_quiet_rounds_and_its_speed_up_is_over_fp32(monkeypatch):
    """In numbers: 4 quiet rounds and one busy one (fp32 10x slower in it, the other variant's time a glitch), a
    variant 2.2 times as fast as fp32_eager in the quiet rounds; every figure, min_ms too, from those alone."""
    import bitnetcnn.deploy.bench as bench_module

    times = {"fp32_eager": [0.10, 0.12, 1.00, 0.12, 0.10], "deploy_onnxruntime": [0.05, 0.06, 0.01, 0.05, 0.05]}
    monkeypatch.setattr(bench_module, "_time", lambda *args: (times, [0.0, 0.1, 2.0, 0.0, 0.0]))
    row = bench_module._timed_batch(dict.fromkeys(times), 4, (1, 28, 28), 0.0)
    fast = row["variants"]["deploy_onnxruntime"]
    assert (row["rounds"], row["quiet_rounds"], fast["rounds"]) == (5, 4, 4)
    assert fast["latency_ms"] == pytest.approx(50.0) and fast["speedup_vs_fp32"] == pytest.approx(2.2)
    assert fast["throughput_ips"] == pytest.approx(4 / 0.05) and fast["min_ms"] == pytest.approx(50.0)
    assert row["variants"]["fp32_eager"]["latency_ms"] == pytest.approx(110.0)


def test_bench_times_with_the_threads_asked_for_and_gives_the_process_its_own_back(monkeypatch):
    """Torch's threads during the timing are --threads, and the caller's count comes back after."""
    import bitnetcnn.deploy.bench as bench_module
    from bitnetcnn.machine import usable_cores

    seen = []

    def timing(fns, x, budget_s, min_rounds, max_rounds):
        seen.append(torch.get_num_threads())
        return {k: [0.01] * 3 for k in fns}, [0.0] * 3

    monkeypatch.setattr(bench_module, "_time", timing)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        bench_module.bench("bitnet_cnn", [1], threads=usable_cores(), budget_s=0, variants=("ternary",))
        assert seen == [usable_cores()] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_model_bytes_counts_a_shared_tensor_once():
    from bitnetcnn.deploy.bench import model_bytes

    layer = torch.nn.Linear(10, 10, bias=False)
    layer.register_buffer("row", layer.weight.detach()[0])  # another tensor on the weight's storage
    assert model_bytes(layer) == 10 * 10 * 4
