"""MobileNetV2 / MobileNetV3-Small encoders around torchvision's models.

:class:`TorchvisionFeaturesEncoder` wraps any torchvision classifier laid out
as ``features`` -> global average pool -> ``classifier`` (MobileNet,
EfficientNet): the whole model is kept as ``backbone`` so torchvision
ImageNet state dicts load with ``strict=True``; pooled/tokens come from the
last ``features`` map and :meth:`logits` runs torchvision's classifier.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Type

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum

from ...core.errors import ModelError
from ..registry import ENCODERS
from ..weights import load_weights
from .base import VisionEncoder
from .resnet import pool_grid, reject_extra_kwargs


def _classifier_in_features(classifier: nn.Module) -> int:
    for module in classifier.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
    raise ModelError(f"classifier {classifier} has no Linear layer")


class TorchvisionFeaturesEncoder(VisionEncoder):
    """torchvision ``features``/``classifier`` model; tokens = last feature-map cells."""

    def __init__(self, backbone: nn.Module, output_dim: int = 768,
                 imagenet_weights: Optional[Type[WeightsEnum]] = None) -> None:
        super().__init__(native_dim=_classifier_in_features(backbone.classifier),
                         output_dim=output_dim)
        self.backbone = backbone
        self.imagenet_weights = imagenet_weights

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def _pool_and_tokens(self, x: torch.Tensor, depth: Optional[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return pool_grid(self.forward_features(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits ``[B, 1000]`` of torchvision's classifier."""
        self.check_input(x)
        pooled = self.forward_features(x).mean(dim=(2, 3))
        return self.backbone.classifier(pooled)


def build_torchvision_encoder(name: str, backbone: nn.Module, output_dim: int, weights: str,
                              imagenet_weights: Optional[Type[WeightsEnum]]
                              ) -> TorchvisionFeaturesEncoder:
    """Wrap ``backbone``, name it and load ``weights`` (the factories' common tail)."""
    model = TorchvisionFeaturesEncoder(backbone, output_dim, imagenet_weights)
    model.name = name
    if weights:
        load_weights(model, weights)
    return model


@ENCODERS.register("mobilenet_v2")
def mobilenet_v2(output_dim: int = 768, weights: str = "", **kwargs: Any
                 ) -> TorchvisionFeaturesEncoder:
    """MobileNetV2, native width 1280."""
    reject_extra_kwargs("mobilenet_v2", kwargs)
    return build_torchvision_encoder("mobilenet_v2", tvm.mobilenet_v2(weights=None),
                                     output_dim, weights, tvm.MobileNet_V2_Weights)


@ENCODERS.register("mobilenet_v3_small")
def mobilenet_v3_small(output_dim: int = 768, weights: str = "", **kwargs: Any
                       ) -> TorchvisionFeaturesEncoder:
    """MobileNetV3-Small, native width 576 (the last conv, before the classifier's 1024)."""
    reject_extra_kwargs("mobilenet_v3_small", kwargs)
    return build_torchvision_encoder("mobilenet_v3_small", tvm.mobilenet_v3_small(weights=None),
                                     output_dim, weights, tvm.MobileNet_V3_Small_Weights)
