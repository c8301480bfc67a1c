"""EfficientNet-B0 encoder built from torchvision's public MBConvConfig/EfficientNet.

Using torchvision's blocks gives the real B0 (MBConv with squeeze-excitation,
stochastic depth, strides 2-2-2-2-1-2-1 over the stages, output stride 32)
and its ImageNet state dict layout; ``width_mult``/``depth_mult`` scale it
the way EfficientNet-B1..B7 do (ImageNet weights only exist for 1.0/1.0 here).
"""
from __future__ import annotations

from functools import partial
from typing import Any, List

from torchvision import models as tvm
from torchvision.models.efficientnet import EfficientNet, MBConvConfig

from ...core.errors import ConfigError, WeightsError
from ..registry import ENCODERS
from .mobilenet import TorchvisionFeaturesEncoder, build_torchvision_encoder
from .resnet import reject_extra_kwargs

#: Output stride of every entry of ``backbone.features`` (stem, 7 MBConv stages, head conv).
B0_FEATURE_STRIDES: List[int] = [2, 2, 4, 8, 16, 16, 32, 32, 32]


def efficientnet_b0_backbone(width_mult: float = 1.0, depth_mult: float = 1.0,
                             dropout: float = 0.2) -> EfficientNet:
    """torchvision EfficientNet with the B0 stage table scaled by the multipliers."""
    if width_mult <= 0 or depth_mult <= 0:
        raise ConfigError(f"width_mult and depth_mult must be > 0, got {width_mult}, "
                          f"{depth_mult}")
    conf = partial(MBConvConfig, width_mult=width_mult, depth_mult=depth_mult)
    # (expand_ratio, kernel, stride, in_channels, out_channels, num_layers), as in the paper.
    stages = [
        conf(1, 3, 1, 32, 16, 1),
        conf(6, 3, 2, 16, 24, 2),
        conf(6, 5, 2, 24, 40, 2),
        conf(6, 3, 2, 40, 80, 3),
        conf(6, 5, 1, 80, 112, 3),
        conf(6, 5, 2, 112, 192, 4),
        conf(6, 3, 1, 192, 320, 1),
    ]
    return EfficientNet(stages, dropout=dropout)


@ENCODERS.register("efficientnet_b0")
def efficientnet_b0(output_dim: int = 768, weights: str = "", width_mult: float = 1.0,
                    depth_mult: float = 1.0, **kwargs: Any) -> TorchvisionFeaturesEncoder:
    """EfficientNet-B0 (native width 1280 at ``width_mult`` 1.0)."""
    reject_extra_kwargs("efficientnet_b0", kwargs)
    default = width_mult == 1.0 and depth_mult == 1.0
    if weights == "imagenet" and not default:
        raise WeightsError(
            f"torchvision's ImageNet EfficientNet-B0 weights only fit width_mult=1.0, "
            f"depth_mult=1.0 (got {width_mult}, {depth_mult}); give a weights file path "
            f"trained with these multipliers instead")
    return build_torchvision_encoder(
        "efficientnet_b0", efficientnet_b0_backbone(width_mult, depth_mult), output_dim,
        weights, tvm.EfficientNet_B0_Weights if default else None)
