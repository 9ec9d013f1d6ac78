"""The published weights: the files in this folder, each described by a frozen :class:`PretrainedCfg` (in the manner
of torchvision's ``Weights``, kept beside the files they describe). A hub entry serves one (``bitnetcnn/hub.py``,
``SEED_ENTRIES``); ``scripts/publish_weight.py`` writes a file here and prints its ``PretrainedCfg`` for this module.
"""

from dataclasses import replace
from pathlib import Path

from bitnetcnn import class_names
from bitnetcnn.checkpoint.pretrained_cfg import PretrainedCfg, TrainingStep

PRETRAINED_DIR = Path(__file__).parent

# Where the figures come from: the file's own header (metrics, input, architecture) and bitnetcnn/pretrained/
# README.md (the two commands and their wall times); file_size and sha256 are the shipped file's
# (tests/test_hub.py checks both, and every field the header also holds).
_MNIST_CPU = "2-core development CPU, float32"
BITNET_MNIST = PretrainedCfg(
    model="bitnet_cnn",
    model_kwargs={"num_classes": 10, "in_chans": 1, "quant": "ternary", "scale_op": "median", "pow2": False,
                  "act_bits": None, "fp_ends": False},
    tag="mnist",
    hub_entry="bitnet_mnist",
    dataset="mnist",
    input_size=(1, 28, 28),
    mean=(0.1307,),
    std=(0.3081,),
    num_classes=10,
    class_names=class_names.DIGITS,
    top1=0.9963,
    top5=1.0,
    test_images=10000,
    file="bitnet_mnist.bnc",
    file_size=60492,
    sha256="75eae7fff9ca4faec3f38a93cbc6b1839ead82f945770930bd763ddc4973b280",
    training=(
        TrainingStep("bitnetcnn train --dataset mnist --epochs 40 --lr 5e-3 --wd 5e-4 --label-smoothing 0.1 "
                     "--warmup-epochs 0.3 --rotate 10 --zoom 0.1 --out runs/mnist-stage1", 5028.0, _MNIST_CPU),
        TrainingStep("bitnetcnn train --dataset mnist --epochs 8 --lr 2e-3 --wd 5e-4 --warmup-epochs 0.1 --rotate 0 "
                     "--zoom 0 --ema 0.998 --init runs/mnist-stage1/best_ternary.bnc --out runs/mnist-stage2 "
                     "--no-progress", 668.0, _MNIST_CPU),
    ),
    licence="MIT",
)


# What every published CIFAR-100 weight shares: its inputs, normalization, classes, test set and licence.
CIFAR100_WEIGHTS = dict(tag="cifar100", dataset="cifar100", input_size=(3, 32, 32), mean=(0.5071, 0.4865, 0.4409),
                        std=(0.2673, 0.2564, 0.2762), num_classes=100, class_names=class_names.CIFAR100,
                        test_images=10000, licence="MIT")

