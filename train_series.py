"""Train the series photo selection networks on Phototriage: PAU (the ICASSP 2020 paper) or Siamese.

    python train_series.py --data-root data/phototriage --fusion pau --pretrained imagenet
    python train_series.py --data-root data/phototriage --fusion siamese --pretrained imagenet

One stage, from ImageNet weights. Training uses the official train pair list; the best epoch is
chosen on the official val list by pairwise accuracy (the test list is for eval.py only).
"""

from __future__ import annotations

import argparse
import sys

from engine import runs, trainer
from engine.series import SeriesFamily, series_evaluate
from models.series import SERIES_FUSIONS

# The original recipe (train_pau.py): SGD momentum 0.9, weight decay 5e-4, lr 1e-5 (x10 on the
# 'head' group: the final linear and the channel cells' FCs), x0.3 every 25 epochs, 100 epochs,
# batch 32, shorter side 224 then centre crop 224, no augmentation.
DEFAULTS = dict(crop_size=224, epochs=100, batch_size=32, lr=1e-5, weight_decay=5e-4, schedule="step",
                step_epochs=25, step_gamma=0.3, fusion="pau")

evaluate = series_evaluate
train_one_epoch = trainer.train_one_epoch


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train series photo selection networks on Phototriage",
                                     add_help=add_help)
    trainer.common_args(parser, "series", DEFAULTS)
    # The shared --fusion flag keeps its name; for this family it chooses the network.
    fusion = next(a for a in parser._actions if a.dest == "fusion")
    fusion.choices, fusion.help = SERIES_FUSIONS, "pau (the paper's network) or siamese (the baseline)"
    parser.add_argument("--shared-units", action="store_true",
                        help="PAU: one set of units for both photos (the original has one per photo)")
    parser.add_argument("--symmetric", action="store_true",
                        help="test-time symmetrisation: average the logits of (a, b) and the swapped pair")
    parser.add_argument("--flip-p", type=float, default=0.0, help="probability of flipping both photos (training)")
    parser.add_argument("--swap-p", type=float, default=0.0,
                        help="probability of swapping the pair, target flipped (training)")
    return parser


def main(args: argparse.Namespace, explicit: set[str] | None = None) -> int:
    """``explicit``: the flags given on the command line; None (args from ``parse_args``): the
    settings whose value differs from the default."""
    if explicit is None:
        explicit = runs.explicit_by_default(args, get_args_parser())
    if args.init:
        print("error: --init: series networks train in one stage from ImageNet (--pretrained); "
              "use --resume to continue a run", file=sys.stderr)
        return 2
    tag = args.fusion + ("_shared" if args.shared_units else "")
    args.out = args.out or f"weight/series_{tag}_last.pth"
    args.logdir = args.logdir or f"runs/series_{tag}"
    return trainer.main_loop(args, SeriesFamily(args), explicit)


if __name__ == "__main__":
    sys.exit(main(*runs.parse_with_explicit(get_args_parser())))
