"""data.synthetic writes the official on-disk formats, and they go through preparation and the datasets; the rendered
rooms' surface normals agree with their depth maps."""

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from data import Adience, NYUv2
from data.nyuv2_tables import MAP_CLASS_40, OFFICIAL_TRAIN_NDXS
from data.prepare_nyuv2 import prepare_nyuv2
from data.synthetic import DROPPED_ROWS, main, render_room, seeded_split, write_mtan, write_nyuv2

ROOT_KEYS = [
    "#refs#", "#subsystem#", "accelData", "depths", "images", "instances", "labels", "names", "namesToIds",
    "rawDepthFilenames", "rawDepths", "rawRgbFilenames", "sceneTypes", "scenes",
]  # fmt: skip
N = 4


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    return write_nyuv2(tmp_path_factory.mktemp("syn"), n=N, seed=0, mapping=True)


def cell_string(mat: h5py.File, ref: h5py.Reference) -> str:
    data = mat[ref]
    assert data.dtype == np.uint16 and data.shape[1] == 1
    return "".join(map(chr, data[:, 0]))


def test_labeled_mat_layout(nyu):
    path = nyu / "nyu_depth_v2_labeled.mat"
    header = path.read_bytes()[:128]
    assert header.startswith(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: ")
    assert header[:116].rstrip().endswith(b"HDF5 schema 1.00 .") and header[124:128] == b"\x00\x02IM"
    with pytest.raises(NotImplementedError):  # scipy refuses v7.3, as with the real file
        scipy.io.loadmat(path)
    with h5py.File(path, "r") as mat:
        assert sorted(mat.keys()) == ROOT_KEYS
        shapes = {k: (mat[k].shape, mat[k].dtype) for k in ("images", "depths", "rawDepths", "labels", "instances")}
        assert shapes["images"] == ((N, 3, 640, 480), np.uint8)
        assert shapes["depths"] == shapes["rawDepths"] == ((N, 640, 480), np.float32)
        assert shapes["labels"] == ((N, 640, 480), np.uint16) and shapes["instances"] == ((N, 640, 480), np.uint8)
        assert mat["accelData"].shape == (4, N) and mat["accelData"].dtype == np.float32
        names = mat["names"]
        assert names.shape == (1, 894)
        assert [cell_string(mat, names[0, k]) for k in (0, 2, 10, 20, 893)] == [
            "book",
            "cabinet",
            "floor",
            "wall",
            "torah",
        ]
        assert cell_string(mat, names[0, 99]) == "class_100"
        for key in ("scenes", "sceneTypes", "rawRgbFilenames", "rawDepthFilenames"):
            assert mat[key].shape == (1, N) and cell_string(mat, mat[key][0, 0])
        assert mat["images"].attrs["MATLAB_class"] == b"uint8" and mat["names"].attrs["MATLAB_class"] == b"cell"
        assert mat["namesToIds"].attrs["MATLAB_object_decode"] == 3 and mat["namesToIds"].dtype == np.uint32
        raw = mat["labels"][...]
        assert raw.max() <= 894 and (raw == 0).any()
        assert (mat["rawDepths"][...] == 0).any() and (mat["depths"][...] > 0).all()


def test_splits_and_mapping_files(nyu):
    assert {name: (shape, cls) for name, shape, cls in scipy.io.whosmat(nyu / "splits.mat")} == {
        "trainNdxs": ((2, 1), "uint16"),
        "testNdxs": ((2, 1), "uint16"),
    }
    splits = scipy.io.loadmat(nyu / "splits.mat")
    train, test = splits["trainNdxs"].ravel(), splits["testNdxs"].ravel()
    assert sorted(np.concatenate([train, test])) == list(range(1, N + 1)) and list(train) == sorted(train)
    assert np.array_equal(scipy.io.loadmat(nyu / "classMapping40.mat")["mapClass"].ravel(), MAP_CLASS_40)


def test_official_split_for_1449_frames():
    train, test = seeded_split(1449)
    assert np.array_equal(train, OFFICIAL_TRAIN_NDXS) and len(test) == 654
    assert train.sum() == 551687 and test.sum() == 498838 and test[:4].tolist() == [1, 2, 9, 14]
    small_train, small_test = seeded_split(20, seed=3)
    assert len(small_train) == 11 and np.array_equal(seeded_split(20, seed=3)[0], small_train)
    assert sorted([*small_train, *small_test]) == list(range(1, 21))


def test_synthetic_rooms_prepare_and_load(nyu, tmp_path):
    out = prepare_nyuv2(nyu / "nyu_depth_v2_labeled.mat", nyu / "splits.mat", tmp_path / "p", progress=False)
    mapped = prepare_nyuv2(
        nyu / "nyu_depth_v2_labeled.mat", nyu / "splits.mat", tmp_path / "m", nyu / "classMapping40.mat", progress=False
    )
    ds, ds_mapped = NYUv2(out, "test"), NYUv2(mapped, "test")
    with h5py.File(nyu / "nyu_depth_v2_labeled.mat", "r") as mat:
        source = mat["images"][ds.indices[0] - 1].transpose(2, 1, 0)
    sample = ds[0]
    assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), source)
    assert torch.equal(sample["seg"], ds_mapped[0]["seg"])
    classes = set(torch.cat([ds[i]["seg"].flatten() for i in range(len(ds))]).unique().tolist())
    assert {0, 1, 255} <= classes and len(classes) >= 6  # wall, floor, unlabeled and several objects
    assert sample["depth"].min() > 0 and sample["depth"].max() < 10


