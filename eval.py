"""Evaluate a saved checkpoint on the test split; print a table and write JSON.

    python eval.py --checkpoint weight/pixel_afa_best.pth --data-root data/nyuv2_prepared --json pixel_afa.json
    python eval.py --checkpoint weight/image_afa_fold0_best.pth --data-root data/adience --json image_afa.json
    python eval.py --checkpoint weight/series_pau_best.pth --data-root data/phototriage --json series_pau.json

The network is rebuilt from the checkpoint alone. NYUv2: the official test split at label
resolution (480 x 640 for the official set; sliding windows of the network's input size,
see data/transforms.py). Adience: the checkpoint's test fold unless --test-fold is given.
Phototriage: the official test pair list (labelled pairs), shorter side to the network's input
size and centre crop.
Metrics are pooled over all test pixels / images (engine/metrics.py). --save-predictions
writes exactly the values the metrics were computed from.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data import AGE_GROUPS, Adience, DataError, ImageEvalTransform, NYUv2, PixelEvalTransform
from engine.checkpoint import CheckpointError, load_checkpoint
from engine.distributed import resolve_device
from engine.metrics import ImageMeter, PixelMeter, SeriesMeter, multitask_delta
from engine.plots import plot_confusion, plot_curves, plot_grid
from engine.series import series_evaluate
from engine.tasks import pixel_evaluate, predict_image
from engine.trainer import autocast
from models import model_from_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate an AFA checkpoint on the test split", add_help=add_help)
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train_pixel.py / train_image.py")
    p.add_argument("--data-root", required=True, help="prepared NYUv2 / MTAN folder, or the Adience folder")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="pixel: <index>.npz per sample (seg, depth); image: predictions.csv; "
                        "series: predictions.csv (series,i,j,p,prob_i)")
    p.add_argument("--limit-batches", type=int, default=None, help="evaluate at most N batches (smoke runs)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="default: 2 (pixel, full frames) or 32 (image)")
    p.add_argument("--test-fold", type=int, default=None, choices=range(5), metavar="{0..4}",
                   help="Adience: test fold (default: the checkpoint's)")
    p.add_argument("--image-dir", default=None, help="Adience image folder (default: the checkpoint's)")
    p.add_argument("--baseline", default=None, metavar="SINGLE.json",
                   help="single-task result JSON: adds the multi-task performance delta (README)")
    p.add_argument("--per-class", default=None, metavar="FILE",
                   help="pixel: write the IoU of every class as JSON {class name: IoU} (same confusion matrix as "
                        "seg/miou; null for classes absent from both truth and prediction)")
    p.add_argument("--plot", default=None, metavar="DIR",
                   help="write PNG plots: training curves, qualitative grid (pixel), age confusion (image)")
    return p


def write_predictions(folder: str, header: list[str], rows: list) -> Path:
    """FOLDER/predictions.csv: the header, then one row per sample, exactly what the metrics saw."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return out / "predictions.csv"


def evaluate_pixel(model_fn, ck: dict, args: argparse.Namespace, device: torch.device):
    size = ck["model_config"]["input_size"]
    dataset = NYUv2(args.data_root, "test", transform=PixelEvalTransform(size))
    if dataset.num_classes != ck["model_config"]["tasks"]["seg"]:
        raise DataError(f"{args.data_root}: {dataset.num_classes}-class labels, but the checkpoint predicts "
                        f"{ck['model_config']['tasks']['seg']} classes")
    loader = DataLoader(dataset, batch_size=args.batch_size or 2, num_workers=args.workers)
    out_dir = Path(args.save_predictions) if args.save_predictions else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)

    def save(index: int, seg: np.ndarray, depth: np.ndarray) -> None:
        np.savez(out_dir / f"{index}.npz", seg=seg, depth=depth)

    panels: list[np.ndarray] = []
    meter = PixelMeter(dataset.num_classes, device)
    metrics = pixel_evaluate(model_fn, loader, device, args.limit_batches, dataset.num_classes, size,
                             panels if args.plot else None, max_panels=4, on_sample=save if out_dir else None,
                             meter=meter)
    if args.per_class:
        iou = {name: (None if math.isnan(v) else v) for name, v in zip(dataset.class_names, meter.class_iou())}
        Path(args.per_class).parent.mkdir(parents=True, exist_ok=True)
        Path(args.per_class).write_text(json.dumps(iou, indent=2))
        print(f"wrote {args.per_class}")
    if panels:
        print(f"wrote {plot_grid(panels, Path(args.plot) / 'qualitative.png')}")
    return metrics


