"""Fuzzing: mutated or truncated checkpoints give CheckpointError (or, rarely, a model), never another error.

The longer run is ``python benchmarks/fuzz_checkpoint.py --seconds 300``.
"""

import time

import pytest
import torch

import bitnetcnn
from bitnetcnn import CheckpointError, convert_to_ternary, create_model
from bitnetcnn.checkpoint.fuzz import FUZZ_MODES, fuzz


def _tiny(tmp_path_factory, form):
    torch.manual_seed(0)
    model = create_model("bitnet_cnn", width=4).eval()
    if form != "bit":
        model = convert_to_ternary(model, pow2=form == "pow2")
    path = tmp_path_factory.mktemp("fuzz") / f"{form}.bnc"
    bitnetcnn.save_checkpoint(model, path, {"dataset": "mnist"})
    return path.read_bytes()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _tiny(tmp_path_factory, "ternary")


@pytest.mark.parametrize(
    "form,mode,iterations",
    [("ternary", "file", 3000), ("ternary", "header", 300), ("ternary", "tensors", 300), ("bit", "header", 300),
     ("pow2", "tensors", 100)],
)
def test_only_checkpoint_errors_come_out(tmp_path_factory, form, mode, iterations):
    start = time.perf_counter()
    stats = fuzz(_tiny(tmp_path_factory, form), mode, iterations, seed=1)
    assert stats["other"] == [], stats["other"][:3]
    assert stats["checkpoint_error"] > 0
    assert stats["checkpoint_error"] + stats["loaded"] == iterations
    assert time.perf_counter() - start < 60


def test_fuzz_modes_are_known():
    assert set(FUZZ_MODES) == {"file", "header", "tensors"}


def test_bytes_can_be_loaded_and_errors_say_so(checkpoint):
    bitnetcnn.load_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="<checkpoint>"):
        bitnetcnn.load_checkpoint(checkpoint[:100])
