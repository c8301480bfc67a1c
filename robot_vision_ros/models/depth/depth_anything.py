"""Depth Anything V2 through Hugging Face ``transformers``, from a local directory only.

Registered as ``depth_anything_v2``. ``weights`` is a directory as
``save_pretrained`` writes it (``config.json`` + ``model.safetensors``); it is
opened with ``local_files_only=True``, so no model id is ever fetched. To put
the real weights on a robot, on a machine with network run
``huggingface-cli download depth-anything/Depth-Anything-V2-Small-hf --local-dir DIR``
and copy ``DIR`` to the robot.

The relative checkpoints predict affine-invariant inverse depth
(``output_kind = 'relative_disparity'``); the metric ones
(``depth_estimation_type == 'metric'``) predict metres up to ``max_depth``.
``transformers`` is imported only when the model is built: the rest of the zoo
works without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import ConfigError, ModelError, WeightsError
from ..registry import DEPTH_MODELS
from .base import DepthModel

HF_MODEL_ID = "depth-anything/Depth-Anything-V2-Small-hf"
TRANSFORMERS_PIN = "transformers==5.23.0"

_HOW_TO_GET = (f"on a machine with network run `huggingface-cli download {HF_MODEL_ID} "
               f"--local-dir DIR` (or `save_pretrained(DIR)`), copy DIR to the robot and "
               f"set the depth model's weights to DIR")


class DepthAnythingV2(DepthModel):
    """Wraps a ``DepthAnythingForDepthEstimation``: resize to /14, run, resize back."""

    size_multiple = 14

    def __init__(self, network: nn.Module, input_size: int = 0) -> None:
        config = network.config
        metric = getattr(config, "depth_estimation_type", "relative") == "metric"
        super().__init__(output_kind="metric" if metric else "relative_disparity")
        if input_size < 0:
            raise ConfigError(f"input_size must be >= 0 (0 = keep the input size), "
                              f"got {input_size}")
        self.network = network
        self.patch_size = int(getattr(config, "patch_size", 14))
        self.size_multiple = self.patch_size
        self.input_size = int(input_size)
        self.max_depth_m = float(config.max_depth) if metric else None

    def network_size(self, h: int, w: int) -> Tuple[int, int]:
        """Resolution the ViT runs at: shorter side ``input_size`` (if set), multiples of 14."""
        scale = self.input_size / min(h, w) if self.input_size else 1.0
        p = self.patch_size
        return (max(p, int(round(h * scale / p)) * p), max(p, int(round(w * scale / p)) * p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]``: disparity (relative) or metres (metric) at the input size."""
        self.check_input(x)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        size = self.network_size(h, w)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out = self.network(pixel_values=x).predicted_depth.unsqueeze(1)
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out


def _check_directory(path: Path) -> None:
    if not path.is_dir():
        raise WeightsError(f"Depth Anything V2 weights directory {path} does not exist; "
                           f"{_HOW_TO_GET}")
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise WeightsError(f"Depth Anything V2 weights directory {path} lacks config.json "
                           f"and model.safetensors; {_HOW_TO_GET}")


def load_depth_anything(weights: str | Path) -> nn.Module:
    """The Hugging Face network saved in directory ``weights``, in eval mode."""
    if not str(weights):
        raise WeightsError(f"depth_anything_v2 needs weights: a local directory; {_HOW_TO_GET}")
    path = Path(weights).expanduser()
    _check_directory(path)
    try:
        from transformers import AutoModelForDepthEstimation
    except ImportError as exc:
        raise ModelError(f"depth_anything_v2 needs the transformers package "
                         f"(`pip install {TRANSFORMERS_PIN}`): {exc}") from exc
    try:
        network = AutoModelForDepthEstimation.from_pretrained(
            str(path), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise WeightsError(f"cannot load Depth Anything V2 from {path}: {exc}") from exc
    model_type = getattr(network.config, "model_type", "?")
    if model_type != "depth_anything":
        raise WeightsError(f"{path} holds a {model_type!r} model, not Depth Anything "
                           f"(model_type 'depth_anything'); {_HOW_TO_GET}")
    return network.eval()


@DEPTH_MODELS.register("depth_anything_v2")
def depth_anything_v2(weights: str = "", input_size: int = 0) -> DepthAnythingV2:
    """Depth Anything V2 from the local directory ``weights``.

    ``input_size``: shorter side the ViT runs at (518 is what the model was
    trained at; 0 keeps the input size, rounded to multiples of 14).
    """
    model = DepthAnythingV2(load_depth_anything(weights), input_size=input_size)
    model.name = "depth_anything_v2"
    return model
