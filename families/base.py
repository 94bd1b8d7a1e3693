"""The task-family interface: every question whose answer differs between families.

A family is one kind of network trained on one kind of data: ``pixel`` (NYUv2 segmentation + depth,
DeepLabv3+ branches), ``image`` (Adience gender + age, ResNet-50 branches), ``series`` (Phototriage
photo preference, PAU / Siamese networks). The training loop, the checkpoints, the runs and the
scripts know no family by name: they look one up (``families.family(kind)``) and ask it.

What a family answers, and who asks:

- its training script's command line (``get_args_parser``: the flag groups of engine/settings.py it
  uses, its own flags, its recipe as defaults) and the default run name;
- training: the datasets and transforms, the model config, the losses, the validation metrics and
  the model-selection score, what to record about the data in the checkpoint;
- ``eval.py``: the test split of a checkpoint, its metrics and the predictions it writes;
- ``predict.py`` and released weights: the preprocessing, the label names, the files it writes;
- ``bench.py``: a batch of the right inputs and targets; the demo: the trivial baseline;
- ``reproduce.py``: its protocols (methods, seeds, folds); ``hubconf.py``: its entry point.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from engine.inference import ModelFn
from engine.settings import Settings, training_parser


@dataclass(frozen=True)
class Protocol:
    """One experiment protocol of ``reproduce.py`` (a table of the paper).

    Args:
        name: the protocol's name on the command line and in the results folder.
        script: the training script.
        methods: the values of ``method_flag`` it compares.
        seeds: default seeds.
        single: the single-task (stage-1) method that fused methods start from and are compared
            with (None: no two-stage structure, every method trains from ImageNet).
        from_scratch: fused methods trained without --init (from ImageNet).
        folds: the test folds (None: no folds); ``fold_flag`` passes one to the script.
        per_class: eval.py writes per-class IoU (``--per-class``).
        script_args: flags every run of this protocol passes to the script (e.g. a dataset choice).
        task_flag: the script's flag that chooses the tasks (reproduce.py run --tasks passes them through
            it, and the results go to a folder of their own), or None.
    """

    name: str
    script: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    single: str | None = "none"
    method_flag: str = "--fusion"
    from_scratch: frozenset[str] = frozenset({"shared"})
    folds: tuple[int, ...] | None = None
    fold_flag: str = "--test-fold"
    per_class: bool = False
    script_args: tuple[str, ...] = field(default_factory=tuple)
    task_flag: str | None = None

    def stage2(self, method: str) -> bool:
        return self.single is not None and method != self.single and method not in self.from_scratch


@dataclass
class Datasets:
    """Raw-sample training and validation sets and the transforms the loop applies to them."""

    train: Dataset
    val: Dataset
    train_transform: Callable[[dict[str, Any]], dict[str, Any]]
    eval_transform: Callable[[dict[str, Any]], dict[str, Any]]


class Family:
    """Base class of the families; subclasses set the class attributes and implement the methods.

    An instance holds one run's settings (training) or a checkpoint's (``from_checkpoint``).
    """

    kind: ClassVar[str]  # the networks' kind (models.ModelConfig.kind), also the checkpoint's 'kind'
    description: ClassVar[str]  # the training script's one-line description
    script: ClassVar[str]  # the training script
    defaults: ClassVar[dict[str, Any]]  # the recipe: crop_size, epochs, batch_size, lr, weight_decay, schedule ...
    fusions: ClassVar[tuple[str, ...]]  # --fusion choices, the default first
    fusion_help: ClassVar[str]
    arg_groups: ClassVar[tuple[str, ...]]  # engine.settings.ARG_GROUPS the training script offers
    eval_options: ClassVar[tuple[str, ...]] = ()  # family-specific eval.py flags (dests) it uses
    predict_options: ClassVar[tuple[str, ...]] = ()  # family-specific predict.py flags (dests) it uses
    protocols: ClassVar[tuple[Protocol, ...]] = ()
    eval_batch_size: ClassVar[int] = 32  # eval.py's default --batch-size
    non_square_inputs: ClassVar[bool] = False  # --crop-size H W (else one side)
    hub_entry: ClassVar[str]  # hubconf.py's entry point name
    hub_doc: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- command line --------------------------------------------------------------------------

    @classmethod
    def get_args_parser(cls, add_help: bool = True) -> argparse.ArgumentParser:
        return training_parser(cls, add_help)

    @classmethod
    def add_args(cls, group: argparse._ArgumentGroup) -> None:
        """The family's own training flags."""

    @classmethod
    def run_name(cls, settings: Settings) -> str:
        """Name of the default checkpoint (weight/<name>_last.pth) and run folder (runs/<name>)."""
        raise NotImplementedError

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], **overrides: Any) -> Family:
        """The family with a checkpoint's training settings: the parser's defaults (for settings
        newer than the checkpoint), then the stored ``args``, then ``overrides`` that are not None."""
        values = vars(cls.get_args_parser().parse_args([]))
        values.update(checkpoint.get("args") or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(Settings(**values))

    # -- training ------------------------------------------------------------------------------

    def datasets(self) -> Datasets:
        raise NotImplementedError

    def model_config(self, train: Dataset) -> dict[str, Any]:
        """The model config of a new run (plain types, as stored in checkpoints)."""
        raise NotImplementedError

    def model_options(self) -> dict[str, Any]:
        """Model config fields the family sets beyond the flags (e.g. which outputs are unit vectors)."""
        return {}

    def trunk_options(self) -> dict[str, Any]:
        """The trunks' shape from --depths / --width where given (else the model's ResNet-50 defaults)."""
        s = self.settings
        return {k: v for k, v in (("depths", s.depths), ("width", s.width)) if v}

    def data_info(self, train: Dataset) -> dict[str, Any]:
        """What the checkpoint records about the training data ('data': dataset, frame size, labels)."""
        return {}

    def inputs(self, batch: Mapping[str, Any]) -> tuple[Tensor, ...]:
        """The model's positional inputs."""
        return (batch["image"],)

    def losses(self, out: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """{task: scalar loss} of a batch (unweighted; the loss weighting combines them)."""
        raise NotImplementedError

    def evaluate(
        self,
        model_fn: ModelFn,
        loader: Iterable,
        device: torch.device,
        limit: int | None = None,
        panels: list | None = None,
    ) -> dict[str, float]:
        """Validation metrics pooled over the loader (reduced over ranks); when ``panels`` is a list,
        example pictures (H, W, 3) are appended to it."""
        raise NotImplementedError

    @classmethod
    def score(cls, metrics: Mapping[str, float]) -> float:
        """The model-selection score (higher is better) of validation metrics."""
        raise NotImplementedError

    def val_batch_size(self) -> int:
        return self.settings.batch_size

    # -- eval.py -------------------------------------------------------------------------------

    def test(
        self, model_fn: ModelFn, model_config: Mapping[str, Any], args: argparse.Namespace, device: torch.device
    ) -> dict[str, float]:
        """Metrics on the test split of ``self.settings.data_root``; writes what eval.py's flags ask for
        (predictions, plots). ``args``: eval.py's arguments."""
        raise NotImplementedError

    # -- predict.py and released weights ----------------------------------------------------------

    @classmethod
    def preprocessing(cls, model_config: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
        """What an input goes through before the network, as plain types (written into config.json)."""
        raise NotImplementedError

    @classmethod
    def labels(cls, model_config: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, list[str]]:
        """Class names per classification task."""
        return {}

    @classmethod
    def predict(
        cls,
        model_fn: ModelFn,
        info: Mapping[str, Any],
        reader: Iterable,
        args: argparse.Namespace,
        device: torch.device,
    ) -> None:
        """Predict every (path, uint8 image) of ``reader`` and write the family's files into args.out."""
        raise NotImplementedError

    # -- bench.py and the demo -----------------------------------------------------------------

    @classmethod
    def random_batch(cls, model_config: Mapping[str, Any], batch: int, generator: torch.Generator) -> dict[str, Tensor]:
        """A training batch of random inputs at the model's input size and valid random targets."""
        raise NotImplementedError

    @classmethod
    def write_synthetic(cls, folder: Path) -> Path:
        """A small synthetic dataset in the official formats under ``folder`` (data/synthetic*.py); returns
        the folder to give as --data-root (bench.py's input pipeline)."""
        raise NotImplementedError

    @classmethod
    def baseline(cls, data_root: str, **settings: Any) -> dict[str, float]:
        """Test metrics of the trivial predictor (majority class, mean depth, chance) for the demo."""
        raise NotImplementedError


def write_csv(path: Path, header: list[str], rows: Iterable) -> Path:
    """A CSV file with the header, then one row per sample (the predictions files of eval.py and predict.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path
