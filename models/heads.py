"""Task heads: a linear classifier on pooled features (image tasks) and the DeepLabv3+
ASPP + decoder (pixel tasks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
HEAD_CHANNELS = 256  # ASPP's and the decoder's width behind a ResNet-50 (scaled with narrower test trunks)
LOW_REDUCED = 48  # the decoder's reduction of the stage-1 features, at HEAD_CHANNELS


def _conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = 0 if k == 1 else dilation
    return [nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ClassifierHead(nn.Module):
    """Global average pool and a linear layer: (B, C, h, w) -> (B, num_classes).

    Args:
        in_channels: C of the trunk's last stage.
        num_classes: outputs.
        output_stride: the trunk's (any: the features are pooled globally); taken, like
            ``low_channels`` and ``channels`` (unused here), so that every head is built alike
            (models.multitask.ARCHITECTURES).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        output_stride: int = 32,
        low_channels: int = 256,
        channels: int = HEAD_CHANNELS,
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.kaiming_normal_(self.fc.weight)  # the reference's init; the bias keeps torch's default

    def forward(self, x: Tensor, low: Tensor, out_size: tuple[int, int]) -> Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class Decoder(nn.Module):
    """DeepLabv3+ decoder: fuse ASPP output with stage-1 features, predict at 1/4 resolution."""

    def __init__(
        self, num_outputs: int, low_channels: int = 256, channels: int = HEAD_CHANNELS, low_reduced: int = LOW_REDUCED
    ) -> None:
        super().__init__()
        self.reduce = nn.Sequential(*_conv_bn_relu(low_channels, low_reduced))
        self.fuse = nn.Sequential(
            *_conv_bn_relu(channels + low_reduced, channels, 3),
            nn.Dropout(0.5),
            *_conv_bn_relu(channels, channels, 3),
            nn.Dropout(0.1),
        )
        self.classifier = nn.Conv2d(channels, num_outputs, 1)

    def forward(self, x: Tensor, low: Tensor) -> Tensor:
        low = self.reduce(low)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.fuse(torch.cat((x, low), dim=1)))


class DeepLabHead(nn.Module):
    """ASPP + decoder + upsampling to the input size: -> (B, num_outputs, H, W).

    Args:
        in_channels: C of the trunk's last stage (2048).
        num_outputs: output channels (classes, or 1 for depth).
        output_stride: the trunk's, 16 or 8: it sets the ASPP rates.
        low_channels: C of the trunk's stage 1 (256), the decoder's low-level input.
        channels: ASPP's and the decoder's width (256; the low-level reduction scales with it from 48).
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        output_stride: int = 16,
        low_channels: int = 256,
        channels: int = HEAD_CHANNELS,
    ) -> None:
        super().__init__()
        # torchvision's ASPP is the reference's module: 1x1 and three dilated 3x3 branches, image
        # pooling (its bilinear upsampling of a 1x1 map is a broadcast whatever align_corners),
        # 1x1 projection, BN, ReLU, dropout 0.5.
        self.aspp = ASPP(in_channels, ASPP_RATES[output_stride], channels)
        self.decoder = Decoder(num_outputs, low_channels, channels, max(1, LOW_REDUCED * channels // HEAD_CHANNELS))
        for m in self.modules():  # the reference's init: Kaiming normal convs, BN (1, 0)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, low: Tensor, out_size: tuple[int, int]) -> Tensor:
        y = self.decoder(self.aspp(x), low)
        return F.interpolate(y, size=out_size, mode="bilinear", align_corners=True)
