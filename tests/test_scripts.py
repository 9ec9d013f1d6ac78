"""scripts/: the tools that carry a data set to a lent GPU machine in bounded pieces."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "npz_chunks.py"


@pytest.fixture(scope="module")
def npz_chunks():
    spec = importlib.util.spec_from_file_location("npz_chunks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_data_set_split_into_bounded_chunks_joins_to_the_same_arrays(npz_chunks, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (37, 4, 4, 3), dtype=np.uint8), "y_train": np.arange(37),
              "names": np.array(["apple", "bee"]), "scalar": np.array(3.5)}
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
