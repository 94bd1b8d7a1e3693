"""Two task branches, optionally fused by AFA layers after every stage-4 block.

    feats = {t: trunk[t].stem + layer1..3 (x)}            # independent branches
    for i, block in enumerate(layer4):                      # 3 bottlenecks
        feats = {t: trunk[t].layer4[i](feats[t])}
        feats = fusions[i](feats)                           # AFA, or nothing ('none')
    return {t: heads[t](feats[t])}

``fusion='none'`` is the single-task pair of the paper: the same two branches trained
together with summed losses and no interaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .afa import DEFAULT_TAU, GRAD_MODES, AFALayer, init_afa_
from .backbone import Trunk, WeightsSpec, feature_size, load_trunk_weights, torchvision_state_dict
from .heads import ClassifierHead, DeepLabHead

KINDS = ("image", "pixel")
FUSIONS = ("none", "afa")

# Per kind: tasks with their output channels, input size, output stride and the reference's
# learning-rate multipliers (image nets: AFA x1000; pixel nets: ASPP and decoders x10).
DEFAULTS: dict[str, dict[str, Any]] = {
    "image": dict(tasks={"gender": 2, "age": 8}, input_size=224, output_stride=32,
                  lr_mult={"backbone": 1.0, "afa": 1000.0, "head": 1.0}),
    "pixel": dict(tasks={"seg": 40, "depth": 1}, input_size=300, output_stride=16,
                  lr_mult={"backbone": 1.0, "afa": 1.0, "head": 10.0}),
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network; stored (as plain types) in every checkpoint."""

    kind: str
    fusion: str = "afa"
    grad_mode: str = "protect"
    tasks: dict[str, int] = field(default_factory=dict)
    input_size: int = 0
    output_stride: int = 0
    tau: float = DEFAULT_TAU
    protect_tasks: list[str] | None = None  # None: every task, as in the reference code

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {self.grad_mode!r}")
        d = DEFAULTS[self.kind]
        self.tasks = dict(self.tasks or d["tasks"])
        self.input_size = int(self.input_size or d["input_size"])
        self.output_stride = int(self.output_stride or d["output_stride"])
        if len(self.tasks) != 2:
            raise ValueError(f"AFA joins exactly two tasks, got {list(self.tasks)}")
        if self.kind == "pixel" and self.output_stride not in (8, 16):
            raise ValueError(f"pixel networks use output stride 8 or 16, got {self.output_stride}")
        unknown = set(self.protect_tasks or ()) - set(self.tasks)
        if unknown:
            raise ValueError(f"protect_tasks {sorted(unknown)} are not tasks of this model ({list(self.tasks)})")

    @property
    def feature_size(self) -> int:
        """Side of the stage-4 maps (and of SAM) for the configured square input."""
        return feature_size(self.input_size, self.output_stride)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MultiTaskNet(nn.Module):
    """Two ResNet-50 branches keyed by task name, AFA layers in stage 4, one head per task.

    ``forward(x)`` takes (B, 3, H, W) and returns {task: output}: image nets (B, classes),
    pixel nets (B, channels, H, W).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tasks = list(config.tasks)
        self.trunks = nn.ModuleDict({t: Trunk(config.output_stride) for t in self.tasks})
        channels = self.trunks[self.tasks[0]].stage4_channels
        if config.kind == "image":
            self.heads = nn.ModuleDict({t: ClassifierHead(channels, n) for t, n in config.tasks.items()})
        else:
            self.heads = nn.ModuleDict(
                {t: DeepLabHead(n, channels, config.output_stride) for t, n in config.tasks.items()}
            )
        self.fusions = nn.ModuleList()
        if config.fusion == "afa":
            protect = [self.tasks.index(t) for t in (config.protect_tasks or self.tasks)]
            size = (config.feature_size, config.feature_size)
            for _ in self.trunks[self.tasks[0]].layer4:
                layer = AFALayer(channels, size, config.output_stride, config.grad_mode, config.tau, protect)
                init_afa_(layer)
                self.fusions.append(layer)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        t1, t2 = self.tasks
        out_size = (x.shape[-2], x.shape[-1])
        low, feats = {}, {}
        for t in self.tasks:
            trunk = self.trunks[t]
            low[t] = trunk.layer1(trunk.stem(x))  # (B, 256, H/4, W/4): the decoder's low-level input
            feats[t] = trunk.layer3(trunk.layer2(low[t]))
        for i in range(len(self.trunks[t1].layer4)):
            f1, f2 = self.trunks[t1].layer4[i](feats[t1]), self.trunks[t2].layer4[i](feats[t2])
            if self.fusions:
                f1, f2 = self.fusions[i](f1, f2)
            feats = {t1: f1, t2: f2}
        return {t: self.heads[t](feats[t], low[t], out_size) for t in self.tasks}

    # -- weights ---------------------------------------------------------------------------

    def load_backbone_weights(self, weights: WeightsSpec) -> list[str]:
        """Load one torchvision ResNet-50 state dict into every branch's trunk (strictly);
        returns the source keys that were not used (torchvision's ``fc``)."""
        sd = torchvision_state_dict(weights)
        unused: list[str] = []
        for trunk in self.trunks.values():
            unused = load_trunk_weights(trunk, sd)
        return unused

    def param_groups(self, lr: float, lr_mult: Mapping[str, float] | None = None,
                     weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimiser parameter groups by rule: 'afa' (fusion layers), 'head' (classifiers, or
        ASPP + decoders) and 'backbone' (the trunks), each at ``lr * multiplier``.

        Multipliers default to the reference recipe for the model's kind.
        """
        mult = {**DEFAULTS[self.config.kind]["lr_mult"], **(lr_mult or {})}
        parts = {"backbone": self.trunks, "afa": self.fusions, "head": self.heads}
        groups = []
        for name, module in parts.items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"name": name, "params": params, "lr": lr * mult[name],
                               "lr_mult": mult[name], "weight_decay": weight_decay})
        return groups


def build_model(kind: str, fusion: str = "afa", grad_mode: str = "protect", *,
                backbone_weights: WeightsSpec = None, verbose: bool = False, **options: Any) -> MultiTaskNet:
    """Build an image or pixel AFA network.

    Args:
        kind: 'image' (ResNet-50 branches, heads gender/age) or 'pixel' (DeepLabv3+ branches,
            heads seg/depth).
        fusion: 'afa' (an AFA layer after each stage-4 block) or 'none' (single-task pair).
        grad_mode: 'joint', 'protect' or 'adaptive' (see models.afa).
        backbone_weights: None (random init), 'imagenet' (torchvision's weights API), a path
            to a torchvision ResNet-50 state-dict file, or such a dict; the same tensors go
            into every branch.
        verbose: print which source keys were left unused by the backbone load.
        **options: ModelConfig fields: tasks ({name: channels}, two tasks), input_size
            (the square crop the net is fed; sets SAM's size), output_stride, tau, protect_tasks.

    ``kind='series'`` builds a series photo selection network instead (models/series.py):
    fusion 'pau' or 'siamese', options input_size, shared_units, symmetric.
    """
    if kind == "series":
        from .series import build_series_model
        return build_series_model(fusion, backbone_weights=backbone_weights, verbose=verbose, **options)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(options) - fields
    if unknown:
        raise TypeError(f"build_model() got unknown options {sorted(unknown)}; accepted: {sorted(fields - {'kind'})}")
    model = MultiTaskNet(ModelConfig(kind=kind, fusion=fusion, grad_mode=grad_mode, **options))
    if backbone_weights is not None:
        unused = model.load_backbone_weights(backbone_weights)
        if verbose and unused:
            print(f"backbone weights: loaded into {len(model.tasks)} branches; unused keys: {', '.join(unused)}")
    return model


def model_from_config(config: Mapping[str, Any]) -> MultiTaskNet:
    """Rebuild a network from ``ModelConfig.to_dict()`` output (as stored in checkpoints)."""
    if config.get("kind") == "series":  # SeriesConfig.to_dict() output
        from .series import SeriesConfig, SeriesNet
        return SeriesNet(SeriesConfig(**config))
    return MultiTaskNet(ModelConfig(**config))


def init_from_stage1(model: MultiTaskNet, state_dict: Mapping[str, Tensor],
                     heads: bool = False) -> dict[str, list[str]]:
    """Initialise a (fused) network from a stage-1 (single-task, ``fusion='none'``) state dict.

    As in the reference, the trunks are taken and the heads are not (image nets: everything
    but the heads; pixel nets: the backbones, i.e. not ASPP and decoders) — with one trunk
    per task, both rules take the trunks; ``heads=True`` takes the heads too (fine-tuning from the
    whole single-task network). The source must be a single-task network of the same kind and
    tasks: anything missing, of another shape, or foreign (AFA layers) raises a ValueError listing
    it. Returns {'loaded': keys copied, 'kept': model keys left as they were}.
    """
    own = model.state_dict()
    wanted = [k for k in own if k.startswith(("trunks.", "heads.") if heads else "trunks.")]
    missing = [k for k in wanted if k not in state_dict]
    wrong = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in wanted
             if k in state_dict and state_dict[k].shape != own[k].shape]
    foreign = [k for k in state_dict if not k.startswith(("trunks.", "heads."))]
    if missing or wrong or foreign:
        raise ValueError(
            f"stage-1 weights do not fit this {model.config.kind} network (tasks {model.tasks}): "
            + (f"{len(missing)} missing (first: {', '.join(missing[:4])}); " if missing else "")
            + (f"{len(wrong)} with other shapes (first: {'; '.join(wrong[:4])}); " if wrong else "")
            + (f"{len(foreign)} not from a single-task network (first: {', '.join(foreign[:4])})" if foreign else "")
        )
    with torch.no_grad():
        for k in wanted:
            own[k].copy_(state_dict[k])
    taken = set(wanted)
    return {"loaded": wanted, "kept": [k for k in own if k not in taken]}
