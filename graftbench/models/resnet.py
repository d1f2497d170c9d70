"""ResNets: torchvision's ResNet-50 for ImageNet and small CIFAR-style ResNets for CPU runs.

The small ResNet follows He et al. (2016), section 4.2: a 3x3 stem, three stages of ``n`` basic
blocks at widths ``w, 2w, 4w`` (the last two halve the resolution), global average pooling and
a linear classifier; depth = 6n + 2. It reuses torchvision's ``BasicBlock`` (with a 1x1-conv
projection shortcut where the shape changes) and torchvision's initialization, so the small and
large models differ only in size.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from graftbench.errors import UserError


def resnet50(num_classes: int = 1000, zero_init_residual: bool = False) -> nn.Module:
    """torchvision's ResNet-50, randomly initialized (25,557,032 parameters at 1000 classes).

    ``zero_init_residual`` zeroes the last BatchNorm scale of every residual block, so each block
    starts as its shortcut (Goyal et al. 2017), as large-batch ImageNet recipes do.
    """
    return tv_resnet.resnet50(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )


class SmallResNet(nn.Module):
    """CIFAR-style ResNet for small images (8x8 digits, 32x32 CIFAR); see the module docstring."""

    def __init__(
        self,
        depth: int = 8,
        width: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise UserError(
                f"resnet_small depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110); "
                f"got {depth}"
            )
        if width < 1:
            raise UserError(f"resnet_small width must be a positive integer; got {width}")
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if stage == 0 else 2
            stages.append(_stage(channels, stage_width, blocks_per_stage, stride))
            channels = stage_width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._initialize(zero_init_residual)

    def _initialize(self, zero_init_residual: bool) -> None:
        # The same scheme as torchvision's ResNet.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, tv_resnet.BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


def _stage(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_channels != width:
        downsample = nn.Sequential(
            tv_resnet.conv1x1(in_channels, width, stride), nn.BatchNorm2d(width)
        )
    layers = [tv_resnet.BasicBlock(in_channels, width, stride, downsample)]
    layers += [tv_resnet.BasicBlock(width, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet_small(
    depth: int = 8,
    width: int = 16,
    num_classes: int = 10,
    in_channels: int = 3,
    zero_init_residual: bool = False,
) -> SmallResNet:
    """A CIFAR-style ResNet of ``depth`` = 6n+2 layers (8 -> 78k parameters at width 16)."""
    return SmallResNet(depth, width, num_classes, in_channels, zero_init_residual)
