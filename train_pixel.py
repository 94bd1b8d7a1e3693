"""Train the NYUv2 pixel networks: semantic segmentation (40 classes) + depth, DeepLabv3+ branches.

Stage 1 (single-task pair, from ImageNet weights):
    python train_pixel.py --data-root data/nyuv2_prepared --fusion none --pretrained imagenet
Stage 2 (AFA-fused, from stage 1):
    python train_pixel.py --data-root data/nyuv2_prepared --fusion afa --init weight/pixel_single_best.pth
Several GPUs: torchrun --nproc_per_node=N train_pixel.py ... (per-process --batch-size).
"""

from __future__ import annotations

import argparse
import sys

from engine import runs, trainer
from engine.losses import DEPTH_LOSSES
from engine.tasks import PixelFamily, pixel_evaluate

# The recipe's defaults (SGD momentum 0.9, poly schedule; ASPP and decoders at 10x the backbone rate).
DEFAULTS = dict(crop_size=300, epochs=60, batch_size=8, lr=0.007, weight_decay=1e-4, schedule="poly")

evaluate = pixel_evaluate
train_one_epoch = trainer.train_one_epoch


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train AFA pixel networks on NYUv2", add_help=add_help)
    trainer.common_args(parser, "pixel", DEFAULTS)
    parser.add_argument("--depth-loss", choices=DEPTH_LOSSES, default="berhu",
                        help="depth loss on valid pixels (ground truth > 0)")
    return parser


def main(args: argparse.Namespace, explicit: set[str] | None = None) -> int:
    """``explicit``: the flags given on the command line; None (args from ``parse_args``): the
    settings whose value differs from the default."""
    if explicit is None:
        explicit = runs.explicit_by_default(args, get_args_parser())
    return trainer.main_loop(args, PixelFamily(args), explicit)


if __name__ == "__main__":
    sys.exit(main(*runs.parse_with_explicit(get_args_parser())))
