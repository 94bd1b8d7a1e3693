"""NYUv2 ``seg_classes``: the official 40 classes, mapped to 13 with class13Mapping.mat's ``labels13``; the MTAN
folder's own 13 classes; errors for what a layout cannot give."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data import DataError, NYUv2
from data.synthetic import write_mtan

# labels13 of class13Mapping.mat for the 40-class ids 1..40, copied by hand from the design note (section 1.5)
_LABELS13 = "12 5 6 1 4 9 10 12 13 6 8 6 13 10 6 13 6 7 7 5 7 3 2 6 11 7 7 7 7 7 7 6 7 7 7 7 7 7 6 7"
LABELS13 = [int(v) for v in _LABELS13.split()]
NAMES13 = ["bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table", "tv",
           "wall", "window"]  # fmt: skip


def write_prepared(root: Path) -> Path:
    """A prepared folder (data.prepare_nyuv2's format) whose test frame holds every 40-class seg 0..39 and 255."""
    seg = np.append(np.arange(40), 255).astype(np.uint8).reshape(1, 1, 41).repeat(2, 1)
    for split, index in (("train", [2, 3]), ("test", [1])):
        (root / split).mkdir(parents=True)
        n = len(index)
        np.save(root / split / "image.npy", np.zeros((n, 2, 41, 3), np.uint8))
        np.save(root / split / "seg.npy", np.repeat(seg, n, 0))
        np.save(root / split / "depth.npy", np.ones((n, 2, 41), np.float32))
        np.save(root / split / "index.npy", np.array(index, np.int64))
    meta = {"format": "nyuv2-prepared", "version": 1, "num_classes": 40, "class_names": [f"c{i}" for i in range(40)]}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_every_40_class_id_maps_to_its_13_class(tmp_path):
    root = write_prepared(tmp_path / "p")
    ds = NYUv2(root, "test", seg_classes=13)
    assert (ds.num_classes, ds.class_names, ds.ignore_index) == (13, NAMES13, 255)
    seg = ds[0]["seg"]
    assert seg.dtype == torch.int64 and seg.shape == (2, 41)
    assert seg[0].tolist() == [v - 1 for v in LABELS13] + [255]
    # a few by name: wall (40-id 1) -> wall, floor (2) -> floor, ceiling (22) -> ceiling, television (25) -> tv
    for id40, name in ((1, "wall"), (2, "floor"), (22, "ceiling"), (25, "tv"), (4, "bed"), (40, "objects")):
        assert ds.class_names[seg[0, id40 - 1]] == name
    raw = NYUv2(root, "test")
    assert (raw.num_classes, raw.class_names[0]) == (40, "c0") and raw[0]["seg"][0].tolist() == [*range(40), 255]
    same = NYUv2(root, "test", seg_classes=40)
    assert same.num_classes == 40 and torch.equal(same[0]["seg"], raw[0]["seg"])


def test_official_13_classes_on_synthetic_frames(nyu):
    for split in ("train", "test", "val", "train_noval"):
        ds40, ds13 = NYUv2(nyu, split), NYUv2(nyu, split, seg_classes=13)
        assert ds13.indices == ds40.indices and ds13.num_classes == 13
        for i in range(len(ds40)):
            s40, s13 = ds40[i], ds13[i]
            lut = np.array([v - 1 for v in LABELS13] + [255] * 216)
            assert np.array_equal(s13["seg"].numpy(), lut[s40["seg"].numpy()])
            assert torch.equal(s13["image"], s40["image"]) and torch.equal(s13["depth"], s40["depth"])
    values = set(torch.cat([ds13[i]["seg"].flatten() for i in range(len(ds13))]).tolist())
    assert {2, 4, 11, 255} <= values and values <= set(range(13)) | {255}  # ceiling, floor, wall, unlabeled


def test_mtan_folder_has_13_classes_only(tmp_path):
    write_mtan(tmp_path, n_train=2, n_val=1, seed=0)
    own, asked = NYUv2(tmp_path, "test"), NYUv2(tmp_path, "test", seg_classes=13)
    assert own.num_classes == asked.num_classes == 13 and asked.class_names == NAMES13
    assert torch.equal(own[0]["seg"], asked[0]["seg"])
    with pytest.raises(DataError, match=r"an MTAN folder holds 13-class labels only; use seg_classes=13") as err:
        NYUv2(tmp_path, "test", seg_classes=40)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_bad_seg_classes(tmp_path):
    root = write_prepared(tmp_path / "p")
    with pytest.raises(ValueError, match="seg_classes must be None, 40 or 13, got 20"):
        NYUv2(root, "test", seg_classes=20)
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "num_classes": 13, "class_names": NAMES13}))
    with pytest.raises(DataError, match=r"meta\.json: 13 classes; expected 40 to map them"):
        NYUv2(root, "test", seg_classes=13)
    assert NYUv2(root, "test").num_classes == 13  # the folder's own classes still read
