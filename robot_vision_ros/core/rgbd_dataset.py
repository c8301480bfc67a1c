"""RGB-D recordings as indexable (RGB, depth in metres) pairs, for training and evaluation.

:class:`RgbdRecording` reads three layouts (:meth:`RgbdRecording.open` picks
one from the path):

* **folder of images**: ``PATH/rgb/NAME.{png,jpg}`` with
  ``PATH/depth/NAME.png`` (16-bit, millimetres, 0 = unknown, what RealSense
  and ``ros2 bag`` exporters write) or ``PATH/depth/NAME.npy`` (float32
  metres, NaN = unknown), paired by ``NAME``, sorted by name;
* **npz files**: ``PATH/*.npz`` one frame each, or a single ``.npz`` file,
  with arrays ``rgb`` (``[H,W,3]`` or ``[N,H,W,3]`` uint8) and ``depth_m``
  (``[H,W]`` or ``[N,H,W]`` float metres); the pybullet cache is such a file;
* **ROS 2 bag** (a directory with ``metadata.yaml`` and ``.db3``/``.mcap``
  files) read through ``rosbags`` (no ROS needed): sensor_msgs/Image colour
  (rgb8, bgr8, rgba8, bgra8, mono8) and depth (16UC1, 32FC1) topics, paired
  one-to-one by nearest header stamp within ``slop_s``.

Every sample is ``rgb`` ``[H,W,3]`` uint8 and ``depth_m`` ``[H,W]`` float32
metres with NaN where unknown, aligned to the RGB size (nearest neighbour when
the depth image is smaller). Missing files, topics or pairs raise ConfigError
naming the path or topic.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from .errors import ConfigError, InputError
from .image_codec import COLOR_ENCODINGS, DEPTH_ENCODINGS, align_depth_to_rgb, decode_color, \
    decode_depth

ROSBAGS_PIN = "rosbags==0.11.9"
RGB_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_MSGTYPE = "sensor_msgs/msg/Image"

Loader = Callable[[], Tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class RgbdSample:
    """One recorded pair: RGB uint8 ``[H,W,3]``, depth float32 metres ``[H,W]`` (NaN unknown)."""

    rgb: np.ndarray
    depth_m: np.ndarray
    stamp_ns: int
    name: str


def _checked(rgb: np.ndarray, depth_m: np.ndarray, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """Validate dtypes and shapes; bring the depth to the RGB size and NaN convention."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"{where}: rgb must be [H, W, 3] uint8, got {rgb.shape} {rgb.dtype}",
                         reason="bad_size")
    if depth_m.ndim != 2 or depth_m.dtype.kind != "f":
        raise InputError(f"{where}: depth must be [H, W] float metres, got {depth_m.shape} "
                         f"{depth_m.dtype}", reason="bad_size")
    depth = depth_m.astype(np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    try:
        depth = align_depth_to_rgb(depth, rgb.shape[:2])
    except InputError as exc:
        raise InputError(f"{where}: {exc}", reason=exc.reason) from exc
    return np.ascontiguousarray(rgb), depth


class RgbdRecording(Sequence):
    """Indexable RGB-D pairs; ``recording[i]`` decodes frame ``i`` (an :class:`RgbdSample`)."""

    def __init__(self, source: str, loaders: List[Loader], names: List[str],
                 stamps_ns: List[int]) -> None:
        if not loaders:
            raise ConfigError(f"{source}: no RGB-D frames found")
        self.source = source
        self._loaders = loaders
        self.names = names
        self.stamps_ns = stamps_ns

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} of a recording with {len(self)} frames")
        index %= len(self)
        rgb, depth = self._loaders[index]()
        rgb, depth = _checked(rgb, depth, f"{self.source} frame {self.names[index]}")
        return RgbdSample(rgb, depth, self.stamps_ns[index], self.names[index])

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, rgb_topic: str = "", depth_topic: str = "",
             slop_s: float = 0.02) -> "RgbdRecording":
        """The recording at ``path``: a bag directory, an ``.npz`` file or a folder."""
        path = Path(path).expanduser()
        if not path.exists():
            raise ConfigError(f"RGB-D recording {path} does not exist")
        if path.is_file() and path.suffix == ".npz":
            return cls.from_npz(path)
        if path.is_dir() and (path / "metadata.yaml").is_file():
            return cls.from_bag(path, rgb_topic, depth_topic, slop_s)
        if path.is_file() and path.suffix in (".db3", ".mcap"):
            raise ConfigError(f"{path} is one file of a ROS 2 bag: pass the bag directory "
                              f"{path.parent} (the one holding metadata.yaml)")
        if path.is_dir():
            return cls.from_folder(path)
        raise ConfigError(f"{path} is neither a folder (rgb/ + depth/ or *.npz), an .npz "
                          f"file nor a ROS 2 bag directory")

    @classmethod
    def from_folder(cls, folder: str | Path) -> "RgbdRecording":
        """``folder/rgb/NAME.png|jpg`` + ``folder/depth/NAME.png|npy``, or ``folder/*.npz``."""
        folder = Path(folder)
        rgb_dir, depth_dir = folder / "rgb", folder / "depth"
        if not rgb_dir.is_dir():
            npz_files = sorted(folder.glob("*.npz"))
            if npz_files:
                return cls._from_npz_files(folder, npz_files)
            raise ConfigError(f"{folder} has no rgb/ folder and no .npz files; expected "
                              f"rgb/NAME.png + depth/NAME.png (16-bit mm) or NAME.npz files "
                              f"with 'rgb' and 'depth_m'")
        if not depth_dir.is_dir():
            raise ConfigError(f"{folder} has rgb/ but no depth/ folder ({depth_dir} is missing)")
        rgb_files = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in RGB_SUFFIXES)
        if not rgb_files:
            raise ConfigError(f"{rgb_dir} holds no .png/.jpg images")
        loaders, names = [], []
        for rgb_path in rgb_files:
            depth_path = next((depth_dir / (rgb_path.stem + s) for s in (".png", ".npy")
                               if (depth_dir / (rgb_path.stem + s)).is_file()), None)
            if depth_path is None:
                raise ConfigError(f"{rgb_path} has no depth image: expected "
                                  f"{depth_dir / (rgb_path.stem + '.png')} (16-bit mm) or "
                                  f"{depth_dir / (rgb_path.stem + '.npy')} (float metres)")
            loaders.append(_image_pair_loader(rgb_path, depth_path))
            names.append(rgb_path.stem)
        return cls(str(folder), loaders, names, [0] * len(names))

    @classmethod
    def _from_npz_files(cls, folder: Path, files: List[Path]) -> "RgbdRecording":
        loaders = [_npz_loader(f) for f in files]
        return cls(str(folder), loaders, [f.stem for f in files], [0] * len(files))

    @classmethod
    def from_npz(cls, path: str | Path) -> "RgbdRecording":
        """One ``.npz`` with ``rgb`` and ``depth_m``, single (``[H,W,...]``) or stacked."""
        path = Path(path)
        rgb, depth = _read_npz(path)
        if rgb.ndim == 3:
            return cls(str(path), [lambda: (rgb, depth)], [path.stem], [0])
        # Stacked: the arrays stay in memory rather than re-reading the zip per frame.
        if rgb.ndim != 4 or depth.ndim != 3 or depth.shape[0] != rgb.shape[0]:
            raise ConfigError(f"{path}: rgb {rgb.shape} and depth_m {depth.shape} do not "
                              f"stack the same number of frames")
        loaders = [(lambda i=i: (rgb[i], depth[i])) for i in range(rgb.shape[0])]
        return cls(str(path), loaders, [f"{path.stem}[{i}]" for i in range(rgb.shape[0])],
                   [0] * rgb.shape[0])

    @classmethod
    def from_bag(cls, bag: str | Path, rgb_topic: str, depth_topic: str,
                 slop_s: float = 0.02) -> "RgbdRecording":
        """Pairs of a ROS 2 bag's colour and depth Image topics (nearest stamps, one-to-one).

        The encoded messages are held in memory (about 5 bytes a pixel for rgb8
        + 16UC1) and decoded per access.
        """
        bag = Path(bag)
        if not rgb_topic or not depth_topic:
            raise ConfigError(f"{bag} is a ROS 2 bag: give both the RGB and the depth topic "
                              f"(--bag-rgb-topic, --bag-depth-topic)")
        if slop_s < 0:
            raise ConfigError(f"slop_s must be >= 0, got {slop_s}")
        rgb_msgs, depth_msgs = _read_bag_images(bag, rgb_topic, depth_topic)
        pairs = pair_by_stamp([m[0] for m in rgb_msgs], [m[0] for m in depth_msgs], slop_s)
        if not pairs:
            raise ConfigError(f"{bag}: none of the {len(rgb_msgs)} {rgb_topic} and "
                              f"{len(depth_msgs)} {depth_topic} messages are within "
                              f"{slop_s} s of each other; raise the slop or check the stamps")
        loaders = [_bag_loader(rgb_msgs[i][1], depth_msgs[j][1]) for i, j in pairs]
        stamps = [rgb_msgs[i][0] for i, _ in pairs]
        return cls(str(bag), loaders, [f"{rgb_topic}@{s}" for s in stamps], stamps)


