"""Does data loading keep up? Time N training steps through the real pipeline (Lightning Trainer, DataModule,
batched augmentation) and the model's own forward + backward + optimizer step over the same batches, held ready in
memory. Prints both and their ratio.

    python benchmarks/data_loading.py --model bit_resnet18 --dataset cifar100 --amp --batches 40

Needs the data set under --data-dir or $BITNETCNN_DATA.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch

from bitnetcnn.cli import count, positive_int
from bitnetcnn.data import list_datasets
from bitnetcnn.data.datamodule import ImageDataModule
from bitnetcnn.models import list_models
from bitnetcnn.train.module import BitClassifier


class StepTimer(L.Callback):
    """Wall time from the end of the last warm-up batch (``skip`` of them) to the end of the last batch: Lightning
    fetches and augments a batch before its ``on_train_batch_start``, so a clock started there left the first timed
    batch's loading out (one of two with ``--batches 2``)."""

    def __init__(self, skip: int) -> None:
        self.skip, self.start, self.end, self.images = skip, None, None, 0

    def on_train_epoch_start(self, trainer, pl_module):
        if self.skip == 0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()
        if batch_idx >= self.skip:
            self.images += len(batch[1])
        if batch_idx == self.skip - 1:
            self.start = self.end


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bit_resnet18", choices=list_models(), metavar="MODEL")
    p.add_argument("--dataset", default="cifar100", choices=list_datasets(), metavar="DATASET")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--batches", type=positive_int, default=40)
    p.add_argument("--warmup", type=count, default=3)
    p.add_argument("--amp", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    L.seed_everything(0, verbose=False)
    data = ImageDataModule(args.dataset, args.data_dir, args.batch_size)
    data.setup()
    channels_last = args.amp and data.spec.in_chans == 3
    data.channels_last = channels_last
    module = BitClassifier(args.model, data.num_classes, data.spec.in_chans, optimizer="sgd", lr=0.05,
                           eval_ternary=False, channels_last=channels_last)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=args.warmup + args.batches,
                        limit_val_batches=0, precision="bf16-mixed" if args.amp else "32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer])
    trainer.fit(module, datamodule=data)
    if not timer.images:
        raise SystemExit(f"no batch was timed: the training split holds {trainer.num_training_batches} batches of "
                         f"{args.batch_size}, all of them in the {args.warmup} warm-up batches; lower --warmup or "
                         "--batch-size")
    pipeline = timer.end - timer.start

    # The same model and optimizer on batches already augmented and in memory: the model's own cost.
    batches = []
    for i, (x, y) in enumerate(data.train_dataloader()):
        if i >= args.warmup + args.batches:
            break
        batches.append((data.transform(x, training=True), y))
    model = module.model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    start, images = None, 0
    for i, (x, y) in enumerate(batches):
        if i == args.warmup:
            start = time.perf_counter()
        images += len(y) if i >= args.warmup else 0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    compute = time.perf_counter() - start

    # the batches that ran: a split shorter than --warmup + --batches ends early
    timed = len(batches) - args.warmup
    print(f"{args.model} on {args.dataset}, batch {args.batch_size}, {timed} batches"
          f"{f' (all the split holds of the {args.batches} asked for)' if timed < args.batches else ''}, "
          f"amp={args.amp}, {torch.get_num_threads()} threads")
    print(f"full pipeline (Trainer + data + augmentation): {pipeline:8.2f} s  {timer.images / pipeline:7.1f} img/s")
    print(f"model forward + backward + step only:          {compute:8.2f} s  {images / compute:7.1f} img/s")
    print(f"pipeline / model-only: {pipeline / compute:.3f}  (goal: <= 1.15)")


if __name__ == "__main__":
    main()
