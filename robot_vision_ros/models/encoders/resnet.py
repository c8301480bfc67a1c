"""ResNet-18/34/50 encoders: torchvision's ResNet as ``backbone``, tokens from layer4.

The torchvision module is kept whole (``fc`` included) so torchvision's
ImageNet state dicts load into ``backbone`` with ``strict=True`` and the
classifier stays available through :meth:`ResNetEncoder.logits`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torchvision import models as tvm

from ...core.errors import ConfigError
from ..registry import ENCODERS
from ..weights import load_weights
from .base import VisionEncoder, grid_token_geometry

_ARCHS = {
    "resnet18": tvm.ResNet18_Weights,
    "resnet34": tvm.ResNet34_Weights,
    "resnet50": tvm.ResNet50_Weights,
}


def pool_grid(feature_map: torch.Tensor, level: int = 1
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean-pooled vector and one token per cell of a ``[B, C, h, w]`` map.

    Returns ``(pooled [B, C], tokens [B, h*w, C], uv [h*w, 2], level [h*w])``,
    tokens in row-major order; the shared ``_pool_and_tokens`` of grid CNNs.
    """
    h, w = feature_map.shape[-2:]
    pooled = feature_map.mean(dim=(2, 3))
    tokens = feature_map.flatten(2).transpose(1, 2)
    uv, levels = grid_token_geometry(h, w, level, device=feature_map.device)
    return pooled, tokens, uv, levels


def reject_extra_kwargs(name: str, kwargs: Dict[str, Any]) -> None:
    """ConfigError for factory options the encoder ``name`` does not have."""
    if kwargs:
        raise ConfigError(f"encoder '{name}' got unknown options {sorted(kwargs)}; it takes "
                          f"output_dim and weights only")


def resnet_stages(backbone: tvm.ResNet, x: torch.Tensor) -> List[torch.Tensor]:
    """Outputs of layer1..layer4 (strides 4, 8, 16, 32) of a torchvision ResNet."""
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    stages = []
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        x = layer(x)
        stages.append(x)
    return stages


def resnet_logits(backbone: tvm.ResNet, layer4: torch.Tensor) -> torch.Tensor:
    """torchvision's ImageNet head applied to layer4 features: ``[B, 1000]``."""
    return backbone.fc(torch.flatten(backbone.avgpool(layer4), 1))


class ResNetEncoder(VisionEncoder):
    """torchvision ResNet; pooled = global average of layer4, tokens = its grid cells."""

    def __init__(self, arch: str = "resnet18", output_dim: int = 768) -> None:
        backbone = getattr(tvm, arch)(weights=None)
        super().__init__(native_dim=backbone.fc.in_features, output_dim=output_dim)
        self.backbone = backbone
        self.imagenet_weights = _ARCHS[arch]

    def get_intermediate_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The four stage outputs at 1/4, 1/8, 1/16 and 1/32 resolution."""
        return resnet_stages(self.backbone, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_intermediate_features(x)[-1]

    def _pool_and_tokens(self, x: torch.Tensor, depth: Optional[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return pool_grid(self.forward_features(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits ``[B, 1000]`` of torchvision's classifier."""
        self.check_input(x)
        return resnet_logits(self.backbone, self.forward_features(x))


def _make(arch: str, output_dim: int, weights: str, kwargs: Dict[str, Any]) -> ResNetEncoder:
    reject_extra_kwargs(arch, kwargs)
    model = ResNetEncoder(arch, output_dim)
    model.name = arch
    if weights:
        load_weights(model, weights)
    return model


@ENCODERS.register("resnet18")
def resnet18(output_dim: int = 768, weights: str = "", **kwargs: Any) -> ResNetEncoder:
    """ResNet-18, native width 512."""
    return _make("resnet18", output_dim, weights, kwargs)


@ENCODERS.register("resnet34")
def resnet34(output_dim: int = 768, weights: str = "", **kwargs: Any) -> ResNetEncoder:
    """ResNet-34, native width 512."""
    return _make("resnet34", output_dim, weights, kwargs)


@ENCODERS.register("resnet50")
def resnet50(output_dim: int = 768, weights: str = "", **kwargs: Any) -> ResNetEncoder:
    """ResNet-50, native width 2048."""
    return _make("resnet50", output_dim, weights, kwargs)
