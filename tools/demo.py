"""The CPU demo behind `make demo`: the whole pipeline on synthetic data in the official formats.

1. writes a synthetic NYUv2 (nyu_depth_v2_labeled.mat + splits.mat) and Adience (fold files +
   aligned faces) set, and prepares NYUv2 with data.prepare_nyuv2;
2. trains stage 1 (single-task pair, --fusion none) and stage 2 (AFA, --init stage 1) for the
   pixel and the image tasks with the real training scripts;
3. evaluates all four checkpoints with eval.py (JSON + PNG plots) and prints them beside the
   majority-class baseline (predict the most frequent training class / the mean training depth);
4. series photo selection: a synthetic Phototriage, a few epochs of the Siamese network with
   train_series.py, eval.py on the test pairs, pairwise accuracy beside the 50 % of chance.

Networks start from random weights (no download) and use small crops so that all of this fits
in about 10 minutes on 2 CPU cores; the numbers show the pipeline learns, not paper results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data import Adience, NYUv2, Phototriage, adience_protocol  # noqa: E402
from engine.metrics import ImageMeter, PixelMeter  # noqa: E402

# Small crops, bf16 autocast with channels_last (about 2x fp32 on a CPU with bf16 support), and
# precise BN (from-scratch nets with batches of 4 otherwise validate with stale BN statistics).
FAST = ["--workers", "2", "--device", "cpu", "--amp", "bf16", "--channels-last", "--precise-bn", "4"]
PIXEL = ["--crop-size", "128", "--batch-size", "4", "--lr", "0.01", "--val-fraction", "0.05", *FAST]
IMAGE = ["--crop-size", "64", "--batch-size", "16", "--lr", "0.01", "--test-fold", "0", *FAST]
# Series: the Siamese net (the PAU descriptors are cubic in the features: from random weights
# they overflow at a demo's learning rate, loss ~1e27 in the first epoch); the original's 10x on
# the head makes the loss swing, so the head learns at the base rate here; pair swaps double the labels.
SERIES = ["--fusion", "siamese", "--crop-size", "32", "--batch-size", "16", "--lr", "0.002", "--lr-mult",
          '{"head": 1}', "--swap-p", "0.5", "--schedule", "poly", *FAST]


def run(cmd: list[str]) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True)
    print(f"({time.time() - t0:.0f} s)", flush=True)


def pixel_baseline(root: Path) -> dict[str, float]:
    """Majority class everywhere and the mean valid training depth everywhere, on the test split."""
    train = NYUv2(root, "train")
    counts = np.bincount(np.concatenate([s["seg"].flatten().numpy() for s in train]), minlength=256)[:255]
    depths = np.concatenate([s["depth"].flatten().numpy() for s in train])
    majority, mean_depth = int(counts.argmax()), float(depths[depths > 0].mean())
    test = NYUv2(root, "test")
    meter = PixelMeter(test.num_classes)
    for s in test:
        meter.update(torch.full_like(s["seg"], majority), s["seg"], torch.full_like(s["depth"][0], mean_depth),
                     s["depth"][0])
    return meter.compute()


def image_baseline(root: Path, test_fold: int) -> dict[str, float]:
    train_folds, _ = adience_protocol(test_fold)
    train, test = Adience(root, train_folds), Adience(root, [test_fold])
    g = int(np.bincount(train.targets["gender"]).argmax())
    a = int(np.bincount(train.targets["age"]).argmax())
    meter = ImageMeter()
    gt_g, gt_a = torch.tensor(test.targets["gender"]), torch.tensor(test.targets["age"])
    meter.update(torch.full_like(gt_g, g), gt_g, torch.full_like(gt_a, a), gt_a)
    return meter.compute()


def table(rows: dict[str, dict[str, float]], keys: list[str]) -> str:
    head = f"{'':<22}" + "".join(f"{k:>20}" for k in keys)
    lines = [head] + [f"{name:<22}" + "".join(f"{m[k]:>20.4f}" for k in keys) for name, m in rows.items()]
    return "\n".join(lines)


def series_chance(root: Path) -> dict[str, float]:
    """Coin flips: 50 % of the pairs, and on average 1 / n of a series' n photos picked as its best."""
    photos: dict[int, set[int]] = {}
    for pair in Phototriage(root, "test").pairs:
        photos.setdefault(pair.series, set()).update((pair.i, pair.j))
    top1 = float(np.mean([1 / len(p) for p in photos.values()]))
    return {"pair/acc": 0.5, "pair/acc_agree": 0.5, "series/top1": top1}


