"""Evaluate a saved checkpoint on the test split; print a table and write JSON.

    python eval.py --checkpoint weight/pixel_afa_best.pth --data-root datasets/nyuv2 --json pixel_afa.json
    python eval.py --checkpoint weight/image_afa_fold0_best.pth --data-root datasets/adience --json image_afa.json
    python eval.py --checkpoint weight/series_pau_best.pth --data-root datasets/phototriage --json series_pau.json

The network is rebuilt from the checkpoint alone; its family (families/) says what the test split is
and what is written (docs/evaluation.md): NYUv2 the official test frames at label resolution, Adience
the checkpoint's test fold, Phototriage the official test pair list. Metrics are pooled over all test
pixels / images / pairs (engine/metrics.py); --save-predictions writes exactly the values the metrics
were computed from.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from data import DataError
from engine.checkpoint import CheckpointError, load_checkpoint
from engine.distributed import resolve_device
from engine.inference import model_fn
from engine.metrics import multitask_delta
from engine.plots import plot_curves
from engine.precision import AMP_CHOICES, PrecisionError, check_amp
from families import FAMILIES, family
from models import model_from_config

# Flags that only some families use (Family.eval_options): given to another family's checkpoint, they are refused.
FAMILY_OPTIONS = {"test_fold": "--test-fold", "image_dir": "--image-dir", "per_class": "--per-class"}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on the test split", add_help=add_help)
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by a training script (*_best.pth)")
    p.add_argument("--data-root", required=True, help="the dataset folder, as for training (docs/data.md)")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.add_argument(
        "--save-predictions",
        default=None,
        metavar="DIR",
        help="pixel: <index>.npz per frame (seg, depth); image: predictions.csv; series: predictions.csv "
        "(series,i,j,p,prob_i)",
    )
    p.add_argument("--limit-batches", type=int, default=None, help="evaluate at most N batches (smoke runs)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--amp", choices=AMP_CHOICES, default="none")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="default: " + ", ".join(f"{k} {f.eval_batch_size}" for k, f in FAMILIES.items()),
    )
    p.add_argument(
        "--baseline",
        default=None,
        metavar="SINGLE.json",
        help="single-task result JSON: adds the multi-task performance delta (docs/evaluation.md)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="DIR",
        help="write PNG plots: training curves, and the family's (pixel: a qualitative grid; image: the "
        "age confusion matrix)",
    )
    p.add_argument(
        "--test-fold",
        type=int,
        default=None,
        choices=range(5),
        metavar="{0..4}",
        help="image (Adience): test fold (default: the checkpoint's)",
    )
    p.add_argument("--image-dir", default=None, help="image (Adience): image folder (default: the checkpoint's)")
    p.add_argument(
        "--per-class",
        default=None,
        metavar="FILE",
        help="pixel: write the IoU of every class as JSON {class name: IoU} (same confusion matrix as "
        "seg/miou; null for classes absent from both truth and prediction)",
    )
    return p


def print_table(metrics: dict[str, float], title: str) -> None:
    width = max(len(k) for k in metrics)
    print(title)
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:10.4f}")


def main(args: argparse.Namespace) -> int:
    try:
        device = resolve_device(args.device)
        check_amp(args.amp, device)
        ck = load_checkpoint(args.checkpoint)
        if "model_config" not in ck:
            raise CheckpointError(f"checkpoint {args.checkpoint}: no model_config entry (not written by this project)")
        kind = ck["model_config"].get("kind")
        try:
            fam_cls = family(kind)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {args.checkpoint}: {e}") from None
        unused = [
            flag
            for dest, flag in FAMILY_OPTIONS.items()
            if getattr(args, dest) is not None and dest not in fam_cls.eval_options
        ]
        if unused:
            raise DataError(f"{', '.join(unused)}: not for {kind} checkpoints ({args.checkpoint})")
        model = model_from_config(ck["model_config"])
        model.load_state_dict(ck["model"])
        model.to(device).eval()
        fam = fam_cls.from_checkpoint(ck, data_root=args.data_root, test_fold=args.test_fold, image_dir=args.image_dir)
        metrics = fam.test(model_fn(model, device, args.amp), ck["model_config"], args, device)
        if args.baseline:
            with open(args.baseline) as f:
                metrics.update(multitask_delta(metrics, json.load(f)))
    except (CheckpointError, DataError, PrecisionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as e:
        print(f"error: --baseline {args.baseline}: not a JSON file ({e})", file=sys.stderr)
        return 2
    print_table(metrics, f"{args.checkpoint} ({kind}, fusion {ck['model_config']['fusion']})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({k: (None if math.isnan(v) else v) for k, v in metrics.items()}, f, indent=2)
    if args.plot:
        log = Path(ck.get("args", {}).get("logdir") or "") / "log.jsonl"
        if log.is_file():
            print(f"wrote {plot_curves(log, Path(args.plot) / 'curves.png')}")
        else:
            print(f"no training log at {log}: curves not drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
