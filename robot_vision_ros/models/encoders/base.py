"""The interface every vision encoder of the zoo shares.

An encoder maps a normalised image batch ``[B, 3, H, W]`` (and, for RGB-D
encoders, depth ``[B, 1, H, W]`` in metres) to:

* ``forward_features(x)``: the backbone's native, unpooled features
  (``[B, C, h, w]`` for CNNs, ``[B, 1 + N, C]`` tokens for ViTs, as in timm);
* ``forward(x)``: a pooled vector ``[B, output_dim]``;
* ``encode(x)``: an :class:`EncoderOutput` with the pooled vector and the
  spatial (or slot) tokens, all projected to ``output_dim``, plus where each
  token sits in the image. This is what the node publishes.

``output_dim == 0`` means no projection: the backbone's native width
(``native_dim``) is published. Any other value adds a ``Linear(native_dim,
output_dim)`` shared by the pooled vector and the tokens.

Input normalisation: RGB in [0, 1] after ``/ 255``, then ``(x - mean) / std``
with the encoder's ``mean``/``std`` (ImageNet statistics for every encoder of
the zoo). :mod:`robot_vision_ros.core.preprocess` applies it on the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from ...core.errors import ConfigError

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

#: ``token_level`` of the pooled row.
LEVEL_POOLED = 0
#: ``token_level`` of object-slot rows (no image position).
LEVEL_SLOT = 255


@dataclass(frozen=True)
class EncoderOutput:
    """Pooled vector and tokens of one batch, checked at construction.

    ``pooled``: ``[B, D]``. ``tokens``: ``[B, N, D]`` (N may be 0).
    ``token_uv``: ``[N, 2]`` token centres as fractions of the input width and
    height (0..1, so they survive any resize), NaN for slot tokens.
    ``token_level``: ``[N]`` int64, 1 = the coarsest/only spatial grid, 2.. =
    finer pyramid levels, ``LEVEL_SLOT`` for object slots.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    token_uv: torch.Tensor
    token_level: torch.Tensor

    def __post_init__(self) -> None:
        if self.pooled.dim() != 2:
            raise ValueError(f"pooled must be [B, D], got {tuple(self.pooled.shape)}")
        b, d = self.pooled.shape
        if self.tokens.dim() != 3 or self.tokens.shape[0] != b or self.tokens.shape[2] != d:
            raise ValueError(
                f"tokens must be [B={b}, N, D={d}], got {tuple(self.tokens.shape)}")
        n = self.tokens.shape[1]
        if tuple(self.token_uv.shape) != (n, 2):
            raise ValueError(f"token_uv must be [N={n}, 2], got {tuple(self.token_uv.shape)}")
        if tuple(self.token_level.shape) != (n,):
            raise ValueError(f"token_level must be [N={n}], got {tuple(self.token_level.shape)}")

    @property
    def output_dim(self) -> int:
        return int(self.pooled.shape[1])


def grid_token_geometry(h: int, w: int, level: int = 1,
                        device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Centres (``[h*w, 2]`` as u, v fractions, row-major) and levels of an h x w grid."""
    v = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
    u = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    uv = torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=1)
    levels = torch.full((h * w,), level, dtype=torch.int64, device=device)
    return uv, levels


class VisionEncoder(nn.Module):
    """Base class: subclasses set ``native_dim`` and implement the two hooks.

    Subclasses implement ``forward_features`` and ``_pool_and_tokens`` (native
    width); the base adds the optional projection, ``forward`` and ``encode``.
    """

    #: Registry name, set by the factory.
    name: str = ""
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    #: Whether ``encode``/``forward`` use a depth input.
    uses_depth: bool = False
    #: Input height and width must be multiples of this.
    size_multiple: int = 32

    def __init__(self, native_dim: int, output_dim: int = 768) -> None:
        super().__init__()
        if output_dim < 0:
            raise ConfigError(f"output_dim must be >= 0 (0 = native width), got {output_dim}")
        self.native_dim = int(native_dim)
        self.output_dim = int(output_dim) if output_dim else int(native_dim)
        self.proj: nn.Module = (nn.Linear(native_dim, output_dim) if output_dim
                                else nn.Identity())

    # -- hooks for subclasses -------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Native unpooled features of a normalised batch."""
        raise NotImplementedError

    def _pool_and_tokens(self, x: torch.Tensor, depth: Optional[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Native-width ``(pooled [B,C], tokens [B,N,C], uv [N,2], level [N])``."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ConfigError for a batch this encoder cannot take."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"{self.name or type(self).__name__} expects [B, 3, H, W], "
                              f"got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ConfigError(f"{self.name or type(self).__name__} needs H and W multiples "
                              f"of {self.size_multiple}, got {h}x{w}")

    def encode(self, x: torch.Tensor, depth: Optional[torch.Tensor] = None) -> EncoderOutput:
        """Pooled vector and tokens, projected to ``output_dim``."""
        self.check_input(x)
        pooled, tokens, uv, level = self._pool_and_tokens(x, depth)
        return EncoderOutput(pooled=self.proj(pooled), tokens=self.proj(tokens),
                             token_uv=uv, token_level=level)

    def forward(self, x: torch.Tensor, depth: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pooled vector ``[B, output_dim]``."""
        return self.encode(x, depth).pooled
