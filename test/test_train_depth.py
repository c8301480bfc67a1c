"""RGB-D recordings (folders, npz, ROS 2 bags), the pybullet scene, depth training and eval."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from robot_vision_ros.core.errors import ConfigError
from robot_vision_ros.core.frames import RgbdFrame
from robot_vision_ros.core.heads import DepthHead
from robot_vision_ros.core.image_codec import encode_image
from robot_vision_ros.core.pybullet_scene import (PybulletScene, intrinsics_for,
                                                   render_rgbd, render_sequence)
from robot_vision_ros.core.rgbd_dataset import RgbdRecording, pair_by_stamp
from robot_vision_ros.tools import eval_depth, train_depth

pybullet = pytest.importorskip("pybullet", reason="pybullet==3.2.7 is not installed")
H, W = 64, 80


def _frames(n: int = 3, seed: int = 0):
    """Random RGB and a depth ramp in metres (1-3 m) with a band of unknown pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        depth = np.broadcast_to(np.linspace(1.0, 3.0, W, dtype=np.float32), (H, W)).copy()
        depth += 0.01 * i
        depth[:4] = np.nan
        out.append((rgb, depth))
    return out


def _write_folder(folder: Path, frames) -> None:
    (folder / "rgb").mkdir(parents=True)
    (folder / "depth").mkdir()
    for i, (rgb, depth) in enumerate(frames):
        cv2.imwrite(str(folder / "rgb" / f"{i:06d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        mm = np.nan_to_num(depth * 1000.0, nan=0.0).round().astype(np.uint16)
        cv2.imwrite(str(folder / "depth" / f"{i:06d}.png"), mm)


# --- recordings ------------------------------------------------------------------------------

def test_folder_recording_reads_png_pairs_in_metres(tmp_path):
    frames = _frames()
    _write_folder(tmp_path / "rec", frames)
    rec = RgbdRecording.open(tmp_path / "rec")
    assert len(rec) == 3 and rec.names == ["000000", "000001", "000002"]
    sample = rec[1]
    assert sample.rgb.dtype == np.uint8 and np.array_equal(sample.rgb, frames[1][0])
    assert sample.depth_m.dtype == np.float32
    assert np.isnan(sample.depth_m[:4]).all()
    np.testing.assert_allclose(sample.depth_m[4:], frames[1][1][4:], atol=6e-4)


def test_npz_recordings_single_and_stacked(tmp_path):
    frames = _frames(2)
    folder = tmp_path / "npz"
    folder.mkdir()
    for i, (rgb, depth) in enumerate(frames):
        np.savez(folder / f"f{i}.npz", rgb=rgb, depth_m=depth)
    rec = RgbdRecording.open(folder)
    assert len(rec) == 2 and np.array_equal(rec[1].rgb, frames[1][0])
    np.savez(tmp_path / "stack.npz", rgb=np.stack([f[0] for f in frames]),
             depth_m=np.stack([f[1] for f in frames]))
    stacked = RgbdRecording.open(tmp_path / "stack.npz")
    assert len(stacked) == 2
    np.testing.assert_array_equal(stacked[-1].depth_m, frames[1][1])


def test_recording_errors_name_the_missing_thing(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RgbdRecording.open(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no rgb/ folder"):
        RgbdRecording.open(empty)
    _write_folder(tmp_path / "rec", _frames(2))
    (tmp_path / "rec" / "depth" / "000001.png").unlink()
    with pytest.raises(ConfigError, match=r"000001\.png"):
        RgbdRecording.open(tmp_path / "rec")
    np.savez(tmp_path / "bad.npz", rgb=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ConfigError, match="depth_m"):
        RgbdRecording.open(tmp_path / "bad.npz")


def _write_bag(path: Path, frames, depth_offsets_ns) -> None:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore
    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image = ts.types["sensor_msgs/msg/Image"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]

    def message(array: np.ndarray, encoding: str, stamp_ns: int):
        enc = encode_image(array, encoding)
        header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                        frame_id="camera")
        return Image(header=header, height=enc.height, width=enc.width, encoding=encoding,
                     is_bigendian=0, step=enc.step, data=np.frombuffer(enc.data, np.uint8))

    with Writer(path, version=9) as writer:
        color = writer.add_connection("/cam/color", Image.__msgtype__, typestore=ts)
        depth = writer.add_connection("/cam/depth", Image.__msgtype__, typestore=ts)
        for i, (rgb, depth_m) in enumerate(frames):
            t = 10**9 + i * 100_000_000
            writer.write(color, t, ts.serialize_cdr(message(rgb, "rgb8", t), Image.__msgtype__))
            td = t + depth_offsets_ns[i]
            writer.write(depth, td, ts.serialize_cdr(message(depth_m, "16UC1", td),
                                                     Image.__msgtype__))


def test_bag_recording_pairs_rgb8_and_16uc1_by_stamp(tmp_path):
    frames = _frames(3)
    bag = tmp_path / "bag"
    _write_bag(bag, frames, depth_offsets_ns=[5_000_000, -3_000_000, 60_000_000])
    rec = RgbdRecording.open(bag, "/cam/color", "/cam/depth", slop_s=0.02)
    assert len(rec) == 2  # the third depth is 60 ms off: beyond the 20 ms slop
    assert rec.stamps_ns == [10**9, 10**9 + 100_000_000]
    for k in range(2):
        assert np.array_equal(rec[k].rgb, frames[k][0])
        assert np.isnan(rec[k].depth_m[:4]).all()
        np.testing.assert_allclose(rec[k].depth_m[4:], frames[k][1][4:], atol=6e-4)
    with pytest.raises(ConfigError, match=r"no topic '/cam/nope'.*/cam/color"):
        RgbdRecording.open(bag, "/cam/color", "/cam/nope")
    with pytest.raises(ConfigError, match="give both"):
        RgbdRecording.open(bag)
    with pytest.raises(ConfigError, match="within 0.001 s"):
        RgbdRecording.open(bag, "/cam/color", "/cam/depth", slop_s=0.001)


def test_pair_by_stamp_is_one_to_one():
    # Two RGB frames compete for one depth image: the nearer one wins it.
    assert pair_by_stamp([0, 10, 100], [12, 98], slop_s=1e-8 * 5) == [(1, 0), (2, 1)]
    assert pair_by_stamp([], [1], 1.0) == []


# --- pybullet --------------------------------------------------------------------------------

def test_pybullet_depth_is_exact_for_known_geometry():
    client = pybullet.connect(pybullet.DIRECT)
    try:
        import pybullet_data
        pybullet.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=client)
        pybullet.loadURDF("plane.urdf", physicsClientId=client)
        cube = pybullet.loadURDF("cube_small.urdf", [0, 0, 0.1], globalScaling=4.0,
                                 physicsClientId=client)  # a 20 cm cube on the floor
        rgb, depth, seg = render_rgbd(client, (0, 0, 2.0), (0, 0, 0), (0, 1, 0), 80, 60,
                                      fov_deg=45.0)
    finally:
        pybullet.disconnect(physicsClientId=client)
    assert rgb.shape == (60, 80, 3) and rgb.dtype == np.uint8
    # Looking straight down from 2 m: the floor is at 2 m everywhere (planar depth, not range),
    # the cube's top at 1.8 m.
    assert depth[0, 0] == pytest.approx(2.0, abs=1e-4)
    assert depth[-1, -1] == pytest.approx(2.0, abs=1e-4)
    assert depth[30, 40] == pytest.approx(1.8, abs=1e-4)
    assert seg[30, 40] == cube and seg[0, 0] != cube
    # The cube's image size follows the pinhole model of the reported intrinsics.
    k = intrinsics_for(80, 60, 45.0)
    cols = np.nonzero((seg == cube).any(axis=0))[0]
    assert abs((cols.max() - cols.min() + 1) - 0.2 * k.fx / 1.8) <= 2.0


def test_pybullet_scene_is_deterministic_and_moves(tmp_path):
    with PybulletScene(seed=7, width=W, height=H) as a, PybulletScene(seed=7, width=W,
                                                                      height=H) as b:
        rgb_a, depth_a, seg_a = a.render(3)
        rgb_b, depth_b, seg_b = b.render(3)
        rgb0, _, _ = a.render(0)
    assert np.array_equal(rgb_a, rgb_b) and np.array_equal(seg_a, seg_b)
    np.testing.assert_array_equal(depth_a, depth_b)
    assert not np.array_equal(rgb0, rgb_a)  # camera orbit and moving objects
    finite = depth_a[np.isfinite(depth_a)]
    assert finite.size > 0.9 * depth_a.size and 0.3 < finite.min() < finite.max() < 12.0
    seq = render_sequence(7, 2, W, H, cache_dir=tmp_path)
    again = render_sequence(7, 2, W, H, cache_dir=tmp_path)  # from the .npz cache
    assert len(list(tmp_path.glob("*.npz"))) == 1
    np.testing.assert_array_equal(seq.depth_m, again.depth_m)
    assert np.array_equal(seq.rgb[0], rgb0)  # the sequence is the scene's frames
    with pytest.raises(ConfigError, match="num_moving"):
        PybulletScene(seed=0, num_objects=1, num_moving=2)


def test_remove_blobs_takes_about_thirty_percent_of_valid_pixels():
    valid = np.ones((120, 160), bool)
    valid[:, :40] = False
    removed = eval_depth.remove_blobs(valid, 0.3, seed=5)
    fraction = removed.sum() / valid.sum()
    assert 0.30 <= fraction < 0.36
    assert not removed[:, :40].any()
    assert np.array_equal(removed, eval_depth.remove_blobs(valid, 0.3, seed=5))
    assert not np.array_equal(removed, eval_depth.remove_blobs(valid, 0.3, seed=6))
    with pytest.raises(ConfigError, match="fraction"):
        eval_depth.remove_blobs(valid, 1.5)


# --- training and evaluation -----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny epoch on a folder of pybullet frames, then one resumed epoch."""
    root = tmp_path_factory.mktemp("train")
    seq = render_sequence(2000, 6, W, H, cache_dir=root / "cache")
    _write_folder(root / "rec", list(zip(seq.rgb, seq.depth_m)))
    out = root / "depth_unet.pt"
    common = ["--data", str(root / "rec"), "--size", str(H), str(W), "--batch", "4",
              "--out", str(out), "--no-progress", "--val-fraction", "0.2"]
    first = train_depth.main(common + ["--epochs", "1"])
    ckpt_after_first = torch.load(train_depth.checkpoint_path(out), weights_only=True)
    second = train_depth.main(common + ["--epochs", "2", "--resume"])
    return {"root": root, "out": out, "rc": (first, second), "first": ckpt_after_first}


def test_train_depth_checkpoints_resumes_and_loads_in_depth_head(trained):
    out = trained["out"]
    assert trained["rc"] == (0, 0)
    assert trained["first"]["epoch"] == 1
    ckpt = torch.load(train_depth.checkpoint_path(out), weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    assert set(ckpt) >= {"model", "optimizer", "config"}
    assert np.isfinite(ckpt["history"][-1]["val_abs_rel"])
    info = json.loads(out.with_name(out.name + ".json").read_text())
    assert info["size_hw"] == [H, W] and info["frames_train"] == 5
    # What the node does with depth.model: unet, depth.weights: OUT.
    head = DepthHead("unet", str(out), (H, W), torch.device("cpu"))
    rgb = np.zeros((2 * H, 2 * W, 3), np.uint8)
    result = head.run(RgbdFrame(rgb=rgb, stamp_ns=0))
    assert result.source == "network" and result.depth_m.shape == (2 * H, 2 * W)
    assert np.isfinite(result.depth_m).all()


def test_train_depth_reports_bad_input(tmp_path, capsys):
    assert train_depth.main(["--data", str(tmp_path / "missing"), "--out",
                             str(tmp_path / "d.pt"), "--no-progress"]) == 1
    assert "missing does not exist" in capsys.readouterr().err
    _write_folder(tmp_path / "rec", _frames(2))
    assert train_depth.main(["--data", str(tmp_path / "rec"), "--size", str(H), str(W),
                             "--out", str(tmp_path / "d.pt"), "--resume",
                             "--no-progress"]) == 1
    assert "d.pt.ckpt does not exist" in capsys.readouterr().err
    assert train_depth.main(["--out", str(tmp_path / "d.pt")]) == 1
    assert "nothing to train on" in capsys.readouterr().err


def test_eval_depth_scores_three_methods_on_removed_pixels(trained):
    result = eval_depth.evaluate(trained["out"], seeds=[100], size_wh=(W, H),
                                 frames_per_seed=2, input_hw=(H, W),
                                 cache_dir=trained["root"] / "cache")
    assert list(result["rows"]) == list(eval_depth.METHODS) + [eval_depth.PROPOSAL]
    assert 0.30 <= result["removed_fraction"] < 0.36
    for row in result["rows"].values():
        assert row["n_pixels"] > 0 and 0.0 <= row["delta1"] <= 1.0
        assert row["coverage"] == pytest.approx(1.0)
    # Nearest fill of a table-top scene is a few percent off, never exact.
    assert 0.0 < result["rows"]["sensor nearest_fill"]["abs_rel"] < 0.3
    assert "fused (node)" in eval_depth.format_table(result)
    assert eval_depth.trained_size(trained["out"]) == (H, W)
    info = trained["out"].with_name(trained["out"].name + ".json")
    record = json.loads(info.read_text())
    info.write_text(json.dumps({**record, "synthetic_seeds": [100]}))
    try:
        with pytest.raises(ConfigError, match=r"seeds \[100\] were used to train"):
            eval_depth.evaluate(trained["out"], seeds=[100, 101], size_wh=(W, H))
    finally:
        info.write_text(json.dumps(record))


def test_residual_fill_recovers_a_scaled_prediction_exactly():
    truth = np.broadcast_to(np.linspace(1.0, 3.0, W, dtype=np.float32), (H, W)).copy()
    sensor = truth.copy()
    sensor[10:40, 20:50] = np.nan
    filled = eval_depth.residual_fill(0.5 * truth, sensor)
    np.testing.assert_allclose(filled, truth, rtol=1e-5)
    assert np.isnan(eval_depth.residual_fill(np.full((H, W), np.nan), sensor)[10:40, 20:50]).all()
