"""U-Net metric depth network on a torchvision encoder (registered as ``unet``).

The seed's depth "network" was three strided convolutions and three transposed
ones with no skip connections and a sigmoid output in no unit. This one takes
the feature stages of a torchvision classifier (strides 2, 4, 8, 16, 32), a
decoder that upsamples and concatenates the encoder stage of the same stride at
every level (U-Net), and a bounded head that outputs metres:
``min_depth_m + (max_depth_m - min_depth_m) * sigmoid(logit)``.

Weights: ``weights=""`` random, or a file written by :func:`save_unet_weights`
(or a plain ``state_dict()``), as produced by
``python -m robot_vision_ros.tools.train_depth``. With ``weights=""`` the
encoder alone may start from ImageNet weights: ``encoder_weights="imagenet"``
(torchvision's file in the local torch cache) or a path to such a file.
Nothing is ever downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from ...core.errors import ConfigError, WeightsError
from ..registry import DEPTH_MODELS
from ..weights import load_checkpoint, torch_cache_path
from .base import DepthModel

TRAIN_TOOL = "python -m robot_vision_ros.tools.train_depth"

# name -> (torchvision constructor, ImageNet weights enum entry)
_ENCODERS: Dict[str, Tuple[Callable[..., nn.Module], Any]] = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "mobilenet_v2": (tvm.mobilenet_v2, tvm.MobileNet_V2_Weights.IMAGENET1K_V1),
}

# Slices of ``.features`` that end at strides 2, 4, 8, 16 and 32. The final
# 1x1 expansion convolutions (960 / 1280 channels) are left out: they only
# widen the classifier input and would make the deepest skip expensive.
_MOBILENET_SPLITS = {
    "mobilenet_v3_large": ((0, 2), (2, 4), (4, 7), (7, 13), (13, 16)),
    "mobilenet_v2": ((0, 2), (2, 4), (4, 7), (7, 14), (14, 18)),
}


def encoder_names() -> List[str]:
    """Encoders the ``unet`` depth model can be built on."""
    return sorted(_ENCODERS)


def imagenet_cache_path(encoder: str) -> Path:
    """Where torchvision's ImageNet file for ``encoder`` lies in the local torch cache."""
    return torch_cache_path(_ENCODERS[encoder][1].url)


def _encoder_backbone(encoder: str, encoder_weights: str) -> nn.Module:
    """The torchvision classifier, with ImageNet weights when asked (never downloaded)."""
    ctor, weights_enum = _ENCODERS[encoder]
    net = ctor(weights=None)
    if not encoder_weights:
        return net
    if encoder_weights == "imagenet":
        path = imagenet_cache_path(encoder)
        how = (f"copy torchvision's {path.name} (from {weights_enum.url}) there from a machine "
               f"with network, or point $TORCH_HOME at a cache that holds it")
    else:
        path = Path(encoder_weights).expanduser()
        how = f"pass a torchvision {encoder} state dict, 'imagenet' or ''"
    state = load_checkpoint(path, f"{encoder} encoder weights", how)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{path} is not a torchvision {encoder} state dict: {exc}") from exc
    return net