def test_synthetic_mtan(tmp_path):
    write_mtan(tmp_path, n_train=3, n_val=2, seed=1)
    ds = NYUv2(tmp_path, "test")
    assert (ds.layout, len(ds), len(NYUv2(tmp_path, "train"))) == ("mtan", 2, 3)
    sample = ds[1]
    assert sample["image"].shape == (3, 288, 384) and sample["normal"].shape == (3, 288, 384)
    values = set(sample["seg"].unique().tolist())
    assert 255 in values and values - {255} <= set(range(13)) and len(values) >= 4
    assert (sample["depth"] == 0).any() and sample["depth"].max() > 1


def test_synthetic_adience(tmp_path):
    main(["adience", "--out", str(tmp_path), "--per-fold", "12", "--size", "48", "--seed", "1"])
    lines = (tmp_path / "fold_0_data.txt").read_bytes().split(b"\n")
    columns = "user_id original_image face_id age gender x y dx dy tilt_ang fiducial_yaw_angle fiducial_score"
    assert lines[0] == columns.replace(" ", "\t").encode()
    assert lines[-1] == b"" and b"\r" not in b"".join(lines) and len(lines) == 12 + 2
    folds = [Adience(tmp_path, [k]) for k in range(5)]
    assert [len(d) for d in folds] == [12 - len(DROPPED_ROWS)] * 5
    assert all(d.dropped == {"age": 3, "gender": 3} for d in folds)
    users = [set(d.subjects) for d in folds]
    assert all(not users[i] & users[j] for i in range(5) for j in range(i + 1, 5))
    sample = folds[2][0]
    assert sample["image"].shape == (3, 48, 48) and sample["path"].startswith("aligned/")
    assert sample["path"].split("/")[2].startswith("landmark_aligned_face.")


def normals_from_depth(depth: np.ndarray, f: float, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (H-2, W-2, 3) of the surface a depth map describes, by central differences of the back-projected
    points, facing the camera, in the axes x right, y down, z toward the camera; and the mask of pixels whose 3 x 3
    neighbourhood is planar (1 / depth affine along both axes)."""
    i, j = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]].astype(np.float64)
    z = depth.astype(np.float64)
    points = np.stack([(j - cx) * z / f, (i - cy) * z / f, z], -1)  # x right, y down, z forward
    n = np.cross(points[1:-1, 2:] - points[1:-1, :-2], points[2:, 1:-1] - points[:-2, 1:-1])
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n *= -np.sign((n * points[1:-1, 1:-1]).sum(-1, keepdims=True))  # toward the camera at the origin
    n[..., 2] *= -1  # forward -> toward the camera
    inv = 1 / z
    flat_x = np.abs(inv[1:-1, 2:] - 2 * inv[1:-1, 1:-1] + inv[1:-1, :-2]) < 1e-6
    flat_y = np.abs(inv[2:, 1:-1] - 2 * inv[1:-1, 1:-1] + inv[:-2, 1:-1]) < 1e-6
    return n, flat_x & flat_y


def test_rendered_normals_match_the_depth_geometry():
    rng = np.random.default_rng(0)
    seen = {}
    for _ in range(6):
        frame = render_room(rng, 120, 160)
        normal, raw = frame["normal"], frame["raw"]
        assert np.array_equal(np.abs(normal).sum(-1) == 0, raw == 0)  # all-zero exactly where unlabeled
        labelled = raw > 0
        assert np.allclose(np.linalg.norm(normal[labelled], axis=-1), 1)
        from_depth, planar = normals_from_depth(frame["depth"], *frame["camera"])
        inner = normal[1:-1, 1:-1]
        same = np.ones(inner.shape[:2], bool)  # the rendered normal is constant over the 3 x 3 neighbourhood
        for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
            same &= (normal[1 + dy : normal.shape[0] - 1 + dy, 1 + dx : normal.shape[1] - 1 + dx] == inner).all(-1)
        check = planar & same & labelled[1:-1, 1:-1]
        assert check.mean() > 0.6
        cosine = (from_depth[check] * inner[check]).sum(-1)
        assert cosine.min() > np.cos(np.radians(0.5))
        for vector in map(tuple, inner[check].astype(int)):
            seen[vector] = seen.get(vector, 0) + 1
    # floor faces up (-y), ceiling down (+y), wall and box fronts the camera (+z), box sides left and right (+-x)
    assert set(seen) == {(0, -1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (-1, 0, 0)}
    assert min(seen.values()) > 20
