"""The CPU demo behind `make demo`: the paper's protocol (reproduce.py) at toy scale on synthetic data.

1. writes synthetic NYUv2 (nyu_depth_v2_labeled.mat + splits.mat, then data.prepare_nyuv2),
   Adience (fold files + aligned faces) and Phototriage (pair lists + photo series) sets in the
   official formats;
2. runs ``reproduce.py run`` for each family with every method: NYUv2 and Adience (fold 0)
   stage 1 (single-task pair), hard sharing, and cross-stitch, NDDR and AFA from stage 1;
   Phototriage the Siamese and PAU networks; each run evaluated on the test split with eval.py;
3. prints ``reproduce.py report`` for each family (mean over runs, the multi-task delta against
   the single-task run) and the majority-class / chance baselines.

Networks are the real ResNet-50s from random weights (no download), at small crops and a few
dozen iterations, so that everything fits in about 15 minutes on 2 CPU cores: the numbers show the
pipeline runs end to end and learns a little, not paper results. Running it again trains nothing
(finished runs are skipped) and prints the tables; delete the folder to start over.
"""

from __future__ import annotations

import argparse
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
# precise BN (from-scratch nets with small batches otherwise validate with stale BN statistics).
# Stage 2 fine-tunes the whole stage-1 network (--init-heads): with minutes of CPU the heads cannot
# be relearnt from scratch as the paper's recipe (trunks only) does on GPUs; runs without --init
# ignore the flag.
FAST = ["--workers", "2", "--device", "cpu", "--amp", "bf16", "--channels-last", "--precise-bn", "2",
        "--pretrained", "none", "--init-heads"]
PIXEL = ["--crop-size", "96", "--batch-size", "4", "--lr", "0.01", "--val-fraction", "0.05", *FAST]
IMAGE = ["--crop-size", "64", "--batch-size", "16", "--lr", "0.01", *FAST]
# Series: the original's 10x on the head makes the loss swing, so the head learns at the base rate
# here; pair swaps double the labels. PAU's descriptors are products of features (gates and cells
# without a sigmoid): from random weights they diverge at the Siamese net's rate (a non-finite loss
# within 2 epochs at 5e-4 and 1e-4), so PAU trains at the original recipe's 1e-5.
SERIES = ["--crop-size", "32", "--batch-size", "16", "--lr", "0.0005", "--lr-mult", '{"head": 1}', "--swap-p", "0.5",
          "--schedule", "poly", *FAST]
PAU_LR = ["--lr", "0.00001"]


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo", help="folder for data and the protocol's runs (OUT/results/<family>)")
    p.add_argument("--pixel-epochs", type=int, default=3, help="epochs of every NYUv2 run")
    p.add_argument("--image-epochs", type=int, default=3, help="epochs of every Adience run")
    p.add_argument("--series-epochs", type=int, default=4, help="epochs of every Phototriage run")
    p.add_argument("--limit-batches", type=int, default=8, help="batches per epoch (and per validation)")
    args = p.parse_args()
    out = (REPO / args.out).resolve()
    t0 = time.time()
    data = out / "data"
    nyu_raw, nyu = data / "nyuv2_official", data / "nyuv2_prepared"
    adience, photo = data / "adience", data / "phototriage"
    if not (nyu / "meta.json").is_file():
        run(["-m", "data.synthetic", "nyuv2", "--out", str(nyu_raw), "--n", "48", "--train-fraction", "0.75"])
        run(["-m", "data.prepare_nyuv2", "--mat", str(nyu_raw / "nyu_depth_v2_labeled.mat"),
             "--splits", str(nyu_raw / "splits.mat"), "--out", str(nyu)])
    if not (adience / "fold_4_data.txt").is_file():
        run(["-m", "data.synthetic", "adience", "--out", str(adience), "--size", "96"])
    if not (photo / "test" / "test_pairlist.txt").is_file():
        run(["-m", "data.synthetic_series", "--out", str(photo), "--series", "48", "8", "16", "--size", "40"])

    res = out / "results"
    limit = ["--limit-batches", str(args.limit_batches)]
    plan = [
        ("nyuv2", nyu, [], [*PIXEL, *limit, "--epochs", str(args.pixel_epochs)]),
        ("adience", adience, ["--folds", "0"], [*IMAGE, *limit, "--epochs", str(args.image_epochs)]),
        ("series", photo, ["--methods", "siamese"], [*SERIES, *limit, "--epochs", str(args.series_epochs)]),
        ("series", photo, ["--methods", "pau"], [*SERIES, *PAU_LR, *limit, "--epochs", str(args.series_epochs)]),
    ]
    for family, root, opts, flags in plan:
        run(["reproduce.py", "run", family, "--data-root", str(root), "--out", str(res), "--seeds", "0", *opts,
             "--", *flags])

    baselines = {
        "nyuv2": (pixel_baseline(nyu), ["seg/pixel_acc", "seg/miou", "depth/rmse", "depth/delta1"]),
        "adience": (image_baseline(adience, 0), ["gender/acc", "age/acc", "age/one_off"]),
        "series": (series_chance(photo), ["pair/acc", "pair/acc_agree", "series/top1"]),
    }
    for family, (base, keys) in baselines.items():
        print(f"\n== {family} (synthetic, test split{' fold 0' if family == 'adience' else ''}) ==", flush=True)
        subprocess.run([sys.executable, "reproduce.py", "report", str(res / family), "--plot",
                        str(res / f"{family}_delta.png")], cwd=REPO, check=True)
        name = "majority baseline" if family != "series" else "chance"
        print(table({name: base}, keys))
    print(f"\nTensorBoard: tensorboard --logdir {res}\nruns, eval.json and plots: {res}\n"
          f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
