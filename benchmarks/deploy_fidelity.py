"""How closely does the deployed int8 graph follow the converted model, per activation function and activation
quantization, without a trained model?

For each choice an untrained model is built with seed 0; its batch-norm statistics are converged (cumulative
average over ``--images`` training images) and its 8-bit quantizers (``act_bits=8``) take their scales from
eval-mode activations, as in a trained model. It is converted and deployed (``bitnetcnn.deploy.compile``, with
512 calibration images or from its own quantizers), and the mean relative logit error ``|deployed - converted| /
|converted|`` over the test images is printed. Untrained networks amplify rounding more than trained ones, so the
figures rank the choices; they do not predict a trained model's top-1 agreement
(``benchmarks/deploy_agreement.py`` measures that).

    export BITNETCNN_DATA=/path/to/shared/data
    python benchmarks/deploy_fidelity.py                                   # bit_resnet18, ReLU and SiLU, ~4 min
    python benchmarks/deploy_fidelity.py --model bit_mobilenetv2 --acts relu
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import bitnetcnn
from bitnetcnn.cli import positive_int
from bitnetcnn.deploy import compile
from bitnetcnn.deploy.calibration import dataset_images
from bitnetcnn.normalization import normalize
from bitnetcnn.data import list_datasets
from bitnetcnn.models import list_models
from bitnetcnn.models.blocks import ACTIVATIONS
from bitnetcnn.nn import ActQuantizer


def settled(model: nn.Module, x: torch.Tensor, batch: int = 128) -> nn.Module:
    """BN statistics averaged over ``x`` (train mode), then quantizer scales from eval-mode activations."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    with torch.no_grad():
        model.train()
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
        model.eval()
        quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer)]
        for q in quantizers:
            q.train()
            q.running_scale.zero_()
        if quantizers:
            for i in range(0, len(x), batch):
                model(x[i:i + batch])
    return model.eval()


@torch.no_grad()
def logits(fn, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bit_resnet18", choices=list_models(), metavar="MODEL")
    p.add_argument("--dataset", default="cifar100", choices=list_datasets(), metavar="DATASET")
    p.add_argument("--acts", nargs="+", default=["relu", "silu"], choices=list(ACTIVATIONS))
    p.add_argument("--images", type=positive_int, default=2560, help="training images that settle the statistics")
    p.add_argument("--test-images", type=positive_int, default=1000)
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino"])
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_x, _, spec = dataset_images(args.dataset, args.images, True, args.data_dir)
    x = normalize(train_x, spec.mean, spec.std)
    test_x, _, _ = dataset_images(args.dataset, args.test_images, False, args.data_dir)
    test = normalize(test_x, spec.mean, spec.std)
    print(f"{args.model}, untrained (seed 0), {args.dataset}: {len(x)} images settle it, {len(test)} test "
          f"images, {args.backend}")
    for act in args.acts:
        for bits, calibrations in ((None, (True,)), (8, (False, True))):
            torch.manual_seed(0)
            bit = bitnetcnn.create_model(args.model, num_classes=spec.num_classes, in_chans=spec.in_chans, act=act,
                                         act_bits=bits)
            model = bitnetcnn.convert_to_ternary(settled(bit, x))
            ref = logits(model, test)
            for calibrate in calibrations:
                # the calibration images normalized as the test images (the model's own defaults may be another's)
                deployed = compile(model, x[:512] if calibrate else None, backend=args.backend)
                error = ((logits(deployed, test) - ref).norm(dim=1) / ref.norm(dim=1)).mean().item()
                how = f"{len(x[:512])} calibration images" if calibrate else "its own quantizers"
                print(f"  act={act}, act_bits={bits}, deployed from {how}: relative logit error {error:.4f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