def _encoder_stages(encoder: str, net: nn.Module) -> nn.ModuleList:
    """The five feature stages (strides 2..32) of a torchvision classifier."""
    if encoder.startswith("resnet"):
        return nn.ModuleList([
            nn.Sequential(net.conv1, net.bn1, net.relu),
            nn.Sequential(net.maxpool, net.layer1),
            net.layer2, net.layer3, net.layer4,
        ])
    return nn.ModuleList([net.features[a:b] for a, b in _MOBILENET_SPLITS[encoder]])


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate it, two 3x3 conv-BN-ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(_conv_bn_relu(c_in + c_skip, c_out),
                                   _conv_bn_relu(c_out, c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None,
                size: Tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNetDepth(DepthModel):
    """Encoder-decoder with skips from every encoder stage; metric output in metres."""

    size_multiple = 32

    def __init__(self, encoder: str = "resnet18", encoder_weights: str = "",
                 min_depth_m: float = 0.1, max_depth_m: float = 10.0,
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)) -> None:
        super().__init__(output_kind="metric")
        if encoder not in _ENCODERS:
            raise ConfigError(f"unknown unet encoder {encoder!r}; known: "
                              f"{', '.join(encoder_names())}")
        if not 0.0 < min_depth_m < max_depth_m:
            raise ConfigError(f"need 0 < min_depth_m < max_depth_m, got {min_depth_m} and "
                              f"{max_depth_m}")
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != 5 or min(decoder_channels) < 1:
            raise ConfigError(f"decoder_channels needs 5 positive widths, got {decoder_channels}")
        self.encoder_name = encoder
        self.min_depth_m = float(min_depth_m)
        self.max_depth_m = float(max_depth_m)
        self.stages = _encoder_stages(encoder, _encoder_backbone(encoder, encoder_weights))
        skip_channels = self._stage_channels()
        blocks = []
        c_in = skip_channels[-1]
        # Skips at strides 16, 8, 4, 2, then a last block at full resolution without one.
        for c_skip, c_out in zip(list(reversed(skip_channels[:-1])) + [0], decoder_channels):
            blocks.append(DecoderBlock(c_in, c_skip, c_out))
            c_in = c_out
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c_in, 1, 3, padding=1)

    @property
    def config(self) -> Dict[str, Any]:
        """What a weights file must match (stored by :func:`save_unet_weights`)."""
        return {"encoder": self.encoder_name, "min_depth_m": self.min_depth_m,
                "max_depth_m": self.max_depth_m}

    def _stage_channels(self) -> List[int]:
        with torch.no_grad():
            x = torch.zeros(1, 3, 64, 64)
            channels = []
            for stage in self.stages:
                x = stage(x)
                channels.append(int(x.shape[1]))
        return channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depth in metres ``[B, 1, H, W]`` of a normalised batch ``[B, 3, H, W]``."""
        self.check_input(x)
        skips = []
        feat = x
        for stage in self.stages:
            feat = stage(feat)
            skips.append(feat)
        out = skips.pop()
        for block in self.decoder:
            skip = skips.pop() if skips else None
            size = skip.shape[-2:] if skip is not None else x.shape[-2:]
            out = block(out, skip, (int(size[0]), int(size[1])))
        logit = self.head(out)
        return self.min_depth_m + (self.max_depth_m - self.min_depth_m) * torch.sigmoid(logit)


def save_unet_weights(model: UNetDepth, path: str | os.PathLike) -> None:
    """Write the state dict with the config it needs, readable by ``weights=PATH``."""
    torch.save({"config": model.config, "state_dict": model.state_dict()}, path)


def load_unet_weights(model: UNetDepth, path: str | os.PathLike) -> None:
    """Load a file from :func:`save_unet_weights` (or a plain state dict) into ``model``."""
    path = Path(path).expanduser()
    checkpoint = load_checkpoint(path, "unet depth weights",
                            f"it is produced by `{TRAIN_TOOL}` (or set weights: '' for a "
                            f"randomly initialised network)")
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    state = checkpoint.get("state_dict", checkpoint)
    saved_config = checkpoint.get("config")
    if isinstance(saved_config, dict):
        differ = {k: (v, model.config.get(k)) for k, v in saved_config.items()
                  if k in model.config and model.config[k] != v}
        if differ:
            details = ", ".join(f"{k}={saved!r} in the file but {mine!r} here"
                                for k, (saved, mine) in differ.items())
            raise WeightsError(f"{path} was trained with another configuration: {details}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{path} does not fit unet({model.encoder_name}): {exc}") from exc


@DEPTH_MODELS.register("unet")
def unet(encoder: str = "resnet18", weights: str = "", encoder_weights: str = "",
         min_depth_m: float = 0.1, max_depth_m: float = 10.0,
         decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)) -> UNetDepth:
    """U-Net metric depth: ``weights`` is '' (random) or a trained file.

    ``encoder_weights`` ('' | 'imagenet' | PATH) only applies with ``weights=""``:
    a trained file replaces every parameter anyway.
    """
    if weights == "imagenet":
        raise ConfigError("unet has no ImageNet depth weights: use weights='' with "
                          "encoder_weights='imagenet', or a file trained by "
                          f"`{TRAIN_TOOL}`")
    model = UNetDepth(encoder=encoder, encoder_weights="" if weights else encoder_weights,
                      min_depth_m=min_depth_m, max_depth_m=max_depth_m,
                      decoder_channels=decoder_channels)
    model.name = "unet"
    if weights:
        load_unet_weights(model, weights)
    return model
