"""The interface every depth model of the zoo shares, and its training loss.

A depth model maps a normalised image batch ``[B, 3, H, W]`` (RGB in [0, 1]
after ``/ 255``, then ``(x - mean) / std``) to one channel ``[B, 1, H, W]`` at
the input resolution. What that channel means is ``output_kind``:

* ``'metric'``: depth in metres (``is_metric`` is True);
* ``'relative_depth'``: depth up to an unknown scale and shift;
* ``'relative_disparity'``: inverse depth up to an unknown scale and shift
  (what Depth Anything's relative models predict).

Relative outputs become metres only after alignment to sensor depth
(:func:`robot_vision_ros.core.depth_fusion.fuse_depth`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ...core.errors import ConfigError, InputError

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

OUTPUT_KINDS = ("metric", "relative_depth", "relative_disparity")


class DepthModel(nn.Module):
    """Base class: subclasses set ``output_kind`` and implement ``forward``."""

    #: Registry name, set by the factory.
    name: str = ""
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    #: Preferred multiple of the input height and width (others are resized inside).
    size_multiple: int = 32

    def __init__(self, output_kind: str) -> None:
        super().__init__()
        if output_kind not in OUTPUT_KINDS:
            raise ConfigError(f"output_kind must be one of {', '.join(OUTPUT_KINDS)}, "
                              f"got {output_kind!r}")
        self.output_kind = output_kind

    @property
    def is_metric(self) -> bool:
        """True when ``forward`` returns metres."""
        return self.output_kind == "metric"

    def check_input(self, x: torch.Tensor) -> None:
        """Raise InputError (reason ``bad_size``) for a batch this model cannot take."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[0] == 0:
            raise InputError(f"{self.name or type(self).__name__} expects [B, 3, H, W], "
                             f"got {tuple(x.shape)}", reason="bad_size")
        if min(x.shape[-2:]) < 2:
            raise InputError(f"{self.name or type(self).__name__} needs an image of at least "
                             f"2x2 pixels, got {x.shape[-2]}x{x.shape[-1]}", reason="bad_size")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``[B, 1, H, W]`` prediction at the input resolution."""
        raise NotImplementedError


def scale_invariant_log_loss(pred_m: torch.Tensor, target_m: torch.Tensor,
                             valid_mask: Optional[torch.Tensor] = None,
                             lam: float = 0.85, eps: float = 1e-6) -> torch.Tensor:
    """Scale-invariant log loss of Eigen et al. (2014), averaged over the batch.

    Per image, with ``d = log(pred) - log(target)`` over the valid pixels:
    ``mean(d^2) - lam * mean(d)^2``. ``lam = 1`` ignores a global scale of the
    prediction entirely, ``lam = 0`` is the plain log MSE; 0.85 is the usual
    compromise (BTS, AdaBins). Valid pixels are ``valid_mask`` (if given) and a
    finite, positive target; images without one contribute zero.
    Shapes: ``[B, 1, H, W]`` or ``[B, H, W]``, all the same.
    """
    if pred_m.shape != target_m.shape:
        raise InputError(f"prediction {tuple(pred_m.shape)} and target "
                         f"{tuple(target_m.shape)} differ in shape", reason="bad_size")
    valid = torch.isfinite(target_m) & (target_m > 0)
    if valid_mask is not None:
        if valid_mask.shape != target_m.shape:
            raise InputError(f"valid_mask {tuple(valid_mask.shape)} does not match target "
                             f"{tuple(target_m.shape)}", reason="bad_size")
        valid = valid & valid_mask.bool()
    # torch.where keeps NaN/zero targets out of log() so they cannot poison the gradient.
    safe_target = torch.where(valid, target_m, torch.ones_like(target_m))
    diff = torch.log(pred_m.clamp_min(eps)) - torch.log(safe_target)
    diff = torch.where(valid, diff, torch.zeros_like(diff))
    dims = tuple(range(1, diff.dim()))
    count = valid.sum(dim=dims).to(diff.dtype)
    has_pixels = count > 0
    count = count.clamp_min(1.0)
    mean_sq = (diff ** 2).sum(dim=dims) / count
    mean = diff.sum(dim=dims) / count
    per_image = (mean_sq - lam * mean ** 2) * has_pixels.to(diff.dtype)
    return per_image.sum() / has_pixels.sum().clamp_min(1).to(diff.dtype)
