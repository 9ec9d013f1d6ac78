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
    device = _device(map_location)  # before the file is read: a wrong one would be found only after it
    name, data = limits.read_source(path)
    limits.check_zip_entries(name, data)
    if is_bitnetcnn_checkpoint(data):
        model = load_native(name, data, model_name, **model_kwargs)
    else:
        model = load_foreign(name, data, model_name=model_name, **model_kwargs)
    if device is not None and device.type != "cpu":
        model = model.to(device)
    return model


def _device(map_location) -> Optional[torch.device]:
    if map_location is None:
        return None
    try:
        return torch.device(map_location)
    except (TypeError, RuntimeError, ValueError):
        raise ValueError(f"map_location={map_location!r} is not a device: load_checkpoint takes one ('cpu', "
                         "'cuda:0', a torch.device) or None; torch.load's dict and function forms do not apply, since "
                         "the model is built on the CPU and moved as a whole (model.to(...) moves it after)") from None


def names_a_file(spec: str) -> bool:
    """Whether ``spec`` is a checkpoint path (anything on disk) rather than a registry name; a folder named like a
    registry model (a run folder named after its model) is the model's name."""
    from bitnetcnn.models import list_models

    return Path(spec).exists() and not (Path(spec).is_dir() and spec in list_models())
