"""Lightning DataModule over in-memory uint8 tensors, with batched augmentation after the device transfer."""

from __future__ import annotations

from pathlib import Path
import itertools
from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from bitnetcnn.normalization import normalize
from bitnetcnn.data.augment import random_affine, random_crop, random_elastic, random_hflip
from bitnetcnn.data.catalog import DatasetSpec, get_dataset_spec
from bitnetcnn.settings import data_root
from bitnetcnn.data.sources import Split


class TensorImages(Dataset):
    """A split held as tensors; ``__getitems__`` hands the DataLoader a whole batch in one indexing operation."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, i: int):
        return self.split.images[i], self.split.labels[i]

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices)
        return self.split.images[idx], self.split.labels[idx]


def _sample(split: Split, n: int | None) -> Split:
    """``n`` images of a split (all when ``n`` is None), for quick checks: the same ones in every run and process
    (a fixed seed), in the split's order, drawn at random since some readers list a split class by class (image
    folders, Tiny ImageNet's training split), where the first ``n`` would be one class."""
    if not n or n >= len(split.labels):
        return split
    chosen = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return Split(split.images[chosen], split.labels[chosen], split.class_names)


def _as_batch(batch):
    return batch


class EpochShuffle(DistributedSampler):
    """The training order: torch's ``DistributedSampler`` (a new permutation each epoch, drawn from the seed and the
    epoch alone, each process taking its share), which can start inside an epoch: a run resumed from a checkpoint
    written there trains, in every process, the batches it had not trained, in the same order (``skip(epoch)``: the
    batches of that epoch already trained). It is one whatever the number of processes, and Lightning leaves a
    ``DistributedSampler`` in place instead of wrapping it in its own, which could not resume inside an epoch."""

    def __init__(self, data: Dataset, batch_size: int, seed: int, rank: int, world_size: int,
                 epoch: Callable[[], int], skip: Callable[[int], int]) -> None:
        # seed * 1_000_003: neighbouring seeds do not share orders (seed 1's epoch 0 would be seed 0's epoch 1)
        super().__init__(data, num_replicas=world_size, rank=rank, shuffle=True, seed=seed * 1_000_003)
        self.batch_size, self.current_epoch, self.skip = batch_size, epoch, skip

    def __iter__(self):
        epoch = self.current_epoch()  # the trainer's, not set_epoch's: right inside a resumed epoch too
        self.set_epoch(epoch)
        return itertools.islice(super().__iter__(), self.skip(epoch) * self.batch_size, None)


