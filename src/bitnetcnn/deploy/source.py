"""Where the commands that take a model (export, bench, summary) get it: a registry name (untrained weights) or a
checkpoint file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from torch import nn

from bitnetcnn.nn import convert_to_bit, convert_to_ternary, model_form

__all__ = ["ModelSource", "load_model"]


class ModelSource:
    """A model by name or checkpoint, with the forms the benchmark compares (float twin, Bit, converted)."""

    def __init__(self, model: nn.Module, label: str, from_checkpoint: bool) -> None:
        self.model = model.eval()
        self.label = label
        self.from_checkpoint = from_checkpoint

    @property
    def args(self) -> dict:
        return dict(getattr(self.model, "model_args", {}) or {})

    def converted(self) -> nn.Module:
        if model_form(self.model) == "bit":
            return convert_to_ternary(self.model)
        return self.model

    def bit(self) -> nn.Module:
        if model_form(self.model) == "ternary":
            return convert_to_bit(self.model).eval()
        return self.model

    def float_twin(self) -> nn.Module:
        """The same architecture in full precision (``quant='fp'``): the baseline of every ratio."""
        from bitnetcnn.models import create_model
        from bitnetcnn.models.quant_spec import QUANT_ARGS

        args = self.args
        if "name" not in args:
            raise ValueError(f"{self.label}: the model does not record how it was built (model_args), so its float "
                             "twin cannot be made")
        name = args.pop("name")
        for key in QUANT_ARGS:
            args.pop(key, None)
        return create_model(name, quant="fp", **args).eval()


def load_model(spec: str, num_classes: Optional[int] = None, in_chans: Optional[int] = None,
               model_kwargs: Optional[dict] = None) -> ModelSource:
    """``spec`` is a checkpoint path (anything that exists on disk) or a registry name."""
    from bitnetcnn.checkpoint.load import names_a_file

    if names_a_file(spec):
        from bitnetcnn.checkpoint import load_checkpoint

        return ModelSource(load_checkpoint(os.fspath(spec), **(model_kwargs or {})), Path(spec).name, True)
    from bitnetcnn.models import create_model

    model = create_model(spec, num_classes=num_classes, in_chans=in_chans, **(model_kwargs or {}))
    return ModelSource(model, spec, False)
