"""Cross-process: the depth and detection outputs of the node.

sim_camera (exact depth) -> node -> /vision/depth*, and real pedestrian footage
(video_camera on vtest.avi) -> node with the real SSDLite person detector ->
/vision/detections*, all over real Fast DDS.
"""
import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from robot_vision_ros.core.image_codec import decode_depth
from robot_vision_ros.core.sim_scene import SimScene
from robot_vision_ros.ros.conversions import stamp_to_ns
from robot_vision_ros.ros.outputs import pointcloud2_to_object_rows

from conftest import asset_path
from ros_probe import Probe, running

SIM = {"camera/color/image_raw": "/heads/rgb", "camera/depth/image_raw": "/heads/depth",
       "camera/color/camera_info": "/heads/info"}
ENCODER = {"backbone": "realtime", "output_dim": 16, "input_size": [64, 64]}


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def test_depth_outputs_follow_the_source_frame(ros):
    probe = Probe("depth_probe")
    probe.listen(Image, "/vision/depth")
    probe.listen(CameraInfo, "/vision/depth/camera_info")
    probe.listen(Image, "/vision/depth/colored")
    probe.listen(CameraInfo, "/heads/info", reliable=False)
    params = dict(ENCODER, **{"depth.model": "sensor", "depth.max_m": 20.0})
    with running("sim_camera", params={"rate_hz": 15.0, "num_objects": 4, "seed": 0},
                 remaps=SIM), running("vision_node", params=params, remaps=SIM) as node:
        assert probe.spin_until(lambda: len(probe.received["/vision/depth"]) >= 5, 120), \
            node.log()
        assert probe.spin_until(lambda: len(probe.received["/vision/depth/colored"]) >= 2, 10)
    depth_msg = probe.received["/vision/depth"][-1]
    assert depth_msg.encoding == "32FC1" and (depth_msg.width, depth_msg.height) == (640, 480)
    assert depth_msg.header.frame_id == "camera_color_optical_frame"
    sent = {stamp_to_ns(m.header.stamp) for m in probe.received["/heads/info"]}
    depth_stamps = [stamp_to_ns(m.header.stamp) for m in probe.received["/vision/depth"]]
    # Every depth image carries the stamp of a camera frame (the probe, a best-effort
    # subscriber on a loaded machine, may itself miss a few of the camera's messages).
    assert sum(stamp in sent for stamp in depth_stamps) >= 0.8 * len(depth_stamps)
    depth = decode_depth(depth_msg.encoding, depth_msg.height, depth_msg.width, depth_msg.step,
                         depth_msg.is_bigendian, depth_msg.data)
    # The simulated scene renders exact depth; the camera sends it as 16UC1 millimetres.
    truth = SimScene(num_objects=4, seed=0).render(0).depth_m
    assert np.isfinite(depth).all()
    assert 0.5 < float(np.median(depth)) < 3.1 and abs(depth.max() - truth.max()) < 0.01
    info = probe.received["/vision/depth/camera_info"][-1]
    assert (info.width, info.height) == (640, 480) and info.k[0] == pytest.approx(0.9 * 640)
    assert stamp_to_ns(info.header.stamp) in set(depth_stamps)
    colored = probe.received["/vision/depth/colored"][-1]
    assert colored.encoding == "rgb8" and (colored.width, colored.height) == (640, 480)
    probe.destroy_node()


def test_tracked_person_detections_on_real_footage(ros):
    video = str(asset_path("vtest.avi"))
    model = str(asset_path("ssdlite_person.onnx"))
    remaps = {"camera/color/image_raw": "/people/rgb",
              "camera/color/camera_info": "/people/info",
              "camera/depth/image_raw": "/people/depth"}
    probe = Probe("people_probe")
    probe.listen(PointCloud2, "/vision/detections")
    probe.listen(Image, "/vision/detections/image")
    probe.listen(MarkerArray, "/vision/detections/markers")
    probe.listen(DiagnosticArray, "/diagnostics")
    params = dict(ENCODER, **{"depth.model": "none", "detection.model": "onnx",
                              "detection.weights": model, "detection.every_n": 2,
                              "target_fps": 10.0, "tracking.min_hits": 2})
    with running("video_camera", params={"source": video, "rate_hz": 10.0},
                 remaps=remaps), running("vision_node", params=params, remaps=remaps) as node:
        assert probe.spin_until(lambda: len(probe.received["/vision/detections"]) >= 30,
                                120), node.log()
        assert probe.spin_until(lambda: len(probe.received["/vision/detections/image"]) >= 2,
                                10)
        probe.spin_until(lambda: float(probe.diagnostics().get("detection_predicted", 0)) > 0,
                         5)
        diag = probe.diagnostics()
    clouds = probe.received["/vision/detections"]
    names = [f.name for f in clouds[-1].fields]
    assert names == ["x", "y", "z", "track_id", "class_id", "score", "u1", "v1", "u2", "v2"]
    rows = [pointcloud2_to_object_rows(c) for c in clouds]
    counts = [len(r) for r in rows]
    assert np.mean(counts) >= 2, counts  # a few pedestrians tracked per frame
    ids = np.concatenate([r["track_id"] for r in rows])
    # Tracks persist: far fewer distinct ids than tracked boxes.
    assert len(set(ids.tolist())) < 0.3 * len(ids)
    everything = np.concatenate(rows)
    assert (everything["u1"] >= 0).all() and (everything["u2"] <= 768).all()
    assert (everything["v2"] <= 576).all() and (everything["u1"] < everything["u2"]).all()
    assert np.isnan(everything["x"]).all()  # no depth camera: positions unknown
    assert float(diag["detection_runs"]) > 0 and float(diag["detection_predicted"]) > 0
    image = probe.received["/vision/detections/image"][-1]
    assert (image.width, image.height, image.encoding) == (768, 576, "rgb8")
    probe.destroy_node()
