"""Fixtures shared by the training tests: tiny datasets written in the official formats."""

import pytest

from data.prepare_nyuv2 import prepare_nyuv2
from data.synthetic import write_adience, write_nyuv2


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