# --- folders and npz -------------------------------------------------------------------------
def _image_pair_loader(rgb_path: Path, depth_path: Path) -> Loader:
    def load() -> Tuple[np.ndarray, np.ndarray]:
        bgr = cv2.imread(str(rgb_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ConfigError(f"cannot read image {rgb_path}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), read_depth_file(depth_path)
    return load


def read_depth_file(path: Path) -> np.ndarray:
    """A depth image file as float32 metres: 16-bit PNG millimetres or ``.npy`` metres."""
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read depth {path}: {exc}") from exc
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ConfigError(f"cannot read depth image {path}")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ConfigError(f"depth image {path} must be single-channel 16-bit millimetres, got "
                          f"{raw.dtype} with shape {raw.shape}")
    depth = raw.astype(np.float32) * np.float32(0.001)
    depth[raw == 0] = np.nan
    return depth


def _read_npz(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("rgb", "depth_m") if k not in data.files]
            if missing:
                raise ConfigError(f"{path} lacks array(s) {missing}; it has {data.files}")
            return data["rgb"], data["depth_m"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _npz_loader(path: Path) -> Loader:
    def load() -> Tuple[np.ndarray, np.ndarray]:
        return _read_npz(path)
    return load


# --- bags ------------------------------------------------------------------------------------
_RawImage = Tuple[str, int, int, int, int, bytes]  # encoding, height, width, step, bigendian, data


def _read_bag_images(bag: Path, rgb_topic: str, depth_topic: str
                     ) -> Tuple[List[Tuple[int, _RawImage]], List[Tuple[int, _RawImage]]]:
    """(stamp_ns, raw image) lists of both topics, in bag order."""
    try:
        from rosbags.highlevel import AnyReader, AnyReaderError
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:
        raise ConfigError(f"reading ROS 2 bags needs rosbags (`pip install {ROSBAGS_PIN}`): "
                          f"{exc}") from exc
    out: Dict[str, List[Tuple[int, _RawImage]]] = {rgb_topic: [], depth_topic: []}
    try:
        with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
            topics = reader.topics
            for topic in (rgb_topic, depth_topic):
                if topic not in topics:
                    raise ConfigError(f"{bag} has no topic {topic!r}; it has: "
                                      f"{', '.join(sorted(topics)) or 'none'}")
                if topics[topic].msgtype != IMAGE_MSGTYPE:
                    raise ConfigError(f"{bag}: topic {topic!r} is {topics[topic].msgtype}, "
                                      f"not {IMAGE_MSGTYPE}")
            connections = [c for c in reader.connections if c.topic in out]
            for conn, bag_stamp_ns, raw in reader.messages(connections=connections):
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                out[conn.topic].append((int(stamp) or int(bag_stamp_ns), (
                    msg.encoding, int(msg.height), int(msg.width), int(msg.step),
                    int(msg.is_bigendian), bytes(msg.data))))
    except AnyReaderError as exc:
        raise ConfigError(f"cannot read ROS 2 bag {bag}: {exc}") from exc
    for topic, known in ((rgb_topic, COLOR_ENCODINGS), (depth_topic, DEPTH_ENCODINGS)):
        if not out[topic]:
            raise ConfigError(f"{bag}: topic {topic!r} has no messages")
        encoding = out[topic][0][1][0]
        if encoding not in known:
            raise ConfigError(f"{bag}: topic {topic!r} has encoding {encoding!r}; expected "
                              f"one of {', '.join(known)}")
    return out[rgb_topic], out[depth_topic]


def _bag_loader(rgb: _RawImage, depth: _RawImage) -> Loader:
    def load() -> Tuple[np.ndarray, np.ndarray]:
        return decode_color(*rgb), decode_depth(*depth)
    return load


def pair_by_stamp(rgb_stamps_ns: Sequence[int], depth_stamps_ns: Sequence[int],
                  slop_s: float) -> List[Tuple[int, int]]:
    """One-to-one (rgb index, depth index) pairs whose stamps differ by at most ``slop_s``.

    Greedy on the smallest difference first (each RGB's nearest depth is a
    candidate), so a depth image is never used twice; sorted by RGB index.
    """
    if not len(rgb_stamps_ns) or not len(depth_stamps_ns):
        return []
    depth = np.asarray(depth_stamps_ns, dtype=np.int64)
    order = np.argsort(depth, kind="stable")
    sorted_depth = depth[order]
    candidates = []
    for i, stamp in enumerate(np.asarray(rgb_stamps_ns, dtype=np.int64)):
        k = int(np.searchsorted(sorted_depth, stamp))
        for kk in (k - 1, k):
            if 0 <= kk < len(sorted_depth):
                candidates.append((abs(int(sorted_depth[kk]) - int(stamp)), i, int(order[kk])))
    limit_ns = slop_s * 1e9
    used_rgb, used_depth, pairs = set(), set(), []
    for diff, i, j in sorted(candidates):
        if diff > limit_ns:
            break
        if i not in used_rgb and j not in used_depth:
            used_rgb.add(i)
            used_depth.add(j)
            pairs.append((i, j))
    return sorted(pairs)
