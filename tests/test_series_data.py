"""Phototriage reader, pair transforms and the synthetic set, on fixtures in the official layout."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train_series
from data import DataError, PairEvalTransform, PairTrainTransform, Phototriage
from data.errors import DataNotFoundError
from data.phototriage import fix_scale_crop, read_pairlist
from data.synthetic_series import write_phototriage

TRAIN = """\
3 1 2 0.800 1 2
3 1 3 0.500 1 3
3 2 3 0.250 3 2
17 2 1 0.600 1 2
"""
VAL = "3 1 2 0.300 2 1\n"
TEST = "\n120 1 2 0.100 2 1\n"  # a blank line is allowed


def photo(root: Path, folder: str, name: str, value: int, size=(12, 16)) -> None:
    arr = np.full((*size, 3), value, np.uint8)
    arr[0, 0] = (255, 0, 0)
    path = root / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def official(tmp_path) -> Path:
    imgs = "train_val/train_val_imgs"
    for k, name in enumerate(["000003-01.JPG", "000003-02.JPG", "000003-03.JPG", "000017-01.JPG", "000017-02.JPG"]):
        photo(tmp_path, imgs, name, 40 * k, size=(12, 16) if k % 2 else (16, 12))
    photo(tmp_path, "test/test_imgs", "000120-01.JPG", 10)
    photo(tmp_path, "test/test_imgs", "000120-02.JPG", 20)
    (tmp_path / "train_val" / "train_pairlist.txt").write_text(TRAIN)
    (tmp_path / "train_val" / "val_pairlist.txt").write_text(VAL)
    (tmp_path / "test" / "test_pairlist.txt").write_text(TEST)
    return tmp_path


def test_reader_returns_the_labelled_pairs_with_targets_and_counts_ties(official, caplog):
    with caplog.at_level(logging.INFO, logger="data.phototriage"):
        train = Phototriage(official, "train")
    assert "left out 1 pairs with p = 0.5" in caplog.text
    assert len(train) == 3 and train.ties == 1
    got = [(s["series"], s["i"], s["j"], s["p"], s["target"]) for s in train]
    assert got == [(3, 1, 2, 0.8, 0), (3, 2, 3, 0.25, 1), (17, 2, 1, 0.6, 0)]
    s = train[2]  # photos i = 2 and j = 1 of series 17, as stored
    with Image.open(official / "train_val/train_val_imgs/000017-02.JPG") as img:
        assert torch.equal(s["a"], torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()))
    assert s["a"].dtype == torch.uint8 and s["a"].shape == (3, 16, 12) and s["b"].shape == (3, 12, 16)
    val, test = Phototriage(official, "val"), Phototriage(official, "test")
    assert [(p.series, p.i, p.j, t) for p, t in zip(val.pairs, val.targets)] == [(3, 1, 2, 1)]
    assert [(p.series, p.i, p.j, t) for p, t in zip(test.pairs, test.targets)] == [(120, 1, 2, 1)]


def test_reader_errors_name_what_is_wrong(official):
    with pytest.raises(DataNotFoundError, match="folder not found"):
        Phototriage(official / "nowhere", "train")
    with pytest.raises(ValueError, match="split"):
        Phototriage(official, "trainval")
    (official / "train_val/train_val_imgs/000003-03.JPG").unlink()
    (official / "train_val/train_val_imgs/000017-01.JPG").unlink()
    with pytest.raises(DataNotFoundError, match=r"2 image file\(s\) of the train pairs missing, e.g. 000003-03.JPG"):
        Phototriage(official, "train")  # at build time, not at the first read
    Phototriage(official, "val")  # its photos are all there
    lists = official / "train_val" / "val_pairlist.txt"
    for bad, what in [
        ("3 1 2 0.3 2\n", "line 2 has 5 fields; expected 6"),
        ("3 1 x 0.3 2 1\n", "line 2: '3 1 x"),
        ("3 1 2 1.3 2 1\n", "line 2: p = 1.3"),
        ("3 2 2 0.3 2 1\n", "line 2: series 3, photos 2 and 2"),
    ]:
        lists.write_text(VAL + bad)
        with pytest.raises(DataError, match=f"val_pairlist.txt: {what}"):
            read_pairlist(lists)
    (official / "test" / "test_imgs" / "000120-01.JPG").unlink()
    (official / "test" / "test_imgs" / "000120-02.JPG").unlink()
    (official / "test" / "test_imgs").rmdir()
    with pytest.raises(DataNotFoundError, match="test_imgs: folder not found"):
        Phototriage(official, "test")


def test_script_exits_2_with_one_line_on_bad_data(official, tmp_path, capsys):
    (official / "train_val/train_val_imgs/000003-03.JPG").unlink()
    base = [
        "--crop-size",
        "32",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--pretrained",
        "none",
        "--out",
        str(tmp_path / "w" / "s_last.pth"),
        "--logdir",
        str(tmp_path / "run"),
    ]
    for root, what in [(official, "1 image file(s) of the train pairs missing"), (tmp_path / "none", "not found")]:
        code = train_series.main(train_series.get_args_parser().parse_args(["--data-root", str(root), *base]))
        err = capsys.readouterr().err
        assert code == 2 and what in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_fix_scale_crop_and_pair_transforms():
    land = torch.arange(3 * 40 * 60, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 40, 60)
    out = fix_scale_crop(land, 20)  # 40 x 60 -> 20 x 30, centre crop x from 5
    assert out.shape == (3, 20, 20)
    ref = torch.nn.functional.interpolate(land[None].float(), size=(20, 30), mode="bilinear", antialias=True)[0]
    assert torch.allclose(out.float(), ref.round().clamp(0, 255)[:, :, 5:25], atol=1)
    assert fix_scale_crop(land.transpose(1, 2), 20).shape == (3, 20, 20)  # portrait
    sample = {"a": land, "b": land.flip(-1), "series": 1, "i": 1, "j": 3, "p": 0.8, "target": 0}
    plain = PairEvalTransform(20)(sample)
    assert plain["a"].dtype == torch.float32 and plain["a"].shape == (3, 20, 20)
    assert torch.equal(PairTrainTransform(20)(sample)["a"], plain["a"])  # flip and swap are off by default
    flipped = PairTrainTransform(20, flip_p=1.0)(sample)
    assert torch.equal(flipped["a"], plain["a"].flip(-1)) and torch.equal(flipped["b"], plain["b"].flip(-1))
    swapped = PairTrainTransform(20, swap_p=1.0)(sample)
    assert torch.equal(swapped["a"], plain["b"]) and torch.equal(swapped["b"], plain["a"])
    assert (swapped["i"], swapped["j"], swapped["p"], swapped["target"]) == (3, 1, 0.2, 1)


def test_synthetic_set_is_in_the_official_format(tmp_path):
    root = write_phototriage(tmp_path / "pt", series=(4, 2, 2), size=32, seed=1)
    for split, n_series in (("train", 4), ("val", 2), ("test", 2)):
        folder = "test" if split == "test" else "train_val"
        lines = (root / folder / f"{split}_pairlist.txt").read_text().splitlines()
        rows = [line.split() for line in lines]
        assert all(len(r) == 6 and len(r[3].split(".")[1]) == 3 for r in rows)
        series = sorted({int(r[0]) for r in rows})
        assert len(series) == n_series
        for s in series:
            pairs = [(int(r[1]), int(r[2])) for r in rows if int(r[0]) == s]
            n = max(max(p) for p in pairs)
            assert len(pairs) == n * (n - 1) // 2
        for r in rows:  # p > 0.5 exactly when rank_i < rank_j, apart from ties
            assert r[3] == "0.500" or (float(r[3]) > 0.5) == (int(r[4]) < int(r[5]))
        ds = Phototriage(root, split)
        assert len(ds) + ds.ties == len(rows)
    assert Phototriage(root, "train").ties >= 1
