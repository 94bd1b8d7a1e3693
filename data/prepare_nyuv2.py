"""Convert the official NYUv2 labeled set into a prepared folder for fast random access.

Usage::

    python -m data.prepare_nyuv2 --mat nyu_depth_v2_labeled.mat --splits splits.mat --out datasets/nyuv2 \\
        [--mapping classMapping40.mat] [--depth filled|raw] [--overwrite]

Inputs: ``nyu_depth_v2_labeled.mat`` is MATLAB v7.3, i.e. HDF5, read with h5py, which sees MATLAB's axes reversed:
``images`` (N, 3, W, H) uint8, ``labels`` / ``depths`` / ``rawDepths`` (N, W, H). ``splits.mat`` is MATLAB v5
(scipy) with 1-based ``trainNdxs`` / ``testNdxs``. ``classMapping40.mat`` (v5, optional) holds ``mapClass`` (1, 894)
with 40-class ids 1..40; without it the built-in copy of the same table is used. ``--depth filled`` takes the
in-painted ``depths``, ``--depth raw`` the Kinect ``rawDepths`` (0 where the sensor gave no value).

Prepared folder, format version 1 (H, W = 480, 640 for the real file)::

    OUT/meta.json               format, version, source file names, depth kind, class names, frame counts
    OUT/{train,test}/image.npy  uint8   (N, H, W, 3)  RGB frames
    OUT/{train,test}/seg.npy    uint8   (N, H, W)     40 classes 0..39; 255 = unlabeled (raw label 0)
    OUT/{train,test}/depth.npy  float32 (N, H, W)     metres; 0 = no value
    OUT/{train,test}/index.npy  int64   (N,)          1-based NYU frame index, in split-file order

Plain .npy files are opened with ``np.load(mmap_mode='r')`` lazily by each DataLoader worker, so no HDF5 handle is
shared across forked workers and reading a random frame is one page-in. The input is read in one pass, one frame at
a time. The folder is written under a temporary name, meta.json last, and renamed when complete, so an interrupted
run never leaves a folder that looks prepared.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from tqdm import tqdm

from data.errors import DataError, require_file
from data.nyuv2_tables import CLASS_NAMES_40, FORMAT, FORMAT_VERSION, IGNORE_INDEX, MAP_CLASS_40, NUM_RAW_CLASSES

DEPTH_KEYS = {"filled": "depths", "raw": "rawDepths"}
SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}


def _load_v5(path: str | Path, what: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read `keys` from a MATLAB v5 file with scipy, raising DataError naming the file on any problem."""
    path = require_file(path, what)
    if h5py.is_hdf5(path):
        raise DataError(f"{path}: is a MATLAB v7.3 (HDF5) file; expected {what} (MATLAB v5)")
    try:
        content = scipy.io.loadmat(path, variable_names=keys)
    except Exception as err:  # scipy raises several unrelated types for files that are not MAT-files
        reason = f"{type(err).__name__}: {err}"
        raise DataError(f"{path}: cannot read as a MATLAB v5 file ({reason}); expected {what}") from err
    missing = [k for k in keys if k not in content]
    if missing:
        raise DataError(f"{path}: missing variable(s) {', '.join(missing)}; expected {what}")
    return {k: content[k] for k in keys}


def read_mapping(path: str | Path) -> np.ndarray:
    """Read ``mapClass`` from classMapping40.mat: (894,) uint8, entry k-1 = 40-class id (1..40) of raw label k."""
    what = "classMapping40.mat with mapClass (1, 894) of values 1..40"
    table = _load_v5(path, what, ("mapClass",))["mapClass"].ravel()
    numeric = table.size == NUM_RAW_CLASSES and np.issubdtype(table.dtype, np.number)
    if not numeric or table.min() < 1 or table.max() > 40:
        raise DataError(f"{path}: mapClass has {table.size} values in an unexpected range; expected {what}")
    return table.astype(np.uint8)


