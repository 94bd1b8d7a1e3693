"""ResNet-50 trunks for the task branches, built from torchvision's ResNet.

A trunk is torchvision's ``resnet50`` without ``avgpool``/``fc``, so its state-dict keys are
exactly torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1`` ...) and ImageNet weights load
into every branch by name. Pixel networks use output stride 16 (or 8) with the DeepLab
multi-grid unit in stage 4: stride 1 and dilations (2, 4, 8) times the stage's base rate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Union

import torch
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights
from torchvision.models.resnet import Bottleneck, ResNet

WeightsSpec = Union[None, str, os.PathLike, Mapping[str, Tensor]]  # noqa: UP007 (a runtime alias, py3.9-safe)

MULTI_GRID = (1, 2, 4)
RESNET50_DEPTHS = (3, 4, 6, 3)  # bottlenecks per stage; tests build tiny trunks with fewer
RESNET50_WIDTH = 64  # planes of layer1's bottlenecks (outputs 4x that); tests build narrower trunks


class _ScaledResNet(ResNet):
    """torchvision's ResNet with the stem's channels and every stage's planes scaled by ``width / 64``.

    At width 64 it is torchvision's network, module for module; narrower widths keep the
    structure (same keys, strides, dilations) at a fraction of the compute, for smoke tests.
    """

    def __init__(self, width: int, depths: Sequence[int], dilate: Sequence[bool]) -> None:
        object.__setattr__(self, "_width", width)  # ResNet.__init__ calls _make_layer
        super().__init__(Bottleneck, list(depths), replace_stride_with_dilation=list(dilate))
        if width != RESNET50_WIDTH:  # the stem, built at 64 by torchvision (Trunk re-initialises all)
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # noqa: ANN001, ANN202 (torchvision's)
        if planes == RESNET50_WIDTH:  # layer1 reads the stem: as wide as the narrowed stem, so that its
            self.inplanes = self._width  # first block keeps its projection shortcut (64 -> 256 in ResNet-50)
        return super()._make_layer(block, planes * self._width // RESNET50_WIDTH, blocks, stride, dilate)


class Trunk(nn.Module):
    """The convolutional part of ResNet-50 (stem and layer1..layer4).

    Args:
        output_stride: 32 (classification), 16 or 8 (DeepLab; stage 4 becomes multi-grid).
        depths: bottlenecks in layer1..layer4; ResNet-50's (3, 4, 6, 3) by default. Only the
            default takes ImageNet weights; a DeepLab stage 4 has at most 3 blocks (multi-grid).
        width: planes of layer1's bottlenecks, doubled per stage; ResNet-50's 64 by default (the
            stages output 4 x width x 1, 2, 4, 8 channels). Narrower trunks are for smoke tests and
            take no ImageNet weights either.
    """

    def __init__(
        self, output_stride: int = 32, depths: Sequence[int] = RESNET50_DEPTHS, width: int = RESNET50_WIDTH
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"depths: four stage depths >= 1 expected, got {list(depths)}")
        if output_stride != 32 and depths[3] > len(MULTI_GRID):
            raise ValueError(f"depths: a multi-grid stage 4 has at most {len(MULTI_GRID)} blocks, got {depths[3]}")
        if not 1 <= width <= RESNET50_WIDTH:
            raise ValueError(f"width: 1 to {RESNET50_WIDTH} planes expected, got {width}")
        # torchvision replaces the stride of the dilated stages by dilation; it keeps the
        # first block of a dilated stage at the previous rate, which DeepLab's multi-grid
        # unit does not, so stage 4's rates are set below.
        dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
        net = _ScaledResNet(width, depths, dilate)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.output_stride = output_stride
        self.depths, self.width = tuple(int(n) for n in depths), int(width)
        if output_stride != 32:
            base = 32 // output_stride  # rate that replaces stage 4's stride (2 at OS16, 4 at OS8)
            for block, unit in zip(self.layer4, MULTI_GRID):
                block.conv2.dilation = block.conv2.padding = (base * unit, base * unit)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's initialisation: convs normal(0, sqrt(2 / (k*k*out))), BN (1, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stage4_channels(self) -> int:
        return self.layer4[-1].conv3.out_channels

    def stage_channels(self, stage: int) -> int:
        """Output channels of layer1..layer4 (ResNet-50: 256, 512, 1024, 2048)."""
        return 4 * self.width * 2 ** (stage - 1)

    def require_resnet50(self) -> None:
        """Raise ValueError unless this trunk has ResNet-50's shape (the only one ImageNet weights fit)."""
        if self.depths != RESNET50_DEPTHS or self.width != RESNET50_WIDTH:
            raise ValueError(
                f"ResNet-50 weights fit depths {' '.join(map(str, RESNET50_DEPTHS))} and width {RESNET50_WIDTH} "
                f"only; this network has depths {' '.join(map(str, self.depths))} and width {self.width} "
                "(use --pretrained none)"
            )

    def stage_stride(self, stage: int) -> int:
        """Total stride after layer1..layer4: 4, 8, 16, 32, capped by the output stride (dilated stages)."""
        return min(2 ** (stage + 1), self.output_stride)

    def stem(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, width, H/4, W/4)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def feature_size(input_size: int, stride: int) -> int:
    """Side of the stage-4 map for an input side: every stride-2 step rounds up."""
    return -(-input_size // stride)


def torchvision_state_dict(weights: WeightsSpec) -> dict[str, Tensor]:
    """A torchvision ResNet-50 state dict from 'imagenet' (downloads through torchvision's
    weights API when not cached), a file path, or a dict already in memory."""
    if isinstance(weights, Mapping):
        return dict(weights)
    if weights == "imagenet":
        return ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone weights {path!r}: no such file (expected a torchvision ResNet-50 state dict)"
        )
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt / pickled-code files
        first = str(e).strip().split("\n")[0].split(". ")[0]  # torch's weights_only errors run to paragraphs
        raise ValueError(
            f"backbone weights {path!r}: not a loadable state dict ({type(e).__name__}: {first})"
        ) from None
    if isinstance(sd, Mapping) and "model" in sd and isinstance(sd["model"], Mapping):
        sd = sd["model"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"backbone weights {path!r}: expected a dict of tensors, got {type(sd).__name__}")
    return dict(sd)


def load_trunk_weights(trunk: Trunk, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Load a torchvision ResNet-50 state dict into a trunk, strictly.

    Every trunk tensor must be present with the right shape; keys the trunk has no place
    for (torchvision's ``fc``) are returned so the caller can report them.
    """
    own = trunk.state_dict()
    missing = [k for k in own if k not in state_dict]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or wrong:
        raise ValueError(
            "not a torchvision ResNet-50 state dict: "
            + (f"{len(missing)} missing keys (first: {missing[:3]}) " if missing else "")
            + (f"{len(wrong)} shape mismatches (first: {wrong[:3]})" if wrong else "")
        )
    trunk.load_state_dict({k: state_dict[k] for k in own}, strict=True)
    return sorted(k for k in state_dict if k not in own)
