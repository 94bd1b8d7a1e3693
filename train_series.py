"""Train the series photo selection networks on Phototriage: PAU (the ICASSP 2020 paper) or Siamese
(families/series.py).

    python train_series.py --data-root datasets/phototriage --fusion pau --pretrained imagenet
    python train_series.py --data-root datasets/phototriage --fusion siamese --pretrained imagenet

One stage, from ImageNet weights. Training uses the official train pair list; the best epoch is
chosen on the official val list by pairwise accuracy (the test list is for eval.py only).
"""

from __future__ import annotations

import argparse
import sys

from engine import runs, train
from families import SeriesFamily


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return SeriesFamily.get_args_parser(add_help)


def main(args: argparse.Namespace, explicit: set[str] | None = None) -> int:
    return train.main(args, SeriesFamily, explicit)


if __name__ == "__main__":
    sys.exit(main(*runs.parse_with_explicit(get_args_parser())))
