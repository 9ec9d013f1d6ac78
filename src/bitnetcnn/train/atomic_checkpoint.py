"""``last.ckpt`` written beside itself and renamed into place, so that no kill or full disk leaves a run that
cannot resume."""

from __future__ import annotations

import io
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from bitnetcnn.atomic import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's own writer goes through fsspec's transaction, a temporary file in ``$TMPDIR`` moved into place:
    where the run folder lies on another file system, that move is a copy into ``last.ckpt`` itself, which a kill
    or a full disk cuts short (the previous checkpoint lost with it), and a small ``$TMPDIR`` stops the run though
    its folder has room. This one writes the temporary file in the run folder."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        data = io.BytesIO()  # torch.save's own write errors are RuntimeErrors that name no file; Python's say which
        torch.save(checkpoint, data)
        write_atomically(path, data.getbuffer())
