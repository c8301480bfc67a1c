"""Colour images of a ROS 2 bag without ROS (read with ``rosbags``).

Shared by the calibration reader (``compression.calibration: BAG[#TOPIC]``) and
the video camera's colour-only bags: which topic is the colour one, how a
bag path is opened, and how an Image or CompressedImage message is decoded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Tuple

import numpy as np

from .compressed_codec import decode_compressed_color
from .errors import ConfigError
from .image_codec import decode_color

BAG_IMAGE_TYPES: Tuple[str, ...] = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def split_bag_topic(source: str) -> Tuple[str, str]:
    """``'BAG#/camera/image'`` -> ``('BAG', '/camera/image')``; no ``#``: topic ``''``."""
    path, _, topic = source.partition("#")
    return path, topic


def bag_reader_args(path: Path) -> List[Path]:
    """What ``AnyReader`` opens: the bag directory (for one file, the one beside it)."""
    if path.is_dir():
        return [path]
    if (path.parent / "metadata.yaml").is_file():
        return [path.parent]
    if path.suffix.lower() == ".mcap":
        return [path]  # rosbags reads a lone MCAP file without metadata.yaml
    raise ConfigError(f"bag file {path} has no metadata.yaml beside it; pass the "
                      f"bag directory (the one holding metadata.yaml)")


def colour_topic(bag: Path, topics: dict, wanted: str) -> str:
    images = sorted(name for name, info in topics.items() if info.msgtype in BAG_IMAGE_TYPES)
    if wanted:
        if wanted not in topics:
            raise ConfigError(f"bag {bag} has no topic {wanted!r}; it has: "
                              f"{', '.join(sorted(topics)) or 'none'}")
        if topics[wanted].msgtype not in BAG_IMAGE_TYPES:
            raise ConfigError(f"bag {bag}: topic {wanted!r} is "
                              f"{topics[wanted].msgtype}, not an image")
        return wanted
    colour = [t for t in images if "depth" not in t.lower()]
    if len(colour) == 1:
        return colour[0]
    if not colour:
        raise ConfigError(f"bag {bag} has no colour image topic "
                          f"({' or '.join(BAG_IMAGE_TYPES)}); it has: "
                          f"{', '.join(sorted(topics)) or 'none'}")
    raise ConfigError(f"bag {bag} has several image topics ({', '.join(colour)}): "
                      f"name one as {bag}#TOPIC")


def decode_bag_image(msg: object, msgtype: str) -> np.ndarray:
    if msgtype.endswith("CompressedImage"):
        return decode_compressed_color(msg.format, msg.data)  # type: ignore[attr-defined]
    return np.array(decode_color(msg.encoding, int(msg.height), int(msg.width),  # type: ignore
                                 int(msg.step), int(msg.is_bigendian), bytes(msg.data)))


def open_bag_reader(path: Path) -> Any:
    """A ``rosbags`` AnyReader for ``path`` (ConfigError naming the package if missing)."""
    from .rgbd_dataset import ROSBAGS_PIN
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:
        raise ConfigError(f"reading ROS 2 bags needs rosbags (`pip install {ROSBAGS_PIN}`): "
                          f"{exc}") from exc
    return AnyReader(bag_reader_args(path), default_typestore=get_typestore(Stores.ROS2_HUMBLE))


def read_colour_messages(source: str) -> Tuple[str, List[Tuple[int, str, Any]]]:
    """``(topic, [(stamp_ns, msgtype, message)])`` of a bag's colour topic in bag order.

    ``source``: the bag directory (or one of its files), optionally ``#TOPIC``.
    Messages are kept deserialised but not decoded (decode with
    :func:`decode_bag_image`); the header stamp, else the bag's, is the stamp.
    """
    location, wanted = split_bag_topic(source)
    path = Path(location).expanduser()
    if not path.exists():
        raise ConfigError(f"bag {path} does not exist")
    reader = open_bag_reader(path)
    from rosbags.highlevel import AnyReaderError

    out: List[Tuple[int, str, Any]] = []
    try:
        with reader:
            topic = colour_topic(path, reader.topics, wanted)
            connections = [c for c in reader.connections if c.topic == topic]
            for conn, bag_stamp_ns, raw in reader.messages(connections=connections):
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                out.append((int(stamp) or int(bag_stamp_ns), conn.msgtype, msg))
    except AnyReaderError as exc:
        raise ConfigError(f"cannot read ROS 2 bag {path}: {exc}") from exc
    if not out:
        raise ConfigError(f"bag {path}: topic {topic!r} has no messages")
    return topic, out
