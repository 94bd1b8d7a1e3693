"""A small synthetic Phototriage in the official layout, for tests and the demo.

    python -m data.synthetic_series --out DIR [--series 24 8 8] [--size 64] [--seed 0]

Each series is one rendered scene (sky, ground, a few coloured shapes) photographed 2..5 times
with different defects: Gaussian blur, exposure (a gain away from 1) and sensor noise, plus a
small random shift. A photo's quality is q = -(blur_sigma / 2 + 2 |log2 gain| + noise_std / 12);
for a pair, p = sigmoid((q_i - q_j) / 0.25) rounded to three decimals (the share of raters who
prefer photo i), ranks order the photos by q (1 = best). So p > 0.5 exactly when rank_i < rank_j,
apart from ties p = 0.500, as in the official lists; every series lists all its n(n-1)/2 pairs,
and each split holds a few exact ties (labelless pairs the reader must leave out). Photos are
JPEGs named SSSSSS-II.JPG, landscape or portrait, of size about ``size`` x 4/3 ``size``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from data.phototriage import SPLITS, photo_name

TEMPERATURE = 0.25


def render_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A clean (H, W, 3) float image in [0, 255]: sky gradient, ground, three to five shapes."""
    y = np.linspace(0, 1, height)[:, None, None]
    sky, ground = rng.uniform(60, 230, 3), rng.uniform(30, 200, 3)
    horizon = rng.uniform(0.35, 0.7)
    img = np.where(y < horizon, sky * (0.7 + 0.3 * y / horizon), ground * (1.1 - 0.3 * y))
    img = np.broadcast_to(img, (height, width, 3)).copy()
    yy, xx = np.mgrid[:height, :width]
    for _ in range(rng.integers(3, 6)):
        cy, cx = rng.uniform(0.2, 0.9) * height, rng.uniform(0.1, 0.9) * width
        r = rng.uniform(0.08, 0.22) * min(height, width)
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        else:
            mask = (abs(yy - cy) < r) & (abs(xx - cx) < r * rng.uniform(0.5, 1.5))
        img[mask] = colour
    # fine texture, so that blur is visible everywhere
    img += 25 * np.sin(xx / 1.7 + yy / 2.3)[..., None] * rng.uniform(0.5, 1.0)
    return np.clip(img, 0, 255)


def shoot(rng: np.random.Generator, scene: np.ndarray) -> tuple[Image.Image, float]:
    """One photo of a scene with random defects; returns it and its quality q."""
    blur, gain, noise = rng.uniform(0, 3), 2.0 ** rng.uniform(-1.2, 1.2), rng.uniform(0, 40)
    dy, dx = rng.integers(-3, 4, 2)
    img = np.roll(scene, (dy, dx), axis=(0, 1))
    photo = Image.fromarray(img.astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(photo).astype(np.float64) * gain + rng.normal(0, noise, img.shape)
    q = -(blur / 2 + 2 * abs(math.log2(gain)) + noise / 12)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), q


def write_split(out: Path, split: str, series_ids: list[int], size: int, rng: np.random.Generator) -> None:
    folder, images, pairlist = SPLITS[split]
    image_dir = out / folder / images
    image_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, series in enumerate(series_ids):
        portrait = rng.random() < 0.3
        h, w = (round(size * 4 / 3), size) if portrait else (size, round(size * 4 / 3))
        scene = render_scene(rng, h, w)
        n = int(rng.integers(2, 6))
        quality = []
        for index in range(1, n + 1):
            photo, q = shoot(rng, scene)
            photo.save(image_dir / photo_name(series, index), quality=92)
            quality.append(q)
        order = np.argsort(-np.asarray(quality), kind="stable")
        rank = np.empty(n, dtype=int)
        rank[order] = np.arange(1, n + 1)
        for i in range(n):
            for j in range(i + 1, n):
                p = 1.0 / (1.0 + math.exp(-(quality[i] - quality[j]) / TEMPERATURE))
                if k % 4 == 1 and (i, j) == (0, 1):  # a few raters split evenly: no label
                    p = 0.5
                lines.append(f"{series} {i + 1} {j + 1} {p:.3f} {rank[i]} {rank[j]}")
    (out / folder / pairlist).write_text("\n".join(lines) + "\n")


def write_phototriage(
    out: str | Path, series: tuple[int, int, int] = (24, 8, 8), size: int = 64, seed: int = 0
) -> Path:
    """Write train / val / test with the given numbers of series; returns ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    first = 1
    for split, count in zip(("train", "val", "test"), series):
        # series ids are unique across splits and not consecutive, as in the official lists
        ids = [first + 3 * k for k in range(count)]
        first = ids[-1] + 5 if ids else first
        write_split(out, split, ids, size, rng)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--series",
        type=int,
        nargs=3,
        default=(24, 8, 8),
        metavar=("TRAIN", "VAL", "TEST"),
        help="number of series in each split",
    )
    p.add_argument("--size", type=int, default=64, help="shorter side of the photos")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    print(write_phototriage(args.out, tuple(args.series), args.size, args.seed))


if __name__ == "__main__":
    main()
