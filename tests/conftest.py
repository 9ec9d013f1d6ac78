"""Shared test settings: few threads (CI has 2 cores), deterministic seeds, and the real-data locator."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def real_data_root() -> Path | None:
    root = os.environ.get("BITNETCNN_DATA")
    return Path(root) if root else None


def require_real_data(relative: str) -> Path:
    """The path of a real data file under ``$BITNETCNN_DATA``; skip when absent, unless CI requires it."""
    root = real_data_root()
    path = root / relative if root else None
    if path is None or not path.exists():
        message = f"real data {relative!r} not found under BITNETCNN_DATA={root}"
        if os.environ.get("BITNETCNN_REQUIRE_DATA"):
            pytest.fail(message + " (BITNETCNN_REQUIRE_DATA is set, so this is an error)")
        pytest.skip(message)
    return path
