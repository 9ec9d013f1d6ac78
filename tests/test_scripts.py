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
    manifest = npz_chunks.split(tmp_path / "d.npz", tmp_path / "chunks", max_bytes=200)
    assert len(manifest["arrays"]["x_train"]["parts"]) == 10  # 48 bytes a row: 4 rows a chunk, 37 rows
    assert all((tmp_path / "chunks" / p["file"]).stat().st_size <= 200 + 128  # the .npy header
               for a in manifest["arrays"].values() for p in a["parts"])
    out = npz_chunks.join(tmp_path / "chunks", tmp_path / "joined" / "d.npz")
    with np.load(out) as joined:
        assert sorted(joined.files) == sorted(arrays)
        for key, value in arrays.items():
            assert joined[key].dtype == value.dtype and np.array_equal(joined[key], value)
    damaged = tmp_path / "chunks" / manifest["arrays"]["x_train"]["parts"][2]["file"]
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    with pytest.raises(SystemExit, match="x_train.002.npy is damaged"):
        npz_chunks.join(tmp_path / "chunks", tmp_path / "again.npz")