def evaluate_image(model_fn, ck: dict, args: argparse.Namespace, device: torch.device):
    size = ck["model_config"]["input_size"]
    saved = ck.get("args", {})
    fold = args.test_fold if args.test_fold is not None else saved.get("test_fold")
    if fold is None:
        raise DataError(f"checkpoint {args.checkpoint} records no test fold: pass --test-fold")
    image_dir = args.image_dir or saved.get("image_dir", "aligned")
    dataset = Adience(args.data_root, [fold], transform=ImageEvalTransform(round(size * 256 / 224), size),
                      image_dir=image_dir)
    loader = DataLoader(dataset, batch_size=args.batch_size or 32, num_workers=args.workers)
    meter = ImageMeter(device=device)
    rows = []
    for batch, gender, age in predict_image(model_fn, loader, device, args.limit_batches):
        g_true, a_true = batch["gender"].to(device), batch["age"].to(device)
        meter.update(gender, g_true, age, a_true)
        rows += zip(batch["path"], g_true.tolist(), gender.tolist(), a_true.tolist(), age.tolist())
    if args.save_predictions:
        write_predictions(args.save_predictions, ["path", "gender_true", "gender_pred", "age_true", "age_pred"], rows)
    if args.plot:
        cm = meter.age_confusion.cpu().numpy()
        print(f"wrote {plot_confusion(cm, list(AGE_GROUPS), Path(args.plot) / 'age_confusion.png')}")
    print(f"Adience test fold {fold}: {len(rows)} images")
    return meter.compute()


def evaluate_series(model_fn, ck: dict, args: argparse.Namespace, device: torch.device):
    from data import PairEvalTransform, Phototriage

    dataset = Phototriage(args.data_root, "test", transform=PairEvalTransform(ck["model_config"]["input_size"]))
    loader = DataLoader(dataset, batch_size=args.batch_size or 32, num_workers=args.workers)
    meter = SeriesMeter()
    metrics = series_evaluate(model_fn, loader, device, args.limit_batches, meter=meter)
    if args.save_predictions:  # repr: floats that read back exactly
        write_predictions(args.save_predictions, ["series", "i", "j", "p", "prob_i"],
                          [(s, i, j, repr(p), repr(q)) for s, i, j, p, q in meter.rows])
    print(f"Phototriage test: {len(meter.rows)} labelled pairs ({dataset.ties} ties left out), "
          f"{len({r[0] for r in meter.rows})} series")
    return metrics


def print_table(metrics: dict[str, float], title: str) -> None:
    width = max(len(k) for k in metrics)
    print(title)
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:10.4f}")


def main(args: argparse.Namespace) -> int:
    try:
        device = resolve_device(args.device)
        ck = load_checkpoint(args.checkpoint)
        if "model_config" not in ck:
            raise CheckpointError(f"checkpoint {args.checkpoint}: no model_config entry (not written by this project)")
        model = model_from_config(ck["model_config"])
        model.load_state_dict(ck["model"])
        model.to(device).eval()

        def model_fn(*xs: torch.Tensor) -> dict[str, torch.Tensor]:
            with autocast(device, args.amp):
                return {k: v.float() for k, v in model(*xs).items()}

        kind = ck["model_config"]["kind"]
        evaluate = {"pixel": evaluate_pixel, "series": evaluate_series}.get(kind, evaluate_image)
        metrics = evaluate(model_fn, ck, args, device)
        if args.baseline:
            with open(args.baseline) as f:
                metrics.update(multitask_delta(metrics, json.load(f)))
    except (CheckpointError, DataError, FileNotFoundError) as e:
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
