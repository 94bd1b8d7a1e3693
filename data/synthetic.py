"""Small synthetic datasets written in the official on-disk formats, for tests and CPU demos.

Usage::

    python -m data.synthetic nyuv2 --out DIR [--n 24] [--seed 0] [--mapping]
    python -m data.synthetic mtan --out DIR [--n-train 12] [--n-val 8] [--seed 0]
    python -m data.synthetic adience --out DIR [--per-fold 60] [--size 256] [--seed 0]
    python -m data.synthetic cityscapes --out DIR [--n-train 8] [--n-val 4] [--size 64 128] [--seed 0]
    python -m data.synthetic cityscapes-mtan --out DIR [--n-train 8] [--n-val 4] [--size 128 256] [--seed 0]

nyuv2 writes ``nyu_depth_v2_labeled.mat`` laid out like the official file (MATLAB v7.3: HDF5 behind a 512-byte
MATLAB header; h5py shapes ``images`` (N, 3, 640, 480) uint8, ``depths`` / ``rawDepths`` (N, 640, 480) float32,
``labels`` (N, 640, 480) uint16 raw ids 0..894, ``instances`` uint8, ``accelData`` (4, N) float32, cell arrays
``names`` (1, 894), ``scenes`` / ``sceneTypes`` / ``rawRgbFilenames`` / ``rawDepthFilenames`` (1, N) as references
into ``#refs#`` to uint16 (len, 1) strings, a ``#subsystem#`` group and a placeholder ``namesToIds``), plus
``splits.mat`` (MATLAB v5, 1-based ``trainNdxs`` / ``testNdxs``; the official split when N = 1449, otherwise a
seeded ~55/45 split) and, with ``--mapping``, ``classMapping40.mat`` (v5, ``mapClass`` (1, 894)). Raw class names
are the verified ones (ids 1..21 and 894); the others are the placeholders ``class_<id>``. Scene strings and raw
file names are synthetic.

Frames are rendered rooms that make both tasks learnable and related: a back wall at constant depth with a door,
window and picture; a floor whose depth follows the camera geometry (nearer toward the bottom); a ceiling; boxes of
furniture classes standing on the floor, their size and depth set by where they stand; small props; an unlabeled
(raw 0) border and patches. Colours are noisy functions of the class, shaded by depth. ``rawDepths`` drops values at
the border, on the window and in random patches, as the Kinect does.

mtan writes the MTAN ``nyuv2/`` folder (train/ and val/ with image/ label/ depth/ normal/ i.npy) from the same
renderer at 288 x 384, with 13-class labels (-1 = ignore) and surface normals (axes x right, y down, z toward the
camera; see render_room).

cityscapes writes the official Cityscapes layout (``leftImg8bit/ gtFine/ disparity/ camera/``, splits train and val,
two cities each, stems ``<city>_<seq:06>_000019``): 8-bit RGB images; gtFine ``labelIds`` (8-bit label ids of road,
sidewalk, building, vegetation, sky, car, person, the void ids 0..6 and the ignored parking / guard rail), ``color``
and ``instanceIds``; 16-bit disparity PNGs (p = 256 d + 1, p = 0 invalid); camera JSONs with the official baseline
0.209313 m and focal length 2262.52 px scaled to the width. Frames are ray-cast streets (render_street) whose disparity
is that of their geometry: a flat road falling toward the horizon, facades on both sides, sky with p = 0, cars and
people standing on the ground at the depth of their footprint. cityscapes-mtan writes the same streets as an MTAN
cityscapes folder (image, label_7, label_19, depth = MTAN's disparity scale).

adience writes ``fold_{0..4}_data.txt`` (TAB-separated, the 12-column header, LF) and
``aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>`` JPEGs. Users are disjoint across folds. Each
fold holds rows the label policy must drop: age 'None' with empty gender, bare integer age '35', gender 'u', empty
gender, the irregular '(25, 23)'. Faces show gender (face shape, hair length and colour, beard) and age group (face
size for children, forehead lines, grey hair), with random position, scale, brightness, background and noise.
"""

import argparse
import datetime
import json
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from data.adience import AGE_GROUPS, FOLD_COLUMNS, NUM_FOLDS
from data.nyuv2_tables import CLASS_13_OF_40, MAP_CLASS_40, NUM_FRAMES, NUM_RAW_CLASSES, OFFICIAL_TRAIN_NDXS

# Raw NYU ids used by the renderer and their 40-class ids (Appendix B): wall 21->1, floor 11->2, ceiling 4->22,
# door 28->8, window 59->9, picture 64->11, book 1->40, bottle 2->40.
WALL, FLOOR, CEILING, DOOR, WINDOW, PICTURE, BOOK, BOTTLE = 21, 11, 4, 28, 59, 64, 1, 2
# raw id: (height m, width m, depth m (front to back), base RGB); cabinet 3->3, chair 5->5, table 19->7,
# refridgerator 17->24, bed 157->4, sofa 83->6, garbage bin 12->39
FURNITURE = {
    3: (0.9, 0.6, 0.5, (150, 85, 40)),
    5: (0.9, 0.5, 0.5, (40, 100, 170)),
    19: (0.75, 1.2, 0.8, (205, 175, 110)),
    17: (1.8, 0.8, 0.7, (230, 230, 240)),
    157: (0.6, 2.0, 1.6, (170, 50, 90)),
    83: (0.85, 1.8, 0.9, (60, 140, 60)),
    12: (0.4, 0.3, 0.3, (55, 55, 55)),
}
KNOWN_NAMES = (
    "book", "bottle", "cabinet", "ceiling", "chair", "cone", "counter", "dishwasher", "faucet", "fire extinguisher",
    "floor", "garbage bin", "microwave", "paper towel dispenser", "paper", "pot", "refridgerator", "stove burner",
    "table", "unknown", "wall",
)  # fmt: skip
FOCAL_640 = 518.8  # Kinect RGB focal length in pixels at 640 px width
ROOM_HEIGHT = 2.6  # metres


