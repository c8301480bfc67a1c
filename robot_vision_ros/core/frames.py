"""Typed data passed between the stages of one frame (numpy, shapes checked)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the RGB image: focal lengths and principal point in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled(self, width: int, height: int) -> "CameraIntrinsics":
        """Intrinsics of the same camera resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                                (self.cy + 0.5) * sy - 0.5, width, height)


@dataclass(frozen=True)
class RgbdFrame:
    """One synchronised input frame.

    ``rgb``: ``[H, W, 3]`` uint8 RGB. ``depth_m``: ``[H, W]`` float32 metres
    aligned to ``rgb`` (NaN = unknown) or None. ``stamp_ns``: capture time of
    the RGB image (ROS time, nanoseconds).
    """

    rgb: np.ndarray
    stamp_ns: int
    frame_id: str = ""
    depth_m: Optional[np.ndarray] = None
    intrinsics: Optional[CameraIntrinsics] = None

    def __post_init__(self) -> None:
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"rgb must be [H, W, 3] uint8, got {self.rgb.shape} {self.rgb.dtype}")
        if self.depth_m is not None:
            if self.depth_m.dtype != np.float32 or self.depth_m.shape != self.rgb.shape[:2]:
                raise ValueError(f"depth_m must be float32 {self.rgb.shape[:2]}, got "
                                 f"{self.depth_m.shape} {self.depth_m.dtype}")

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


@dataclass(frozen=True)
class FeatureResult:
    """Encoder output for one frame, ready to publish.

    ``pooled [D]`` float32; ``tokens [N, D]`` float32; ``token_uv_px [N, 2]``
    token centres in pixels of the source RGB image (NaN for object slots);
    ``token_level [N]`` uint32 (1.. spatial levels, 255 slots).
    """

    stamp_ns: int
    frame_id: str
    backbone: str
    pooled: np.ndarray
    tokens: np.ndarray
    token_uv_px: np.ndarray
    token_level: np.ndarray
    timings_ms: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pooled.ndim != 1:
            raise ValueError(f"pooled must be [D], got {self.pooled.shape}")
        d = self.pooled.shape[0]
        if self.tokens.ndim != 2 or self.tokens.shape[1] != d:
            raise ValueError(f"tokens must be [N, {d}], got {self.tokens.shape}")
        n = self.tokens.shape[0]
        if self.token_uv_px.shape != (n, 2) or self.token_level.shape != (n,):
            raise ValueError("token_uv_px / token_level do not match tokens")
