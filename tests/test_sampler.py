"""EpochSampler (rank shards, padding, mid-epoch skip, length) and the per-sample seeds of SeededDataset."""

import random

import numpy as np
import pytest
import torch

from engine.sampler import EpochSampler, SeededDataset, sample_seed


def shards(n: int, world: int, epoch: int = 0, pad: bool = True, shuffle: bool = True) -> list[list[int]]:
    out = []
    for rank in range(world):
        s = EpochSampler(n, seed=5, shuffle=shuffle, rank=rank, world_size=world, pad=pad)
        s.set_epoch(epoch)
        out.append([i for e, i in s])
        assert all(e == epoch for e, _ in s)
    return out


@pytest.mark.parametrize("n,world", [(12, 3), (10, 4), (7, 2), (1, 3)])
def test_ranks_are_disjoint_and_cover_without_padding(n, world):
    parts = shards(n, world, pad=False)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))  # each sample exactly once over all ranks


@pytest.mark.parametrize("n,world", [(12, 3), (10, 4), (7, 2)])
def test_padding_gives_equal_shares_and_repeats_only_the_shortfall(n, world):
    parts = shards(n, world, epoch=2)
    per_rank = -(-n // world)
    assert all(len(p) == per_rank for p in parts)
    flat = [i for p in parts for i in p]
    assert set(flat) == set(range(n))  # covering
    counts = np.bincount(flat, minlength=n)
    assert counts.max() <= 2 and (counts == 2).sum() == per_rank * world - n  # padding repeats only what is missing


def test_epochs_and_seeds_change_the_order_deterministically():
    def order(seed, epoch):
        s = EpochSampler(50, seed)
        s.set_epoch(epoch)
        return [i for _, i in s]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 3)) == list(range(50))
    ordered = EpochSampler(6, 1, shuffle=False)
    assert [i for _, i in ordered] == list(range(6))


def test_mid_epoch_skip_resumes_the_same_order_and_shortens_len():
    full = EpochSampler(23, seed=4, rank=1, world_size=2)
    full.set_epoch(3)
    whole = list(full)
    assert len(full) == len(whole) == 12
    part = EpochSampler(23, seed=4, rank=1, world_size=2)
    part.set_epoch(3, skip_samples=5)
    assert list(part) == whole[5:] and len(part) == 7
    part.set_epoch(4)  # the next epoch starts from its beginning again
    assert len(part) == 12 and part.skip == 0


def test_sample_seeds_are_distinct_past_10007_samples():
    size, epochs, seeds = 30_000, 4, (0, 1, 1234)
    values = {sample_seed(s, e, i, size) for s in seeds for e in range(epochs) for i in range(size)}
    assert len(values) == len(seeds) * epochs * size
    assert all(0 <= v < 2**64 for v in list(values)[:1000])
    # torch's CPU generator keeps only the low 32 bits of a seed: those are distinct within a run too.
    for s in seeds:
        low = {sample_seed(s, e, i, size) & 0xFFFFFFFF for e in range(epochs) for i in range(size)}
        assert len(low) == epochs * size
    # The formula replaced here repeated: sample 10,007 of epoch 0 had the seed of sample 0 of epoch 1.
    assert sample_seed(0, 0, 10_007, size) != sample_seed(0, 1, 0, size)


class Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 20_000

    def __getitem__(self, index):
        return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seeded_dataset_draws_depend_on_the_key_only_and_leave_the_callers_rng_alone():
    ds = SeededDataset(Draws(), None, seed=7)
    torch.manual_seed(0)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    a = ds[(2, 15_000)]
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]
    assert ds[(2, 15_000)] == a and ds[(3, 15_000)] != a and ds[(2, 15_001)] != a
    # Past 10,007 samples the augmentation of one sample no longer equals another's.
    assert ds[(0, 10_007)] != ds[(1, 0)]
    assert SeededDataset(Draws(), None, seed=8)[(2, 15_000)] != a


def test_loading_a_sample_never_reseeds_cuda_generators(monkeypatch):
    """torch.manual_seed also seeds every CUDA generator (the stream CUDA dropout draws from); loading
    in the training process (--workers 0) must leave it alone. Checked on CPU by watching the call."""
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    torch.manual_seed(0)
    assert calls == [0]  # the watch works: this is what the old loading code did per sample
    SeededDataset(Draws(), None, seed=1)[(0, 5)]
    assert calls == [0]