# Four runs on an H200 (lent GPU windows, docs/recipes.md), each taught by the one before: 75.64% (100 epochs),
# 77.77% (55 epochs, CutMix), 78.13% (68 epochs, CutMix), then 40 epochs from that one's weights at a lower learning
# rate, taught by it (the weight published: the last epoch's, 78.56%).
BITNET_RESNET18_CIFAR100 = PretrainedCfg(
    model="bit_resnet18",
    model_kwargs={"num_classes": 100, "in_chans": 3, "quant": "ternary", "scale_op": "median", "pow2": False,
                  "act_bits": None, "fp_ends": False, "img_size": 32},
    hub_entry="bitnet_resnet18",
    **CIFAR100_WEIGHTS,
    top1=0.7856,
    top5=0.9437,
    file="bitnet_resnet18.bnc",
    file_size=1883667,
    sha256="a3e21897012f755eed4b424c86a591b7971fd0bf2c9d7d837ddfb643a72a0780",
    training=(
        TrainingStep("bitnetcnn train --dataset cifar100 --out runs/r18 --no-progress --model bit_resnet18 --epochs "
                     "200 --time-budget 8 --val-every 10 --batch-size 256 --optimizer sgd --lr 0.15 --wd 5e-4 "
                     "--warmup-epochs 1 --label-smoothing 0.1 --amp --accelerator gpu --devices 1  # the time budget "
                     "gave 100 epochs; the weights of epoch 90 of 100, the best of those validated by then; the "
                     "teacher bitnet_resnet18.bnc (sha256 d8caee0957a4...)",
                     419.1, "1x NVIDIA H200, bf16-mixed"),
        TrainingStep("bitnetcnn train --dataset cifar100 --out runs/kdcm --no-progress --model bit_resnet18 --epochs "
                     "300 --time-budget 8.9 --val-every 10 --batch-size 256 --optimizer sgd --lr 0.15 --wd 5e-4 "
                     "--warmup-epochs 1 --label-smoothing 0.1 --cutmix 1.0 --compile --amp --accelerator gpu --devices "
                     "1 --kd --teacher runs/r18/best_ternary.bnc --kd-alpha 0.5  # the time budget gave 55 epochs; the "
                     "teacher bitnet_resnet18.bnc (sha256 e503f28b1a0d...); it ran with --teacher bitnet_resnet18, "
                     "which named that file then (sha256 d8caee0957a4...)",
                     508.7, "1x NVIDIA H200, bf16-mixed"),
        TrainingStep("bitnetcnn train --dataset cifar100 --out runs/kd3 --no-progress --model bit_resnet18 --epochs "
                     "300 --time-budget 8.3 --val-every 10 --batch-size 256 --optimizer sgd --lr 0.15 --wd 5e-4 "
                     "--warmup-epochs 1 --label-smoothing 0.1 --cutmix 1.0 --compile --amp --accelerator gpu --devices "
                     "1 --kd --teacher runs/kdcm/best_ternary.bnc --kd-alpha 0.5  # the time budget gave 68 epochs; "
                     "the teacher best_ternary.bnc (sha256 64745ae42d1c...); it ran with --teacher bitnet_resnet18, "
                     "which named that file then (sha256 e503f28b1a0d...)",
                     403.2, "1x NVIDIA H200, bf16-mixed"),
        TrainingStep("bitnetcnn train --dataset cifar100 --out runs/kd4 --no-progress --model bit_resnet18 --init "
                     "runs/kd3/best_ternary.bnc --epochs 300 --time-budget 4.4 --val-every 10 --batch-size 256 "
                     "--optimizer sgd --lr 0.04 --wd 5e-4 --warmup-epochs 0.5 --label-smoothing 0.1 --cutmix 1.0 "
                     "--compile --amp --accelerator gpu --devices 1 --kd --teacher runs/kd3/best_ternary.bnc "
                     "--kd-alpha 0.5  # the time budget gave 40 epochs",
                     216.1, "1x NVIDIA H200, bf16-mixed"),
    ),
)