class EachImageOnce(DistributedSampler):
    """The test split shared among the processes, each image in one share: torch's ``DistributedSampler`` (which
    Lightning puts in otherwise) repeats images to even the shares, and a DDP run's accuracy would then count some
    twice and differ from ``bitnetcnn eval``'s. The shares differ by one image at most; the metrics are sums,
    synchronized once at the end of the validation."""

    def __init__(self, data: Dataset, rank: int, world_size: int) -> None:
        super().__init__(data, num_replicas=world_size, rank=rank, shuffle=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class ImageDataModule(L.LightningDataModule):
    """Train and test splits of a named data set; the test split doubles as validation (as in the seed)."""

    def __init__(
        self,
        dataset: str = "mnist_demo",
        data_dir: str | Path | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        download: bool = False,
        img_size: int = 64,
        img_channels: int = 3,
        augment: bool = True,
        channels_last: bool = False,
        limit_train: int | None = None,
        limit_eval: int | None = None,
        rotate: float | None = None,
        zoom: float | None = None,
        elastic: float | None = None,
        hflip: bool | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed  # of the training order (EpochShuffle)
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches trained in it) from a mid-epoch checkpoint
        self.spec: DatasetSpec = get_dataset_spec(dataset, img_size, in_chans=img_channels).normalized_by(mean, std)
        self.root = data_root(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or max(batch_size, 256)
        self.download = download
        self.augment = augment
        self.channels_last = channels_last
        self.limit_train = limit_train
        self.limit_eval = limit_eval
        self.rotate = self.spec.rotate if rotate is None else rotate
        self.zoom = self.spec.zoom if zoom is None else zoom
        self.elastic = self.spec.elastic if elastic is None else elastic
        self.hflip = self.spec.hflip if hflip is None else hflip
        self.train_split: Split | None = None
        self.test_split: Split | None = None
        self._mean = torch.tensor(self.spec.mean)
        self._std = torch.tensor(self.spec.std)

    @property
    def num_classes(self) -> int:
        if self.spec.num_classes:
            return self.spec.num_classes
        self.setup()
        if self.train_split.class_names is not None:
            return len(self.train_split.class_names)
        return int(self.train_split.labels.max()) + 1

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Label -> name: the data set's, or an image folder's (the folders of its ``train/``)."""
        if self.spec.class_names is not None:
            return self.spec.class_names
        self.setup()
        return self.train_split.class_names

    def setup(self, stage: str | None = None) -> None:
        # --download fetches here: `bitnetcnn train` reads the data before it builds its trainer (a missing data
        # set is reported before anything is made), and the processes a DDP run starts later find it there
        if self.train_split is None:
            self.train_split = _sample(self.spec.read(self.root, True, self.download), self.limit_train)
            self.test_split = _sample(self.spec.read(self.root, False, self.download), self.limit_eval)

    def _pin_memory(self) -> bool:
        """Pinned batches on a GPU: Lightning then copies them asynchronously, where a copy from pageable memory
        would wait for the GPU to finish the previous step first."""
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        data = TensorImages(self.train_split)
        trainer = self.trainer
        if trainer is None:  # outside a Trainer: a plain shuffled loader
            return DataLoader(data, batch_size=self.batch_size, shuffle=True, drop_last=True, collate_fn=_as_batch)
        order = EpochShuffle(data, self.batch_size, self.seed, trainer.global_rank, trainer.world_size,
                             lambda: trainer.current_epoch, self._batches_done)
        # its own generator: a DataLoader draws a seed for its workers at each new iterator, and drawing it from the
        # global generator would shift the augmentation's random numbers of a resumed epoch
        return DataLoader(data, sampler=order, batch_size=self.batch_size, drop_last=True,
                          collate_fn=_as_batch, pin_memory=self._pin_memory(), generator=torch.Generator())

    def state_dict(self) -> dict:
        """Where training is in the current epoch, saved in every checkpoint: a ``last.ckpt`` written inside an
        epoch (``--save-every``) resumes with the batches not yet trained, in the uninterrupted run's order."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        # a checkpoint written at the end of a batch counts it as processed, not yet completed
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("batches"):
            self._resume_at = (state["epoch"], state["batches"])

    def _batches_done(self, epoch: int) -> int:
        """Batches of ``epoch`` trained before the checkpoint the run resumed from (once; 0 for any other epoch)."""
        resume, self._resume_at = self._resume_at, None
        return resume[1] if resume is not None and resume[0] == epoch else 0

    def val_dataloader(self) -> DataLoader:
        data = TensorImages(self.test_split)
        trainer = self.trainer
        shares = EachImageOnce(data, trainer.global_rank, trainer.world_size) if trainer is not None else None
        return DataLoader(data, sampler=shares, batch_size=self.eval_batch_size, collate_fn=_as_batch,
                          pin_memory=self._pin_memory())

    test_dataloader = val_dataloader

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.transform(images, training), labels

    def transform(self, images: torch.Tensor, training: bool) -> torch.Tensor:
        """uint8 batch to the model's float input; crop, flip, rotate, zoom and distort only while training."""
        if training and self.augment:
            images = random_crop(images, self.spec.crop_padding)
            if self.hflip:
                images = random_hflip(images)
            if self.rotate > 0 or self.zoom > 0:
                images = random_affine(images, self.rotate, self.zoom)
            if self.elastic > 0:
                images = random_elastic(images, self.elastic)
        x = normalize(images, self._mean.to(images.device), self._std.to(images.device))
        if self.channels_last and x.shape[1] > 1:
            return x.contiguous(memory_format=torch.channels_last)
        # Standard strides, one channel too, where both layouts hold the same bytes: the crop's permute leaves
        # (HW, 1, W, 1), on which PyTorch 2.14's oneDNN convolution backward corrupts memory (a native crash in
        # the first step of a bitnet_cnn of width 2 to 6), and .contiguous() keeps them.
        standard = torch.empty(x.shape, device="meta").stride()  # row-major NCHW, nothing allocated
        return x if x.stride() == standard else x.clone(memory_format=torch.contiguous_format)
