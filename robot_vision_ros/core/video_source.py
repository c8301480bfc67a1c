"""Frames from a video file, an image folder or a camera device (OpenCV), as RGB."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
import yaml

from .errors import ConfigError, InputError
from .frames import CameraIntrinsics

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class VideoSource:
    """Sequential RGB frames from ``spec``: a video path, a folder of images, or a device index.

    ``read()`` returns ``[H, W, 3]`` uint8 RGB or None at the end; ``rewind()``
    starts again (not possible for a live device).
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._files: List[Path] = []
        self._index = 0
        self._cap: Optional[cv2.VideoCapture] = None
        path = Path(spec)
        if spec.isdigit():
            self._cap = cv2.VideoCapture(int(spec))
            if not self._cap.isOpened():
                raise ConfigError(f"cannot open camera device {spec}")
        elif path.is_dir():
            self._files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        elif path.is_file():
            self._cap = cv2.VideoCapture(str(path))
            if not self._cap.isOpened():
                raise ConfigError(f"OpenCV cannot open video {path}")
        else:
            raise ConfigError(f"video source {spec!r} is neither a file, a folder nor a "
                              "device index")
        first = self._peek()
        self.height, self.width = first.shape[:2]
        fps = self._cap.get(cv2.CAP_PROP_FPS) if self._cap is not None else 0.0
        self.fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else 30.0

    def _peek(self) -> np.ndarray:
        frame = self.read()
        if frame is None:
            raise ConfigError(f"video source {self.spec!r} has no readable frame")
        self.rewind()
        return frame

    def __len__(self) -> int:
        if self._files:
            return len(self._files)
        return int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self._cap is not None else 0

    def read(self) -> Optional[np.ndarray]:
        """Next frame as RGB, or None at the end."""
        if self._files:
            if self._index >= len(self._files):
                return None
            path = self._files[self._index]
            self._index += 1
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise InputError(f"cannot decode image {path}", reason="bad_image")
        else:
            ok, bgr = self._cap.read()
            if not ok:
                return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def rewind(self) -> None:
        self._index = 0
        if self._cap is not None:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)


def pinhole_guess(width: int, height: int, hfov_deg: float = 60.0) -> CameraIntrinsics:
    """Intrinsics of an ideal pinhole with the given horizontal field of view."""
    f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return CameraIntrinsics(f, f, (width - 1) / 2, (height - 1) / 2, width, height)


def load_camera_info_yaml(path: str) -> CameraIntrinsics:
    """Intrinsics from a ROS ``camera_calibration`` YAML (camera_matrix, image size)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        k = data["camera_matrix"]["data"]
        return CameraIntrinsics(float(k[0]), float(k[4]), float(k[2]), float(k[5]),
                                int(data["image_width"]), int(data["image_height"]))
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot read camera calibration {path}: {exc!r}") from exc


def is_rgbd_recording(spec: str) -> bool:
    """A ROS 2 bag directory or a folder with ``rgb/`` and ``depth/`` (see ``rgbd_dataset``)."""
    path = Path(spec)
    return path.is_dir() and ((path / "metadata.yaml").is_file()
                              or ((path / "rgb").is_dir() and (path / "depth").is_dir()))


class RgbdSource:
    """Sequential ``(rgb, depth_m)`` pairs of an RGB-D recording or bag, as a camera plays it.

    ``fps`` comes from the recording's stamps (30 when it has none).
    """

    def __init__(self, spec: str, rgb_topic: str = "", depth_topic: str = "") -> None:
        from .rgbd_dataset import RgbdRecording

        self.spec = spec
        self._recording = RgbdRecording.open(spec, rgb_topic, depth_topic)
        if len(self._recording) == 0:
            raise ConfigError(f"RGB-D recording {spec} has no frames")
        self._index = 0
        first = self._recording[0]
        self.height, self.width = first.rgb.shape[:2]
        stamps = np.asarray(self._recording.stamps_ns, dtype=np.float64)
        steps = np.diff(stamps)
        steps = steps[steps > 0]
        self.fps = float(1e9 / np.median(steps)) if len(steps) else 30.0

    def __len__(self) -> int:
        return len(self._recording)

    def read(self):
        """Next ``(rgb, depth_m)``, or None at the end."""
        if self._index >= len(self._recording):
            return None
        sample = self._recording[self._index]
        self._index += 1
        return sample.rgb, sample.depth_m

    def rewind(self) -> None:
        self._index = 0


def is_bag(spec: str) -> bool:
    """A ROS 2 bag directory (it holds ``metadata.yaml``)."""
    return (Path(spec.partition("#")[0]) / "metadata.yaml").is_file()


class BagColourSource:
    """The colour frames of a ROS 2 bag without depth, as a camera plays them.

    ``spec``: the bag directory, optionally ``#TOPIC`` (``rgb_topic`` also
    names it); without one the bag's only colour Image/CompressedImage topic.
    Messages are held in memory and decoded as they are read; ``fps`` comes
    from their stamps (30 when they have none).
    """

    def __init__(self, spec: str, rgb_topic: str = "") -> None:
        from .bag_colour import decode_bag_image, read_colour_messages

        self.spec = spec
        location = spec.partition("#")[0]
        self.topic, self._messages = read_colour_messages(
            f"{location}#{rgb_topic}" if rgb_topic else spec)
        self._decode = decode_bag_image
        self._index = 0
        first = self._decode(self._messages[0][2], self._messages[0][1])
        self.height, self.width = first.shape[:2]
        steps = np.diff(np.asarray([m[0] for m in self._messages], dtype=np.float64))
        steps = steps[steps > 0]
        self.fps = float(1e9 / np.median(steps)) if len(steps) else 30.0

    def __len__(self) -> int:
        return len(self._messages)

    def read(self) -> Optional[np.ndarray]:
        """Next RGB frame, or None at the end (InputError for an undecodable one)."""
        if self._index >= len(self._messages):
            return None
        _, msgtype, msg = self._messages[self._index]
        self._index += 1
        return self._decode(msg, msgtype)

    def rewind(self) -> None:
        self._index = 0
