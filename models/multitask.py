"""Multi-task networks: a branch per task (or one shared trunk) and a head per task.

One class serves every method the AFA paper compares (``fusion``), for any number of tasks (the
paper has two; at one task every method is the single-task network: there is nothing to fuse):

    feats = {b: trunk[b].stem(x) for b in branches}       # one branch per task ('shared': one)
    for stage, block in every bottleneck of layer1..layer4:
        feats = {b: trunk[b].<stage>[block](feats[b])}    # advance every branch one block
        feats = fusions[point](feats)                       # if a fusion sits at this point
    return {t: heads[t](feats[branch of t], low[branch of t], input size)}

* ``none``: the single-task networks of the paper (branches trained together, no interaction);
* ``shared``: hard parameter sharing (one trunk, a head per task);
* ``cross_stitch``, ``nddr``: units after layer1..layer4 (models/fusion.py);
* ``afa``: an AFA layer after every block of layer4 (models/afa.py).
``fusion_at`` places a fusion elsewhere (``models.fusion.resolve_points``). Pixel heads also read
the low-level features: each branch's layer1 output, taken before a fusion at that point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .afa import DEFAULT_TAU, GRAD_MODES, RELATIONS, AFALayer, init_afa_
from .backbone import (
    RESNET50_DEPTHS,
    RESNET50_WIDTH,
    Trunk,
    WeightsSpec,
    feature_size,
    load_trunk_weights,
    torchvision_state_dict,
)
from .fusion import (
    FUSION_INITS,
    FUSION_LR_MULT,
    FUSIONS,
    NDDR,
    STAGES,
    CrossStitch,
    TaskFusion,
    point_key,
    resolve_points,
)
from .heads import HEAD_CHANNELS, ClassifierHead, DeepLabHead
from .series import SeriesConfig, SeriesNet, build_series_model

SHARED = "shared"  # the branch name of the one trunk of hard sharing


@dataclass(frozen=True)
class Architecture:
    """What a kind of MultiTaskNet is built from.

    Args:
        tasks: default tasks with their output channels, in branch order.
        input_size: default square input side.
        output_strides: the trunk's allowed output strides, the default first.
        head: the head class, built as ``head(in_channels, outputs, output_stride, low_channels, channels)``.
        lr_mult: the reference's learning-rate multipliers of the trunks and heads; the fusion
            group's depends on the method (models.fusion.FUSION_LR_MULT).
    """

    tasks: dict[str, int]
    input_size: int
    output_strides: tuple[int, ...]
    head: type[nn.Module]
    lr_mult: dict[str, float]


ARCHITECTURES: dict[str, Architecture] = {
    "image": Architecture({"gender": 2, "age": 8}, 224, (32,), ClassifierHead, {"backbone": 1.0, "head": 1.0}),
    # pixel nets: ASPP and decoders at 10x the backbone rate
    "pixel": Architecture({"seg": 40, "depth": 1}, 300, (16, 8), DeepLabHead, {"backbone": 1.0, "head": 10.0}),
}
KINDS = tuple(ARCHITECTURES)


def square_or_pair(size: int | tuple[int, int] | list[int]) -> int | list[int]:
    """An input size as stored: an int for a square, [height, width] otherwise (a pair of equal sides is a square)."""
    if isinstance(size, int):
        return size
    height, width = (int(v) for v in size)
    return height if height == width else [height, width]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network; stored (as plain types) in every checkpoint.

    ``tasks`` {name: output channels} in branch order (task 1 first), any number >= 1.
    ``input_size`` the square side the network is fed, or [height, width]. ``protect_tasks`` None
    means task 1 only, as at the original code's latest commit. ``fusion_at`` None means the method's
    default points. ``fusion_init`` 'self' starts AFA layers leaning towards each branch's own features
    (cross-stitch and NDDR start there anyway). ``afa_relation`` 'tied' (the original's two maps at any
    number of tasks) or 'pairwise' (models/afa.py). ``unit_tasks``: tasks whose outputs are L2-normalised
    per pixel (surface normals). ``depths`` and ``width`` shape the trunks (ResNet-50's by default; smaller
    ones build tiny networks for tests, which take no ImageNet weights).
    """

    kind: str
    fusion: str = "afa"
    grad_mode: str = "protect"
    tasks: dict[str, int] = field(default_factory=dict)
    input_size: int | list[int] = 0
    output_stride: int = 0
    tau: float = DEFAULT_TAU
    protect_tasks: list[str] | None = None
    fusion_at: list[str] | None = None
    fusion_init: str = "reference"
    depths: list[int] = field(default_factory=lambda: list(RESNET50_DEPTHS))
    width: int = RESNET50_WIDTH
    afa_relation: str = "tied"
    unit_tasks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ARCHITECTURES:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {self.grad_mode!r}")
        if self.fusion_init not in FUSION_INITS:
            raise ValueError(f"fusion_init must be one of {FUSION_INITS}, got {self.fusion_init!r}")
        if self.afa_relation not in RELATIONS:
            raise ValueError(f"afa_relation must be one of {RELATIONS}, got {self.afa_relation!r}")
        arch = ARCHITECTURES[self.kind]
        self.tasks = dict(self.tasks or arch.tasks)
        self.input_size = square_or_pair(self.input_size or arch.input_size)
        self.output_stride = int(self.output_stride or arch.output_strides[0])
        self.depths = [int(n) for n in self.depths]
        self.width = int(self.width)
        self.unit_tasks = list(self.unit_tasks)
        if not self.tasks:
            raise ValueError("a network needs at least one task")
        unknown = set(self.unit_tasks) - set(self.tasks)
        if unknown:
            raise ValueError(f"unit_tasks {sorted(unknown)} are not tasks of this model ({list(self.tasks)})")
        if self.output_stride not in arch.output_strides:
            raise ValueError(
                f"{self.kind} networks use output stride {' or '.join(map(str, arch.output_strides))}, "
                f"got {self.output_stride}"
            )
        unknown = set(self.protect_tasks or ()) - set(self.tasks)
        if unknown:
            raise ValueError(f"protect_tasks {sorted(unknown)} are not tasks of this model ({list(self.tasks)})")
        if self.fusion_at is not None:
            self.fusion_at = list(self.fusion_at)
        resolve_points(self.fusion, self.fusion_at, self.depths)  # raises on bad points

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the input the network is fed."""
        return (self.input_size, self.input_size) if isinstance(self.input_size, int) else tuple(self.input_size)

    def size_at(self, stride: int) -> tuple[int, int]:
        """(h, w) of the feature maps at a total stride: every stride-2 step rounds up."""
        return tuple(feature_size(side, stride) for side in self.input_hw)

    @property
    def branches(self) -> list[str]:
        """Trunk names: one per task, or the one shared trunk of hard sharing."""
        return [SHARED] if self.fusion == SHARED else list(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MultiTaskNet(nn.Module):
    """Task branches keyed by task name (or one shared trunk), fusions keyed by point, a head per task.

    ``forward(x)`` takes (B, 3, H, W) and returns {task: output}: image nets (B, classes),
    pixel nets (B, channels, H, W).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tasks = list(config.tasks)
        self.branch_of = {t: (SHARED if config.fusion == SHARED else t) for t in self.tasks}
        self.trunks = nn.ModuleDict(
            {b: Trunk(config.output_stride, config.depths, config.width) for b in config.branches}
        )
        trunk = self.trunks[config.branches[0]]
        head = ARCHITECTURES[config.kind].head
        # stage-1 channels for the decoder; the head's width follows the trunk's (ResNet-50: 256, 256)
        head_widths = (trunk.stage_channels(1), HEAD_CHANNELS * config.width // RESNET50_WIDTH)
        self.heads = nn.ModuleDict(
            {t: head(trunk.stage4_channels, n, config.output_stride, *head_widths) for t, n in config.tasks.items()}
        )
        # one task: nothing to fuse, every method is the single-task network
        self.points = resolve_points(config.fusion, config.fusion_at, config.depths) if len(self.tasks) > 1 else []
        self.fusions = nn.ModuleDict(
            {point_key(name): self._make_fusion(trunk, stage, name) for stage, _, name in self.points}
        )
        self._fusion_at = {(stage, i): point_key(name) for stage, i, name in self.points}

    def _make_fusion(self, trunk: Trunk, stage: str, name: str) -> TaskFusion:
        cfg = self.config
        k = STAGES.index(stage) + 1
        channels = trunk.stage_channels(k)
        if cfg.fusion == "cross_stitch":
            return CrossStitch(self.tasks, channels)
        if cfg.fusion == "nddr":
            return NDDR(self.tasks, channels)
        stride = trunk.stage_stride(k)
        protect = [self.tasks.index(t) for t in (cfg.protect_tasks or self.tasks[:1])]
        layer = AFALayer(
            channels,
            cfg.size_at(stride),
            stride,
            cfg.grad_mode,
            cfg.tau,
            protect,
            self.tasks,
            self_prior=cfg.fusion_init == "self",
            relation=cfg.afa_relation,
        )
        init_afa_(layer)
        return layer

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out_size = (x.shape[-2], x.shape[-1])
        feats = {b: trunk.stem(x) for b, trunk in self.trunks.items()}
        low: dict[str, Tensor] = {}
        for stage in STAGES:
            for i in range(self.config.depths[STAGES.index(stage)]):
                feats = {b: getattr(trunk, stage)[i](feats[b]) for b, trunk in self.trunks.items()}
                if stage == "layer1" and i == self.config.depths[0] - 1:
                    low = feats  # (B, 256, H/4, W/4): the decoders' low-level input, before any fusion here
                key = self._fusion_at.get((stage, i))
                if key is not None:
                    feats = self.fusions[key](feats)
        out = {t: self.heads[t](feats[b], low[b], out_size) for t, b in self.branch_of.items()}
        for t in self.config.unit_tasks:  # unit vectors per pixel (MTAN normalises normals in the model)
            out[t] = F.normalize(out[t], dim=1)
        return out

    # -- monitoring ------------------------------------------------------------------------

    def monitor_fusions(self, enabled: bool = True) -> None:
        """Let every fusion record its mixing weights and gradient norms in training (see models.fusion)."""
        for f in self.fusions.values():
            f.monitor = enabled

    def fusion_stats(self) -> dict[str, float]:
        """{'<point>/<record>': mean since the last call}, e.g. 'layer4_0/cam/w/seg/depth' (target seg,
        source depth), 'layer1/same/seg', 'layer4_2/grad_in/depth'; resets the records."""
        return {f"{key}/{name}": v for key, f in self.fusions.items() for name, v in f.read_stats().items()}

    # -- weights ---------------------------------------------------------------------------

    def load_backbone_weights(self, weights: WeightsSpec) -> list[str]:
        """Load one torchvision ResNet-50 state dict into every trunk (strictly); returns the
        source keys that were not used (torchvision's ``fc``)."""
        for trunk in self.trunks.values():
            trunk.require_resnet50()
        sd = torchvision_state_dict(weights)
        unused: list[str] = []
        for trunk in self.trunks.values():
            unused = load_trunk_weights(trunk, sd)
        return unused

    def shared_parameters(self) -> list[Tensor]:
        """The last parameters both tasks' losses reach (GradNorm's W): the last block of the
        shared trunk, or the last fusion module; none for the single-task pair."""
        if self.config.fusion == SHARED:
            return list(self.trunks[SHARED].layer4[-1].parameters())
        if len(self.fusions):
            return list(self.fusions[list(self.fusions)[-1]].parameters())
        return []

    def default_lr_mult(self) -> dict[str, float]:
        """The multipliers of the 'backbone', 'fusion' and 'head' groups for this kind and method."""
        kind = self.config.kind
        return {**ARCHITECTURES[kind].lr_mult, "fusion": FUSION_LR_MULT.get(self.config.fusion, {}).get(kind, 1.0)}

    def param_groups(
        self, lr: float, lr_mult: Mapping[str, float] | None = None, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """Optimiser parameter groups: 'backbone' (the trunks), 'fusion' (the fusion modules) and
        'head' (classifiers, or ASPP + decoders), each at ``lr * multiplier``.

        Multipliers default to :meth:`default_lr_mult`; ``lr_mult`` overrides some of them.
        """
        mult = self.default_lr_mult()
        unknown = set(lr_mult or ()) - set(mult)
        if unknown:
            raise ValueError(f"lr_mult: unknown groups {sorted(unknown)}; the groups are {sorted(mult)}")
        mult.update(lr_mult or {})
        parts = {"backbone": self.trunks, "fusion": self.fusions, "head": self.heads}
        groups = []
        for name, module in parts.items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append(
                    {
                        "name": name,
                        "params": params,
                        "lr": lr * mult[name],
                        "lr_mult": mult[name],
                        "weight_decay": weight_decay,
                    }
                )
        return groups


def build_model(
    kind: str,
    fusion: str | None = None,
    grad_mode: str = "protect",
    *,
    backbone_weights: WeightsSpec = None,
    verbose: bool = False,
    **options: Any,
) -> nn.Module:
    """Build a network of ``kind``: 'image', 'pixel' (models.MultiTaskNet) or 'series' (models.series).

    Args:
        kind: 'image' (ResNet-50 branches, heads gender/age), 'pixel' (DeepLabv3+ branches, heads
            seg/depth) or 'series' (PAU / Siamese photo-preference networks).
        fusion: image and pixel: 'none' (single-task pair), 'shared' (hard sharing), 'cross_stitch',
            'nddr' or 'afa' (the default); series: 'pau' (the default) or 'siamese'.
        grad_mode: 'joint', 'protect' or 'adaptive' (see models.afa; image and pixel only).
        backbone_weights: None (random init), 'imagenet' (torchvision's weights API), a path
            to a torchvision ResNet-50 state-dict file, or such a dict; the same tensors go
            into every branch.
        verbose: print which source keys were left unused by the backbone load.
        **options: the config's fields. Image and pixel (ModelConfig): tasks ({name: channels}, two
            tasks), input_size (the square crop the net is fed; sets SAM's size), output_stride, tau,
            protect_tasks, fusion_at, fusion_init, depths, width. Series (SeriesConfig): input_size,
            shared_units, symmetric, depths, width.
    """
    if kind not in BUILDERS:
        raise ValueError(f"kind must be one of {tuple(BUILDERS)}, got {kind!r}")
    model = BUILDERS[kind](kind, fusion, grad_mode, **options)
    if backbone_weights is not None:
        unused = model.load_backbone_weights(backbone_weights)
        if verbose and unused:
            print(f"backbone weights: loaded into every trunk; unused keys: {', '.join(unused)}")
    return model


def _multitask(kind: str, fusion: str | None, grad_mode: str, **options: Any) -> MultiTaskNet:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(options) - fields
    if unknown:
        raise TypeError(f"build_model() got unknown options {sorted(unknown)}; accepted: {sorted(fields - {'kind'})}")
    return MultiTaskNet(ModelConfig(kind=kind, fusion=fusion or "afa", grad_mode=grad_mode, **options))


def _series(kind: str, fusion: str | None, grad_mode: str, **options: Any) -> SeriesNet:
    return build_series_model(fusion or "pau", **options)  # no gradient modes: one task, no fusion between tasks


# kind -> builder(kind, fusion, grad_mode, **options), the paper's network when fusion is None
BUILDERS = {**{kind: _multitask for kind in ARCHITECTURES}, "series": _series}


# kind -> (config class, network class): what a stored config rebuilds
NETWORKS: dict[str, tuple[type, type[nn.Module]]] = {
    **{kind: (ModelConfig, MultiTaskNet) for kind in ARCHITECTURES},
    "series": (SeriesConfig, SeriesNet),
}


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from its config's ``to_dict()`` output (as stored in checkpoints)."""
    kind = config.get("kind")
    if kind not in NETWORKS:
        raise ValueError(f"kind must be one of {tuple(NETWORKS)}, got {kind!r}")
    config_cls, network = NETWORKS[kind]
    return network(config_cls(**config))


def init_from_stage1(
    model: MultiTaskNet, state_dict: Mapping[str, Tensor], heads: bool = False
) -> dict[str, list[str]]:
    """Initialise a (fused) network from a stage-1 (single-task, ``fusion='none'``) state dict.

    Hard sharing has no single-task network to start from (ImageNet weights instead).
    As in the reference, the trunks are taken and the heads are not (image nets: everything
    but the heads; pixel nets: the backbones, i.e. not ASPP and decoders) — with one trunk
    per task, both rules take the trunks; ``heads=True`` takes the heads too (fine-tuning from the
    whole single-task network). The source must be a single-task network of the same kind and
    tasks: anything missing, of another shape, or foreign (AFA layers) raises a ValueError listing
    it. Returns {'loaded': keys copied, 'kept': model keys left as they were}.
    """
    if model.config.fusion == SHARED:
        raise ValueError(
            "hard sharing ('shared') starts from ImageNet weights (--pretrained), not from a "
            "single-task checkpoint: it has one trunk where stage 1 has two"
        )
    own = model.state_dict()
    wanted = [k for k in own if k.startswith(("trunks.", "heads.") if heads else "trunks.")]
    missing = [k for k in wanted if k not in state_dict]
    wrong = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in wanted
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
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
