"""Built-in class-name lists and ``load_class_names`` for labels given by the user.

``class_ids`` in :class:`~robot_vision_ros.core.detections.Detections` index
into a detector's ``class_names``. Two COCO conventions exist in the wild:

* ``COCO_91``: the 91-slot list of torchvision and the TF object-detection API
  (``0 = '__background__'``, 1-based ids, ``'N/A'`` for the ids COCO skips);
* ``COCO_80``: the contiguous 0-based list of YOLO exports.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

from ...core.errors import ConfigError

#: torchvision's COCO category list (``weights.meta["categories"]``), 91 entries.
COCO_91: List[str] = [
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]

#: The 80 YOLO class names: the same names in the same order, without the gaps.
COCO_80: List[str] = [name for name in COCO_91 if name not in ("__background__", "N/A")]

_BUILT_IN = {"coco": COCO_91, "coco91": COCO_91, "coco80": COCO_80}

ClassNamesSpec = Union[None, str, Path, Sequence[str]]


def load_class_names(spec: ClassNamesSpec) -> Optional[List[str]]:
    """Class names from ``spec``; ``None`` (or empty) means "the model's default".

    ``spec`` is a list of names, a built-in list name (``coco``/``coco91``,
    ``coco80``) or the path of a labels file with one name per line (blank
    lines at the end are ignored; a blank line inside would shift every id
    after it, so it is an error).
    """
    if spec is None:
        return None
    if isinstance(spec, (str, Path)):
        text = str(spec).strip()
        if not text:
            return None
        if text.lower() in _BUILT_IN:
            return list(_BUILT_IN[text.lower()])
        return _read_labels_file(Path(text))
    names = list(spec)
    if not names:
        return None
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"class_names[{i}] must be a non-empty string, got {name!r}")
    return [name.strip() for name in names]


def _read_labels_file(path: Path) -> List[str]:
    if not path.is_file():
        raise ConfigError(f"class_names: labels file {path} does not exist (give a file with "
                          f"one class name per line, a list of names, or one of "
                          f"{', '.join(sorted(_BUILT_IN))})")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ConfigError(f"class_names: labels file {path} has a blank line {number}; "
                              "each line is one class id")
    if not lines:
        raise ConfigError(f"class_names: labels file {path} is empty")
    return [line.strip() for line in lines]


def default_names(num_classes: int) -> List[str]:
    """COCO-80 for an 80-class model, COCO-91 for a 91-class one, else ``class_<i>``."""
    if num_classes == len(COCO_80):
        return list(COCO_80)
    if num_classes == len(COCO_91):
        return list(COCO_91)
    return [f"class_{i}" for i in range(num_classes)]