def class_lut(mapping: str | Path | None = None) -> np.ndarray:
    """Lookup table (895,) uint8 from raw label 0..894 to 40-class label 0..39, with raw 0 (unlabeled) -> 255."""
    table = MAP_CLASS_40 if mapping is None else read_mapping(mapping)
    lut = np.full(NUM_RAW_CLASSES + 1, IGNORE_INDEX, dtype=np.uint8)
    lut[1:] = table - 1
    return lut


def read_splits(path: str | Path, num_frames: int) -> dict[str, np.ndarray]:
    """Read the official split: {'train': (n,), 'test': (m,)} int64 1-based indices, in file order, validated."""
    what = "splits.mat with 1-based trainNdxs and testNdxs"
    content = _load_v5(path, what, tuple(SPLIT_KEYS.values()))
    splits = {}
    for split, key in SPLIT_KEYS.items():
        ndxs = content[key].ravel()
        if ndxs.size == 0 or not np.issubdtype(ndxs.dtype, np.number) or np.any(ndxs != np.round(ndxs)):
            raise DataError(f"{path}: {key} is empty or not integer; expected {what}")
        ndxs = ndxs.astype(np.int64)
        if ndxs.min() < 1 or ndxs.max() > num_frames or np.unique(ndxs).size != ndxs.size:
            raise DataError(f"{path}: {key} has repeated values or values outside 1..{num_frames}; expected {what}")
        splits[split] = ndxs
    if np.intersect1d(splits["train"], splits["test"]).size:
        raise DataError(f"{path}: trainNdxs and testNdxs overlap; expected disjoint splits")
    return splits


def _open_labeled(path: str | Path, depth_key: str) -> h5py.File:
    """Open nyu_depth_v2_labeled.mat with h5py and check its keys and shapes; raises DataError naming the file."""
    what = "nyu_depth_v2_labeled.mat (MATLAB v7.3 / HDF5)"
    path = require_file(path, what)
    if not h5py.is_hdf5(path):
        with open(path, "rb") as f:
            head = f.read(20)
        kind = "a MATLAB v5 file" if head.startswith(b"MATLAB 5.0") else "not an HDF5 file"
        raise DataError(f"{path}: {kind}; expected {what}")
    try:
        # a large chunk cache, in case the file's chunks span several frames (its chunking is not documented)
        mat = h5py.File(path, "r", rdcc_nbytes=128 * 2**20)
    except OSError as err:
        raise DataError(f"{path}: cannot open as HDF5 ({err}); expected {what}") from err
    keys = ("images", "labels", depth_key)
    missing = [k for k in keys if not isinstance(mat.get(k), h5py.Dataset)]
    if missing:
        mat.close()
        raise DataError(f"{path}: missing dataset(s) {', '.join(missing)}; expected {what} with {', '.join(keys)}")
    images, labels, depth = (mat[k] for k in keys)
    if (
        images.ndim != 4
        or images.shape[1] != 3
        or labels.shape != depth.shape
        or labels.shape != (images.shape[0], *images.shape[2:])
    ):
        mat.close()
        raise DataError(
            f"{path}: shapes images {images.shape}, labels {labels.shape}, {depth_key} {depth.shape} do not match; "
            f"expected (N, 3, W, H) and (N, W, H) as h5py shows MATLAB arrays"
        )
    return mat


def _allocate(tmp: Path, ndxs: dict[str, np.ndarray], height: int, width: int) -> dict[str, dict[str, np.ndarray]]:
    """Create the per-split .npy files in `tmp` (memory-mapped for writing) and save the index arrays."""
    arrays = {}
    for split, idx in ndxs.items():
        folder = tmp / split
        folder.mkdir()
        n = len(idx)
        arrays[split] = {
            "image": np.lib.format.open_memmap(folder / "image.npy", "w+", np.uint8, (n, height, width, 3)),
            "seg": np.lib.format.open_memmap(folder / "seg.npy", "w+", np.uint8, (n, height, width)),
            "depth": np.lib.format.open_memmap(folder / "depth.npy", "w+", np.float32, (n, height, width)),
        }
        np.save(folder / "index.npy", idx)
    return arrays