# The ResNet-18 above's four GPU runs (it taught the last stages), then seven CPU stages (docs/recipes.md): a 20-epoch bf16 run, 2 epochs fine-tuned with 8-bit activations, an 18-epoch
# warm restart, 16 epochs distilled from the ResNet-18 published then (75.64%), 14 more distilled from the 78.56%
# one, 10 more at a quarter of that rate (62.19%, which did not deploy: 97.72%), and 2 at 0.001 (deploys at 99.75%).
# Each --init/--teacher path names the file published at that time, replaced since.
BITNET_MOBILENETV2_CIFAR100 = PretrainedCfg(
    model="bit_mobilenetv2",
    model_kwargs={"num_classes": 100, "in_chans": 3, "quant": "ternary", "scale_op": "median", "pow2": False,
                  "act_bits": 8, "fp_ends": False, "img_size": 32},
    hub_entry="bitnet_mobilenetv2",
    **CIFAR100_WEIGHTS,
    top1=0.619,
    top5=0.8681,
    file="bitnet_mobilenetv2.bnc",
    file_size=782258,
    sha256="c7dc3316908e7bf6cecb267919f8a276f8c836060a181d3cdd29b8822bd67796",
    training=(
        # what made the teacher of its last stages (the published ResNet-18), first, as the file's header records
        *BITNET_RESNET18_CIFAR100.training[:-1],
        replace(BITNET_RESNET18_CIFAR100.training[-1], command=BITNET_RESNET18_CIFAR100.training[-1].command
                + "; the teacher bitnet_resnet18.bnc (sha256 a3e21897012f...)"),
        TrainingStep("bitnetcnn train --model bit_mobilenetv2 --dataset cifar100 --epochs 40 --time-budget 100 "
                     "--batch-size 256 --optimizer sgd --lr 0.15 --wd 5e-4 --warmup-epochs 1 --label-smoothing 0.1 "
                     "--amp --accelerator cpu --val-every 2 --no-progress --out runs/mnv2-bf16  # the time budget "
                     "gave 14 epochs; resumed with --epochs 20", 5718.5,
                     "AMD EPYC, 2 cores: avx2 yes, avx512f yes, avx512_vnni yes, avx_vnni no, amx no, bf16-mixed"),
        TrainingStep("bitnetcnn train --model bit_mobilenetv2 --dataset cifar100 --init runs/mnv2-bf16/best_ternary.bnc "
                     "--act-bits 8 --epochs 2 --batch-size 256 --optimizer sgd --lr 0.005 --wd 5e-4 --warmup-epochs 0 "
                     "--label-smoothing 0.1 --accelerator cpu --val-every 1 --no-progress --out runs/mnv2-a8b", 1140.3,
                     "AMD EPYC, 2 cores: avx2 yes, avx512f yes, avx512_vnni yes, avx_vnni no, amx no, 32-true"),
        TrainingStep("bitnetcnn train --model bit_mobilenetv2 --dataset cifar100 --init runs/mnv2-a8b/best_ternary.bnc "
                     "--act-bits 8 --epochs 20 --time-budget 110 --batch-size 256 --optimizer sgd --lr 0.03 --wd 5e-4 "
                     "--warmup-epochs 0 --label-smoothing 0.1 --accelerator cpu --val-every 2 --no-progress "
                     "--out runs/mnv2-restart  # the time budget gave 18 epochs; the init file was its published "
                     "copy (53.68%)", 5263.0,
                     "Intel(R) Xeon(R) Processor, 2 cores: avx2 yes, avx512f yes, avx512_vnni yes, avx_vnni yes, "
                     "amx yes, 32-true"),
        TrainingStep("bitnetcnn train --model bit_mobilenetv2 --dataset cifar100 --init "
                     "src/bitnetcnn/pretrained/bitnet_mobilenetv2.bnc --act-bits 8 --kd --teacher "
                     "src/bitnetcnn/pretrained/bitnet_resnet18.bnc --kd-alpha 0.5 --epochs 24 --time-budget 128 "
                     "--batch-size 256 --optimizer sgd --lr 0.02 --wd 5e-4 --warmup-epochs 0 --label-smoothing 0.1 "
                     "--amp --accelerator cpu --val-every 2 --no-progress --out runs/mnv2-kd  # the time budget gave "
                     "16 epochs; the init file and the teacher were the published 58.70% MobileNetV2 and 75.64% "
                     "ResNet-18", 6940.1,
                     "Intel(R) Xeon(R) Processor, 2 cores: avx2 yes, avx512f yes, avx512_vnni yes, avx_vnni yes, "
                     "amx yes, bf16-mixed"),
        TrainingStep("bitnetcnn train --model bit_mobilenetv2 --dataset cifar100 --init "
                     "src/bitnetcnn/pretrained/bitnet_mobilenetv2.bnc --act-bits 8 --kd --teacher "
                     "src/bitnetcnn/pretrained/bitnet_resnet18.bnc --kd-alpha 0.5 --epochs 24 --time-budget 112 "
                     "--batch-size 256 --optimizer sgd --lr 0.02 --wd 5e-4 --warmup-epochs 0 --label-smoothing 0.1 "
                     "--amp --accelerator cpu --val-every 2 --no-progress --out runs/mnv2-kd2  # the time budget gave "
                     "14 epochs; the init file and the teacher were the published 60.33% MobileNetV2 and 78.56% "
                     "ResNet-18", 6095.3,
                     "Intel(R) Xeon(R) Processor, 2 cores: avx2 yes, avx512f yes, avx512_vnni yes, avx_vnni yes, "
                     "amx yes, bf16-mixed"),
        TrainingStep("bitnetcnn train --model bit_mobilenetv2 --dataset cifar100 --init "
                     "src/bitnetcnn/pretrained/bitnet_mobilenetv2.bnc --act-bits 8 --kd --teacher "
                     "src/bitnetcnn/pretrained/bitnet_resnet18.bnc --kd-alpha 0.5 --epochs 24 --time-budget 93 "
                     "--batch-size 256 --optimizer sgd --lr 0.005 --wd 5e-4 --warmup-epochs 0 --label-smoothing 0.1 "
                     "--amp --accelerator cpu --val-every 2 --no-progress --out runs/mnv2-kd4  # the time budget gave "
                     "10 epochs", 4977.8,
                     "AMD EPYC, 2 cores: avx2 yes, avx512f yes, avx512_vnni yes, avx_vnni no, amx no, bf16-mixed"),
        TrainingStep("bitnetcnn train --model bit_mobilenetv2 --dataset cifar100 --init runs/mnv2-kd4/best_ternary.bnc "
                     "--act-bits 8 --kd --teacher src/bitnetcnn/pretrained/bitnet_resnet18.bnc --kd-alpha 0.5 "
                     "--epochs 2 --batch-size 256 --optimizer sgd --lr 0.001 --wd 5e-4 --warmup-epochs 0 "
                     "--label-smoothing 0.1 --amp --accelerator cpu --val-every 1 --no-progress --out runs/mnv2-kd5  # "
                     "the step before wrote its --init (runs/mnv2-kd4); that step's --init was the published 61.54% "
                     "MobileNetV2 (sha256 9a0885b7f79e...), and both steps' teacher the published 78.56% ResNet-18",
                     1038.7, "AMD EPYC, 2 cores: avx2 yes, avx512f yes, avx512_vnni yes, avx_vnni no, amx no, "
                     "bf16-mixed"),
    ),
)
