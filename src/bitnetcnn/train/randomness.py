"""Each training process's own random numbers, saved and restored with the run.

The shuffle has its own seeded generator (``EpochShuffle``), shared by every process so that their shares of the
data agree; everything else random (crop offsets, flips, MixUp/CutMix, DropPath) draws from the process's global
generators. Seeded alike, the processes of a DDP run would draw the same numbers for their own slot of the batch:
every process would crop, flip and mix its images exactly as the others, which shrinks the augmentation a
multi-process batch sees. So each process seeds its generators from the run's seed and its rank (the first process
from the seed alone, so a one-process run draws as it always did), and a checkpoint keeps every process's states."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
import torch.distributed as dist


def random_states() -> dict:
    """Python's, NumPy's and torch's (CPU and this process's CUDA device) generator states, as plain data a
    checkpoint holds."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda_device": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_random_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if not torch.cuda.is_available():
        return
    if states.get("cuda_device") is not None:
        torch.cuda.set_rng_state(states["cuda_device"])  # the current device: this process's
    elif states.get("cuda") and len(states["cuda"]) == torch.cuda.device_count():  # runs saved before 2026-11-30
        torch.cuda.set_rng_state_all(states["cuda"])


def process_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``: the run's own for the first, for the others one NumPy's ``SeedSequence`` mixes
    from both (neither ``seed + rank``, where seed 1's first process would draw as seed 0's second)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_process(seed: int) -> None:
    """Python's, NumPy's and torch's generators (every CUDA device's too) from one seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ProcessRandomness(L.Callback):
    """Seeds each process from the run's seed and its rank once the processes are known (``setup``, before a
    resumed run's checkpoint is read), and saves every process's generator states in the checkpoint, each process
    restoring its own: a resumed DDP run draws what the uninterrupted one would have."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            seed_process(process_seed(self.seed, trainer.global_rank))

    def state_dict(self) -> dict:
        # every process saves (Lightning's save_checkpoint runs on each, then writes the first's), so all meet here
        own = random_states()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return {"processes": [own]}
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, own)
        return {"processes": everyone}

    def load_state_dict(self, state: dict) -> None:
        processes = state["processes"]
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        # a resume starts as many processes as the run had (run_folder refuses others), so each finds its own
        set_random_states(processes[rank] if rank < len(processes) else processes[0])
