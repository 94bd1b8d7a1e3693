"""Series photo selection: which of two near-duplicate photos of one scene do people prefer?

Shen et al., "Learning multi-scale attentive features for series photo selection", ICASSP 2020
(the PAU network), and its Siamese baseline (docs/networks.md). Both networks
read photos A and B with one shared ResNet-50 and classify a descriptor difference:

    logits = W (d(A) - d(B)) + w_0,   (B, 2); class 0: A is preferred, class 1: B is.

Siamese: d(x) = GAP(layer4(x)), 2048 values.
PAU: a Parallel Attention Unit after layer2, layer3 and layer4 (C = 512, 1024, 2048); photo A
and photo B each have their own three units (the trunk is shared). For a stage output x
(B, C, H, W) a unit computes

    k = conv_1x1(ReLU(conv_1x1(x)))          gate, with bias; no sigmoid
    v = k * x
    c = FC_2(ReLU(FC_1(GAP(v) + GMP(v))))    channel cell, (B, C, 1, 1); C -> C/16 -> C, no bias
    s = ReLU(mean_c(v) + max_c(v))           spatial cell, (B, 1, H, W); no convolution
    u = [GAP(c * x), GAP(s * x)]             (B, 2C): both cells re-weight the original x

and d(x) = [u_2, u_3, u_4], 2 * (512 + 1024 + 2048) = 7168 values.

Options (off by default, as in the original): ``shared_units`` gives both photos the same
three units; ``symmetric`` averages, in eval mode, the logits of (A, B) with the swapped
logits of (B, A), so that swapping the inputs swaps the prediction exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import RESNET50_DEPTHS, RESNET50_WIDTH, Trunk, WeightsSpec, load_trunk_weights, torchvision_state_dict

SERIES_FUSIONS = ("siamese", "pau")
PAU_STAGES = ("layer2", "layer3", "layer4")
REDUCTION = 16  # the channel cell's hidden width is round(C / 16)
# The original recipe multiplies the lr by 10 on every module whose name contains "fc": the
# final linear and the channel cells' FCs ('head'); the gates learn at the trunk's rate.
LR_MULT = {"backbone": 1.0, "units": 1.0, "head": 10.0}


@dataclass
class SeriesConfig:
    """Everything needed to rebuild a series network; stored (as plain types) in every checkpoint.

    Args:
        kind: always 'series' (tells checkpoints of the three families apart).
        fusion: 'pau' (the paper's network) or 'siamese' (GAP of layer4 only).
        input_size: side of the square crop the network is trained on (informative: both
            networks accept any size, the descriptors are globally pooled).
        shared_units: one set of PAUs for both photos instead of one per photo.
        symmetric: test-time symmetrisation (eval mode only).
        depths: bottlenecks per ResNet stage (ResNet-50's 3, 4, 6, 3; fewer builds tiny networks for
            tests, which cannot take ImageNet weights).
        width: layer1's bottleneck planes (ResNet-50's 64; narrower builds tiny networks for tests,
            which cannot take ImageNet weights either).
    """

    kind: str = "series"
    fusion: str = "pau"
    input_size: int = 224
    shared_units: bool = False
    symmetric: bool = False
    depths: list[int] = field(default_factory=lambda: list(RESNET50_DEPTHS))
    width: int = RESNET50_WIDTH

    def __post_init__(self) -> None:
        if self.kind != "series":
            raise ValueError(f"a SeriesConfig has kind 'series', got {self.kind!r}")
        if self.fusion not in SERIES_FUSIONS:
            raise ValueError(f"series fusion must be one of {SERIES_FUSIONS}, got {self.fusion!r}")
        if self.shared_units and self.fusion != "pau":
            raise ValueError("shared_units applies to the PAU network only (the Siamese net has no units)")
        self.input_size = int(self.input_size)
        self.depths = [int(n) for n in self.depths]
        self.width = int(self.width)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ChannelCell(nn.Module):
    """(B, C, H, W) -> (B, C, 1, 1): FC_2(ReLU(FC_1(GAP(v) + GMP(v)))), no sigmoid.

    Args:
        channels: C.
        reduction: the hidden width is round(C / reduction).
    """

    def __init__(self, channels: int, reduction: int = REDUCTION) -> None:
        super().__init__()
        hidden = round(channels / reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def forward(self, v: Tensor) -> Tensor:
        # adaptive_max_pool2d (not amax): at ties (v = 0 wherever x = 0 after ReLU) the gradient
        # goes to one position, as in the original, rather than being split.
        a = F.adaptive_avg_pool2d(v, 1) + F.adaptive_max_pool2d(v, 1)  # (B, C, 1, 1)
        return self.fc2(F.relu(self.fc1(a.flatten(1))))[..., None, None]


class SpatialCell(nn.Module):
    """(B, C, H, W) -> (B, 1, H, W): ReLU(mean over channels + max over channels); no parameters."""

    def forward(self, v: Tensor) -> Tensor:
        return F.relu(v.mean(dim=1, keepdim=True) + v.max(dim=1, keepdim=True)[0])


class PAUnit(nn.Module):
    """Parallel attention unit: (B, C, H, W) -> (B, 2C) = [GAP(c * x), GAP(s * x)].

    Args:
        channels: C, channels of the stage output it reads.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, channels, 1))
        self.channel = ChannelCell(channels)
        self.spatial = SpatialCell()
        # The original initialises every conv of the network alike, normal(0, sqrt(2 / (k*k*out)))
        # (kaiming fan-out); biases and linears keep torch's defaults.
        for m in self.gate:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))

    def forward(self, x: Tensor) -> Tensor:
        v = self.gate(x) * x
        c, s = self.channel(v), self.spatial(v)  # (B, C, 1, 1), (B, 1, H, W)
        return torch.cat(((c * x).mean(dim=(2, 3)), (s * x).mean(dim=(2, 3))), dim=1)


