"""Checkpoints: safe (no pickle), compact (entropy-coded ternary weights) and strict (one error type)."""

from bitnetcnn.checkpoint.errors import CheckpointError
from bitnetcnn.checkpoint.read import checkpoint_size_report, read_checkpoint_header
from bitnetcnn.checkpoint.write import save_checkpoint
from bitnetcnn.checkpoint.load import load_checkpoint

__all__ = [
    "CheckpointError",
    "checkpoint_size_report",
    "load_checkpoint",
    "read_checkpoint_header",
    "save_checkpoint",
]
