"""``load_checkpoint``: one entry for every file kind, dispatched on what the bytes are.

bitnetcnn's own format (:mod:`bitnetcnn.checkpoint.format`), else the seed's zips and plain state_dicts
(:mod:`bitnetcnn.checkpoint.seed`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from bitnetcnn.checkpoint import limits
from bitnetcnn.checkpoint.format import PathLike, is_bitnetcnn_checkpoint
from bitnetcnn.checkpoint.read import load_native
from bitnetcnn.checkpoint.seed import load_foreign


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device, None] = "cpu", *,
                    model_name: Optional[str] = None, **model_kwargs) -> nn.Module:
    """Read a checkpoint and return the model rebuilt from the registry, in eval mode.

    A bitnetcnn checkpoint comes back in the form it was saved: converted (``TernaryConv2d``/``TernaryLinear``,
    power-of-two scales included), trainable Bit, or full precision; ``model.checkpoint_header`` holds its header.
    The seed's published ``.zip`` checkpoints are recognized and mapped (see :func:`load_seed_checkpoint`), and a
    plain ``state_dict`` file (``torch.save``; read with ``weights_only=True``) loads into
    ``create_model(model_name, **model_kwargs)``. Anything unreadable raises :class:`CheckpointError`.
    """
    name, data = limits.read_source(path)
    limits.check_zip_entries(name, data)
    if is_bitnetcnn_checkpoint(data):
        model = load_native(name, data, model_name, **model_kwargs)
    else:
        model = load_foreign(name, data, model_name=model_name, **model_kwargs)
    if map_location is not None and torch.device(map_location).type != "cpu":
        model = model.to(map_location)
    return model


def names_a_file(spec: str) -> bool:
    """Whether ``spec`` is a checkpoint path (anything on disk) rather than a registry name; a folder named like a
    registry model (a run folder named after its model) is the model's name."""
    from bitnetcnn.models import list_models

    return Path(spec).exists() and not (Path(spec).is_dir() and spec in list_models())
