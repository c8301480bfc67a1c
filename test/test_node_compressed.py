"""Cross-process: the node reads image_transport's compressed colour and depth topics."""
import cv2
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32MultiArray, Header

from robot_vision_ros.core.compressed_codec import encode_compressed_depth
from robot_vision_ros.core.image_codec import decode_depth
from robot_vision_ros.core.sim_scene import SimScene

from ros_probe import Probe, running, wait_for_log

REMAPS = {"camera/color/image_raw": "/cmp/rgb", "camera/depth/image_raw": "/cmp/depth",
          "camera/color/camera_info": "/cmp/info"}


def test_compressed_rgb_and_compressed_depth_inputs():
    rclpy.init()
    probe = Probe("compressed_probe")
    probe.listen(Float32MultiArray, "/vision/features")
    probe.listen(Image, "/vision/depth")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    rgb_pub = probe.create_publisher(CompressedImage, "/cmp/rgb/compressed", qos)
    depth_pub = probe.create_publisher(CompressedImage, "/cmp/depth/compressedDepth", qos)
    frame = SimScene(width=320, height=240, seed=3).render(0)
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    depth_format, depth_data = encode_compressed_depth(frame.depth_m)
    params = {"backbone": "realtime", "output_dim": 16, "input_size": [64, 64],
              "input.rgb_transport": "compressed", "input.depth_transport": "compressedDepth"}
    try:
        with running("vision_node", params=params, remaps=REMAPS) as node:
            assert probe.spin_until(lambda: rgb_pub.get_subscription_count() > 0
                                    and depth_pub.get_subscription_count() > 0, 120), node.log()
            assert wait_for_log(node, "active", 60)
            for _ in range(8):
                header = Header(stamp=probe.get_clock().now().to_msg(), frame_id="cam")
                rgb_pub.publish(CompressedImage(header=header, format="rgb8; jpeg compressed bgr8",
                                                data=jpeg))
                depth_pub.publish(CompressedImage(header=header, format=depth_format,
                                                  data=depth_data))
                probe.spin_for(0.1)
            assert probe.spin_until(lambda: len(probe.received["/vision/depth"]) >= 3, 20), \
                node.log()
        msg = probe.received["/vision/depth"][-1]
        depth = decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                             msg.data)
        assert depth.shape == (240, 320)
        assert np.nanmax(np.abs(depth - frame.depth_m)) < 0.002  # millimetre PNG precision
        assert len(probe.received["/vision/features"]) >= 3
    finally:
        probe.destroy_node()
        rclpy.shutdown()
