"""Run a trained network on your own images.

    python predict.py --checkpoint weight/pixel_afa_best.pth --out preds photos/ kitchen.jpg [--overlay]
    python predict.py --checkpoint released/pixel_afa --out preds photos/          # a python -m tools.export folder
    python predict.py --checkpoint weight/image_afa_fold0_best.pth --out preds faces/

INPUT: image files (any format Pillow reads) or folders (their image files, recursively). Images are read
as engine/inference.py documents (EXIF orientation applied; 16-bit scaled to 8 bit; grayscale to RGB;
transparency composited on white). An unreadable file is named in a one-line warning and skipped;
if nothing at all is readable the exit status is 2.

Pixel checkpoints (NYUv2 seg + depth), per image at its own resolution, windows of the trained input
size exactly as eval.py (so a test frame saved as PNG gives eval.py --save-predictions' numbers):
    OUT/<name>.npz          seg (H, W) int64 class ids, depth (H, W) float32 metres
    OUT/<name>_seg.png      palette PNG: pixel value = class id, colours as in eval.py's plots
    OUT/<name>_depth.png    'viridis' over [0, depth_max_m] metres; the range is in the PNG's text chunks
    OUT/<name>_overlay.png  (--overlay) the segmentation blended on the photo
    OUT/labels.json         class names of the segmentation ids
<name> is the file name without its suffix (name-1, name-2, ... when two inputs share a name).

Image checkpoints (Adience gender + age): OUT/predictions.csv with path, gender_pred, gender_prob,
age_pred (the Adience group label, e.g. "(25, 32)"), age_prob. The network was trained on Adience's
aligned faces: give it face crops aligned the same way (centred, upright, the face filling the image).

Series checkpoints (photo selection): every folder holding inputs is one series (near-duplicate shots
of one scene); each pair of its photos goes through the network once, and OUT/ranking.csv lists
folder, path, rank (1 = the photo the model prefers: most pairwise wins) and wins.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from data.errors import DataError
from data.phototriage import fix_scale_crop
from data.transforms import ImageEvalTransform, PixelEvalTransform, normalize
from engine.checkpoint import CheckpointError
from engine.distributed import resolve_device
from engine.inference import IMAGE_SUFFIXES, UnreadableImage, find_inputs, load_model, read_image
from engine.tasks import predict_pixel
from engine.trainer import autocast
from engine.viz import color_depth, color_seg
from models.pretrained import PretrainedError

ModelFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]
OVERLAY_ALPHA = 0.5  # weight of the segmentation colours over the photo


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run an AFA network on your own images", add_help=add_help)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--checkpoint", required=True,
                   help="a train_pixel.py / train_image.py checkpoint, or a folder / URL from python -m tools.export")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overlay", action="store_true", help="pixel: also write <name>_overlay.png")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--batch-size", type=int, default=32,
                   help="image checkpoints: images per forward pass (pixel checkpoints run one window at a time, "
                        "see engine/tasks.py)")
    return p


class Reader:
    """Yields (path, uint8 (3, H, W)) for the readable inputs with a progress bar; counts the others."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.skipped = 0
        self.read = 0

    def __iter__(self) -> Iterator[tuple[Path, torch.Tensor]]:
        bar = tqdm(self.files, unit="image", disable=len(self.files) < 2, file=sys.stderr)
        for path in bar:
            try:
                image = read_image(path)
            except UnreadableImage as e:
                self.skipped += 1
                bar.write(f"warning: skipped {e}", file=sys.stderr)
                continue
            self.read += 1
            yield path, image


