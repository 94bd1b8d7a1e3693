"""Deterministic, resumable, rank-sharded sampling with per-sample augmentation seeds.

The sampler yields (epoch, index) pairs; ``SeededDataset`` seeds Python, NumPy and torch
from (seed, epoch, index) before it loads and augments a sample. So a sample's augmentation
depends on nothing else — not on the worker that loads it, nor on what ran before —
which makes ``--resume`` exact, also in the middle of an epoch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


def _mix32(x: int) -> int:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2**32) that spreads nearby inputs apart."""
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


def sample_seed(seed: int, epoch: int, index: int, size: int) -> int:
    """The seed of sample ``index`` (of ``size``) in ``epoch``: a 64-bit integer, distinct for every
    (seed mod 2**32, epoch, index) with ``epoch * size + index < 2**32`` (e.g. 250,000 epochs of
    Adience's ~17,000 samples).

    High 32 bits: the run's seed. Low 32 bits: a seed-keyed bijection of the sample's position
    ``epoch * size + index``. torch's CPU generator keeps only the low 32 bits of a seed, so those
    alone are distinct within a run, and differ between runs with other seeds. (The earlier
    ``seed * 1_000_003 + epoch * 10_007 + index`` repeated as soon as a dataset had more than
    10,007 samples: sample 10,007 of epoch 0 was sample 0 of epoch 1.)
    """
    seed32 = seed % 2**32
    position = (epoch * size + index) % 2**32
    low = _mix32((position + _mix32(seed32 ^ 0x9E3779B9)) % 2**32)
    return (seed32 << 32) | low


class SeededDataset(Dataset):
    """Wraps a dataset of samples and a transform; items are requested as (epoch, index)."""

    def __init__(self, dataset: Dataset, transform: Callable | None, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        in_main = get_worker_info() is None
        if in_main:  # loading in the training process must not disturb its RNG (dropout)
            saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        s = sample_seed(self.seed, epoch, index, len(self))
        random.seed(s)
        np.random.seed([s & 0xFFFFFFFF, s >> 32])  # NumPy's legacy seeding takes 32-bit words
        # The CPU generator only: torch.manual_seed would also re-seed every CUDA generator, so
        # loading in the training process (--workers 0) would reset the stream that CUDA dropout
        # draws from, and make it depend on the last sample loaded.
        torch.default_generator.manual_seed(s)
        sample = self.dataset[index]
        sample = self.transform(sample) if self.transform is not None else sample
        if in_main:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
        return sample


class EpochSampler(Sampler):
    """Shuffles with a generator seeded by (seed, epoch), pads to a multiple of the world size
    (as DistributedSampler does), keeps this rank's share, and can skip the batches already
    done in an interrupted epoch."""

    def __init__(
        self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, pad: bool = True
    ) -> None:
        """pad=False (evaluation): ranks get unequal shares and no sample is seen twice."""
        self.n, self.seed, self.shuffle, self.rank, self.world, self.pad = n, seed, shuffle, rank, world_size, pad
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_samples

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world > 1:
            if self.pad:
                order += order[: (-len(order)) % self.world]
            order = order[self.rank :: self.world]
        return order

    def __len__(self) -> int:
        return len(self._indices()) - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self._indices()[self.skip :]:
            yield self.epoch, i