def _meta(
    mat: str | Path,
    splits: str | Path,
    mapping: str | Path | None,
    depth: str,
    shape: tuple[int, int],
    counts: dict[str, int],
) -> dict[str, object]:
    """Content of meta.json (file names only: the folder may be moved to another machine)."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "source": {
            "mat": Path(mat).name,
            "splits": Path(splits).name,
            "mapping": Path(mapping).name if mapping else "built-in mapClass",
        },
        "depth": depth,
        "depth_key": DEPTH_KEYS[depth],
        "depth_unit": "m",
        "height": shape[0],
        "width": shape[1],
        "num_classes": len(CLASS_NAMES_40),
        "ignore_index": IGNORE_INDEX,
        "class_names": list(CLASS_NAMES_40),
        "splits": counts,
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the complete folder `tmp` to `out`, replacing an existing `out` only after `tmp` is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def prepare_nyuv2(
    mat: str | Path,
    splits: str | Path,
    out: str | Path,
    mapping: str | Path | None = None,
    depth: str = "filled",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the prepared folder `out` (format in the module docstring) from the official files; returns `out`."""
    if depth not in DEPTH_KEYS:
        raise ValueError(f"depth must be one of {', '.join(DEPTH_KEYS)}, got {depth!r}")
    out = Path(out)
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    lut = class_lut(mapping)
    with _open_labeled(mat, DEPTH_KEYS[depth]) as h5:
        images, labels, depths = h5["images"], h5["labels"], h5[DEPTH_KEYS[depth]]
        num_frames, _, width, height = images.shape
        ndxs = read_splits(splits, num_frames)
        # frame (0-based) -> (split, position in split-file order); the pass reads frames in file order
        where = {int(i) - 1: (split, pos) for split, idx in ndxs.items() for pos, i in enumerate(idx)}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            arrays = _allocate(tmp, ndxs, height, width)
            for frame in tqdm(sorted(where), desc="nyuv2 frames", unit="frame", disable=not progress):
                split, pos = where[frame]
                try:
                    image, label, dep = images[frame], labels[frame], depths[frame]
                except (OSError, ValueError) as err:
                    raise DataError(f"{mat}: cannot read frame {frame + 1} ({err})") from err
                if label.max() > NUM_RAW_CLASSES:
                    raise DataError(f"{mat}: frame {frame + 1} has raw label {label.max()} > {NUM_RAW_CLASSES}")
                arrays[split]["image"][pos] = image.transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
                arrays[split]["seg"][pos] = lut[label.T]
                arrays[split]["depth"][pos] = dep.T
            for split_arrays in arrays.values():
                for array in split_arrays.values():
                    array.flush()
            del arrays
            meta = _meta(mat, splits, mapping, depth, (height, width), {k: len(v) for k, v in ndxs.items()})
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")  # written last: marks completeness
            _move_into_place(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mat", required=True, help="nyu_depth_v2_labeled.mat (MATLAB v7.3)")
    parser.add_argument("--splits", required=True, help="splits.mat (MATLAB v5, trainNdxs/testNdxs)")
    parser.add_argument("--mapping", default=None, help="classMapping40.mat (default: built-in mapClass table)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--depth",
        choices=tuple(DEPTH_KEYS),
        default="filled",
        help="filled: in-painted 'depths'; raw: 'rawDepths' with 0 = no value",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    try:
        out = prepare_nyuv2(args.mat, args.splits, args.out, args.mapping, args.depth, args.overwrite)
    except DataError as err:
        print(f"prepare_nyuv2: error: {str(err).replace(chr(10), ' ')}", file=sys.stderr)
        sys.exit(2)
    counts = json.loads((out / "meta.json").read_text())["splits"]
    print(f"wrote {out}: " + ", ".join(f"{k} {v} frames" for k, v in counts.items()) + f", depth {args.depth}")


if __name__ == "__main__":
    main()
