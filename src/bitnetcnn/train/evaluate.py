"""Evaluation of saved models on a test split, outside a training run (``bitnetcnn eval``)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bitnetcnn.checkpoint import load_checkpoint
from bitnetcnn.checkpoint.pretrained_cfg import input_dtype_of, input_size_of, model_pretrained_cfg
from bitnetcnn.messages import few
from bitnetcnn.nn.modes import evaluating
from bitnetcnn.normalization import normalize
from bitnetcnn.data.catalog import get_dataset_spec
from bitnetcnn.settings import data_root


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std,
             batch_size: int = 256) -> dict:
    """Top-1 and top-5 accuracy of ``model`` on uint8 images (N, C, H, W). Counted here, not by torchmetrics as in
    training: ``bitnetcnn eval`` works in a base install, without the [train] extra."""
    if not len(labels):
        raise ValueError("no images to evaluate on: an accuracy of none is no figure")
    mean_t, std_t, dtype = torch.tensor(mean), torch.tensor(std), input_dtype_of(model)
    top1 = top5 = 0
    with evaluating(model):
        for i in range(0, len(labels), batch_size):
            x = normalize(images[i: i + batch_size], mean_t, std_t).to(dtype)
            y = labels[i: i + batch_size]
            logits = model(x)
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            top1 += (topk[:, 0] == y).sum().item()
            top5 += (topk == y[:, None]).any(dim=1).sum().item()
    return {"top1": top1 / len(labels), "top5": top5 / len(labels), "images": len(labels)}


def evaluate_checkpoint(path: str, dataset: Optional[str] = None, data_dir: Optional[str] = None,
                        batch_size: int = 256) -> dict:
    """Top-1/top-5 on the test split of ``dataset`` (default: the checkpoint's own), with the inputs normalized as
    the checkpoint says (``model.pretrained_cfg``), else as the data set's defaults."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, not {batch_size!r}")
    return evaluate_model(load_checkpoint(path), dataset, data_dir, batch_size, source=str(path))


def evaluate_model(model: nn.Module, dataset: Optional[str] = None, data_dir: Optional[str] = None,
                   batch_size: int = 256, source: str = "the model") -> dict:
    """:func:`evaluate_checkpoint` of a model already loaded (``source`` names it in errors and the result)."""
    cfg = model_pretrained_cfg(model)
    own = dataset is None  # the data set its metadata names: a contradiction is the file's, not the user's
    dataset = dataset or (cfg.dataset if cfg is not None else None)
    if not dataset:
        raise ValueError(f"{source} does not record its data set; pass --dataset")
    # an image folder is read at the size and channels the model was trained at (a named data set has its own)
    size = input_size_of(model)
    # an image folder's labels by the model's own class names: its test images (val/) need no train/ beside them
    spec = get_dataset_spec(dataset, size[-1], in_chans=size[0], class_names=cfg.class_names if cfg else None)
    classes = getattr(model, "model_args", {}).get("num_classes")
    if classes is not None and spec.num_classes and classes != spec.num_classes:  # told before the data is read
        raise ValueError(f"{source} predicts {classes} classes but {dataset!r}"
                         f"{', the data set its metadata names,' if own else ''} has {spec.num_classes}"
                         + ("; its metadata is wrong: pass --dataset" if own else ""))
    _check_same_inputs(model, cfg, spec, source)
    root = data_root(data_dir)
    split = spec.read(root, False, False)
    if split.class_names is not None:  # an image folder: its folders are the classes
        names = cfg.class_names if cfg is not None else None
        if names and tuple(names) != split.class_names:
            raise ValueError(f"{source} has the classes {few(names)} but {root} has {few(split.class_names)}: "
                             "its labels would not mean the same; evaluate it on the folders it was trained on")
        if classes is not None and classes != len(split.class_names):
            raise ValueError(f"{source} predicts {classes} classes but {root} has {len(split.class_names)}")
    mean, std = (cfg.mean, cfg.std) if cfg is not None and cfg.mean and cfg.std else (spec.mean, spec.std)
    return {"checkpoint": source, "dataset": dataset, "mean": list(mean), "std": list(std),
            **accuracy(model, split.images, split.labels, mean, std, batch_size)}


def _check_same_inputs(model: nn.Module, cfg, spec, source: str) -> None:
    """Refuse a data set whose images or labels are not the ones the model was trained on (channels, size, class
    names), before any is read: its score would be a number about nothing."""
    wanted = (spec.in_chans, spec.img_size, spec.img_size)
    channels = getattr(model, "model_args", {}).get("in_chans")
    if channels is not None and channels != spec.in_chans:
        raise ValueError(f"{source} takes {channels}-channel images but {spec.name!r} has {spec.in_chans}-channel ones")
    if cfg is not None and cfg.input_size is not None and channels is not None and cfg.input_size[0] != channels:
        raise ValueError(f"{source} records {'x'.join(map(str, cfg.input_size))} inputs in its header but the model "
                         f"takes {channels}-channel images: files written by `bitnetcnn convert` or save_checkpoint "
                         "before these were checked may hold the registry's; save it again with its data set's: "
                         "save_checkpoint(load_checkpoint(FILE), NEW, {'dataset': ..., 'input_size': [C, H, W], "
                         "'mean': [...], 'std': [...]})")
    if cfg is not None and cfg.input_size is not None and tuple(cfg.input_size) != wanted:
        raise ValueError(f"{source} takes {'x'.join(map(str, cfg.input_size))} inputs (its pretrained_cfg) but "
                         f"{spec.name!r} has {'x'.join(map(str, wanted))} images")
    names = cfg.class_names if cfg is not None else None
    if names and spec.class_names and tuple(names) != tuple(spec.class_names):
        same_set = cfg.dataset == spec.name  # the file's own data set, its class names in another order
        raise ValueError(f"{source} has the classes {few(names)} but {spec.name!r} has {few(spec.class_names)}: its "
                         "labels would not mean the same; "
                         + (f"its class_names are not in {spec.name}'s label order: save it again with them in that "
                            "order" if same_set else
                            f"evaluate it on {cfg.dataset or 'the data set it was trained on'}"))
