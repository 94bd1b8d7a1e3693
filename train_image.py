"""Train the Adience image networks: gender (2) + age group (8), ResNet-50 branches, 5-fold protocol.

Stage 1 (single-task pair, from ImageNet weights), test fold 0:
    python train_image.py --data-root data/adience --test-fold 0 --fusion none --pretrained imagenet
Stage 2 (AFA-fused, from stage 1):
    python train_image.py --data-root data/adience --test-fold 0 --fusion afa --init weight/image_single_fold0_best.pth
Training uses the four other folds (a subject-exclusive share held out for validation).
"""

from __future__ import annotations

import argparse
import sys

from engine import runs, trainer
from engine.tasks import ImageFamily, image_evaluate

# The original image recipe: lr 0.001, weight decay 5e-4, batch 32, 50 epochs, x0.1 steps
# (here a poly schedule by default; --schedule step --step-every N reproduces the steps).
DEFAULTS = dict(crop_size=224, epochs=50, batch_size=32, lr=0.001, weight_decay=5e-4, schedule="poly")

evaluate = image_evaluate
train_one_epoch = trainer.train_one_epoch


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train AFA image networks on Adience", add_help=add_help)
    trainer.common_args(parser, "image", DEFAULTS)
    parser.add_argument("--test-fold", type=int, default=0, choices=range(5), metavar="{0..4}",
                        help="Adience fold held out for testing; training uses the other four")
    parser.add_argument("--image-dir", default="aligned", help="image folder under --data-root (aligned or faces)")
    return parser


def main(args: argparse.Namespace, explicit: set[str] | None = None) -> int:
    """``explicit``: the flags given on the command line; None (args from ``parse_args``): the
    settings whose value differs from the default."""
    if explicit is None:
        explicit = runs.explicit_by_default(args, get_args_parser())
    return trainer.main_loop(args, ImageFamily(args), explicit)


if __name__ == "__main__":
    sys.exit(main(*runs.parse_with_explicit(get_args_parser())))