def series_stage(out: Path, epochs: int) -> dict[str, float]:
    """Synthetic Phototriage, train_series.py (Siamese), eval.py on the test pairs; returns the metrics."""
    root, res = out / "data" / "phototriage", out / "results"
    if not (root / "test" / "test_pairlist.txt").is_file():
        run(["-m", "data.synthetic_series", "--out", str(root), "--series", "48", "8", "16", "--size", "40"])
    run(["train_series.py", "--data-root", str(root), *SERIES, "--pretrained", "none", "--epochs", str(epochs),
         "--out", str(out / "weight" / "series_siamese_last.pth"), "--logdir", str(out / "runs" / "series_siamese")])
    run(["eval.py", "--checkpoint", str(out / "weight" / "series_siamese_best.pth"), "--data-root", str(root),
         "--device", "cpu", "--workers", "2", "--json", str(res / "series_siamese.json"),
         "--save-predictions", str(res / "series_siamese")])
    return json.loads((res / "series_siamese.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo", help="folder for data, checkpoints, runs, results and plots")
    p.add_argument("--pixel-epochs", type=int, default=12, help="stage 1; stage 2 runs half as many")
    p.add_argument("--image-epochs", type=int, default=8, help="stage 1; stage 2 runs half as many")
    p.add_argument("--series-epochs", type=int, default=8, help="series photo selection (Siamese)")
    args = p.parse_args()
    out = (REPO / args.out).resolve()
    t0 = time.time()
    nyu_raw, nyu, adience = out / "data" / "nyuv2_official", out / "data" / "nyuv2_prepared", out / "data" / "adience"
    if not (nyu / "meta.json").is_file():
        run(["-m", "data.synthetic", "nyuv2", "--out", str(nyu_raw), "--n", "48", "--train-fraction", "0.75"])
        run(["-m", "data.prepare_nyuv2", "--mat", str(nyu_raw / "nyu_depth_v2_labeled.mat"),
             "--splits", str(nyu_raw / "splits.mat"), "--out", str(nyu)])
    if not (adience / "fold_4_data.txt").is_file():
        run(["-m", "data.synthetic", "adience", "--out", str(adience), "--size", "96"])

    w, runs, res = out / "weight", out / "runs", out / "results"
    plan = [
        ("train_pixel.py", nyu, PIXEL, args.pixel_epochs, "pixel"),
        ("train_image.py", adience, IMAGE, args.image_epochs, "image"),
    ]
    for script, root, opts, epochs, kind in plan:
        # --overwrite: the demo owns its folder, so running it again replaces its earlier runs.
        common = [script, "--data-root", str(root), *opts, "--pretrained", "none", "--overwrite"]
        run([*common, "--fusion", "none", "--epochs", str(epochs), "--out", str(w / f"{kind}_single_last.pth"),
             "--logdir", str(runs / f"{kind}_single")])
        # Stage 2 fine-tunes the whole stage-1 network (--init-heads): with minutes of CPU the heads
        # cannot be relearnt from scratch as the paper's recipe (trunks only) does on GPUs.
        run([*common, "--fusion", "afa", "--epochs", str(max(epochs // 2, 1)), "--init-heads", "--init",
             str(w / f"{kind}_single_best.pth"), "--out", str(w / f"{kind}_afa_last.pth"),
             "--logdir", str(runs / f"{kind}_afa")])
        for stage in ("single", "afa"):
            extra = ["--baseline", str(res / f"{kind}_single.json")] if stage == "afa" else []
            run(["eval.py", "--checkpoint", str(w / f"{kind}_{stage}_best.pth"), "--data-root", str(root),
                 "--device", "cpu", "--workers", "2", "--json", str(res / f"{kind}_{stage}.json"),
                 "--plot", str(res / "plots" / f"{kind}_{stage}"), *extra])

    def load(name: str) -> dict[str, float]:
        return json.loads((res / f"{name}.json").read_text())

    pixel_rows = {"majority baseline": pixel_baseline(nyu), "single-task (stage 1)": load("pixel_single"),
                  "AFA (stage 2)": load("pixel_afa")}
    image_rows = {"majority baseline": image_baseline(adience, 0), "single-task (stage 1)": load("image_single"),
                  "AFA (stage 2)": load("image_afa")}
    print("\n== NYUv2 (synthetic, test split) ==")
    print(table(pixel_rows, ["seg/pixel_acc", "seg/miou", "depth/rmse", "depth/delta1"]))
    print("\n== Adience (synthetic, test fold 0) ==")
    print(table(image_rows, ["gender/acc", "age/acc", "age/one_off"]))
    series = series_stage(out, args.series_epochs)
    print("\n== Phototriage (synthetic, test pairs) ==")
    print(table({"chance": series_chance(out / "data" / "phototriage"), "Siamese": series},
                ["pair/acc", "pair/acc_agree", "series/top1"]))
    print(f"\nTensorBoard: tensorboard --logdir {runs}\nplots: {res / 'plots'}\n"
          f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
