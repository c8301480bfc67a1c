"""Real frames for calibration, fine-tuning and fidelity checks.

``load_calibration_frames`` reads a folder of images, a video file, an
``.npz`` of uint8 frames or a ROS 2 bag (its colour image topic, read with
``rosbags``: no ROS needed) and returns them as one normalised batch, squashed
to the model input size the same way the node's preprocessing does
(antialiased bilinear, no crop), so calibration sees what the node will feed
the model. The keyword ``live`` (:data:`LIVE`) is not read here: the node
collects the frames it processes instead (see :mod:`.live`).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..core.bag_colour import decode_bag_image, read_colour_messages, split_bag_topic
from ..core.errors import ConfigError
from ..models.encoders.base import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp",
                                   ".ppm", ".pgm")
VIDEO_SUFFIXES: Tuple[str, ...] = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg",
                                   ".mpeg")
BAG_SUFFIXES: Tuple[str, ...] = (".db3", ".mcap")
#: ``compression.calibration`` keyword: calibrate on the first frames the node processes.
LIVE = "live"
KEYWORDS: Tuple[str, ...] = (LIVE,)
#: Colour image message types a bag topic may carry.


def _check_size(size_hw: Sequence[int]) -> Tuple[int, int]:
    if (len(size_hw) != 2 or not all(isinstance(v, (int, np.integer)) for v in size_hw)
            or min(size_hw) <= 0):
        raise ConfigError(f"size_hw must be two positive ints (height, width), got {size_hw!r}")
    return int(size_hw[0]), int(size_hw[1])


def even_indices(total: int, count: int) -> List[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them if fewer)."""
    if count >= total:
        return list(range(total))
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, count)})


def image_files(folder: Path) -> List[Path]:
    """Image files of ``folder`` (not recursive), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_folder(folder: Path, count: int) -> List[np.ndarray]:
    files = image_files(folder)
    if not files:
        raise ConfigError(f"calibration folder {folder} holds no images "
                          f"({', '.join(IMAGE_SUFFIXES)})")
    frames = []
    for index in even_indices(len(files), count):
        bgr = cv2.imread(str(files[index]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ConfigError(f"calibration image {files[index]} cannot be decoded")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


def read_video_frames(path: Path, count: int) -> List[np.ndarray]:
    """``count`` RGB frames spread evenly over the video at ``path``.

    Frames are grabbed sequentially (seeking is frame-inexact for many codecs)
    and only the chosen ones decoded.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ConfigError(f"calibration video {path} cannot be opened by OpenCV")
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(even_indices(total, count)) if total > 0 else None
        frames: List[np.ndarray] = []
        index = 0
        while capture.grab():
            if wanted is None or index in wanted:
                ok, bgr = capture.retrieve()
                if ok:
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
            if wanted is None and len(frames) >= count:
                break
            if wanted is not None and index > max(wanted):
                break
    finally:
        capture.release()
    if not frames:
        raise ConfigError(f"calibration video {path} has no readable frames")
    return frames


def _read_npz(path: Path, count: int) -> List[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if not keys:
                raise ConfigError(f"calibration file {path} holds no arrays")
            array = data["frames"] if "frames" in keys else data[keys[0]]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"calibration file {path} is not a readable .npz "
                          f"({type(exc).__name__}: {exc})") from exc
    if array.ndim == 3:
        array = array[None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or len(array) == 0:
        raise ConfigError(f"calibration file {path} must hold uint8 RGB frames [N, H, W, 3], "
                          f"got {array.dtype} {tuple(array.shape)}")
    return [array[i] for i in even_indices(len(array), count)]


def is_bag(path: Path) -> bool:
    """A ROS 2 bag: a directory with ``metadata.yaml``, or one ``.db3``/``.mcap`` file."""
    return ((path.is_dir() and (path / "metadata.yaml").is_file())
            or path.suffix.lower() in BAG_SUFFIXES)


def read_bag_frames(source: str, count: int) -> List[np.ndarray]:
    """Up to ``count`` RGB frames spread evenly over a ROS 2 bag's colour topic.

    ``source``: the bag directory (or one of its ``.db3``/``.mcap`` files),
    optionally ``#TOPIC``; without a topic the bag's only colour
    (``sensor_msgs/Image`` or ``CompressedImage``, not depth) topic is used.
    Only the chosen messages are decoded.
    """
    from ..core.errors import InputError

    path = Path(split_bag_topic(source)[0]).expanduser()
    if not path.exists():
        raise ConfigError(f"calibration bag {path} does not exist")
    topic, messages = read_colour_messages(source)
    frames: List[np.ndarray] = []
    for index in even_indices(len(messages), count):
        _, msgtype, msg = messages[index]
        try:
            frames.append(decode_bag_image(msg, msgtype))
        except InputError as exc:
            raise ConfigError(f"calibration bag {source}, topic {topic}: message {index} "
                              f"cannot be decoded: {exc}") from exc
    return frames


def read_frames(source: str, count: int) -> List[np.ndarray]:
    """Up to ``count`` uint8 RGB ``[H, W, 3]`` frames from a folder, video, ``.npz`` or bag."""
    if count <= 0:
        raise ConfigError(f"count must be > 0, got {count}")
    if not str(source):
        raise ConfigError("calibration source is empty: give a folder of images, a video "
                          "file, an .npz of uint8 frames, a ROS 2 bag or 'live'")
    if source == LIVE:
        raise ConfigError("calibration 'live' has no frames to read: the node collects the "
                          "first frames it processes (see compression.live)")
    path = Path(split_bag_topic(source)[0]).expanduser()
    suffix = path.suffix.lower()
    if "#" in source or is_bag(path):
        return read_bag_frames(source, count)
    if not path.exists():
        if "/" not in source and not suffix:
            raise ConfigError(f"unknown calibration keyword {source!r} (known: "
                              f"{', '.join(KEYWORDS)}) and no such file or folder")
        raise ConfigError(f"calibration source {path} does not exist (give a folder of "
                          f"images, a video file, an .npz of uint8 frames or a ROS 2 bag)")
    if path.is_dir():
        return _read_folder(path, count)
    if suffix == ".npz":
        return _read_npz(path, count)
    if suffix in VIDEO_SUFFIXES:
        return read_video_frames(path, count)
    raise ConfigError(f"calibration source {path} is neither a folder, a video "
                      f"({', '.join(VIDEO_SUFFIXES)}), an .npz nor a ROS 2 bag")


def normalise_frames(frames: Sequence[np.ndarray], size_hw: Sequence[int],
                     mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 RGB frames -> ``[N, 3, H, W]`` float32, resized and ``(x/255 - mean)/std``."""
    height, width = _check_size(size_hw)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    batch = []
    for frame in frames:
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
        if tuple(image.shape[-2:]) != (height, width):
            image = F.interpolate(image, size=(height, width), mode="bilinear",
                                  align_corners=False, antialias=True)
        batch.append(image)
    return (torch.cat(batch).div_(255.0) - mean_t) / std_t


def load_calibration_frames(source: str, count: int, size_hw: Sequence[int]) -> torch.Tensor:
    """``[N, 3, H, W]`` ImageNet-normalised frames (N <= count) from ``source``.

    ``source``: a folder of images, a video file (frames spread evenly over it),
    an ``.npz`` of uint8 RGB frames ``[N, H, W, 3]`` (key ``frames`` or the
    first array) or a ROS 2 bag (see :func:`read_bag_frames`). Raises
    ConfigError naming the path when it is missing, empty or unreadable.
    """
    _check_size(size_hw)
    return normalise_frames(read_frames(source, count), size_hw)
