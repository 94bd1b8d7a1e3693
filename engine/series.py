"""The series photo selection family (Phototriage pairs, PAU / Siamese networks) for the training loop.

One task, 'pair': two logits per pair (class 0: photo i, the first, is preferred), cross-entropy
on the majority label; validation on the official ``val`` pair list (never ``test``); model
selection on pairwise accuracy. The prediction generator is shared with eval.py, so saved
predictions are exactly what the metrics saw.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data import PairEvalTransform, PairTrainTransform, Phototriage
from models.series import SeriesConfig

from .metrics import SeriesMeter
from .trainer import TaskFamily, evaluation_batches

PairModelFn = Callable[[Tensor, Tensor], dict[str, Tensor]]


def series_datasets(args: argparse.Namespace):
    train, val = Phototriage(args.data_root, "train"), Phototriage(args.data_root, "val")
    return (train, val, PairTrainTransform(args.crop_size, args.flip_p, args.swap_p),
            PairEvalTransform(args.crop_size))


@torch.no_grad()
def predict_series(model_fn: PairModelFn, loader: Iterable, device: torch.device,
                   limit: int | None = None) -> Iterator[tuple[dict[str, Any], Tensor]]:
    """Yields (batch, prob_i (B,) float64): the predicted probability that photo i is preferred."""
    for batch in evaluation_batches(loader, limit):
        a, b = (batch[k].to(device, non_blocking=True) for k in ("a", "b"))
        logits = model_fn(a, b)["pair"].double()
        yield batch, logits.softmax(dim=1)[:, 0]


def series_evaluate(model_fn: PairModelFn, loader: Iterable, device: torch.device, limit: int | None,
                    panels: list[np.ndarray] | None = None, meter: SeriesMeter | None = None) -> dict[str, float]:
    """Metrics of engine.metrics.SeriesMeter (series draw no panels); pass ``meter`` to keep its rows."""
    meter = meter if meter is not None else SeriesMeter()
    for batch, prob in predict_series(model_fn, loader, device, limit):
        meter.update(batch["series"], batch["i"], batch["j"], batch["p"], prob)
    meter.reduce()
    return meter.compute()


class SeriesFamily(TaskFamily):
    """Phototriage: one task, 'pair' (2 logits: which photo is preferred), on pairs of photos."""

    kind = "series"

    def datasets(self):
        return series_datasets(self.args)

    def tasks(self, train) -> dict[str, int]:
        return {"pair": 2}

    def losses(self, out, batch):
        return {"pair": F.cross_entropy(out["pair"].float(), batch["target"])}

    def evaluate(self, model_fn, loader, device, limit, panels=None):
        return series_evaluate(model_fn, loader, device, limit, panels)

    def inputs(self, batch) -> tuple[Tensor, Tensor]:
        return batch["a"], batch["b"]

    def config(self, train) -> dict[str, Any]:
        a = self.args
        return SeriesConfig(fusion=a.fusion, input_size=a.crop_size, shared_units=a.shared_units,
                            symmetric=a.symmetric).to_dict()
