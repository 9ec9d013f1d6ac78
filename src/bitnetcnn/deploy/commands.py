"""The work behind ``bitnetcnn export`` and ``bitnetcnn bench`` (the CLI only parses arguments and calls these)."""

from __future__ import annotations

import sys
import warnings
from typing import Callable, Optional, Sequence

import torch

from bitnetcnn.machine import usable_cores

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "bench_command", "export_command"]

DEFAULT_CALIBRATION_IMAGES = 256  # training images, when int8 needs calibration and none was asked for


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def export_command(
    model: str,
    output: str,
    *,
    fmt: str = "onnx",
    int8: bool = False,
    calibrate: Optional[int] = None,
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    check: int = 1000,
    min_agreement: Optional[float] = None,
    threads: int = 2,
    log: Callable[[str], None] = _say,
):
    """Export ``model`` (checkpoint or registry name) to ``output``; returns the :class:`ExportCheck`."""
    from bitnetcnn.checkpoint.pretrained_cfg import model_pretrained_cfg
    from bitnetcnn.data.sources import DatasetNotFoundError
    from bitnetcnn.data.catalog import get_dataset_spec
    from bitnetcnn.deploy.calibration import check_calibration_memory, dataset_for, model_inputs
    from bitnetcnn.deploy.checks import check_deployable
    from bitnetcnn.deploy.export import export_onnx
    from bitnetcnn.deploy.int8 import quantizer_scales
    from bitnetcnn.deploy.source import load_model
    from bitnetcnn.extras import require

    if fmt != "onnx":
        raise ValueError(f"unknown format {fmt!r}: only 'onnx' is supported")
    if calibrate is not None and not int8:  # a float graph has no activation ranges: the images would go unused
        raise ValueError(f"--calibrate {calibrate} sets the int8 graph's activation ranges: add --int8, or leave "
                         "--calibrate out for a float graph")
    require("deploy", "bitnetcnn export")  # before the model is loaded and calibrated
    cores = usable_cores()
    if threads > cores:  # torch.set_num_threads(100000) crashed the process; 10000 hung it
        raise ValueError(f"--threads {threads}, but this process may use {cores} CPU{'s' * (cores != 1)}: give "
                         f"--threads {cores} or fewer")
    torch.set_num_threads(threads)
    source = load_model(model)
    if source.from_checkpoint:
        net = source.model  # exported as stored: a Bit checkpoint is refused with the way to convert it
    else:
        log(f"note: {model} is a registry name, so its weights are untrained (pass a checkpoint to export a model)")
        net = source.converted()
    check_deployable(net, int8=int8)
    own = getattr(model_pretrained_cfg(net), "dataset", None)
    if dataset:
        get_dataset_spec(dataset)  # an unknown name, with the valid ones, before any warning about it
    if dataset and own and dataset != own and not _same_images(dataset, own):
        log(f"warning: {model} was trained on {own}, not {dataset}: calibrating and checking on {dataset} images "
            "measures another input distribution (leave --dataset out to use the checkpoint's)")
    if not dataset and not own and (int8 or check > 0):
        dataset = dataset_for(net)
        log(f"note: {model} records no data set; taking its images from {dataset}, the data set of its "
            f"input size and classes (give --dataset to choose)")
    dataset = dataset or dataset_for(net)
    if int8 and calibrate is None and not quantizer_scales(net):
        calibrate = DEFAULT_CALIBRATION_IMAGES
    elif int8 and calibrate and quantizer_scales(net):  # 95.4% agreement for bitnet_mobilenetv2, 99.8% on its own
        log(f"warning: {model} has 8-bit activation scales of its own (trained with --act-bits 8), which the int8 "
            f"graph takes where no --calibrate is given; ranges measured on {calibrate} images replace them and "
            "agree less with the model: leave --calibrate out to keep them")
    calibration = check_inputs = None
    try:  # the images as the checkpoint was trained on them: its size, its own mean and std
        if int8 and calibrate:
            check_calibration_memory(net, calibrate)  # before the images are read
            calibration, _ = model_inputs(net, dataset, calibrate, True, data_dir)
            log(f"calibrating on {len(calibration)} {dataset} training images")
        if check > 0:
            check_inputs, _ = model_inputs(net, dataset, check, False, data_dir)
    except DatasetNotFoundError as err:
        if int8 and calibrate:
            bundled = " (or --dataset mnist_demo, the bundled sample of MNIST)" if _same_images(dataset, "mnist_demo") \
                and dataset != "mnist_demo" else ""
            raise ValueError(f"calibration needs the {dataset} training images{bundled}: {err}") from None
        log(f"warning: no {dataset} test images ({str(err).splitlines()[0][:120]}...); checking on random inputs")
    with warnings.catch_warnings():
        if check == 0:  # asked for: said once here, not as a Python warning
            log("note: --check 0: the export is checked on random inputs only")
        if check_inputs is None:  # said above, once, in the command's words
            warnings.filterwarnings("ignore", "export_onnx: no check_inputs given", UserWarning)
        return export_onnx(net, output, int8=int8, calibration=calibration, check_inputs=check_inputs,
                           min_agreement=min_agreement, threads=threads)


def _same_images(a: str, b: str) -> bool:
    """Whether data sets ``a`` and ``b`` hold the same kind of images: one normalization (mnist_demo is a sample
    of MNIST)."""
    from bitnetcnn.normalization import BY_DATASET

    return a in BY_DATASET and BY_DATASET.get(a) == BY_DATASET.get(b)


def bench_command(model: str, batch_sizes: Sequence[int], *, threads: int = 2, calibrate: int = DEFAULT_CALIBRATION_IMAGES,
                  data_dir: Optional[str] = None, budget_s: float = 20.0, json_path: Optional[str] = None,
                  variants: Optional[Sequence[str]] = None, log: Callable[[str], None] = _say) -> dict:
    from bitnetcnn.deploy.bench import VARIANTS, bench, format_report, write_json

    report = bench(model, batch_sizes, threads=threads, calibrate=calibrate, data_dir=data_dir, budget_s=budget_s,
                   variants=tuple(variants or VARIANTS), log=log)
    print(format_report(report))
    if json_path:
        log(f"wrote {write_json(report, json_path)}")
    return report
