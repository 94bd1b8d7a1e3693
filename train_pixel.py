"""Train the NYUv2 pixel networks: semantic segmentation + depth, DeepLabv3+ branches (families/pixel.py).

Stage 1 (the single-task pair, from ImageNet weights), then stage 2 (AFA-fused, from stage 1):
    python train_pixel.py --data-root datasets/nyuv2 --fusion none --pretrained imagenet
    python train_pixel.py --data-root datasets/nyuv2 --fusion afa --init weight/pixel_single_best.pth
Several GPUs: torchrun --nproc_per_node=N train_pixel.py ... (per-process --batch-size). docs/training.md.
"""

from __future__ import annotations

import argparse
import sys

from engine import runs, train
from families import PixelFamily


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return PixelFamily.get_args_parser(add_help)


def main(args: argparse.Namespace, explicit: set[str] | None = None) -> int:
    return train.main(args, PixelFamily, explicit)


if __name__ == "__main__":
    sys.exit(main(*runs.parse_with_explicit(get_args_parser())))
