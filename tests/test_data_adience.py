"""Adience: fold-file parsing, label policy and drop counts, image paths, protocol helpers, bad-input errors.

The fixture is written here (fold files exactly like the official ones, small JPEGs), independent of data.synthetic.
"""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import AGE_GROUPS, Adience, DataError, adience_protocol, split_train_val

HEADER = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score"
# per fold: (user_id, face_id, age string, gender); rows marked * must be dropped
ROWS = {
    0: [
        ("100@N00", 1, "(25, 32)", "m"),
        ("100@N00", 1, "None", ""),  # * age and gender
        ("101@N00", 2, "(0, 2)", "f"),
        ("101@N00", 3, "(25, 23)", "f"),  # * irregular range
        ("102@N00", 4, "(60, 100)", "u"),  # * gender
        ("102@N00", 5, "(8, 12)", "m"),
    ],
    1: [
        ("200@N01", 6, "35", "f"),  # * bare integer
        ("200@N01", 6, "(38, 43)", "f"),
        ("201@N01", 7, "(4, 6)", ""),  # * empty gender
        ("201@N01", 8, "(15, 20)", "m"),
        ("202@N01", 9, "(48, 53)", "f"),
    ],
    2: [("300@N02", 10, "(25, 32)", "f"), ("301@N02", 11, "(60, 100)", "m")],
    3: [("400@N03", 12, "(0, 2)", "m"), ("401@N03", 13, "(4, 6)", "f")],
    4: [("500@N04", 14, "(8, 12)", "f"), ("501@N04", 15, "(38, 43)", "m")],
}


def image_name(fold: int, row: int) -> str:
    return f"{1000 * fold + row}_a1b2c3_o.jpg"


def write_adience(root: Path, folds=ROWS, image_dir: str = "aligned", prefix: str = "landmark_aligned_face") -> None:
    """Official-format fold files; one non-square JPEG (20 x 12, distinct colour per row) per row."""
    for fold, rows in folds.items():
        lines = [HEADER]
        for k, (user, face, age, gender) in enumerate(rows):
            name = image_name(fold, k)
            lines.append("\t".join(map(str, [user, name, face, age, gender, 301, 105, 640, 641, 0, -15, 94])))
            path = root / image_dir / user / f"{prefix}.{face}.{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 12), (40 * fold, 20 * k, 200)).save(path, quality=95)
        (root / f"fold_{fold}_data.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("adience")
    write_adience(path)
    return path


def test_label_policy_order_and_paths(root):
    ds = Adience(root, folds=[1, 0])
    assert len(ds) == 3 + 3
    assert ds.subjects == ["200@N01", "201@N01", "202@N01", "100@N00", "101@N00", "102@N00"]  # fold order as given
    assert ds.targets["gender"] == [1, 0, 1, 0, 1, 0]
    assert ds.targets["age"] == [5, 3, 6, 4, 0, 2]
    assert ds.paths[0] == f"aligned/200@N01/landmark_aligned_face.6.{image_name(1, 1)}"
    assert ds.dropped == {"age": 3, "gender": 3}  # fold 0: None, (25, 23); fold 1: 35 / fold 0: '', u; fold 1: ''
    sample = ds[4]
    assert sample["path"] == f"aligned/101@N00/landmark_aligned_face.2.{image_name(0, 2)}"
    assert (sample["gender"], sample["age"]) == (1, 0)
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 12, 20)  # (3, H, W) as stored
    assert np.allclose(sample["image"].float().mean((1, 2)).numpy(), (0, 40, 200), atol=3)


def test_drop_counts_are_logged_once_per_reason(root, caplog):
    with caplog.at_level(logging.INFO, logger="data.adience"):
        Adience(root, folds=[0])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "dropped 2 rows whose age is not one of the 8 groups" in lines[0]
    assert "dropped 2 rows whose gender is not m or f" in lines[1]


def test_fold_membership(root):
    ds = {k: Adience(root, folds=[k]) for k in range(5)}
    assert [len(d) for d in ds.values()] == [3, 3, 2, 2, 2]
    assert all(p.startswith("aligned/") and "_o.jpg" in p for d in ds.values() for p in d.paths)
    assert not set(ds[2].subjects) & set(ds[3].subjects)
    assert set(ds[3].subjects) == {"400@N03", "401@N03"}
    assert AGE_GROUPS.index("(60, 100)") == 7 and ds[2].targets["age"] == [4, 7]