def raw_class_names() -> list[str]:
    """The 894 raw names: verified ids 1..21 and 894 ('torah'), placeholders 'class_<id>' elsewhere."""
    names = [f"class_{k}" for k in range(1, NUM_RAW_CLASSES + 1)]
    names[: len(KNOWN_NAMES)] = KNOWN_NAMES
    names[-1] = "torah"
    return names


def _box(array: np.ndarray, top: float, bottom: float, left: float, right: float, value: object) -> None:
    """array[top:bottom, left:right] = value with float bounds clipped to the array."""
    y0, y1 = (int(np.clip(round(v), 0, array.shape[0])) for v in (top, bottom))
    x0, x1 = (int(np.clip(round(v), 0, array.shape[1])) for v in (left, right))
    array[y0:y1, x0:x1] = value


def render_room(rng: np.random.Generator, height: int = 480, width: int = 640) -> dict[str, np.ndarray]:
    """One synthetic frame: 'image' uint8 (H, W, 3), 'raw' uint16 (H, W) raw ids, 'depth' / 'raw_depth' float32
    (H, W) metres (0 = no value), 'instances' uint8 (H, W), 'normal' float32 (H, W, 3) (0 where unlabeled),
    'camera' float64 (f, cx, cy) in pixels.

    Camera: a level pinhole camera with focal length f, principal point (cx, cy) = (width / 2, horizon) in pixel index
    coordinates (row i, column j), so a point at depth Z metres seen at pixel (i, j) lies at X = (j - cx) Z / f to
    the right of and Y = (i - cy) Z / f below the optical axis. Normals are the unit outward normals of the visible
    surfaces in camera axes x right, y down, z toward the camera (NYU's normal-image convention as reported by the
    2D-3D-S authors: red = right, green = down, blue = toward the camera): floor (0, -1, 0), ceiling (0, 1, 0), back
    wall and front faces (0, 0, 1), a box's right face (1, 0, 0), its left face (-1, 0, 0). Every labelled pixel's
    normal is that of the plane its depth describes (tests/test_data_synthetic.py checks it by finite differences).
    """
    f = FOCAL_640 * width / 640
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float64)
    cx = width / 2
    horizon = rng.uniform(0.38, 0.55) * height
    cam_h, wall_d = rng.uniform(1.1, 1.5), rng.uniform(3.5, 6.5)
    wall_base = horizon + f * cam_h / wall_d  # floor meets the wall where the floor depth reaches wall_d
    ceiling_top = horizon - f * (ROOM_HEIGHT - cam_h) / wall_d

    def jitter() -> np.ndarray:  # per-frame colour variation of a class
        return rng.normal(0, 14, 3)

    def row_at(z: float) -> float:  # image row of a point of the back wall at height z metres above the floor
        return horizon - f * (z - cam_h) / wall_d

    raw = np.full((height, width), WALL, np.uint16)
    depth = np.full((height, width), wall_d, np.float32)
    colour = np.empty((height, width, 3), np.float32)
    colour[:] = np.array((205, 195, 175)) + jitter()
    normal = np.zeros((height, width, 3), np.float32)
    normal[:] = (0, 0, 1)
    instances = np.ones((height, width), np.uint8)
    floor = (rows >= wall_base).repeat(width, 1)
    ceiling = (rows < ceiling_top).repeat(width, 1)
    depth[floor] = (f * cam_h / np.maximum(rows - horizon, 1) * np.ones(width))[floor]
    depth[ceiling] = (f * (ROOM_HEIGHT - cam_h) / np.maximum(horizon - rows, 1) * np.ones(width))[ceiling]
    raw[floor], raw[ceiling] = FLOOR, CEILING
    colour[floor] = np.array((125, 88, 58)) + jitter()
    colour[ceiling] = np.array((236, 236, 230)) + jitter() / 3
    normal[floor], normal[ceiling] = (0, -1, 0), (0, 1, 0)  # y points down: the floor faces up (-y)

    # door, window and picture on the wall, a few cm in front of it, between heights z_low and z_high
    for cls, z_low, z_high, w_m, rgb in (
        (DOOR, 0.0, 2.0, 0.9, (120, 70, 35)),
        (WINDOW, rng.uniform(0.8, 1.0), rng.uniform(1.9, 2.2), rng.uniform(1.0, 1.6), (150, 200, 245)),
        (PICTURE, rng.uniform(1.2, 1.4), rng.uniform(1.6, 1.9), rng.uniform(0.4, 0.9), (200, 40, 40)),
    ):
        w_px = f * w_m / wall_d
        left = rng.uniform(0, width - w_px)
        box = (row_at(z_high), row_at(z_low), left, left + w_px)
        _box(raw, *box, cls)
        _box(depth, *box, wall_d - 0.03)
        _box(colour, *box, np.array(rgb) + jitter())

    # furniture standing on the floor, painted far to near: a front face at depth d and, for a box entirely left
    # (right) of the principal point, its right (left) face: the plane X = X_edge from Z = d to d + obj_d, whose
    # depth at column j is f X_edge / (j - cx) and whose rows run from the box top to the floor at that depth
    objects = []
    for cls in rng.choice(list(FURNITURE), size=rng.integers(2, 5)):
        bottom = rng.uniform(wall_base + 4, height + 0.1 * height)
        objects.append((f * cam_h / (bottom - horizon), bottom, int(cls)))
    for k, (d, bottom, cls) in enumerate(sorted(objects, reverse=True), start=2):
        obj_h, obj_w, obj_d, rgb = FURNITURE[cls]
        h_px, w_px = f * obj_h / d, f * obj_w / d
        left = rng.uniform(-0.2 * w_px, width - 0.8 * w_px)
        base = np.array(rgb) + jitter()
        for array, value in ((raw, cls), (depth, d), (colour, base), (normal, (0, 0, 1)), (instances, k)):
            _box(array, bottom - h_px, bottom, left, left + w_px, value)
        side = 1 if left + w_px < cx else -1 if left > cx else 0  # +1: the right face is visible
        if side:
            x_edge = ((left + w_px if side > 0 else left) - cx) * d / f
            with np.errstate(divide="ignore", invalid="ignore"):
                z = f * x_edge / (cols - cx)
            on_face = (z >= d) & (z <= d + obj_d)
            face = on_face & (rows >= horizon - f * (obj_h - cam_h) / z) & (rows < horizon + f * cam_h / z)
            face &= z < depth  # hidden behind nearer surfaces (and the back wall)
            zs = np.broadcast_to(z, depth.shape)[face]
            raw[face], depth[face], colour[face] = cls, zs, 0.7 * base
            normal[face], instances[face] = (side, 0, 0), k
        if cls in (3, 19):  # a book or a bottle on cabinets and tables
            prop, rgb = ((BOOK, (30, 160, 200)), (BOTTLE, (20, 90, 20)))[rng.integers(2)]
            p_left = left + rng.uniform(0.1, 0.7) * w_px
            box = (bottom - h_px - f * 0.25 / d, bottom - h_px, p_left, p_left + f * 0.12 / d)
            for array, value in ((raw, prop), (depth, d - 0.05), (colour, rgb), (normal, (0, 0, 1))):
                _box(array, *box, value)

    # Haze: farther surfaces fade toward a grey-blue fog (transmission exp(-0.15 d): 0.74 at 2 m, 0.41 at
    # 6 m), so colour and distance go together and depth can be read from appearance, not only geometry.
    transmission = np.exp(-0.15 * depth)[..., None]
    colour = colour * transmission + np.array((150, 160, 175)) * (1 - transmission)
    colour += rng.normal(0, 5, colour.shape)
    image = np.clip(colour, 0, 255).astype(np.uint8)

    # unlabeled border and patches (raw 0), as left by the annotators; the image is unchanged there. Patch
    # sizes are those of a 480 x 640 frame, scaled with the frame, so that a small frame keeps most of its labels.
    sy, sx = height / 480, width / 640
    unlabeled = np.zeros((height, width), bool)
    band = max(1, int(rng.integers(height // 60, height // 30 + 1)))  # not 0: [-0:] would be the whole frame
    unlabeled[:band], unlabeled[-band:], unlabeled[:, :band], unlabeled[:, -band:] = True, True, True, True
    for _ in range(rng.integers(1, 3)):
        top, left = rng.uniform(0, height - 20 * sy), rng.uniform(0, width - 20 * sx)
        _box(unlabeled, top, top + rng.uniform(10, 40) * sy, left, left + rng.uniform(10, 60) * sx, True)
    raw[unlabeled], instances[unlabeled], normal[unlabeled] = 0, 0, 0

    raw_depth = depth + rng.normal(0, 0.01, depth.shape).astype(np.float32)
    holes = unlabeled | (raw == WINDOW)
    for _ in range(rng.integers(2, 5)):
        top, left = rng.uniform(0, height), rng.uniform(0, width)
        _box(holes, top, top + rng.uniform(5, 30) * sy, left, left + rng.uniform(5, 30) * sx, True)
    raw_depth[holes] = 0
    return {
        "image": image,
        "raw": raw,
        "depth": depth,
        "raw_depth": raw_depth,
        "instances": instances,
        "normal": normal,
        "camera": np.array((f, cx, horizon)),
    }


def _mat73_header() -> bytes:
    """The 512-byte MATLAB v7.3 user block: 116-byte text, 8-byte subsystem offset, version 0x0200, 'IM'."""
    created = datetime.datetime.now().strftime("%a %b %d %H:%M:%S %Y")
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 ."
    return text.encode("ascii").ljust(116, b" ") + bytes(8) + b"\x00\x02IM" + bytes(512 - 128)


def _set_class(obj: h5py.HLObject, matlab_class: str) -> None:
    obj.attrs["MATLAB_class"] = np.bytes_(matlab_class)


def _cell_of_strings(mat: h5py.File, name: str, strings: list[str]) -> None:
    """A (1, n) MATLAB cell of char arrays: object references into #refs#, each a uint16 (len, 1) dataset."""
    refs = mat.require_group("#refs#")
    cell = mat.create_dataset(name, (1, len(strings)), dtype=h5py.ref_dtype)
    _set_class(cell, "cell")
    targets = []
    for text in strings:
        char = refs.create_dataset(f"{len(refs):x}", data=np.array([ord(c) for c in text], np.uint16)[:, None])
        _set_class(char, "char")
        char.attrs["MATLAB_int_decode"] = np.int32(2)
        targets.append(char.ref)
    cell[0, :] = targets


def write_labeled_mat(path: str | Path, n: int, seed: int = 0, frame_size: tuple[int, int] = (480, 640)) -> None:
    """Write `n` rendered rooms as nyu_depth_v2_labeled.mat in the official v7.3 layout (see module docstring).

    frame_size is the official 480 x 640 by default; tests use smaller frames to keep full-frame evaluation cheap.
    """
    rng = np.random.default_rng(seed)
    height, width = frame_size
    with h5py.File(path, "w", userblock_size=512) as mat:
        # per-frame chunks, compressed, so frame-by-frame reads are cheap (the real file's chunking is unknown)
        def frames_dataset(name: str, shape: tuple[int, ...], dtype: type, matlab_class: str) -> h5py.Dataset:
            ds = mat.create_dataset(
                name, (n, *shape), dtype, chunks=(1, *shape), compression="gzip", compression_opts=1
            )
            _set_class(ds, matlab_class)
            return ds

        images = frames_dataset("images", (3, width, height), np.uint8, "uint8")
        depths = frames_dataset("depths", (width, height), np.float32, "single")
        raw_depths = frames_dataset("rawDepths", (width, height), np.float32, "single")
        labels = frames_dataset("labels", (width, height), np.uint16, "uint16")
        instances = frames_dataset("instances", (width, height), np.uint8, "uint8")
        for i in range(n):
            frame = render_room(rng, height, width)
            images[i] = frame["image"].transpose(2, 1, 0)  # (H, W, 3) -> MATLAB order as h5py sees it
            depths[i], raw_depths[i] = frame["depth"].T, frame["raw_depth"].T
            labels[i], instances[i] = frame["raw"].T, frame["instances"].T
        accel = mat.create_dataset("accelData", data=rng.normal(0, 1, (4, n)).astype(np.float32))
        _set_class(accel, "single")
        scene_types = [("bedroom", "kitchen", "living_room", "office")[i // 3 % 4] for i in range(n)]
        scenes = [f"{kind}_{i // 3 + 1:04d}" for i, kind in enumerate(scene_types)]
        stems = [f"{scene}/{{}}-{1.3e9 + 1000 * i + rng.uniform(0, 100):.6f}-{i}" for i, scene in enumerate(scenes)]
        _cell_of_strings(mat, "names", raw_class_names())
        _cell_of_strings(mat, "scenes", scenes)
        _cell_of_strings(mat, "sceneTypes", scene_types)
        _cell_of_strings(mat, "rawRgbFilenames", [stem.format("r") + ".ppm" for stem in stems])
        _cell_of_strings(mat, "rawDepthFilenames", [stem.format("d") + ".pgm" for stem in stems])
        # containers.Map is an opaque MCOS object: a small uint32 header here, its data in #subsystem# (placeholder)
        names_to_ids = mat.create_dataset("namesToIds", data=np.array([[0xDD000000, 2, 1, 1, 1, 1]], np.uint32))
        _set_class(names_to_ids, "containers.Map")
        names_to_ids.attrs["MATLAB_object_decode"] = np.int32(3)
        mat.create_group("#subsystem#").create_dataset("MCOS", data=np.zeros((1, 2), np.uint8))
    with open(path, "r+b") as f:
        f.write(_mat73_header())


def seeded_split(n: int, seed: int = 0, train_fraction: float = 0.55) -> tuple[np.ndarray, np.ndarray]:
    """1-based sorted (train, test) indices: the official split for n = 1449, otherwise a seeded split."""
    if n == NUM_FRAMES:
        train = OFFICIAL_TRAIN_NDXS.astype(np.int64)
    else:
        if n < 2:
            raise ValueError(f"need at least 2 frames for a train/test split, got {n}")
        n_train = min(max(round(train_fraction * n), 1), n - 1)
        train = np.sort(np.random.default_rng(seed).permutation(n)[:n_train]) + 1
    return train, np.setdiff1d(np.arange(1, n + 1), train)


def write_nyuv2(
    out: str | Path,
    n: int = 24,
    seed: int = 0,
    mapping: bool = False,
    frame_size: tuple[int, int] = (480, 640),
    train_fraction: float = 0.55,
) -> Path:
    """Write nyu_depth_v2_labeled.mat, splits.mat (and classMapping40.mat if `mapping`) into `out`; returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_labeled_mat(out / "nyu_depth_v2_labeled.mat", n, seed, frame_size)
    train, test = seeded_split(n, seed, train_fraction)
    splits = {"trainNdxs": train[:, None].astype(np.uint16), "testNdxs": test[:, None].astype(np.uint16)}
    scipy.io.savemat(out / "splits.mat", splits, format="5")
    if mapping:
        scipy.io.savemat(out / "classMapping40.mat", {"mapClass": MAP_CLASS_40[None, :]}, format="5")
    return out


def write_mtan(
    out: str | Path, n_train: int = 12, n_val: int = 8, seed: int = 0, size: tuple[int, int] = (288, 384)
) -> Path:
    """Write an MTAN-style nyuv2/ folder of rendered rooms (288 x 384 as MTAN's; smaller for quick runs) into
    `out`; returns `out`."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    lut = np.concatenate([[0], CLASS_13_OF_40[MAP_CLASS_40 - 1]]).astype(np.int64) - 1  # raw -> 13-class, 0 -> -1
    for split, n in (("train", n_train), ("val", n_val)):
        for part in ("image", "label", "depth", "normal"):
            (out / split / part).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            frame = render_room(rng, *size)
            np.save(out / split / "image" / f"{i}.npy", frame["image"] / 255.0)  # float64 in [0, 1]
            np.save(out / split / "label" / f"{i}.npy", lut[frame["raw"]].astype(np.float32))
            np.save(out / split / "depth" / f"{i}.npy", frame["raw_depth"][..., None])
            np.save(out / split / "normal" / f"{i}.npy", frame["normal"])
    return out


# Cityscapes camera: typical values of the official camera files, for 2048 x 1024 images
CS_SIZE = (1024, 2048)  # (height, width)
CS_BASELINE = 0.209313  # extrinsic.baseline, metres
CS_FX, CS_FY, CS_U0, CS_V0 = 2262.52, 2265.3017905988554, 1096.98, 513.137  # intrinsic, pixels
CS_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}
# label ids (data.cityscapes_labels): void 0..6, then the classes the street is made of, parking and guard rail
# (trainId 255: ignored by the 19-class map, kept by the 7-class one)
UNLABELED, EGO_VEHICLE, RECT_BORDER, OUT_OF_ROI, STATIC, DYNAMIC, GROUND = range(7)
ROAD, SIDEWALK, PARKING, BUILDING, GUARD_RAIL, VEGETATION, SKY, PERSON, CAR = 7, 8, 9, 11, 14, 21, 23, 24, 26
STREET_RGB = {
    ROAD: (90, 88, 92), SIDEWALK: (165, 150, 150), PARKING: (120, 110, 118), GROUND: (120, 105, 80),
    BUILDING: (150, 120, 95), GUARD_RAIL: (175, 175, 170), VEGETATION: (60, 110, 40), STATIC: (70, 80, 60),
    DYNAMIC: (170, 120, 40), EGO_VEHICLE: (30, 30, 35), RECT_BORDER: (0, 0, 0), OUT_OF_ROI: (20, 20, 20),
}  # fmt: skip


def street_camera(rng: np.random.Generator, height: int, width: int) -> dict[str, dict[str, float]]:
    """A camera file's content (extrinsic: baseline, pitch, roll, x, y, yaw, z; intrinsic: fx, fy, u0, v0) with the
    official values scaled to a height x width image, a slightly different focal length per city, a level camera
    (pitch 0) at height z = 1.15 .. 1.3 m."""
    sx, sy, k = width / CS_SIZE[1], height / CS_SIZE[0], rng.uniform(0.997, 1.003)
    return {
        "extrinsic": {"baseline": CS_BASELINE, "pitch": 0.0, "roll": 0.0, "x": 1.7, "y": 0.1, "yaw": 0.0,
                      "z": round(float(rng.uniform(1.15, 1.3)), 3)},
        "intrinsic": {"fx": CS_FX * sx * k, "fy": CS_FY * sy * k, "u0": CS_U0 * sx, "v0": CS_V0 * sy},
    }  # fmt: skip


def render_street(
    rng: np.random.Generator, camera: dict, height: int = 1024, width: int = 2048
) -> dict[str, np.ndarray]:
    """One synthetic street frame seen by `camera` (see street_camera): 'image' uint8 (H, W, 3) RGB, 'label' uint8
    (H, W) label ids, 'instance' uint16 (H, W) (label id, or id * 1000 + k for cars and people), 'disparity' uint16
    (H, W) official PNG values p (0 = invalid), 'distance' float64 (H, W) metres along the optical axis (inf = sky).

    Ray-cast scene (camera axes X right, Y down, Z forward; a pixel (i, j) sees the ray ((j - u0) / fx, (i - v0) / fy,
    1)): a flat ground at Y = z (the camera height) with a road, sidewalks and a parking strip, building and
    vegetation facades on the planes at the sidewalks' outer edges, a building closing the street at 35 .. 70 m, sky
    above; cars on the road and people on the sidewalks as upright rectangles at the depth of their footprint, a
    static and sometimes a dynamic object; the ego vehicle's bonnet, a rectification border and an out-of-roi row.
    Disparity is fx * baseline / Z with 1 % noise, stored as p = round(256 d) + 1; p = 0 on the sky, the void borders,
    the ego vehicle, a left band that the right camera does not see, and a few stereo holes.
    """
    fx, fy, u0, v0 = (camera["intrinsic"][k] for k in ("fx", "fy", "u0", "v0"))
    cam_h, baseline = camera["extrinsic"]["z"], camera["extrinsic"]["baseline"]
    i, j = np.mgrid[0:height, 0:width].astype(np.float64)
    rx, ry = (j - u0) / fx, (i - v0) / fy
    dist = np.full((height, width), np.inf)
    label = np.full((height, width), SKY, np.uint8)
    instance = np.zeros((height, width), np.uint16)
    colour = np.empty((height, width, 3))
    colour[:] = np.array((95, 140, 200)) + np.clip(i / v0, 0, 1)[..., None] * np.array((70, 55, 25))  # sky

    def paint(mask: np.ndarray, z: np.ndarray | float, cls: int, rgb: object, inst: int = 0) -> None:
        z = np.broadcast_to(z, mask.shape)
        m = mask & (z < dist)
        dist[m], label[m], instance[m] = z[m], cls, inst or cls
        colour[m] = np.broadcast_to(rgb, (*mask.shape, 3))[m] if np.ndim(rgb) == 3 else rgb

    def jitter(rgb: tuple[int, int, int], sd: float = 12) -> np.ndarray:
        return np.array(rgb) + rng.normal(0, sd, 3)

    z_end = rng.uniform(35, 70)
    road_c, road_w, walk_w = rng.uniform(-1, 1), rng.uniform(3.5, 5), rng.uniform(2, 3.5)
    x_left, x_right = road_c - road_w - walk_w, road_c + road_w + walk_w

    with np.errstate(divide="ignore", invalid="ignore"):
        zg = np.where(ry > 0, cam_h / ry, np.inf)  # ground
        xg = rx * zg
        ground = (ry > 0) & (zg < z_end) & (xg > x_left) & (xg < x_right)
        road = np.abs(xg - road_c) < road_w
        paint(ground & road, zg, ROAD, jitter(STREET_RGB[ROAD], 5))
        paint(ground & ~road, zg, SIDEWALK, jitter(STREET_RGB[SIDEWALK], 8))
        marking = ground & (np.abs(xg - road_c) < 0.1) & (zg % 6 < 3)
        colour[marking] = (215, 215, 210)
        z_park = rng.uniform(4, 20)
        park = ground & (xg > road_c + road_w - 2.2) & road & (zg > z_park) & (zg < z_park + 8)
        label[park] = PARKING
        colour[park] = jitter(STREET_RGB[PARKING], 5)
        z_gr = rng.uniform(4, 20)
        patch = ground & (xg < x_left + 1.2) & (zg > z_gr) & (zg < z_gr + 5)
        label[patch] = GROUND
        colour[patch] = jitter(STREET_RGB[GROUND], 8)

        rail = rng.random() < 0.5  # a guard rail along the lower 0.9 m of vegetation
        for x_side in (x_left, x_right):
            zf = np.where(rx * x_side > 0, x_side / rx, np.inf)  # the facade plane X = x_side
            hf = cam_h - ry * zf  # height above the ground
            z0 = 0.0
            while z0 < z_end:
                z1 = z0 + rng.uniform(6, 18)
                seg = (zf >= z0) & (zf < min(z1, z_end)) & (hf >= 0)
                if rng.random() < 0.7:
                    rgb = jitter(STREET_RGB[BUILDING], 18)
                    windows = (hf % 3 > 1.2) & (hf % 3 < 2.4) & (zf % 4 < 2) & (hf > 2.5)
                    rgbs = np.where(windows[..., None], 0.45 * rgb, rgb)
                    paint(seg & (hf < rng.uniform(8, 22)), zf, BUILDING, rgbs)
                else:
                    paint(seg & (hf < rng.uniform(3, 7)), zf, VEGETATION, jitter(STREET_RGB[VEGETATION], 15))
                    if rail:
                        paint(seg & (hf < 0.9), zf - 1e-6, GUARD_RAIL, jitter(STREET_RGB[GUARD_RAIL], 5))
                z0 = z1
        he = cam_h - ry * z_end  # the building closing the street
        xe = rx * z_end
        paint(
            (xe > x_left) & (xe < x_right) & (he >= 0) & (he < rng.uniform(10, 25)),
            z_end,
            BUILDING,
            jitter(STREET_RGB[BUILDING], 18),
        )

    def upright(x0: float, x1: float, z: float, h: float) -> np.ndarray:
        """Pixels of the rectangle X in [x0, x1], height 0..h above the ground, at depth z."""
        x, hh = rx * z, cam_h - ry * z
        return (x >= x0) & (x < x1) & (hh >= 0) & (hh < h)

    for k in range(1, rng.integers(1, 4) + 1):  # cars on the road, rear view
        xc = road_c + rng.choice((-0.5, 0.5)) * road_w + rng.uniform(-0.4, 0.4)
        zc = rng.uniform(6, min(35, z_end - 3))
        body = upright(xc - 0.9, xc + 0.9, zc, 1.45)
        rgb = jitter(((150, 20, 20), (20, 40, 120), (200, 200, 205), (30, 30, 30))[rng.integers(4)], 10)
        hh = cam_h - ry * zc
        rgbs = np.where(((hh > 0.95) & (hh < 1.35))[..., None], np.array((40, 50, 60)), rgb)
        paint(body, zc, CAR, rgbs, CAR * 1000 + k)
    for k in range(1, rng.integers(0, 3) + 1):  # people on the sidewalks
        side = rng.choice((-1, 1))
        xp = road_c + side * (road_w + rng.uniform(0.4, walk_w - 0.4))
        zp, hp = rng.uniform(5, 25), rng.uniform(1.6, 1.9)
        hh = cam_h - ry * zp
        rgbs = np.where((hh > hp - 0.25)[..., None], np.array((215, 170, 140)), jitter((60, 60, 110), 30))
        paint(upright(xp - 0.25, xp + 0.25, zp, hp), zp, PERSON, rgbs, PERSON * 1000 + k)
    xs, zs = road_c - road_w - rng.uniform(0.5, walk_w - 0.5), rng.uniform(5, 20)  # a bin: static
    paint(upright(xs - 0.3, xs + 0.3, zs, 0.9), zs, STATIC, jitter(STREET_RGB[STATIC]))
    if rng.random() < 0.5:  # a cart: dynamic
        xd, zd = road_c + road_w + rng.uniform(0.5, walk_w - 0.5), rng.uniform(5, 20)
        paint(upright(xd - 0.4, xd + 0.4, zd, 1.0), zd, DYNAMIC, jitter(STREET_RGB[DYNAMIC]))

    # haze: far surfaces fade toward the horizon colour, so that appearance carries distance
    transmission = np.exp(-np.where(np.isfinite(dist), dist, 0) / 120)[..., None]
    colour = colour * transmission + np.array((175, 185, 195)) * (1 - transmission)
    colour += rng.normal(0, 4, colour.shape)

    with np.errstate(divide="ignore"):
        d = fx * baseline / dist * (1 + rng.normal(0, 0.01, dist.shape))
    p = np.where(np.isfinite(dist), np.clip(np.rint(d * 256) + 1, 1, 65535), 0)
    p[:, : max(1, width // 24)] = 0  # not seen by the right camera
    for _ in range(rng.integers(2, 5)):  # stereo holes
        top, left = rng.uniform(0, height), rng.uniform(0, width)
        _box(p, top, top + rng.uniform(1, height / 10), left, left + rng.uniform(1, width / 10), 0)

    # void borders: the bonnet, the rectification border, an out-of-roi bottom row; the image shows them too
    void = np.zeros((height, width), np.uint8)
    void[i > height * (0.93 - 0.035 * (1 - ((j - width / 2) / (width / 2)) ** 2))] = EGO_VEHICLE
    edge = max(1, width // 128)
    void[:, :edge], void[:, -edge:] = RECT_BORDER, RECT_BORDER
    void[-max(1, height // 128) :] = OUT_OF_ROI
    for cls in (EGO_VEHICLE, RECT_BORDER, OUT_OF_ROI):
        label[void == cls], instance[void == cls] = cls, cls
        colour[void == cls] = jitter(STREET_RGB[cls], 3)
    p[void > 0] = 0
    for _ in range(rng.integers(1, 3)):  # annotation gaps: unlabeled, image and disparity unchanged
        top, left = rng.uniform(0, height * 0.8), rng.uniform(0, width * 0.9)
        _box(label, top, top + rng.uniform(1, height / 12), left, left + rng.uniform(1, width / 12), UNLABELED)
    return {
        "image": np.clip(colour, 0, 255).astype(np.uint8),
        "label": label,
        "instance": np.where(label == UNLABELED, 0, instance).astype(np.uint16),
        "disparity": p.astype(np.uint16),
        "distance": dist,
    }


def write_cityscapes(
    out: str | Path, n_train: int = 8, n_val: int = 4, size: tuple[int, int] = (64, 128), seed: int = 0
) -> Path:
    """Write rendered streets in the official Cityscapes layout into `out` (module docstring); returns `out`.

    Per split two cities (train: aachen, bochum; val: frankfurt, lindau) with one camera each; frame k of a split is
    ``<city>_<seq:06>_000019`` with city = cities[k % 2], seq = k // 2. Files: leftImg8bit PNG (RGB),
    gtFine labelIds (8-bit), color (RGBA, the table's colours) and instanceIds (16-bit), disparity (16-bit),
    camera JSON.
    """
    from data.cityscapes_labels import LABELS

    out = Path(out)
    height, width = size
    rng = np.random.default_rng(seed)
    palette = np.zeros((256, 3), np.uint8)
    for lb in LABELS:
        if lb.id >= 0:
            palette[lb.id] = lb.color
    for split, n in (("train", n_train), ("val", n_val)):
        cities = CS_CITIES[split]
        cameras = {city: street_camera(rng, height, width) for city in cities}
        for k in range(n):
            city = cities[k % len(cities)]
            stem = f"{city}_{k // len(cities):06d}_000019"
            frame = render_street(rng, cameras[city], height, width)
            folders = {kind: out / kind / split / city for kind in ("leftImg8bit", "gtFine", "disparity", "camera")}
            for folder in folders.values():
                folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame["image"]).save(folders["leftImg8bit"] / f"{stem}_leftImg8bit.png")
            Image.fromarray(frame["label"]).save(folders["gtFine"] / f"{stem}_gtFine_labelIds.png")
            color = np.concatenate([palette[frame["label"]], np.full((height, width, 1), 255, np.uint8)], -1)
            Image.fromarray(color).save(folders["gtFine"] / f"{stem}_gtFine_color.png")
            Image.fromarray(frame["instance"]).save(folders["gtFine"] / f"{stem}_gtFine_instanceIds.png")
            Image.fromarray(frame["disparity"]).save(folders["disparity"] / f"{stem}_disparity.png")
            (folders["camera"] / f"{stem}_camera.json").write_text(json.dumps(cameras[city], indent=4) + "\n")
    return out


def write_cityscapes_mtan(
    out: str | Path, n_train: int = 8, n_val: int = 4, size: tuple[int, int] = (128, 256), seed: int = 0
) -> Path:
    """Write rendered streets as an MTAN cityscapes folder: {train,val}/{image,label_7,label_19,depth}/{i}.npy with
    image float32 (H, W, 3) in [0, 1], labels float32 (H, W) with -1 = ignore (7 non-void categories / 19 trainIds,
    data.cityscapes_labels), depth float32 (H, W, 1) = MTAN's disparity: the disparity at 2048 px width / 256, i.e.
    d * 8 / W for the disparity d in pixels at this width W, 0 = invalid. Returns `out`."""
    from data.cityscapes_labels import label_lut

    out = Path(out)
    height, width = size
    rng = np.random.default_rng(seed)
    luts = {n: np.where(label_lut(n) == 255, -1, label_lut(n).astype(np.int64)).astype(np.float32) for n in (7, 19)}
    for split, n in (("train", n_train), ("val", n_val)):
        camera = street_camera(rng, height, width)
        for part in ("image", "label_7", "label_19", "depth"):
            (out / split / part).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            frame = render_street(rng, camera, height, width)
            p = frame["disparity"].astype(np.float32)
            disparity = np.where(p > 0, (p - 1) / 256, 0) * (CS_SIZE[1] / width) / 256
            np.save(out / split / "image" / f"{k}.npy", (frame["image"] / 255).astype(np.float32))
            for classes, lut in luts.items():
                np.save(out / split / f"label_{classes}" / f"{k}.npy", lut[frame["label"]])
            np.save(out / split / "depth" / f"{k}.npy", disparity.astype(np.float32)[..., None])
    return out


def render_face(rng: np.random.Generator, gender: int, age: int, size: int = 256) -> np.ndarray:
    """A face-like uint8 (size, size, 3) image; gender 0 = male, 1 = female; age = group 0..7."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.empty((size, size, 3), np.float32)
    image[:] = rng.uniform(30, 220, 3)
    image += 25 * np.sin(6 * rng.uniform(0.5, 1.5) * (x + y))[..., None]  # background gradient
    scale = (0.72 + 0.07 * min(age, 4)) * rng.uniform(0.93, 1.07)  # children have smaller faces
    a = 0.24 * scale
    b = a * (1.33 if gender == 0 else 1.2) * rng.uniform(0.97, 1.03)  # male faces are longer
    cx, cy = 0.5 + rng.uniform(-0.07, 0.07), 0.53 + rng.uniform(-0.05, 0.05)
    face = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1
    grey = np.clip((age - 4) / 3, 0, 1)  # hair greys from 38-43 on
    hair_rgb = np.array((40, 30, 25) if gender == 0 else (130, 65, 35)) + rng.normal(0, 10, 3)
    hair_rgb = (1 - grey) * hair_rgb + grey * np.array((200, 200, 200))
    hair = (((x - cx) / (1.1 * a)) ** 2 + ((y - cy + 0.25 * b) / (0.95 * b)) ** 2 <= 1) & (y < cy - 0.35 * b)
    if gender == 1:  # long hair down the sides
        hair |= (np.abs(x - cx) < 1.4 * a) & (y > cy - 0.5 * b) & (y < cy + 1.3 * b) & ~face
    image[hair] = hair_rgb
    skin = np.array(((235, 195, 165), (200, 150, 110), (140, 95, 65))[rng.integers(3)]) + rng.normal(0, 8, 3)
    image[face & ~hair] = skin
    if gender == 0 and age >= 4 and rng.random() < 0.6:  # beard
        image[face & (y > cy + 0.35 * b)] = 0.55 * skin + 0.45 * hair_rgb
    for ex in (cx - 0.4 * a, cx + 0.4 * a):
        image[((x - ex) ** 2 + (y - cy + 0.1 * b) ** 2) < (0.09 * a) ** 2] = (25, 25, 30)
    mouth = (np.abs(x - cx) < 0.35 * a) & (np.abs(y - cy - 0.5 * b) < 0.012)
    image[mouth] = (170, 40, 50) if gender == 1 else (90, 45, 40)
    for k in range(max(age - 3, 0)):  # one forehead line per group from 25-32 on
        line = (np.abs(x - cx) < 0.5 * a) & (np.abs(y - (cy - 0.31 * b + 0.045 * b * k)) < 0.005) & face
        image[line] = 0.6 * skin
    image = image * rng.uniform(0.75, 1.25) + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


# rows the label policy drops: (age, gender); '(25, 23)' is the irregular range of the real fold 0
DROPPED_ROWS = (("None", ""), ("35", "f"), ("(25, 32)", "u"), ("(4, 6)", ""), ("(25, 23)", "m"))


def write_adience(out: str | Path, per_fold: int = 60, size: int = 256, seed: int = 0) -> Path:
    """Write fold_{0..4}_data.txt and aligned/ JPEGs into `out` (per_fold rows per fold, including the
    DROPPED_ROWS); returns `out`."""
    if per_fold < 2 * len(DROPPED_ROWS):
        raise ValueError(f"per_fold must be at least {2 * len(DROPPED_ROWS)}, got {per_fold}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    face_id = 0
    for fold in range(NUM_FOLDS):
        users = [f"{rng.integers(10**7, 10**8)}@N{fold:02d}" for _ in range(3)]  # disjoint across folds
        people = []  # (user, face_id, gender, age): several photos per person
        for user in users:
            for _ in range(max(per_fold // 12, 1)):
                face_id += 1
                people.append((user, face_id, int(rng.integers(2)), int(rng.integers(len(AGE_GROUPS)))))
        labels = [None] * (per_fold - len(DROPPED_ROWS)) + list(DROPPED_ROWS)
        lines = ["\t".join(FOLD_COLUMNS)]
        for k in rng.permutation(per_fold):
            user, face, gender, age = people[rng.integers(len(people))]
            age_str, gender_str = labels[k] or (AGE_GROUPS[age], "mf"[gender])
            original = f"{rng.integers(10**10, 10**11)}_{rng.bytes(5).hex()}_o.jpg"
            box = rng.integers(0, 1000, 2).tolist() + [int(rng.integers(200, 900))] * 2
            extra = [int(rng.integers(-90, 90)), int(rng.choice([-30, -15, 0, 15, 30])), int(rng.integers(5, 200))]
            lines.append("\t".join(map(str, [user, original, face, age_str, gender_str, *box, *extra])))
            path = out / "aligned" / user / f"landmark_aligned_face.{face}.{original}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render_face(rng, gender, age, size)).save(path, quality=90)
        (out / f"fold_{fold}_data.txt").write_text("\n".join(lines) + "\n")
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    nyu = sub.add_parser("nyuv2", help="nyu_depth_v2_labeled.mat + splits.mat in the official formats")
    nyu.add_argument("--n", type=int, default=24, help="number of frames (1449 uses the official split)")
    nyu.add_argument("--mapping", action="store_true", help="also write classMapping40.mat")
    nyu.add_argument(
        "--frame-size",
        type=int,
        nargs=2,
        default=(480, 640),
        metavar=("H", "W"),
        help="frame height and width (the official 480 x 640 by default; smaller for quick runs)",
    )
    nyu.add_argument(
        "--train-fraction",
        type=float,
        default=0.55,
        help="share of frames in trainNdxs when --n is not 1449 (the official 795/1449 = 0.55)",
    )
    mtan = sub.add_parser("mtan", help="an MTAN-style nyuv2/ folder of .npy files")
    mtan.add_argument("--n-train", type=int, default=12)
    mtan.add_argument("--n-val", type=int, default=8)
    mtan.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(288, 384),
        metavar=("H", "W"),
        help="frame height and width (MTAN's 288 x 384 by default)",
    )
    adience = sub.add_parser("adience", help="Adience fold files + aligned/ JPEG faces")
    adience.add_argument("--per-fold", type=int, default=60, help="rows per fold, 5 of which must be dropped")
    adience.add_argument("--size", type=int, default=256, help="image side in pixels")
    cs = sub.add_parser("cityscapes", help="Cityscapes official layout: leftImg8bit/ gtFine/ disparity/ camera/")
    cs_mtan = sub.add_parser("cityscapes-mtan", help="an MTAN-style cityscapes folder of .npy files")
    for p, n_train, n_val, size in ((cs, 8, 4, (64, 128)), (cs_mtan, 8, 4, (128, 256))):
        p.add_argument("--n-train", type=int, default=n_train)
        p.add_argument("--n-val", type=int, default=n_val)
        p.add_argument("--size", type=int, nargs=2, default=size, metavar=("H", "W"), help="frame height and width")
    for p in (nyu, mtan, adience, cs, cs_mtan):
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.dataset == "nyuv2":
        out = write_nyuv2(args.out, args.n, args.seed, args.mapping, tuple(args.frame_size), args.train_fraction)
    elif args.dataset == "mtan":
        out = write_mtan(args.out, args.n_train, args.n_val, args.seed, tuple(args.size))
    elif args.dataset == "cityscapes":
        out = write_cityscapes(args.out, args.n_train, args.n_val, tuple(args.size), args.seed)
    elif args.dataset == "cityscapes-mtan":
        out = write_cityscapes_mtan(args.out, args.n_train, args.n_val, tuple(args.size), args.seed)
    else:
        out = write_adience(args.out, args.per_fold, args.size, args.seed)
    print(f"wrote synthetic {args.dataset} to {out}")


if __name__ == "__main__":
    main()
