"""The series family: which of two near-duplicate photos people prefer (Phototriage, PAU / Siamese networks;
train_series.py).

One task, 'pair': two logits per pair (class 0: photo i, the first, is preferred), cross-entropy on
the majority label; validation on the official ``val`` pair list (never ``test``); model selection
on pairwise accuracy. One stage, from ImageNet. The prediction generator serves validation and
eval.py alike, so saved predictions are exactly what the metrics saw.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from data import PairEvalTransform, PairTrainTransform, Phototriage, normalize
from data.phototriage import fix_scale_crop
from data.synthetic_series import write_phototriage
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from engine.inference import ModelFn, batches
from engine.metrics import SeriesMeter
from engine.settings import Settings
from models.series import SERIES_FUSIONS, SeriesConfig

from .base import Datasets, Family, Protocol, write_csv


@torch.no_grad()
def predict_pairs(
    model_fn: ModelFn, loader: Iterable, device: torch.device, limit: int | None = None
) -> Iterator[tuple[dict[str, Any], Tensor]]:
    """Yields (batch, prob_i (B,) float64): the predicted probability that photo i is preferred."""
    for batch in batches(loader, limit):
        a, b = (batch[k].to(device, non_blocking=True) for k in ("a", "b"))
        logits = model_fn(a, b)["pair"].double()
        yield batch, logits.softmax(dim=1)[:, 0]


class SeriesFamily(Family):
    """Phototriage: one task, 'pair' (2 logits: which photo is preferred), on pairs of photos."""

    kind = "series"
    description = "Train series photo selection networks on Phototriage: PAU (the ICASSP 2020 paper) or Siamese"
    script = "train_series.py"
    # The original recipe (train_pau.py): SGD momentum 0.9, weight decay 5e-4, lr 1e-5 (x10 on the 'head'
    # group: the final linear and the channel cells' FCs), x0.3 every 25 epochs, 100 epochs, batch 32,
    # shorter side 224 then centre crop 224, no augmentation.
    defaults: ClassVar[dict[str, Any]] = dict(
        crop_size=224,
        epochs=100,
        batch_size=32,
        lr=1e-5,
        weight_decay=5e-4,
        schedule="step",
        step_epochs=25,
        step_gamma=0.3,
    )
    fusions = SERIES_FUSIONS[::-1]  # pau first: the default
    fusion_help = "pau (the paper's network) or siamese (the baseline)"
    arg_groups = ("data", "model", "optimisation", "hardware", "run")
    protocols = (Protocol("series", "train_series.py", ("siamese", "pau"), seeds=(0, 1, 2), single=None),)
    hub_entry = "afanet_series"
    hub_doc = (
        "Phototriage network (PAU, or the Siamese baseline, on a shared ResNet-50): which of two photos of a "
        "series people prefer, ``model(a, b) -> {'pair': (B, 2)}``, in eval mode. Untrained: fusion 'pau' "
        "unless ``fusion='siamese'``."
    )

    @classmethod
    def add_args(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--shared-units",
            action="store_true",
            help="PAU: one set of units for both photos (the original has one per photo)",
        )
        group.add_argument(
            "--symmetric",
            action="store_true",
            help="test-time symmetrisation: average the logits of (a, b) and the swapped pair",
        )
        group.add_argument("--flip-p", type=float, default=0.0, help="probability of flipping both photos (training)")
        group.add_argument(
            "--swap-p", type=float, default=0.0, help="probability of swapping the pair, target flipped (training)"
        )

    @classmethod
    def run_name(cls, settings: Settings) -> str:
        return f"series_{settings.fusion}{'_shared' if settings.shared_units else ''}"

    # -- training ------------------------------------------------------------------------------

    def datasets(self) -> Datasets:
        s = self.settings
        return Datasets(
            Phototriage(s.data_root, "train"),
            Phototriage(s.data_root, "val"),
            PairTrainTransform(s.crop_size, s.flip_p, s.swap_p),
            PairEvalTransform(s.crop_size),
        )

    def model_config(self, train: Dataset) -> dict[str, Any]:
        s = self.settings
        return SeriesConfig(
            fusion=s.fusion,
            input_size=s.crop_size,
            shared_units=s.shared_units,
            symmetric=s.symmetric,
            **self.trunk_options(),
        ).to_dict()

    def data_info(self, train: Dataset) -> dict[str, Any]:
        return {"dataset": "phototriage"}

    def inputs(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        return batch["a"], batch["b"]

    def losses(self, out: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"pair": F.cross_entropy(out["pair"].float(), batch["target"])}

    def evaluate(
        self, model_fn, loader, device, limit=None, panels=None, meter: SeriesMeter | None = None
    ) -> dict[str, float]:
        """Metrics of engine.metrics.SeriesMeter (series draw no panels); pass ``meter`` to keep its rows."""
        meter = meter if meter is not None else SeriesMeter()
        for batch, prob in predict_pairs(model_fn, loader, device, limit):
            meter.update(batch["series"], batch["i"], batch["j"], batch["p"], prob)
        meter.reduce()
        return meter.compute()

    @classmethod
    def score(cls, metrics: Mapping[str, float]) -> float:
        return metrics["pair/acc"]

    # -- eval.py -------------------------------------------------------------------------------

    def test(
        self, model_fn: ModelFn, model_config: Mapping[str, Any], args: argparse.Namespace, device: torch.device
    ) -> dict[str, float]:
        """The official test pair list (labelled pairs); ``--save-predictions``: predictions.csv with
        series, i, j, p, prob_i (floats that read back exactly)."""
        dataset = Phototriage(self.settings.data_root, "test", transform=PairEvalTransform(model_config["input_size"]))
        loader = DataLoader(dataset, batch_size=args.batch_size or self.eval_batch_size, num_workers=args.workers)
        meter = SeriesMeter()
        metrics = self.evaluate(model_fn, loader, device, args.limit_batches, meter=meter)
        if args.save_predictions:
            write_csv(
                Path(args.save_predictions) / "predictions.csv",
                ["series", "i", "j", "p", "prob_i"],
                [(s, i, j, repr(p), repr(q)) for s, i, j, p, q in meter.rows],
            )
        print(
            f"Phototriage test: {len(meter.rows)} labelled pairs ({dataset.ties} ties left out), "
            f"{len({r[0] for r in meter.rows})} series"
        )
        return metrics

    # -- predict.py and released weights ----------------------------------------------------------

    @classmethod
    def preprocessing(cls, model_config: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
        size = int(model_config["input_size"])  # as data.phototriage.PairEvalTransform
        return {
            "input_size": size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "scale": "RGB uint8 / 255, then (x - mean) / std",
            "resize_shorter_side": size,
            "center_crop": size,
        }

    @classmethod
    def predict(
        cls,
        model_fn: ModelFn,
        info: Mapping[str, Any],
        reader: Iterable,
        args: argparse.Namespace,
        device: torch.device,
    ) -> None:
        """Each folder holding inputs is one series: every pair (i, j) of its photos goes through the network
        once, as (a, b) = (i, j); the photo preferred in more pairs ranks higher (ties: the larger summed
        probability of being preferred, then the path). OUT/ranking.csv: folder, path, rank, wins."""
        size = info["preprocessing"]["center_crop"]
        series: dict[Path, list[tuple[Path, Tensor]]] = {}
        for path, image in reader:
            series.setdefault(path.parent, []).append((path, normalize(fix_scale_crop(image, size))))
        rows: list[list[Any]] = []
        for folder, photos in series.items():
            wins, score = [0] * len(photos), [0.0] * len(photos)
            pairs = list(itertools.combinations(range(len(photos)), 2))
            for start in range(0, len(pairs), args.batch_size):
                chunk = pairs[start : start + args.batch_size]
                a = torch.stack([photos[i][1] for i, _ in chunk]).to(device)
                b = torch.stack([photos[j][1] for _, j in chunk]).to(device)
                with torch.no_grad():
                    prob_i = model_fn(a, b)["pair"].double().softmax(1)[:, 0].tolist()
                for (i, j), q in zip(chunk, prob_i):
                    wins[i if q > 0.5 else j] += 1
                    score[i], score[j] = score[i] + q, score[j] + 1 - q
            order = sorted(range(len(photos)), key=lambda k: (-wins[k], -score[k], str(photos[k][0])))
            rows += [[str(folder), str(photos[k][0]), rank, wins[k]] for rank, k in enumerate(order, start=1)]
        if rows:
            write_csv(Path(args.out) / "ranking.csv", ["folder", "path", "rank", "wins"], rows)

    # -- bench.py and the demo -----------------------------------------------------------------

    @classmethod
    def random_batch(cls, model_config: Mapping[str, Any], batch: int, generator: torch.Generator) -> dict[str, Tensor]:
        size = model_config["input_size"]
        return {
            "a": torch.randn(batch, 3, size, size, generator=generator),
            "b": torch.randn(batch, 3, size, size, generator=generator),
            "target": torch.randint(0, 2, (batch,), generator=generator),
        }

    @classmethod
    def write_synthetic(cls, folder: Path) -> Path:
        """Photo series in the official layout (train, val and test pair lists)."""
        return write_phototriage(folder)

    @classmethod
    def baseline(cls, data_root: str, **settings: Any) -> dict[str, float]:
        """Coin flips: 50 % of the pairs, and on average 1 / n of a series' n photos picked as its best."""
        photos: dict[int, set[int]] = {}
        for pair in Phototriage(data_root, "test").pairs:
            photos.setdefault(pair.series, set()).update((pair.i, pair.j))
        top1 = float(np.mean([1 / len(p) for p in photos.values()])) if photos else math.nan
        return {"pair/acc": 0.5, "pair/acc_agree": 0.5, "series/top1": top1}