class SeriesNet(nn.Module):
    """One ResNet-50 trunk for both photos, PAUs per photo (or none: Siamese), one linear.

    ``forward(a, b)`` takes two (B, 3, H, W) batches and returns {'pair': (B, 2) logits}.
    """

    tasks = ("pair",)

    def __init__(self, config: SeriesConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = Trunk(output_stride=32, depths=config.depths, width=config.width)
        self.units = nn.ModuleDict()
        if config.fusion == "pau":
            channels = [getattr(self.trunk, s)[-1].conv3.out_channels for s in PAU_STAGES]  # 512, 1024, 2048
            for photo in ("shared",) if config.shared_units else ("a", "b"):
                self.units[photo] = nn.ModuleList(PAUnit(c) for c in channels)
            descriptor = 2 * sum(channels)
        else:
            descriptor = self.trunk.stage4_channels
        self.fc = nn.Linear(descriptor, 2)  # torch's default init, as the original

    def _stages(self, x: Tensor) -> list[Tensor]:
        """Outputs of layer2, layer3, layer4 for one photo batch."""
        x = self.trunk.layer1(self.trunk.stem(x))
        out = []
        for s in PAU_STAGES:
            x = getattr(self.trunk, s)(x)
            out.append(x)
        return out

    def _describe(self, stages: list[Tensor], photo: str) -> Tensor:
        """(B, D) descriptor of one photo batch; ``photo`` picks the units ('a' or 'b')."""
        if not self.units:
            return stages[-1].mean(dim=(2, 3))  # (B, 2048)
        units = self.units["shared" if self.config.shared_units else photo]
        return torch.cat([unit(x) for unit, x in zip(units, stages)], dim=1)  # (B, 7168)

    def forward(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        # The two photos go through the trunk separately (not as one batch of 2B), so that in
        # training BatchNorm normalises each photo batch with its own statistics, as the original.
        sa, sb = self._stages(a), self._stages(b)
        logits = self.fc(self._describe(sa, "a") - self._describe(sb, "b"))
        if self.config.symmetric and not self.training:
            swapped = self.fc(self._describe(sb, "a") - self._describe(sa, "b"))  # logits of (B, A)
            logits = (logits + swapped.flip(1)) / 2
        return {"pair": logits}

    # -- what the training loop asks of every network ------------------------------------------

    def monitor_fusions(self, enabled: bool = True) -> None:
        """No fusion between tasks to watch (one task); see MultiTaskNet.monitor_fusions."""

    def fusion_stats(self) -> dict[str, float]:
        return {}

    def shared_parameters(self) -> list[Tensor]:
        """None: the loss weightings that need parameters shared by tasks do not apply to one task."""
        return []

    # -- weights ---------------------------------------------------------------------------

    def load_backbone_weights(self, weights: WeightsSpec) -> list[str]:
        """Load a torchvision ResNet-50 state dict into the trunk (strictly); returns the unused keys."""
        self.trunk.require_resnet50()
        return load_trunk_weights(self.trunk, torchvision_state_dict(weights))

    def param_groups(
        self, lr: float, lr_mult: Mapping[str, float] | None = None, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """Groups 'backbone' (trunk), 'units' (PAU gates) and 'head' (the final linear and the
        channel cells' FCs), each at ``lr * multiplier`` (default: LR_MULT, the original recipe)."""
        mult = {**LR_MULT, **(lr_mult or {})}
        head = list(self.fc.parameters()) + [p for n, p in self.units.named_parameters() if ".channel." in n]
        head_ids = {id(p) for p in head}
        parts = {
            "backbone": list(self.trunk.parameters()),
            "units": [p for p in self.units.parameters() if id(p) not in head_ids],
            "head": head,
        }
        groups = []
        for name, params in parts.items():
            params = [p for p in params if p.requires_grad]
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


def build_series_model(
    fusion: str = "pau", *, backbone_weights: WeightsSpec = None, verbose: bool = False, **options: Any
) -> SeriesNet:
    """Build a series network (``models.build_model('series', fusion, ...)`` lands here).

    Args:
        fusion: 'pau' or 'siamese'.
        backbone_weights: None (random init), 'imagenet', a path to a torchvision ResNet-50
            state-dict file, or such a dict.
        verbose: print which source keys were left unused by the backbone load.
        **options: SeriesConfig fields: input_size, shared_units, symmetric, depths, width.
    """
    fields = {f.name for f in dataclasses.fields(SeriesConfig)} - {"kind", "fusion"}
    unknown = set(options) - fields
    if unknown:
        raise TypeError(f"build_model('series') got unknown options {sorted(unknown)}; accepted: {sorted(fields)}")
    model = SeriesNet(SeriesConfig(fusion=fusion, **options))
    if backbone_weights is not None:
        unused = model.load_backbone_weights(backbone_weights)
        if verbose and unused:
            print(f"backbone weights: loaded into the trunk; unused keys: {', '.join(unused)}")
    return model


# -- the original code's key names --------------------------------------------------------------
# models/PAU_resnet50.py and models/ResNet50.py keep the trunk at the top level (conv1, bn1,
# layer1..4), the classifier as ``fc`` and the units as ``pau<photo><stage>`` (photo 1 = A,
# 2 = B; stage 1..3 = after layer2..4) with ``conv1``/``conv2`` (gate) and ``ca.fc1``/``ca.fc2``.


def _prefixes(fusion: str) -> list[tuple[str, str]]:
    """(original prefix, our prefix) pairs; every key of either side starts with exactly one."""
    if fusion not in SERIES_FUSIONS:
        raise ValueError(f"series fusion must be one of {SERIES_FUSIONS}, got {fusion!r}")
    rows = [(f"{m}.", f"trunk.{m}.") for m in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")]
    rows.append(("fc.", "fc."))
    if fusion == "pau":
        for number, photo in ((1, "a"), (2, "b")):
            for k in range(len(PAU_STAGES)):
                ref, ours = f"pau{number}{k + 1}.", f"units.{photo}.{k}."
                rows += [
                    (ref + "conv1.", ours + "gate.0."),
                    (ref + "conv2.", ours + "gate.2."),
                    (ref + "ca.fc1.", ours + "channel.fc1."),
                    (ref + "ca.fc2.", ours + "channel.fc2."),
                ]
    return rows


def convert_series_keys(state_dict: Mapping[str, Tensor], fusion: str, to_ours: bool) -> dict[str, Tensor]:
    """Rename a dict of tensors between the original layout and ours (either direction).

    Keys that fit no rule raise a ValueError listing them; the result loads with ``strict=True``
    into ``build_model('series', fusion)`` (default options) or the original network.
    """
    rows = [(src, dst) if to_ours else (dst, src) for src, dst in _prefixes(fusion)]
    out, unknown = {}, []
    for key, value in state_dict.items():
        match = [(src, dst) for src, dst in rows if key.startswith(src)]
        if len(match) != 1:
            unknown.append(key)
            continue
        src, dst = match[0]
        out[dst + key[len(src) :]] = value
    if unknown:
        side = "the original Series-Photo-Selection" if to_ours else "this project's"
        raise ValueError(
            f"{len(unknown)} keys are not {fusion} series-network keys of {side} layout: {', '.join(unknown[:5])}"
        )
    return out
