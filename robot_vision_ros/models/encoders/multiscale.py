"""Multi-scale ResNet + FPN encoders (``resnet18_fpn``, ``resnet50_fpn``).

torchvision's ``FeaturePyramidNetwork`` (256 channels) runs over the four
ResNet stages (P2..P5 at strides 4..32), like the seed's multi-scale VLA
encoder without its action head.

* pooled (native width 768) = ``[avg(P5), avg(P4), avg(P3)]``, concatenated;
* tokens come from the two coarsest levels only, so their number stays small
  (at 224 x 224: 7x7 + 14x14 = 245): first every P5 cell (level 1), then
  every P4 cell (level 2). Each token has the pooled vector's layout for its
  own cell: ``[P5, P4, P3]`` features of that region, where a coarser map is
  taken at the parent cell (nearest) and a finer one is averaged over the
  cell's children. So pooled and tokens share one projection and meaning.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torchvision import models as tvm
from torchvision.ops import FeaturePyramidNetwork

from ..registry import ENCODERS
from ..weights import load_weights
from .base import VisionEncoder, grid_token_geometry
from .resnet import reject_extra_kwargs, resnet_logits, resnet_stages

FPN_CHANNELS = 256
#: Pyramid levels whose features make up pooled vector and tokens, coarsest first.
POOLED_LEVELS = ("p5", "p4", "p3")

_ARCHS = {
    "resnet18": tvm.ResNet18_Weights,
    "resnet50": tvm.ResNet50_Weights,
}


def _resample_to(feature_map: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Average finer maps down to ``size``, repeat coarser ones up (nearest)."""
    if tuple(feature_map.shape[-2:]) == tuple(size):
        return feature_map
    if feature_map.shape[-2] > size[0]:
        return F.adaptive_avg_pool2d(feature_map, size)
    return F.interpolate(feature_map, size=size, mode="nearest")


class ResNetFPNEncoder(VisionEncoder):
    """torchvision ResNet (``backbone``) + FPN (``fpn``); see the module docstring."""

    def __init__(self, arch: str = "resnet18", output_dim: int = 768) -> None:
        super().__init__(native_dim=FPN_CHANNELS * len(POOLED_LEVELS), output_dim=output_dim)
        self.backbone = getattr(tvm, arch)(weights=None)
        stage_channels = [self._out_channels(layer)
                          for layer in (self.backbone.layer1, self.backbone.layer2,
                                        self.backbone.layer3, self.backbone.layer4)]
        self.fpn = FeaturePyramidNetwork(stage_channels, FPN_CHANNELS)
        self.imagenet_weights = _ARCHS[arch]

    @staticmethod
    def _out_channels(layer: torch.nn.Module) -> int:
        """Channels a ResNet stage outputs (BasicBlock ends in bn2, Bottleneck in bn3)."""
        block = layer[-1]
        last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
        return int(last_bn.num_features)

    def get_intermediate_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The four ResNet stage outputs at 1/4, 1/8, 1/16 and 1/32 resolution."""
        return resnet_stages(self.backbone, x)

    def pyramid(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """FPN outputs ``p2``..``p5`` (256 channels, strides 4..32)."""
        stages = self.get_intermediate_features(x)
        return self.fpn(OrderedDict((f"p{i + 2}", s) for i, s in enumerate(stages)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """P5, the coarsest pyramid map ``[B, 256, H/32, W/32]``."""
        return self.pyramid(x)["p5"]

    def _pool_and_tokens(self, x: torch.Tensor, depth: Optional[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = self.pyramid(x)
        pooled = torch.cat([levels[name].mean(dim=(2, 3)) for name in POOLED_LEVELS], dim=1)
        tokens, uvs, ids = [], [], []
        for level_id, grid_name in enumerate(("p5", "p4"), start=1):
            size = tuple(levels[grid_name].shape[-2:])
            stacked = torch.cat([_resample_to(levels[name], size) for name in POOLED_LEVELS],
                                dim=1)
            tokens.append(stacked.flatten(2).transpose(1, 2))
            uv, level = grid_token_geometry(size[0], size[1], level_id, device=x.device)
            uvs.append(uv)
            ids.append(level)
        return pooled, torch.cat(tokens, dim=1), torch.cat(uvs), torch.cat(ids)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of the ResNet's own classifier (the FPN is not used)."""
        self.check_input(x)
        return resnet_logits(self.backbone, self.get_intermediate_features(x)[-1])


def _make(arch: str, output_dim: int, weights: str, kwargs: Any) -> ResNetFPNEncoder:
    name = f"{arch}_fpn"
    reject_extra_kwargs(name, kwargs)
    model = ResNetFPNEncoder(arch, output_dim)
    model.name = name
    if weights:
        load_weights(model, weights)
    return model


@ENCODERS.register("resnet18_fpn")
def resnet18_fpn(output_dim: int = 768, weights: str = "", **kwargs: Any) -> ResNetFPNEncoder:
    """ResNet-18 + FPN; ``imagenet`` loads the ResNet, the FPN starts random."""
    return _make("resnet18", output_dim, weights, kwargs)


@ENCODERS.register("resnet50_fpn")
def resnet50_fpn(output_dim: int = 768, weights: str = "", **kwargs: Any) -> ResNetFPNEncoder:
    """ResNet-50 + FPN; ``imagenet`` loads the ResNet, the FPN starts random."""
    return _make("resnet50", output_dim, weights, kwargs)
