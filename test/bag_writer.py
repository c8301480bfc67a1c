"""Test-side helper: write real ROS 2 bags of Image messages with rosbags (no ROS needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Tuple

import numpy as np

from robot_vision_ros.core.image_codec import encode_image


def write_image_bag(path: Path, messages: Iterable[Tuple[str, int, np.ndarray, str]],
                    version: int = 8) -> None:
    """``messages``: ``(topic, stamp_ns, array, encoding)`` in write order; each topic's
    connection is made on its first message; header stamp = bag stamp, frame id ``cam``."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    image_type = store.types["sensor_msgs/msg/Image"]
    header_type = store.types["std_msgs/msg/Header"]
    time_type = store.types["builtin_interfaces/msg/Time"]
    with Writer(path, version=version) as writer:
        connections: Dict[str, object] = {}
        for topic, stamp_ns, array, encoding in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, image_type.__msgtype__,
                                                           typestore=store)
            enc = encode_image(array, encoding)
            header = header_type(stamp=time_type(sec=stamp_ns // 10**9,
                                                 nanosec=stamp_ns % 10**9), frame_id="cam")
            msg = image_type(header=header, height=enc.height, width=enc.width,
                             encoding=encoding, is_bigendian=0, step=enc.step,
                             data=np.frombuffer(enc.data, np.uint8))
            writer.write(connections[topic], stamp_ns,
                         store.serialize_cdr(msg, image_type.__msgtype__))
