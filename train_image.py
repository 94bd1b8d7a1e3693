"""Train the Adience image networks: gender (2) + age group (8), ResNet-50 branches, 5 folds (families/image.py).

Stage 1 (the single-task pair, from ImageNet weights), then stage 2 (AFA-fused, from stage 1), test fold 0:
    python train_image.py --data-root datasets/adience --test-fold 0 --fusion none --pretrained imagenet
    python train_image.py --data-root datasets/adience --test-fold 0 --fusion afa \
        --init weight/image_single_fold0_best.pth
Training uses the four other folds (a subject-exclusive share held out for validation). docs/training.md.
"""

from __future__ import annotations

import argparse
import sys

from engine import runs, train
from families import ImageFamily


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return ImageFamily.get_args_parser(add_help)


def main(args: argparse.Namespace, explicit: set[str] | None = None) -> int:
    return train.main(args, ImageFamily, explicit)


if __name__ == "__main__":
    sys.exit(main(*runs.parse_with_explicit(get_args_parser())))