def test_faces_dir_and_custom_pattern(tmp_path):
    write_adience(tmp_path, {0: ROWS[0]}, image_dir="faces", prefix="coarse_tilt_aligned_face")
    ds = Adience(tmp_path, folds=[0], image_dir="faces")
    assert ds.paths[0] == f"faces/100@N00/coarse_tilt_aligned_face.1.{image_name(0, 0)}"
    assert ds[0]["image"].shape == (3, 12, 20)
    custom = Adience(
        tmp_path, [0], image_dir="faces", pattern="{user_id}/coarse_tilt_aligned_face.{face_id}.{original_image}"
    )
    assert custom.paths == ds.paths
    with pytest.raises(ValueError, match="pass pattern="):
        Adience(tmp_path, [0], image_dir="frontal")


def test_protocol_helpers():
    assert adience_protocol(0) == ([1, 2, 3, 4], 0)
    assert adience_protocol(3) == ([0, 1, 2, 4], 3)
    for bad in (5, -1, "1", 1.0, True):
        with pytest.raises(ValueError, match=r"fold must be an int in 0\.\.4"):
            adience_protocol(bad)


class Subjects:
    """Stand-in for a dataset: 30 users with 1..6 samples each, interleaved."""

    def __init__(self) -> None:
        rng = np.random.default_rng(5)
        self.subjects = [f"u{k}" for k in rng.integers(0, 30, 120)]


def test_split_train_val_is_subject_exclusive_and_seeded():
    ds = Subjects()
    train, val = split_train_val(ds, val_fraction=0.1, seed=0)
    assert sorted(train + val) == list(range(len(ds.subjects))) and train == sorted(train) and val == sorted(val)
    assert not {ds.subjects[i] for i in train} & {ds.subjects[i] for i in val}
    assert 12 <= len(val) < 12 + max(ds.subjects.count(s) for s in ds.subjects)  # first subjects reaching 10 %
    assert split_train_val(ds, 0.1, 0) == (train, val)
    assert split_train_val(ds, 0.1, 1) != (train, val)
    assert split_train_val(ds, 0.0, 0) == (list(range(120)), [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(ds, 1.5)


def test_split_train_val_on_dataset(root):
    ds = Adience(root, folds=adience_protocol(4)[0])
    train, val = split_train_val(ds, 0.3, seed=0)
    assert val and train and not {ds.subjects[i] for i in train} & {ds.subjects[i] for i in val}


def test_missing_images_are_named_with_count(tmp_path):
    write_adience(tmp_path)
    removed = [next((tmp_path / "aligned" / user).iterdir()) for user in ("100@N00", "202@N01")]
    for path in removed:
        path.unlink()
    with pytest.raises(DataError, match="2 image file") as exc:
        Adience(tmp_path, folds=[0, 1])
    for path in removed:
        assert str(path.relative_to(tmp_path)) in str(exc.value)
    assert isinstance(exc.value, FileNotFoundError)


def test_missing_root_and_fold_file(tmp_path, root):
    with pytest.raises(FileNotFoundError, match="nowhere: folder not found"):
        Adience(tmp_path / "nowhere", folds=[0])
    (tmp_path / "aligned").mkdir()
    with pytest.raises(DataError, match=r"fold_3_data\.txt: not found"):
        Adience(tmp_path, folds=[3])
    with pytest.raises(ValueError, match="fold must be"):
        Adience(root, folds=[7])


def test_malformed_fold_file(tmp_path):
    (tmp_path / "fold_0_data.txt").write_text("user_id,original_image\n")
    with pytest.raises(DataError, match="header is not the 12 TAB-separated columns"):
        Adience(tmp_path, folds=[0])
    (tmp_path / "fold_0_data.txt").write_text(HEADER + "\n100@N00\tx.jpg\t1\t(0, 2)\n")
    with pytest.raises(DataError, match="line 2 has 4 fields; expected 12"):
        Adience(tmp_path, folds=[0])
