"""Small MobileNet(V1)-style encoder for tight CPU budgets.

A stem convolution and depthwise-separable blocks, each with BatchNorm and
ReLU6 after both the depthwise and the pointwise convolution (Howard et al.
2017). It is a pure function of its input: frame skipping and feature reuse
belong to the real-time scheduler, not to ``forward``. No pretrained weights
exist for it; train it (e.g. by distillation) and load the file.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
from torch import nn

from ...core.errors import ConfigError
from ..registry import ENCODERS
from ..weights import load_weights
from .base import VisionEncoder
from .resnet import pool_grid

#: (out_channels, stride) of the depthwise-separable blocks; output stride 32.
DEFAULT_BLOCKS: Tuple[Tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 2),
)
STEM_CHANNELS = 32


def conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    """Conv (no bias: BN follows) + BatchNorm + ReLU6."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                  groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class DepthwiseSeparableConv(nn.Sequential):
    """3x3 depthwise (+BN+ReLU6) then 1x1 pointwise (+BN+ReLU6)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            conv_bn_relu6(in_channels, in_channels, 3, stride, groups=in_channels),
            conv_bn_relu6(in_channels, out_channels, 1),
        )


class RealtimeEncoder(VisionEncoder):
    """Depthwise-separable CNN; pooled = global average, tokens = last-map cells."""

    def __init__(self, blocks: Sequence[Tuple[int, int]] = DEFAULT_BLOCKS,
                 width_mult: float = 1.0, output_dim: int = 768) -> None:
        if width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {width_mult}")
        channels = [max(8, int(round(c * width_mult))) for c, _ in blocks]
        stem = max(8, int(round(STEM_CHANNELS * width_mult)))
        super().__init__(native_dim=channels[-1], output_dim=output_dim)
        layers = [conv_bn_relu6(3, stem, 3, stride=2)]
        in_channels = stem
        for out_channels, (_, stride) in zip(channels, blocks):
            layers.append(DepthwiseSeparableConv(in_channels, out_channels, stride))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.imagenet_weights = None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def _pool_and_tokens(self, x: torch.Tensor, depth: Optional[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return pool_grid(self.forward_features(x))


@ENCODERS.register("realtime")
def realtime(output_dim: int = 768, weights: str = "", width_mult: float = 1.0,
             **kwargs: Any) -> RealtimeEncoder:
    """Real-time encoder, native width 512 x ``width_mult``; weights from a file only."""
    if kwargs:
        raise ConfigError(f"encoder 'realtime' got unknown options {sorted(kwargs)}; it takes "
                          f"output_dim, weights and width_mult")
    model = RealtimeEncoder(width_mult=width_mult, output_dim=output_dim)
    model.name = "realtime"
    if weights:
        load_weights(model, weights)
    return model
