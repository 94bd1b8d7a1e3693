"""Fixtures shared by the training tests: tiny datasets written in the official formats."""

import os

import pytest
import torch

from data.prepare_nyuv2 import prepare_nyuv2
from data.synthetic import write_adience, write_mtan, write_nyuv2

# `make test` runs several worker processes (pytest-xdist): each gets its share of the cores, and so do
# the scripts it starts (OMP_NUM_THREADS is inherited); torch's default, every core per process,
# oversubscribes them.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = max(1, (os.cpu_count() or 1) // _workers)
    torch.set_num_threads(_threads)
    os.environ["OMP_NUM_THREADS"] = str(_threads)


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    """A prepared NYUv2 folder from a 12-frame official-format .mat (64 x 80 frames)."""
    root = tmp_path_factory.mktemp("nyu")
    write_nyuv2(root / "raw", n=12, frame_size=(64, 80))
    return prepare_nyuv2(
        root / "raw" / "nyu_depth_v2_labeled.mat", root / "raw" / "splits.mat", root / "prepared", progress=False
    )


@pytest.fixture(scope="module")
def adience(tmp_path_factory):
    """An Adience folder: fold files and aligned 48 px faces, 14 per fold."""
    return write_adience(tmp_path_factory.mktemp("adience"), per_fold=14, size=48)


@pytest.fixture(scope="module")
def mtan(tmp_path_factory):
    """An MTAN-layout NYUv2 folder with normals: 10 train and 3 test frames of 48 x 64, 13 classes."""
    return write_mtan(tmp_path_factory.mktemp("mtan") / "nyuv2", n_train=10, n_val=3, size=(48, 64))
