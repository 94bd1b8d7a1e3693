"""Cityscapes: official layout (hand-written PNG / JSON fixture) and MTAN folder reading, label maps, disparity and
depth decoding, split carving, bad-input errors, and the synthetic writers read back.

The official fixture is written here with PIL directly: 4 x 10 frames whose labelIds hold every id 0..39 (34..39 are
not Cityscapes ids), whose disparity holds chosen 16-bit values, with one camera per city.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import Cityscapes, DataError, carve_val
from data.cityscapes_labels import CATEGORY_NAMES_7, CLASS_NAMES_19, LABELS, label_lut
from data.synthetic import main, write_cityscapes, write_cityscapes_mtan

H, W = 4, 10
# the brief's lists, by hand: 19 classes = these label ids in trainId order; 7 = categoryId 1..7
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
CATEGORIES = {**dict.fromkeys(range(7, 11), 0), **dict.fromkeys(range(11, 17), 1), **dict.fromkeys(range(17, 21), 2),
              21: 3, 22: 3, 23: 4, 24: 5, 25: 5, **dict.fromkeys(range(26, 34), 6)}  # fmt: skip
LABEL_IDS = np.arange(H * W).reshape(H, W).astype(np.uint8)  # ids 0..39
P_ROW = [0, 1, 257, 513, 2049, 65535, 300, 129, 1000, 3]  # disparity PNG values of every row
CAMERAS = {"aachen": (0.25, 2000.0), "bremen": (0.2, 1000.0), "frankfurt": (0.2, 2262.5), "lindau": (0.21, 2262.5)}
# written in this (unsorted) order; k = position here, shown in the image's green channel
FRAMES = {
    "train": ["bremen_000003_000019", "aachen_000010_000019", "aachen_000002_000019", "bremen_000000_000019",
              "aachen_000002_000007"],
    "val": ["lindau_000000_000019", "frankfurt_000001_000019"],
}  # fmt: skip
SORTED_TRAIN = sorted(FRAMES["train"])  # city then stem: aachen_000002_000007, aachen_000002_000019, ...


def image_of(k: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([y * 10 + x, np.full((H, W), 10 * k), np.full((H, W), 200)], -1).astype(np.uint8)


def write_official(root: Path) -> Path:
    for split, stems in FRAMES.items():
        for k, stem in enumerate(stems):
            city = stem.split("_")[0]
            folders = {kind: root / kind / split / city for kind in ("leftImg8bit", "gtFine", "disparity", "camera")}
            for folder in folders.values():
                folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image_of(k)).save(folders["leftImg8bit"] / f"{stem}_leftImg8bit.png")
            Image.fromarray(LABEL_IDS).save(folders["gtFine"] / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folders["gtFine"] / f"{stem}_gtFine_color.png")
            p = np.array([P_ROW] * H, np.uint16)
            Image.fromarray(p).save(folders["disparity"] / f"{stem}_disparity.png")
            baseline, fx = CAMERAS[city]
            camera = {"extrinsic": {"baseline": baseline, "pitch": 0.04, "roll": 0.0, "x": 1.7, "y": 0.1, "yaw": 0.0,
                                    "z": 1.22}, "intrinsic": {"fx": fx, "fy": fx, "u0": 5.0, "v0": 2.0}}  # fmt: skip
            (folders["camera"] / f"{stem}_camera.json").write_text(json.dumps(camera, indent=4))
    return root


@pytest.fixture
def official(tmp_path):
    return write_official(tmp_path / "cityscapes")


def test_label_table_gives_the_official_19_and_7_class_maps():
    lut19, lut7 = label_lut(19), label_lut(7)
    for label_id in range(256):
        assert lut19[label_id] == TRAIN_IDS.get(label_id, 255), label_id
        assert lut7[label_id] == CATEGORIES.get(label_id, 255), label_id
    by_id = {lb.id: lb for lb in LABELS}
    assert [by_id[i].name for i in TRAIN_IDS] == list(CLASS_NAMES_19)
    assert CLASS_NAMES_19[:3] == ("road", "sidewalk", "building") and CLASS_NAMES_19[-1] == "bicycle"
    assert CATEGORY_NAMES_7 == ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
    assert [lb.id for lb in LABELS if lb.category == "void"] == list(range(7))
    assert by_id[-1].name == "license plate" and len(LABELS) == 35
    with pytest.raises(ValueError, match="seg_classes must be 19 or 7, got 8"):
        label_lut(8)


def test_label_table_matches_cityscapesscripts():
    # the official package is a test requirement (requirements-dev.txt): this check never skips
    import cityscapesscripts.helpers.labels as scripts

    theirs = [(lb.name, lb.id, lb.trainId, lb.category, lb.categoryId, lb.hasInstances, lb.ignoreInEval, lb.color)
              for lb in scripts.labels]  # fmt: skip
    assert [tuple(lb) for lb in LABELS] == theirs


@pytest.mark.parametrize("seg_classes, table", [(19, TRAIN_IDS), (7, CATEGORIES)])
def test_official_label_maps_pixel_by_pixel(official, seg_classes, table):
    ds = Cityscapes(official, "train", seg_classes=seg_classes)
    assert (ds.layout, ds.num_classes, ds.ignore_index) == ("official", seg_classes, 255)
    assert len(ds.class_names) == seg_classes
    seg = ds[0]["seg"]
    assert seg.dtype == torch.int64 and seg.shape == (H, W)
    for y in range(H):
        for x in range(W):
            assert seg[y, x].item() == table.get(y * W + x, 255), (y, x)


def test_official_image_disparity_and_depth(official):
    ds = Cityscapes(official, "train")
    assert ds.target == "disparity" and ds.disparity_width == W
    assert ds.stems == SORTED_TRAIN and ds.indices == [0, 1, 2, 3, 4]
    for i, stem in enumerate(ds.stems):  # files are read in city-then-stem order
        image = ds[i]["image"]
        assert image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert torch.equal(image, torch.from_numpy(image_of(FRAMES["train"].index(stem))).permute(2, 0, 1))
    disparity = ds[0]["depth"]
    assert disparity.dtype == torch.float32 and disparity.shape == (1, H, W)
    # (p - 1) / 256 by hand: p 0 -> 0 (invalid), 1 -> 0, 257 -> 1, 513 -> 2, 2049 -> 8, 65535 -> 255.9921875
    expected = [0.0, 0.0, 1.0, 2.0, 8.0, 255.9921875, 299 / 256, 0.5, 999 / 256, 2 / 256]
    assert disparity[0, 2].tolist() == expected  # all exact in float32
    assert torch.equal(disparity[0, 0], disparity[0, 3])
    aachen = Cityscapes(official, "train", target="depth")  # aachen: baseline 0.25 m, fx 2000 -> B fx = 500
    assert aachen.target == "depth" and aachen.stems[0].startswith("aachen")
    depth = aachen[0]["depth"][0, 1].tolist()
    assert depth[:5] == [0.0, 0.0, 500.0, 250.0, 62.5] and depth[7] == 1000.0
    assert depth[5] == pytest.approx(500 / 255.9921875)
    bremen = aachen[3]["depth"][0, 1].tolist()  # bremen: 0.2 m x 1000 px = 200
    assert aachen.stems[3].startswith("bremen") and bremen[2:5] == [200.0, 100.0, 25.0]


def test_official_splits(official):
    test = Cityscapes(official, "test")  # official val
    assert test.stems == ["frankfurt_000001_000019", "lindau_000000_000019"]
    assert torch.equal(test[0]["image"][1], torch.full((H, W), 10, dtype=torch.uint8))  # written second: k = 1
    assert test[1]["depth"][0, 0, 2].item() == 1.0
    assert Cityscapes(official, "test", target="depth")[1]["depth"][0, 0, 2].item() == pytest.approx(0.21 * 2262.5)
    val = Cityscapes(official, "val", val_fraction=0.4, val_seed=3)
    rest = Cityscapes(official, "train_noval", val_fraction=0.4, val_seed=3)
    rest_pos, val_pos = carve_val(5, 0.4, 3)
    assert val.indices == val_pos.tolist() and rest.indices == rest_pos.tolist() and len(val) == 2
    assert val.stems == [SORTED_TRAIN[p] for p in val_pos] and sorted(val.stems + rest.stems) == SORTED_TRAIN
    assert val[1]["index"] == val_pos[1]
    assert torch.equal(val[1]["image"], Cityscapes(official, "train")[int(val_pos[1])]["image"])
    assert Cityscapes(official, "val").indices == carve_val(5)[1].tolist()  # defaults: 10 %, seed 0, at least one


def test_transform_is_applied(official):
    ds = Cityscapes(official, "train", transform=lambda s: {**s, "seen": True})
    assert ds[0]["seen"] and ds[0]["index"] == 0


def write_mtan(root: Path, n: dict[str, int]) -> Path:
    """MTAN cityscapes folder: image (H, W, 3) float64 in [0, 1], label_7 / label_19 float with -1, depth (H, W, 1)."""
    y, x = np.mgrid[0:H, 0:W]
    for split, count in n.items():
        for part in ("image", "label_7", "label_19", "depth"):
            (root / split / part).mkdir(parents=True)
        for i in range(count):
            np.save(root / split / "image" / f"{i}.npy", np.stack([(y + x + i) / 255, x / 255, y / 255], -1))
            np.save(root / split / "label_7" / f"{i}.npy", ((x + i) % 8 - 1).astype(np.float32))
            np.save(root / split / "label_19" / f"{i}.npy", ((x + y + i) % 20 - 1).astype(np.float32))
            depth = np.where(x == 0, 0, 0.01 * x + 0.1 * i).astype(np.float32)[..., None]
            np.save(root / split / "depth" / f"{i}.npy", depth)
    return root


def test_mtan_folder(tmp_path):
    root = write_mtan(tmp_path, {"train": 6, "val": 2})
    y, x = np.mgrid[0:H, 0:W]
    test = Cityscapes(root, "test", seg_classes=7)
    assert (test.layout, len(test), test.num_classes, test.disparity_width, test.indices) == ("mtan", 2, 7, 8, [0, 1])
    sample = test[1]
    assert sample["index"] == 1 and sample["image"].dtype == torch.uint8
    assert np.array_equal(sample["image"][0].numpy(), y + x + 1) and np.array_equal(sample["image"][1].numpy(), x)
    label7 = (x + 1) % 8 - 1
    assert np.array_equal(sample["seg"].numpy(), np.where(label7 < 0, 255, label7))
    assert sample["depth"].shape == (1, H, W) and sample["depth"][0, 0, 0] == 0  # stored values, unchanged
    assert sample["depth"][0, 2, 3].item() == pytest.approx(np.float32(0.03 + 0.1))
    seg19 = Cityscapes(root, "test")[0]["seg"].numpy()
    assert np.array_equal(seg19, np.where((x + y) % 20 - 1 < 0, 255, (x + y) % 20 - 1))
    val, rest = Cityscapes(root, "val", val_fraction=0.34), Cityscapes(root, "train_noval", val_fraction=0.34)
    assert val.indices == carve_val(6, 0.34)[1].tolist() and len(val) + len(rest) == 6
    assert val[0]["index"] == val.indices[0]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_argument_errors(official, tmp_path):
    with pytest.raises(ValueError, match="split must be one of train, test, val, train_noval, got 'validation'"):
        Cityscapes(official, "validation")
    with pytest.raises(ValueError, match="seg_classes must be 19 or 7, got 20"):
        Cityscapes(official, "train", seg_classes=20)
    with pytest.raises(ValueError, match="target must be one of disparity, depth, got 'inverse'"):
        Cityscapes(official, "train", target="inverse")
    with pytest.raises(FileNotFoundError, match=r"nowhere: folder not found .*leftImg8bit.*MTAN"):
        Cityscapes(tmp_path / "nowhere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: unknown Cityscapes layout; expected the official layout") as err:
        Cityscapes(tmp_path / "empty", "train")
    one_line(err)
    root = write_mtan(tmp_path / "mtan", {"train": 2, "val": 1})
    with pytest.raises(DataError, match=r"mtan: target='depth' needs the official layout") as err:
        Cityscapes(root, "train", target="depth")
    one_line(err)


@pytest.mark.parametrize(
    "kind, path, pattern",
    [
        ("label", "gtFine/train/aachen/aachen_000002_000019_gtFine_labelIds.png", "label file of every train image"),
        ("disparity", "disparity/train/bremen/bremen_000000_000019_disparity.png", "disparity file"),
        ("camera", "camera/train/aachen/aachen_000010_000019_camera.json", "camera file"),
    ],
)
def test_missing_companion_file_is_named(official, kind, path, pattern):
    (official / path).unlink()
    with pytest.raises(DataError, match=rf"{path}: missing; expected the {pattern}") as err:
        Cityscapes(official, "train")
    one_line(err)
    Cityscapes(official, "test")  # the other split is complete


def test_missing_split_folder_and_bad_names(official):
    import shutil

    shutil.rmtree(official / "leftImg8bit" / "val")
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/val: folder not found \(expected city folders"):
        Cityscapes(official, "test")
    bad = official / "leftImg8bit" / "train" / "aachen" / "aachen_12_000019_leftImg8bit.png"
    bad.write_bytes(b"")
    with pytest.raises(DataError, match=r"aachen_12_000019_leftImg8bit\.png: unexpected name; expected aachen_<seq"):
        Cityscapes(official, "train")


def test_bad_file_contents(official):
    ds = Cityscapes(official, "train", target="depth")
    label = official / "gtFine/train/aachen" / f"{ds.stems[0]}_gtFine_labelIds.png"
    Image.fromarray(np.zeros((H, W - 1), np.uint8)).save(label)
    with pytest.raises(DataError, match=rf"{ds.stems[0]}_gtFine_labelIds\.png: size 9 x 4; expected 10 x 4") as err:
        ds[0]
    one_line(err)
    disparity = official / "disparity/train/aachen" / f"{ds.stems[1]}_disparity.png"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(disparity)  # 8-bit
    with pytest.raises(DataError, match=r"_disparity\.png: PIL mode L; expected a 16-bit disparity PNG"):
        ds[1]
    image = official / "leftImg8bit/train/aachen" / f"{ds.stems[2]}_leftImg8bit.png"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(image)
    with pytest.raises(DataError, match=r"_leftImg8bit\.png: PIL mode L; expected an 8-bit RGB image"):
        ds[2]
    camera = official / "camera/train/bremen" / f"{ds.stems[3]}_camera.json"
    camera.write_text(json.dumps({"extrinsic": {}, "intrinsic": {"fx": 1.0}}))
    with pytest.raises(DataError, match=r"_camera\.json: unreadable \(KeyError: 'baseline'\); expected a camera JSON"):
        ds[3]
    assert Cityscapes(official, "train")[3]["depth"].shape == (1, H, W)  # disparity does not read the camera


def test_mtan_bad_labels(tmp_path):
    root = write_mtan(tmp_path, {"train": 2, "val": 1})
    np.save(root / "train" / "label_7" / "1.npy", np.full((H, W), 7, np.float32))
    with pytest.raises(DataError, match=r"train/label_7/1\.npy: values 7\.\.7; expected -1\.\.6"):
        Cityscapes(root, "train", seg_classes=7)[1]
    (root / "val" / "depth" / "0.npy").unlink()
    with pytest.raises(DataError, match=r"val/depth: expected files 0\.npy \.\. 0\.npy; missing 0\.npy"):
        Cityscapes(root, "test")


# --- the synthetic writers, read back --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_cityscapes(tmp_path_factory.mktemp("cs"), n_train=6, n_val=2, size=(64, 128), seed=1)


def test_synthetic_official_layout(synthetic):
    train = Cityscapes(synthetic, "train")
    assert len(train) == 6 and train.stems[:2] == ["aachen_000000_000019", "aachen_000001_000019"]
    assert train.stems[3] == "bochum_000000_000019" and len(Cityscapes(synthetic, "test")) == 2
    assert (synthetic / "gtFine/val/lindau/lindau_000000_000019_gtFine_instanceIds.png").is_file()
    seg = torch.stack([train[i]["seg"] for i in range(len(train))])
    assert {0, 1, 2, 8, 10, 13, 255} <= set(seg.unique().tolist())  # road sidewalk building vegetation sky car
    labels = np.stack([np.array(Image.open(p)) for p in sorted(synthetic.glob("gtFine/train/*/*_labelIds.png"))])
    assert {0, 1, 2, 3, 4, 6, 7, 8, 9, 11, 21, 23, 26} <= set(np.unique(labels).tolist())
    assert 24 in labels or 24 in np.array(Image.open(next(synthetic.glob("gtFine/val/*/*_labelIds.png"))))
    seg7 = Cityscapes(synthetic, "train", seg_classes=7)[0]["seg"]
    assert set(seg7.unique().tolist()) <= set(range(7)) | {255}
    camera = json.loads(next(synthetic.glob("camera/train/aachen/*.json")).read_text())
    assert camera["extrinsic"]["baseline"] == 0.209313
    assert camera["intrinsic"]["fx"] == pytest.approx(2262.52 * 128 / 2048, rel=0.005)


def test_synthetic_disparity_follows_the_geometry(synthetic):
    train, depth = Cityscapes(synthetic, "train"), Cityscapes(synthetic, "train", target="depth")
    checked_cars = 0
    for i, stem in enumerate(train.stems):
        camera = json.loads((synthetic / "camera/train" / stem.split("_")[0] / f"{stem}_camera.json").read_text())
        fy, v0, cam_h = camera["intrinsic"]["fy"], camera["intrinsic"]["v0"], camera["extrinsic"]["z"]
        sample, z = train[i], depth[i]["depth"][0].numpy()
        seg, disparity = sample["seg"].numpy(), sample["depth"][0].numpy()
        assert (disparity[seg == 10] == 0).all() and (z[seg == 10] == 0).all()  # sky: invalid
        rows, cols = np.nonzero((seg == 0) & (z > 0))  # road points lie on the ground, z metres below the camera
        height = (rows - v0) * z[rows, cols] / fy
        assert np.median(np.abs(height / cam_h - 1)) < 0.03
        road = np.where((seg == 0) & (disparity > 0), disparity, np.nan)
        means = np.nanmean(road[np.isfinite(road).sum(1) > 3], 1)
        assert (np.diff(means) > 0).all()  # larger toward the bottom, falling toward the horizon
        for x in np.nonzero((seg == 13).any(0))[0]:  # a car's lowest row is where the ground has its depth
            col = np.nonzero((seg[:, x] == 13) & (z[:, x] > 0))[0]
            if len(col) > 2 and col[-1] + 1 < seg.shape[0] and seg[col[-1] + 1, x] in (0, 1):
                assert abs(v0 + fy * cam_h / np.median(z[col, x]) - col[-1]) < 1.6
                checked_cars += 1
    assert checked_cars > 5


def test_synthetic_cli_and_mtan(tmp_path):
    main(["cityscapes", "--out", str(tmp_path / "cs"), "--n-train", "2", "--n-val", "1", "--size", "32", "64"])
    assert len(Cityscapes(tmp_path / "cs", "train")) == 2
    assert Cityscapes(tmp_path / "cs", "test")[0]["seg"].shape == (32, 64)
    root = write_cityscapes_mtan(tmp_path / "mtan", n_train=3, n_val=2, size=(32, 64), seed=2)
    assert np.load(root / "train/image/0.npy").dtype == np.float32
    assert np.load(root / "val/depth/1.npy").shape == (32, 64, 1)
    ds = Cityscapes(root, "test")
    values = torch.cat([ds[i]["depth"].flatten() for i in range(len(ds))])
    assert (values == 0).any() and 0.05 < values.max() < 0.5  # MTAN scale: disparity at 2048 px / 256
    assert {0, 2, 10, 255} <= set(ds[0]["seg"].unique().tolist())
    assert set(Cityscapes(root, "train", seg_classes=7)[0]["seg"].unique().tolist()) <= set(range(7)) | {255}
