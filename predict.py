"""Run a trained network on your own images.

    python predict.py --checkpoint weight/pixel_afa_best.pth --out preds photos/ kitchen.jpg --overlay
    python predict.py --checkpoint released/pixel_afa --out preds photos/        # a python -m tools.export folder
    python predict.py --checkpoint weight/image_afa_fold0_best.pth --out preds faces/

INPUT: image files (any format Pillow reads) or folders (their image files, recursively). Images are read
as engine/inference.py documents (EXIF orientation applied; 16-bit scaled to 8 bit; grayscale to RGB;
transparency composited on white). An unreadable file is named in a one-line warning and skipped;
if nothing at all is readable the exit status is 2. What is written depends on the network's family
(docs/using.md): pixel networks a segmentation and a depth map per image (at the training frames' scale,
brought back to the photo's size), image networks predictions.csv, series networks ranking.csv.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from data.errors import DataError
from engine.checkpoint import CheckpointError
from engine.distributed import resolve_device
from engine.inference import IMAGE_SUFFIXES, UnreadableImage, find_inputs, model_fn, read_image
from engine.precision import AMP_CHOICES, PrecisionError, check_amp
from families import family, load_model
from models.pretrained import PretrainedError

# Flags that only some families use (Family.predict_options): given for another family's network, they are refused.
FAMILY_OPTIONS = {"overlay": "--overlay", "native_scale": "--native-scale"}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run a trained network on your own images", add_help=add_help)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a training checkpoint (*_best.pth), or a folder / URL from python -m tools.export",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--amp", choices=AMP_CHOICES, default="none")
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="image and series networks: images (pairs) per forward pass (pixel networks run one window at a time)",
    )
    p.add_argument("--overlay", action="store_true", help="pixel: also write <name>_overlay.png")
    p.add_argument(
        "--native-scale",
        action="store_true",
        help="pixel: predict at the photo's own resolution instead of the training frames' scale (slow "
        "and memory-hungry for large photos: a score per class and pixel)",
    )
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


def main(args: argparse.Namespace) -> int:
    try:
        if args.batch_size < 1:
            raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
        device = resolve_device(args.device)
        check_amp(args.amp, device)
        model, info = load_model(args.checkpoint)
        kind = info["model_config"]["kind"]
        fam = family(kind)
        unused = [
            flag for dest, flag in FAMILY_OPTIONS.items() if getattr(args, dest) and dest not in fam.predict_options
        ]
        if unused:
            raise DataError(f"{', '.join(unused)}: not for {kind} networks ({args.checkpoint})")
        model.to(device)
        files = find_inputs(args.inputs)
        if not files:
            raise DataError(
                f"no image files in {' '.join(args.inputs)} (suffixes read from folders: {' '.join(IMAGE_SUFFIXES)})"
            )
        Path(args.out).mkdir(parents=True, exist_ok=True)
        reader = Reader(files)
        fam.predict(model_fn(model, device, args.amp), info, reader, args, device)
        if reader.read == 0:
            raise DataError(f"none of the {len(files)} input file(s) could be read as an image")
    except (CheckpointError, PretrainedError, DataError, PrecisionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = f"; {reader.skipped} unreadable file(s) skipped" if reader.skipped else ""
    print(f"{kind} network: {reader.read} image(s) -> {args.out}{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
