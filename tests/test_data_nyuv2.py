"""NYUv2: official .mat -> prepared folder -> dataset round trip, MTAN folder reading, and bad-input errors.

The fixtures are written here with h5py / scipy directly in the official layout (independent of data.synthetic),
with patterns that differ under any axis swap or reshape.
"""

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from torch.utils.data import DataLoader

from data import DataError, NYUv2, carve_val
from data.prepare_nyuv2 import main, prepare_nyuv2

REPO = Path(__file__).resolve().parents[1]
H, W, N = 480, 640, 5
# raw label -> expected 40-class training label, from classMapping40.mat (Appendix B) by hand
KNOWN = {0: 255, 21: 0, 11: 1, 1: 39, 3: 2, 157: 3, 4: 21, 17: 23, 894: 39}
TRAIN, TEST = [5, 2, 3], [1, 4]  # 1-based; train deliberately unsorted to check that file order is kept


def frame(i: int) -> dict[str, np.ndarray]:
    """Natural-layout frame i: image (H, W, 3) uint8, raw (H, W) uint16, depth / raw_depth (H, W) float32."""
    y, x = np.mgrid[0:H, 0:W]
    image = np.stack([(y + 2 * x + 85 * c + 7 * i) % 256 for c in range(3)], axis=-1).astype(np.uint8)
    ids = np.array(list(KNOWN), np.uint16)
    raw = ids[(y // 16 * 3 + x // 32 + i) % len(ids)]
    depth = (0.5 + y / 100 + x / 1000 + i).astype(np.float32)
    raw_depth = np.where(x < 10, 0, depth - 0.25).astype(np.float32)
    return {"image": image, "raw": raw, "depth": depth, "raw_depth": raw_depth}


def write_official(folder: Path, n: int = N, keys: tuple[str, ...] = ("images", "labels", "depths", "rawDepths")):
    """Write nyu_depth_v2_labeled.mat (v7.3: HDF5 + MATLAB user block) and splits.mat (v5) like the real files."""
    frames = [frame(i) for i in range(n)]
    mat = folder / "nyu_depth_v2_labeled.mat"
    with h5py.File(mat, "w", userblock_size=512) as f:
        data = {
            "images": np.stack([fr["image"] for fr in frames]).transpose(0, 3, 2, 1),  # (N, 3, W, H)
            "labels": np.stack([fr["raw"] for fr in frames]).transpose(0, 2, 1),  # (N, W, H)
            "depths": np.stack([fr["depth"] for fr in frames]).transpose(0, 2, 1),
            "rawDepths": np.stack([fr["raw_depth"] for fr in frames]).transpose(0, 2, 1),
        }
        for key in keys:
            f.create_dataset(key, data=data[key])
    with open(mat, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + bytes(8) + b"\x00\x02IM")
    splits = folder / "splits.mat"
    scipy.io.savemat(
        splits, {"trainNdxs": np.array(TRAIN, np.uint16)[:, None], "testNdxs": np.array(TEST, np.uint16)[:, None]}
    )
    return mat, splits


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    folder = tmp_path_factory.mktemp("official")
    mat, splits = write_official(folder)
    prepared = prepare_nyuv2(mat, splits, folder / "prepared", progress=False)
    return folder, mat, splits, prepared


def expected_seg(raw: np.ndarray, table: dict[int, int] = KNOWN) -> np.ndarray:
    return np.vectorize(table.__getitem__)(raw)


def test_prepared_folder_format(official):
    _, _, _, prepared = official
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["format"] == "nyuv2-prepared" and meta["version"] == 1 and meta["depth"] == "filled"
    assert meta["splits"] == {"train": 3, "test": 2} and len(meta["class_names"]) == 40
    assert meta["class_names"][0] == "wall" and meta["class_names"][39] == "otherprop"
    image = np.load(prepared / "train" / "image.npy", mmap_mode="r")
    assert image.shape == (3, H, W, 3) and image.dtype == np.uint8
    assert np.load(prepared / "test" / "index.npy").tolist() == TEST
    assert not [p for p in prepared.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


@pytest.mark.parametrize("split, indices", [("train", TRAIN), ("test", TEST)])
def test_official_round_trip(official, split, indices):
    ds = NYUv2(official[3], split)
    assert (ds.layout, ds.num_classes, ds.ignore_index, len(ds), ds.indices) == (
        "official",
        40,
        255,
        len(indices),
        indices,
    )
    for k, nyu_index in enumerate(indices):
        sample, source = ds[k], frame(nyu_index - 1)
        assert sample["index"] == nyu_index
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, H, W)
        assert torch.equal(sample["image"], torch.from_numpy(source["image"]).permute(2, 0, 1))
        assert sample["seg"].dtype == torch.int64 and sample["seg"].shape == (H, W)
        assert np.array_equal(sample["seg"].numpy(), expected_seg(source["raw"]))
        assert sample["depth"].dtype == torch.float32 and sample["depth"].shape == (1, H, W)
        assert np.array_equal(sample["depth"][0].numpy(), source["depth"])


def test_seg_values_and_known_pixels(official):
    sample = NYUv2(official[3], "test")[0]  # NYU frame 1: raw id at (y, x) = KNOWN keys[(y//16*3 + x//32) % 9]
    assert set(sample["seg"].unique().tolist()) == set(KNOWN.values())
    assert sample["seg"][0, 0] == 255 and sample["seg"][0, 32] == 0 and sample["seg"][0, 64] == 1  # raw 0, 21, 11
    assert sample["seg"][0, 96] == 39 and sample["seg"][16, 0] == 39  # raw 1 (book) -> otherprop


def test_mapping_file_and_raw_depth(official, tmp_path):
    _, mat, splits, _ = official
    table = np.array(list(range(1, 41)) * 23, np.uint8)[:894]  # raw k -> ((k - 1) % 40) + 1
    scipy.io.savemat(tmp_path / "classMapping40.mat", {"mapClass": table[None, :]})
    out = prepare_nyuv2(
        mat, splits, tmp_path / "p", mapping=tmp_path / "classMapping40.mat", depth="raw", progress=False
    )
    sample, source = NYUv2(out, "train")[0], frame(TRAIN[0] - 1)
    mapped = {k: 255 if k == 0 else (k - 1) % 40 for k in KNOWN}
    assert np.array_equal(sample["seg"].numpy(), expected_seg(source["raw"], mapped))
    assert np.array_equal(sample["depth"][0].numpy(), source["raw_depth"])
    assert sample["depth"][0, :, :10].eq(0).all()
    assert json.loads((out / "meta.json").read_text())["depth"] == "raw"


def test_val_split_is_seeded_subset_of_train(tmp_path):
    n = 40
    rest, val = carve_val(n, 0.1, 0)
    assert len(val) == 4 and list(val) == sorted(val) and set(rest) | set(val) == set(range(n))
    assert not set(rest) & set(val)
    assert np.array_equal(val, np.sort(np.random.default_rng(0).permutation(n)[:4]))
    assert np.array_equal(carve_val(n, 0.1, 0)[1], val) and not np.array_equal(carve_val(n, 0.1, 1)[1], val)
    with pytest.raises(ValueError, match="val_fraction"):
        carve_val(n, 1.0)


def test_val_and_train_noval_splits(official):
    prepared = official[3]
    val = NYUv2(prepared, "val", val_fraction=0.34, val_seed=0)
    rest = NYUv2(prepared, "train_noval", val_fraction=0.34, val_seed=0)
    _, positions = carve_val(3, 0.34, 0)
    assert val.indices == [TRAIN[p] for p in positions] and len(val) == 1
    assert sorted(val.indices + rest.indices) == sorted(TRAIN)
    assert rest.indices == [i for i in TRAIN if i not in val.indices]  # file order kept
    assert torch.equal(val[0]["image"], torch.from_numpy(frame(val.indices[0] - 1)["image"]).permute(2, 0, 1))


def test_dataset_pickles_without_memory_maps(official):
    ds = NYUv2(official[3], "train")
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays is None and torch.equal(clone[1]["image"], ds[1]["image"])


def test_dataloader_workers_read_the_same_frames(official):
    ds = NYUv2(official[3], "train")
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert torch.cat([b["index"] for b in batches]).tolist() == TRAIN
    assert torch.equal(batches[1]["image"][0], ds[2]["image"]) and torch.equal(batches[0]["seg"][1], ds[1]["seg"])


def write_mtan(root: Path, n: dict[str, int]) -> None:
    """MTAN nyuv2/ folder: image (288, 384, 3) float64 in [0, 1], label float -1..12, depth (288, 384, 1), normal."""
    y, x = np.mgrid[0:288, 0:384]
    for split, count in n.items():
        for part in ("image", "label", "depth", "normal"):
            (root / split / part).mkdir(parents=True)
        for i in range(count):
            image = np.stack([(y + 2 * x + 50 * c + i) % 256 for c in range(3)], -1) / 255.0
            label = ((x // 24 + y // 48 + i) % 14 - 1).astype(np.float32)
            depth = np.where(x < 5, 0, 1 + y / 288 + i).astype(np.float32)[..., None]
            normal = np.stack([x / 384, -y / 288, np.full(x.shape, i + 1.0)], -1).astype(np.float32)
            for part, array in zip(("image", "label", "depth", "normal"), (image, label, depth, normal), strict=True):
                np.save(root / split / part / f"{i}.npy", array)


def test_mtan_folder(tmp_path):
    write_mtan(tmp_path, {"train": 10, "val": 3})
    test = NYUv2(tmp_path, "test")
    assert (test.layout, test.num_classes, len(test), test.indices) == ("mtan", 13, 3, [0, 1, 2])
    sample = test[2]
    y, x = np.mgrid[0:288, 0:384]
    assert sample["index"] == 2
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 288, 384)
    assert np.array_equal(sample["image"][1].numpy(), (y + 2 * x + 50 + 2) % 256)
    label = (x // 24 + y // 48 + 2) % 14 - 1
    assert sample["seg"].dtype == torch.int64
    assert np.array_equal(sample["seg"].numpy(), np.where(label < 0, 255, label))
    assert set(sample["seg"].unique().tolist()) == set(range(13)) | {255}
    assert sample["depth"].shape == (1, 288, 384) and sample["depth"][0, 10, 0] == 0
    assert sample["depth"][0, 10, 7].item() == pytest.approx(1 + 10 / 288 + 2)
    assert sample["normal"].shape == (3, 288, 384) and sample["normal"][2].eq(3.0).all()
    assert sample["normal"][0, 0, 192].item() == pytest.approx(0.5)
    val, rest = NYUv2(tmp_path, "val"), NYUv2(tmp_path, "train_noval")
    assert val.indices == carve_val(10)[1].tolist() and len(val) == 1 and len(rest) == 9
    assert NYUv2(tmp_path, "train")[4]["index"] == 4


def test_mtan_missing_file(tmp_path):
    write_mtan(tmp_path, {"train": 3, "val": 2})
    (tmp_path / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(DataError, match=r"train/depth.*missing 1\.npy"):
        NYUv2(tmp_path, "train")


def test_package_exports_resolve():
    import data

    assert sorted(data.__all__) == sorted(data._HOME)
    assert all(getattr(data, name) is not None for name in data.__all__)
    with pytest.raises(AttributeError):
        data.no_such_name  # noqa: B018


def test_dataset_folder_errors(tmp_path, official):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*folder not found.*prepare_nyuv2.*MTAN"):
        NYUv2(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match=r"unknown NYUv2 layout.*prepare_nyuv2.*MTAN nyuv2/"):
        NYUv2(tmp_path / "other")
    with pytest.raises(ValueError, match="train_noval"):
        NYUv2(official[3], "validation")


# --- bad inputs to the preparation: DataError in the library, one line + exit code 2 in the CLI ----------------


def bad_inputs(tmp_path: Path, official) -> dict[str, tuple[list[str], str]]:
    """name -> (CLI arguments, regex the one-line message must match)."""
    _, mat, splits, _ = official
    (tmp_path / "random.mat").write_bytes(np.random.default_rng(0).bytes(4096))
    scipy.io.savemat(tmp_path / "v5.mat", {"images": np.zeros((2, 2))})
    with h5py.File(tmp_path / "nokeys.mat", "w") as f:
        f.create_dataset("images", data=np.zeros((1, 3, 4, 3), np.uint8))
    scipy.io.savemat(tmp_path / "wrong_splits.mat", {"train": np.array([[1]])})
    scipy.io.savemat(tmp_path / "range_splits.mat", {"trainNdxs": np.array([[0], [1]]), "testNdxs": np.array([[2]])})
    scipy.io.savemat(tmp_path / "bad_mapping.mat", {"mapClass": np.zeros((1, 10), np.uint8)})
    return {
        "missing mat": (["--mat", str(tmp_path / "missing.mat"), "--splits", str(splits)], r"missing\.mat: not found"),
        "corrupt mat": (["--mat", str(tmp_path / "random.mat"), "--splits", str(splits)], r"random\.mat: not an HDF5"),
        "v5 as mat": (["--mat", str(tmp_path / "v5.mat"), "--splits", str(splits)], r"v5\.mat: a MATLAB v5 file"),
        "missing keys": (
            ["--mat", str(tmp_path / "nokeys.mat"), "--splits", str(splits)],
            r"missing dataset\(s\) labels, depths",
        ),
        "missing splits": (["--mat", str(mat), "--splits", str(tmp_path / "none.mat")], r"none\.mat: not found"),
        "v7.3 as splits": (["--mat", str(mat), "--splits", str(mat)], r"v7\.3 \(HDF5\) file; expected splits\.mat"),
        "wrong splits": (
            ["--mat", str(mat), "--splits", str(tmp_path / "wrong_splits.mat")],
            r"missing variable\(s\) trainNdxs, testNdxs",
        ),
        "range splits": (
            ["--mat", str(mat), "--splits", str(tmp_path / "range_splits.mat")],
            r"trainNdxs .*outside 1\.\.5",
        ),
        "bad mapping": (
            ["--mat", str(mat), "--splits", str(splits), "--mapping", str(tmp_path / "bad_mapping.mat")],
            r"bad_mapping\.mat: mapClass has 10 values",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing mat",
        "corrupt mat",
        "v5 as mat",
        "missing keys",
        "missing splits",
        "v7.3 as splits",
        "wrong splits",
        "range splits",
        "bad mapping",
    ],
)
def test_cli_bad_input_exits_2_with_one_line(case, tmp_path, official, capsys):
    args, pattern = bad_inputs(tmp_path, official)[case]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(pattern, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_subprocess_exit_code_and_message(tmp_path, official):
    cases = bad_inputs(tmp_path, official)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "data.prepare_nyuv2", *args, "--out", str(tmp_path / "out")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _) in cases.items()
        if name in ("missing mat", "corrupt mat", "v5 as mat", "missing splits")
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, err)
        assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert err.startswith("prepare_nyuv2: error: ") and re.search(cases[name][1], err), (name, err)
    assert not (tmp_path / "out").exists()


def test_interrupted_run_leaves_no_folder(tmp_path, official):
    splits = official[2]
    with h5py.File(tmp_path / "bad_label.mat", "w") as f:
        f.create_dataset("images", data=np.zeros((5, 3, 8, 6), np.uint8))
        f.create_dataset("depths", data=np.ones((5, 8, 6), np.float32))
        f.create_dataset("labels", data=np.full((5, 8, 6), 895, np.uint16))  # beyond the 894 classes
    with pytest.raises(DataError, match="frame 1 has raw label 895"):
        prepare_nyuv2(tmp_path / "bad_label.mat", splits, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_label.mat"]


def test_existing_output_needs_overwrite(tmp_path, official):
    _, mat, splits, _ = official
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        prepare_nyuv2(mat, splits, out, progress=False)
    prepare_nyuv2(mat, splits, out, overwrite=True, progress=False)
    assert (out / "meta.json").is_file() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
