"""torchvision's COCO detectors behind the common :class:`Detector` interface.

Models are always built with ``weights=None, weights_backbone=None`` so that
nothing downloads; weights come from the ``weights`` argument:

* ``""``: random initialisation (for tests and training from scratch);
* ``"coco"``: torchvision's own COCO file, looked up in the local torch cache
  ``torch.hub.get_dir()/checkpoints/<file name of the Weights enum URL>``;
* any other string: a state-dict file loaded with ``weights_only=True``.

The models resize and normalise internally and return boxes in pixels of the
image they were given, so the box transform back is the identity.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import nn
from torchvision.models import detection as tvd

from ...core.detections import Detections
from ...core.errors import ConfigError, WeightsError
from ..registry import DETECTORS
from ..weights import load_checkpoint, torch_cache_path
from .base import Detector, check_positive_int
from .decode import BoxTransform, postprocess
from .labels import COCO_91


@dataclass(frozen=True)
class _Spec:
    """How to build one torchvision detector and name its inference knobs."""

    builder: Callable[..., nn.Module]
    coco_weights: Any  # a torchvision WeightsEnum member
    min_size: int  # native shorter side (SSD: the fixed square size)
    max_size: int
    score_key: str
    nms_key: str
    max_det_key: str


_SPECS: Dict[str, _Spec] = {
    "ssdlite320_mobilenet_v3_large": _Spec(
        tvd.ssdlite320_mobilenet_v3_large, tvd.SSDLite320_MobileNet_V3_Large_Weights.COCO_V1,
        320, 320, "score_thresh", "nms_thresh", "detections_per_img"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": _Spec(
        tvd.fasterrcnn_mobilenet_v3_large_320_fpn,
        tvd.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1,
        320, 640, "box_score_thresh", "box_nms_thresh", "box_detections_per_img"),
    "retinanet_resnet50_fpn_v2": _Spec(
        tvd.retinanet_resnet50_fpn_v2, tvd.RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1,
        800, 1333, "score_thresh", "nms_thresh", "detections_per_img"),
    "fcos_resnet50_fpn": _Spec(
        tvd.fcos_resnet50_fpn, tvd.FCOS_ResNet50_FPN_Weights.COCO_V1,
        800, 1333, "score_thresh", "nms_thresh", "detections_per_img"),
}


def coco_weights_path(name: str) -> Path:
    """Where the local torch cache keeps torchvision's COCO weights of ``name``."""
    return torch_cache_path(_SPECS[name].coco_weights.url)


def _load_state_dict(model: nn.Module, path: Path, how_to_get: str) -> None:
    state = load_checkpoint(path, "weights", how_to_get)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # torchvision reference-training checkpoints
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise WeightsError(f"{path} does not fit the model: {exc}") from None
    # torchvision's COCO files come from FrozenBatchNorm2d models, which have
    # no num_batches_tracked; our BatchNorm2d starts that counter at 0 itself.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(f"{path} does not fit the model: missing keys {missing[:5]}"
                           f"{'...' if len(missing) > 5 else ''}, unexpected keys "
                           f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")


class TorchvisionDetector(Detector):
    """One of torchvision's detection models (see ``_SPECS`` for the names)."""

    def __init__(self, name: str, *, weights: str = "", input_size: Optional[int] = None,
                 **common) -> None:
        if name not in _SPECS:
            raise ConfigError(f"unknown torchvision detector {name!r}; known: "
                              f"{', '.join(sorted(_SPECS))}")
        super().__init__(**common)
        self.name = name
        spec = _SPECS[name]
        if not isinstance(weights, (str, Path)):
            raise ConfigError(f"weights must be '', 'coco' or a file path, got {weights!r}")
        weights = str(weights).strip()
        self._set_class_names(COCO_91)
        num_classes = len(self._class_names)
        if weights == "coco" and num_classes != len(COCO_91):
            raise ConfigError(f"weights='coco' predicts the {len(COCO_91)} COCO classes; "
                              f"class_names has {num_classes}")
        size = spec.min_size if input_size is None else check_positive_int("input_size",
                                                                           input_size)
        kwargs: Dict[str, Any] = {spec.score_key: self.score_threshold,
                                  spec.nms_key: self.nms_iou,
                                  spec.max_det_key: self.max_detections}
        if name.startswith("ssdlite"):
            self.input_hw = (size, size)
        else:
            kwargs.update(min_size=size, max_size=round(size * spec.max_size / spec.min_size))
            self.input_hw = (size, kwargs["max_size"])
        self.model = spec.builder(weights=None, weights_backbone=None, num_classes=num_classes,
                                  **kwargs)
        if name.startswith("ssdlite") and size != spec.min_size:
            # SSDlite hard-codes 320x320 in its builder; its transform takes any fixed size.
            self.model.transform.fixed_size = (size, size)
        if weights == "coco":
            url = spec.coco_weights.url
            _load_state_dict(self.model, coco_weights_path(name),
                             f"download {url} elsewhere and copy it there (the folder "
                             "follows $TORCH_HOME), or pass weights=<path>")
        elif weights:
            _load_state_dict(self.model, Path(weights),
                             "pass weights='' (random), 'coco' or an existing state-dict file")
        self.weights = weights
        self.model.eval().to(self.device)

    def _detect(self, rgb: np.ndarray) -> Detections:
        image = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).float().div_(255.0)
        with torch.inference_mode():
            out = self.model([image])[0]
        # Already NMSed by the model with our thresholds; postprocess re-applies
        # them (cheap) so every detector honours the same contract.
        return postprocess(out["boxes"], out["scores"], out["labels"],
                           BoxTransform.identity(rgb.shape[:2]), self.score_threshold,
                           self.nms_iou, self.max_detections)


def _factory(name: str) -> Callable[..., TorchvisionDetector]:
    return functools.partial(TorchvisionDetector, name)


for _name in _SPECS:
    DETECTORS.register(_name)(_factory(_name))
