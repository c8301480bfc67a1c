"""The offline tools: ``process`` (the node's pipeline over a recording) and ``analyze``."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, asset_path
from robot_vision_ros.core.errors import ConfigError
from robot_vision_ros.models.registry import create_model
from robot_vision_ros.tools import analyze, process

FPS = 10.0
CLIP_FRAMES = 12
CLIP_WH = (384, 288)
FAST = ["--set", "backbone=realtime", "--set", "input_size=[64,64]", "--set", "output_dim=16",
        "--set", "depth.model=none", "--quiet"]


def _detector_args() -> list:
    onnx = asset_path("ssdlite_person.onnx")
    return ["--set", "detection.model=onnx", "--set", f"detection.weights={onnx}"]


@pytest.fixture(scope="module")
def vtest_frames():
    """The first CLIP_FRAMES frames of the real pedestrian video, half size, RGB."""
    cap = cv2.VideoCapture(str(asset_path("vtest.avi")))
    frames = []
    while len(frames) < CLIP_FRAMES:
        ok, bgr = cap.read()
        assert ok, "vtest.avi ended early"
        frames.append(cv2.cvtColor(cv2.resize(bgr, CLIP_WH, interpolation=cv2.INTER_AREA),
                                   cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory, vtest_frames) -> Path:
    """A 12-frame, 10 fps AVI written with cv2.VideoWriter from vtest.avi."""
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, CLIP_WH)
    assert writer.isOpened()
    for rgb in vtest_frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _mot(path: Path) -> np.ndarray:
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    assert rows.shape[1] == len(process.MOT_COLUMNS)
    return rows


def test_process_video_with_detection_and_tracking(clip, tmp_path, capsys):
    out = tmp_path / "out"
    assert process.main([str(clip), *FAST, *_detector_args(), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "processed 12 frames" in printed and "detector_ms" in printed

    features = np.load(out / "features.npz")
    assert features["pooled"].shape == (CLIP_FRAMES, 16)
    assert features["pooled"].dtype == np.float32 and np.isfinite(features["pooled"]).all()
    # Stamps from the frame index and the clip's 10 fps.
    np.testing.assert_array_equal(features["stamps_ns"], np.arange(CLIP_FRAMES) * 100_000_000)
    np.testing.assert_array_equal(features["frame"], np.arange(1, CLIP_FRAMES + 1))
    assert "tokens" not in features.files

    rows = _mot(out / "detections.csv")
    assert len(rows) >= CLIP_FRAMES  # several pedestrians a frame
    assert rows[:, 0].min() >= 1 and rows[:, 0].max() <= CLIP_FRAMES
    assert (rows[:, 4] > 0).all() and (rows[:, 5] > 0).all()  # width, height
    assert ((rows[:, 6] > 0) & (rows[:, 6] <= 1)).all()
    np.testing.assert_array_equal(rows[:, 7:10], -1.0)  # no depth: position unknown
    ids, counts = np.unique(rows[:, 1].astype(int), return_counts=True)
    assert counts.max() >= CLIP_FRAMES // 2, "the tracker should keep an id across frames"
    for frame in np.unique(rows[:, 0]):  # ids are unique within a frame
        in_frame = rows[rows[:, 0] == frame, 1]
        assert len(set(in_frame)) == len(in_frame)

    motmetrics = pytest.importorskip("motmetrics")
    loaded = motmetrics.io.loadtxt(str(out / "detections.csv"), fmt="mot15-2D")
    assert sorted(loaded.index.get_level_values("Id").unique()) == sorted(ids)

    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == CLIP_FRAMES
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == CLIP_WH[0]  # no depth panel
    cap.release()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"]["processed"] == CLIP_FRAMES
    assert summary["stages_ms"]["encoder_ms"]["count"] == CLIP_FRAMES
    assert summary["stages_ms"]["detector_ms"]["count"] == CLIP_FRAMES
    assert summary["tracks"]["unique_ids"] == len(ids)
    # Offline defaults: every head runs when due, target_fps = the stream's rate.
    assert summary["config"]["adaptive_heads"] is False
    assert summary["config"]["target_fps"] == FPS


def test_process_skip_frames_processes_every_other_frame(clip, tmp_path):
    out = tmp_path / "out"
    code = process.main([str(clip), *FAST, "--skip-frames", "1", "--tokens", "--no-video",
                         "--out", str(out)])
    assert code == 0
    features = np.load(out / "features.npz")
    half = CLIP_FRAMES // 2
    np.testing.assert_array_equal(features["frame"], np.arange(1, CLIP_FRAMES + 1, 2))
    np.testing.assert_array_equal(features["stamps_ns"],
                                  np.arange(0, CLIP_FRAMES, 2) * 100_000_000)
    assert features["pooled"].shape == (half, 16)
    tokens = features["tokens"]
    assert tokens.shape[0] == half and tokens.shape[2] == 16 and tokens.shape[1] >= 1
    assert features["token_uv_px"].shape == (half, tokens.shape[1], 2)
    assert features["token_level"].shape == (tokens.shape[1],)
    assert not (out / "annotated.mp4").exists() and not (out / "detections.csv").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"]["skip_frames"] == 1
    assert summary["config"]["target_fps"] == FPS / 2


def test_process_image_folder_with_depth_network(vtest_frames, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k, rgb in enumerate(vtest_frames[:4]):
        cv2.imwrite(str(folder / f"{k:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / "002b.png").write_bytes(b"not a png")  # sorted between frames 3 and 4
    out = tmp_path / "out"
    code = process.main([str(folder), *FAST, "--set", "depth.model=unet",
                         "--set", "depth.input_size=[64,64]", "--max-frames", "5",
                         "--fps", "5", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"]["kind"] == "images"
    assert summary["frames"]["processed"] == 4
    assert summary["frames"]["dropped"] == {"bad_image": 1}
    features = np.load(out / "features.npz")
    np.testing.assert_array_equal(features["frame"], [1, 2, 3, 5])
    np.testing.assert_array_equal(features["stamps_ns"], [0, 2 * 10**8, 4 * 10**8, 8 * 10**8])
    pngs = sorted((out / "depth").glob("*.png"))
    assert [p.name for p in pngs] == ["000001.png", "000002.png", "000003.png", "000005.png"]
    depth_mm = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert depth_mm.dtype == np.uint16 and depth_mm.shape == (CLIP_WH[1], CLIP_WH[0])
    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 2 * CLIP_WH[0]  # RGB | depth
    cap.release()


def _rgbd_folder(root: Path, frames, depth_mm: np.ndarray) -> Path:
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for k, rgb in enumerate(frames):
        cv2.imwrite(str(root / "rgb" / f"{k:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "depth" / f"{k:03d}.png"), depth_mm)
    return root


def test_process_rgbd_folder_gives_sensor_depth_and_3d_positions(vtest_frames, tmp_path):
    h, w = CLIP_WH[1], CLIP_WH[0]
    depth_mm = np.full((h, w), 4000, np.uint16)
    depth_mm[:, : w // 8] = 0  # a strip without depth
    root = _rgbd_folder(tmp_path / "rgbd", vtest_frames[:5], depth_mm)
    out = tmp_path / "out"
    code = process.main([str(root), *FAST, "--set", "depth.model=sensor", *_detector_args(),
                         "--no-video", "--out", str(out)])
    assert code == 0
    # Sensor depth round-trips to the 16-bit millimetre PNGs (0 = unknown).
    pngs = sorted((out / "depth").glob("*.png"))
    assert len(pngs) == 5
    np.testing.assert_array_equal(cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED), depth_mm)
    rows = _mot(out / "detections.csv")
    located = rows[rows[:, 9] > 0]
    assert len(located) > 0
    np.testing.assert_allclose(located[:, 9], 4.0, atol=0.01)  # z of the 4 m wall
    centre_u = located[:, 2] + located[:, 4] / 2
    # x follows the box's side of the principal point (the pinhole guess's cx).
    assert (np.sign(located[:, 7]) == np.sign(centre_u - (w - 1) / 2)).all()


def test_process_ros2_bag(vtest_frames, tmp_path):
    pytest.importorskip("rosbags")
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from robot_vision_ros.core.image_codec import encode_image

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image, Header = ts.types["sensor_msgs/msg/Image"], ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]

    def message(array, encoding, stamp_ns):
        enc = encode_image(array, encoding)
        header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                        frame_id="camera")
        return Image(header=header, height=enc.height, width=enc.width, encoding=encoding,
                     is_bigendian=0, step=enc.step, data=np.frombuffer(enc.data, np.uint8))

    bag = tmp_path / "bag"
    stamps = [5 * 10**9 + k * 50_000_000 for k in range(4)]  # 20 Hz
    depth_m = np.full((CLIP_WH[1], CLIP_WH[0]), 2.5, np.float32)
    with Writer(bag, version=9) as writer:
        color = writer.add_connection("/cam/color", Image.__msgtype__, typestore=ts)
        depth = writer.add_connection("/cam/depth", Image.__msgtype__, typestore=ts)
        for rgb, t in zip(vtest_frames, stamps):
            writer.write(color, t, ts.serialize_cdr(message(rgb, "rgb8", t), Image.__msgtype__))
            writer.write(depth, t + 1000, ts.serialize_cdr(message(depth_m, "16UC1", t + 1000),
                                                           Image.__msgtype__))
    out = tmp_path / "out"
    code = process.main([str(bag), *FAST, "--set", "depth.model=sensor", "--no-video",
                         "--bag-rgb-topic", "/cam/color", "--bag-depth-topic", "/cam/depth",
                         "--out", str(out)])
    assert code == 0
    features = np.load(out / "features.npz")
    np.testing.assert_array_equal(features["stamps_ns"], stamps)  # the bag's own stamps
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"]["kind"] == "bag"
    assert summary["input"]["fps"] == pytest.approx(20.0)
    assert len(list((out / "depth").glob("*.png"))) == 4


def test_process_bad_input_exits_2_with_a_clear_message(clip, tmp_path, capsys):
    missing = tmp_path / "nope.mp4"
    assert process.main([str(missing), "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"input {missing} does not exist" in err and "Traceback" not in err

    assert process.main([str(clip), *FAST, "--set", "no_such.param=1"]) == 2
    assert "unknown parameter 'no_such.param'" in capsys.readouterr().err
    assert process.main([str(clip), *FAST, "--set", "backbone"]) == 2
    assert "--set expects NAME=VALUE, got 'backbone'" in capsys.readouterr().err
    assert process.main([str(clip), *FAST, "--set", "input_size=[65,64]"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert process.main([str(clip), *FAST, "--set", "detection.model=onnx", "--set",
                         f"detection.weights={tmp_path / 'missing.onnx'}"]) == 2
    assert "missing.onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        process.main([str(clip), "--skip-frames", "-1"])
    assert exc.value.code == 2
    assert "expected an integer >= 0" in capsys.readouterr().err


def test_process_command_line_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "robot_vision_ros.tools.process", str(tmp_path / "none.avi"),
         "--set", "backbone=realtime"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


# --- analyze ---------------------------------------------------------------------------------
def test_analyze_realtime_and_vit_tiny(tmp_path, capsys):
    out = tmp_path / "analysis"
    code = analyze.main(["--backbones", "realtime,vit_tiny", "--size", "64", "--out", str(out),
                         "--erf-samples", "3"])
    assert code == 0
    table = capsys.readouterr().out
    assert "realtime" in table and "vit_tiny" in table and "GFLOPs" in table
    report = json.loads((out / "analysis.json").read_text())
    by_name = {r["backbone"]: r for r in report["backbones"]}
    for name in ("realtime", "vit_tiny"):
        r = by_name[name]
        model = create_model(name, output_dim=0)
        assert r["parameters"] == sum(p.numel() for p in model.parameters())
        assert 0 < r["feature_parameters"] <= r["parameters"]
        assert r["flops"] > 0 and r["gflops"] == pytest.approx(r["flops"] / 1e9)
        erf = r["erf"]
        assert 0 < erf["r50_px"] <= erf["r90_px"] <= erf["support_radius_px"]
        assert erf["r90_px"] <= erf["image_half_diagonal_px"] * 2
        picture = cv2.imread(str(out / erf["png"]))
        assert picture is not None and picture.shape[0] >= 64
    vit = by_name["vit_tiny"]
    # The classifier head (192 x 1000 + 1000) is not used by forward_features.
    assert vit["parameters"] - vit["feature_parameters"] == 192 * 1000 + 1000
    assert vit["flops_per_op"]["_scaled_dot_product_flash_attention_for_cpu"] > 0
    assert vit["attention"]["grid_hw"] == [4, 4] and vit["attention"]["blocks"] == 12
    assert 0 < vit["attention"]["last_block_entropy"] <= 1
    grid = cv2.imread(str(out / vit["attention"]["png"]))
    assert grid.shape == (3 * 64, 4 * 64, 3)  # 12 blocks, 4 a row
    assert "attention" not in by_name["realtime"]


def test_count_flops_matches_the_convolution_formula():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    flops, per_op = analyze.count_flops(conv, torch.zeros(1, 3, 16, 16))
    assert flops == 2 * 8 * 16 * 16 * 3 * 3 * 3 == per_op["convolution"]


def test_erf_grows_from_a_shallow_to_a_deep_stage():
    torch.manual_seed(0)
    model = create_model("resnet18", output_dim=0).eval()
    x = analyze.erf_inputs("noise", 2, 64, model.mean, model.std)
    shallow = analyze.effective_receptive_field(
        lambda t: model.get_intermediate_features(t)[0], x)
    deep = analyze.effective_receptive_field(model.forward_features, x)
    assert shallow.grid_hw == (16, 16) and deep.grid_hw == (2, 2)
    assert shallow.radii_px[0.5] < deep.radii_px[0.5]
    assert shallow.radii_px[0.9] < deep.radii_px[0.9]
    # layer1's theoretical receptive field is 43 px square: no gradient beyond it.
    assert shallow.support_radius_px <= 43 / math.sqrt(2) + 2 < deep.support_radius_px
    assert shallow.heatmap.shape == (64, 64)
    assert shallow.heatmap.sum() == pytest.approx(1.0, abs=1e-4)


def test_mass_radius_of_a_uniform_disc():
    size = 201
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (np.hypot(xx - 100, yy - 100) <= 60).astype(np.float32)
    radii = analyze.mass_radius(disc, (100.0, 100.0), (0.5, 0.9))
    assert radii[0.5] == pytest.approx(60 / math.sqrt(2), abs=1.0)
    assert radii[0.9] == pytest.approx(60 * math.sqrt(0.9), abs=1.0)
    assert math.isnan(analyze.mass_radius(np.zeros((4, 4)), (1.0, 1.0))[0.5])


def test_analyze_bad_input_exits_2(tmp_path, capsys):
    assert analyze.main(["--backbones", "nope", "--size", "64", "--out", str(tmp_path)]) == 2
    assert "unknown encoder 'nope'" in capsys.readouterr().err
    assert analyze.main(["--backbones", "realtime", "--size", "40", "--out", str(tmp_path)]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert analyze.main(["--backbones", "vit_tiny", "--size", "64", "--image",
                         str(tmp_path / "no.png"), "--out", str(tmp_path)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="cannot lay 18 tokens"):
        analyze.centre_unit(torch.zeros(1, 18, 4), (64, 64), prefix_tokens=1)