class UniqueNames:
    """Output names from file stems; a repeated stem gets -1, -2, ... so that no output is overwritten."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, path: Path) -> str:
        name, k = path.stem, 0
        while name in self.used:
            k += 1
            name = f"{path.stem}-{k}"
        self.used.add(name)
        return name


def seg_png(seg: np.ndarray) -> Image.Image:
    """(H, W) class ids -> palette PNG whose pixel values are the ids (ids >= 256 are not representable)."""
    ids = np.arange(256)
    colours = np.rint(color_seg(ids) * 255).astype(np.uint8)  # the plots' colours, id by id
    img = Image.fromarray(seg.astype(np.uint8), mode="P")
    img.putpalette(colours.reshape(-1).tolist())
    return img


def depth_png(depth: np.ndarray) -> tuple[Image.Image, PngInfo]:
    """(H, W) metres -> colour PNG over [0, max] and text chunks with the range and the colour map."""
    vmax = float(max(depth.max(), 1e-3))
    info = PngInfo()
    info.add_text("depth_min_m", "0")
    info.add_text("depth_max_m", f"{vmax:.6g}")
    info.add_text("colormap", "viridis, 0 m = dark purple, depth_max_m = yellow; depth <= 0 black")
    return Image.fromarray(np.rint(color_depth(depth, vmax) * 255).astype(np.uint8)), info


def predict_pixels(model_fn: ModelFn, info: dict[str, Any], reader: Reader, args: argparse.Namespace,
                   device: torch.device) -> None:
    out, size = Path(args.out), info["model_config"]["input_size"]
    names = UniqueNames()
    transform = PixelEvalTransform(size)
    if info["model_config"]["tasks"]["seg"] > 256:
        print("warning: more than 256 classes: <name>_seg.png holds ids modulo 256 (the .npz holds them all)",
              file=sys.stderr)
    for path, image in reader:
        batch = {"image": transform({"image": image})["image"][None]}  # (1, 3, H, W), as eval.py's DataLoader
        for _, seg, depth in predict_pixel(model_fn, [batch], size, device):
            # the same conversions as engine.tasks.pixel_evaluate, so that the .npz equals eval.py's
            seg_np, depth_np = seg.cpu().numpy().astype(np.int64)[0], depth.cpu().numpy().astype(np.float32)[0]
        name = names(path)
        np.savez(out / f"{name}.npz", seg=seg_np, depth=depth_np)
        seg_png(seg_np).save(out / f"{name}_seg.png")
        picture, text = depth_png(depth_np)
        picture.save(out / f"{name}_depth.png", pnginfo=text)
        if args.overlay:
            photo = image.permute(1, 2, 0).numpy().astype(np.float32) / 255
            blend = (1 - OVERLAY_ALPHA) * photo + OVERLAY_ALPHA * color_seg(seg_np)
            Image.fromarray(np.rint(blend * 255).astype(np.uint8)).save(out / f"{name}_overlay.png")
    if reader.read:
        (out / "labels.json").write_text(json.dumps({"seg": info["labels"].get("seg"), "depth": "metres"}, indent=2))


def predict_images(model_fn: ModelFn, info: dict[str, Any], reader: Reader, args: argparse.Namespace,
                   device: torch.device) -> None:
    pre, labels = info["preprocessing"], info["labels"]
    transform = ImageEvalTransform(pre["resize_shorter_side"], pre["center_crop"])
    print("note: image networks expect aligned faces like Adience's aligned/ images (centred, upright, the face "
          "filling the picture); other pictures give meaningless answers", file=sys.stderr)

    def flush(paths: list[Path], images: list[torch.Tensor]) -> list[list[Any]]:
        with torch.no_grad():
            out = model_fn(torch.stack(images).to(device))
        rows = [[str(p)] for p in paths]
        for task in ("gender", "age"):
            prob, pred = out[task].float().softmax(1).max(1)
            for row, k, q in zip(rows, pred.tolist(), prob.tolist()):
                row += [labels[task][k], f"{q:.4f}"]
        return rows

    rows: list[list[Any]] = []
    paths: list[Path] = []
    images: list[torch.Tensor] = []
    for path, image in reader:
        paths.append(path)
        images.append(transform({"image": image})["image"])
        if len(images) == args.batch_size:
            rows += flush(paths, images)
            paths, images = [], []
    if images:
        rows += flush(paths, images)
    if not rows:  # nothing readable: main reports it, no empty table is left behind
        return
    with open(Path(args.out) / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "gender_pred", "gender_prob", "age_pred", "age_prob"])
        w.writerows(rows)


def predict_series(model_fn: ModelFn, info: dict[str, Any], reader: Reader, args: argparse.Namespace,
                   device: torch.device) -> None:
    """Each folder holding inputs is one series: every pair (i, j) of its photos goes through the
    network once, as (a, b) = (i, j); the photo preferred in more pairs ranks higher (ties: the larger
    summed probability of being preferred, then the path). OUT/ranking.csv: folder, path, rank, wins."""
    size = info["preprocessing"]["center_crop"]
    series: dict[Path, list[tuple[Path, torch.Tensor]]] = {}
    for path, image in reader:
        series.setdefault(path.parent, []).append((path, normalize(fix_scale_crop(image, size))))
    rows: list[list[Any]] = []
    for folder, photos in series.items():
        wins, score = [0] * len(photos), [0.0] * len(photos)
        pairs = list(itertools.combinations(range(len(photos)), 2))
        for start in range(0, len(pairs), args.batch_size):
            chunk = pairs[start:start + args.batch_size]
            a = torch.stack([photos[i][1] for i, _ in chunk]).to(device)
            b = torch.stack([photos[j][1] for _, j in chunk]).to(device)
            with torch.no_grad():
                prob_i = model_fn(a, b)["pair"].double().softmax(1)[:, 0].tolist()
            for (i, j), q in zip(chunk, prob_i):
                wins[i if q > 0.5 else j] += 1
                score[i], score[j] = score[i] + q, score[j] + 1 - q
        order = sorted(range(len(photos)), key=lambda k: (-wins[k], -score[k], str(photos[k][0])))
        rows += [[str(folder), str(photos[k][0]), rank, wins[k]] for rank, k in enumerate(order, start=1)]
    if not rows:
        return
    with open(Path(args.out) / "ranking.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["folder", "path", "rank", "wins"])
        w.writerows(rows)


# One predictor per task family, keyed by the checkpoint's model_config['kind'].
PREDICTORS: dict[str, Callable[..., None]] = {"pixel": predict_pixels, "image": predict_images,
                                               "series": predict_series}


def main(args: argparse.Namespace) -> int:
    try:
        if args.batch_size < 1:
            raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
        device = resolve_device(args.device)
        model, info = load_model(args.checkpoint)
        kind = info["model_config"]["kind"]
        if kind not in PREDICTORS:
            raise DataError(f"{args.checkpoint}: no predictor for {kind!r} networks (known: {', '.join(PREDICTORS)})")
        model.to(device)
        files = find_inputs(args.inputs)
        if not files:
            raise DataError(f"no image files in {' '.join(args.inputs)} (suffixes read from folders: "
                            f"{' '.join(IMAGE_SUFFIXES)})")
        Path(args.out).mkdir(parents=True, exist_ok=True)

        def model_fn(*xs: torch.Tensor) -> dict[str, torch.Tensor]:  # as eval.py's
            with autocast(device, args.amp):
                return {k: v.float() for k, v in model(*xs).items()}

        reader = Reader(files)
        PREDICTORS[kind](model_fn, info, reader, args, device)
        if reader.read == 0:
            raise DataError(f"none of the {len(files)} input file(s) could be read as an image")
    except (CheckpointError, PretrainedError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = f"; {reader.skipped} unreadable file(s) skipped" if reader.skipped else ""
    print(f"{kind} network: {reader.read} image(s) -> {args.out}{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
