"""What the pixel and image families share: networks of models.MultiTaskNet, a branch per task
joined by a fusion (none, shared, cross_stitch, nddr, afa), trained in two stages."""

from __future__ import annotations

from typing import Any, ClassVar

from torch.utils.data import Dataset

from engine.settings import Settings
from models import ModelConfig
from models.fusion import FUSIONS

from .base import Family


class FusedFamily(Family):
    """Base of the families whose networks are ``models.MultiTaskNet``."""

    fusions: ClassVar[tuple[str, ...]] = FUSIONS
    fusion_help: ClassVar[str] = (
        "none = stage 1 (single-task pair); shared (hard sharing, from ImageNet); "
        "cross_stitch, nddr, afa = stage 2 (docs/networks.md)"
    )
    arg_groups: ClassVar[tuple[str, ...]] = (
        "data",
        "holdout",
        "model",
        "fusion",
        "stages",
        "weighting",
        "optimisation",
        "hardware",
        "run",
    )

    def tasks(self, train: Dataset) -> dict[str, int]:
        """{task: output channels}, in branch order (task 1 first)."""
        raise NotImplementedError

    def model_config(self, train: Dataset) -> dict[str, Any]:
        s = self.settings
        return ModelConfig(
            kind=self.kind,
            fusion=s.fusion,
            grad_mode=s.grad_mode,
            tasks=self.tasks(train),
            input_size=s.crop_size,
            tau=s.tau,
            protect_tasks=s.protect_tasks,
            fusion_at=s.fusion_at,
            fusion_init=s.fusion_init,
            afa_relation=s.afa_relation,
            **self.model_options(),
            **self.trunk_options(),
        ).to_dict()

    @classmethod
    def run_name(cls, settings: Settings) -> str:
        return f"{cls.kind}_{'single' if settings.fusion == 'none' else settings.fusion}"
