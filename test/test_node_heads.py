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
        # The best-effort camera_info subscription may match later than the others.
        assert probe.spin_until(lambda: len(probe.received["/heads/info"]) >= 5, 30)
        probe.spin_for(0.5)
    depth_msg = probe.received["/vision/depth"][-1]
    assert depth_msg.encoding == "32FC1" and (depth_msg.width, depth_msg.height) == (640, 480)
    assert depth_msg.header.frame_id == "camera_color_optical_frame"
    sent = {stamp_to_ns(m.header.stamp) for m in probe.received["/heads/info"]}
    depth_stamps = [stamp_to_ns(m.header.stamp) for m in probe.received["/vision/depth"]
                    if stamp_to_ns(m.header.stamp) >= min(sent)]
    assert depth_stamps
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


def test_sim_camera_pybullet_scene_publishes_exact_depth(ros, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOT_VISION_CACHE", str(tmp_path))
    probe = Probe("pybullet_probe")
    probe.listen(Image, "/pb/depth")
    probe.listen(Image, "/pb/rgb")
    remaps = {"camera/color/image_raw": "/pb/rgb", "camera/depth/image_raw": "/pb/depth",
              "camera/color/camera_info": "/pb/info"}
    params = {"scene": "pybullet", "width": 160, "height": 120, "cache_frames": 3,
              "rate_hz": 10.0, "depth_encoding": "32FC1"}
    with running("sim_camera", params=params, remaps=remaps) as camera:
        assert probe.spin_until(lambda: len(probe.received["/pb/depth"]) >= 2, 120), \
            camera.log()
    msg = probe.received["/pb/depth"][-1]
    depth = decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                         msg.data)
    assert depth.shape == (120, 160) and np.isfinite(depth).mean() > 0.5
    assert 0.1 < float(np.nanmedian(depth)) < 5.0  # a table a metre or so away
    assert any(tmp_path.rglob("*.npz")), "the rendered frames are cached"
    probe.destroy_node()


def test_video_camera_plays_an_rgbd_recording_with_depth(ros, tmp_path):
    import cv2
    scene = SimScene(width=96, height=64, num_objects=2, seed=4)
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    for i in range(3):
        frame = scene.render(i)
        cv2.imwrite(str(tmp_path / "rgb" / f"{i:06d}.png"),
                    cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / "depth" / f"{i:06d}.png"),
                    np.round(frame.depth_m * 1000).astype(np.uint16))
    probe = Probe("rgbd_player_probe")
    probe.listen(Image, "/rec/depth")
    remaps = {"camera/color/image_raw": "/rec/rgb", "camera/depth/image_raw": "/rec/depth",
              "camera/color/camera_info": "/rec/info"}
    with running("video_camera", params={"source": str(tmp_path), "rate_hz": 10.0},
                 remaps=remaps) as camera:
        assert probe.spin_until(lambda: len(probe.received["/rec/depth"]) >= 2, 60), \
            camera.log()
    msg = probe.received["/rec/depth"][-1]
    depth = decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                         msg.data)
    truth = [scene.render(i).depth_m for i in range(3)]
    assert depth.shape == (64, 96)
    assert min(float(np.nanmax(np.abs(depth - t))) for t in truth) < 0.002
    probe.destroy_node()
