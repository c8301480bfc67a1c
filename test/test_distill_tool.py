"""tools.distill's scoring options: --eval-data (files and 'skimage'), --holdout-split,
the cosine schedule and the centred loss term, on real frames at 64 px."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_vision_ros.compression.calibration import read_video_frames
from robot_vision_ros.compression.distill import (PHOTO_VIEWS, distillation_loss, photo_views,
                                                  train_step)
from robot_vision_ros.core.errors import ConfigError
from robot_vision_ros.models.registry import create_model
from robot_vision_ros.tools import distill as distill_tool


def _npz_of_vtest(asset, path: Path, count: int, first: int = 0) -> Path:
    """``count`` real vtest.avi frames, downscaled to 96x72, as an .npz of uint8 RGB."""
    frames = read_video_frames(asset("vtest.avi"), 40)[first:first + count]
    small = np.stack([f[::8, ::8] for f in frames])
    np.savez(path, frames=small)
    return path


def _common(data: Path, out: Path) -> list:
    return ["--teacher", "resnet18", "--student", "mobilenet_v3_small", "--data", str(data),
            "--size", "64", "--epochs", "1", "--batch", "8", "--threads", "1",
            "--no-progress", "--out", str(out)]


def test_split_tail_holds_out_the_last_block_and_spread_spreads() -> None:
    assert distill_tool.split_indices(10, 0.3, "tail") == ([0, 1, 2, 3, 4, 5, 6], [7, 8, 9])
    train, held = distill_tool.split_indices(10, 0.3, "spread")
    assert held == [0, 4, 9] and sorted(train + held) == list(range(10))
    assert distill_tool.split_indices(10, 0.0, "tail") == (list(range(10)), [])
    with pytest.raises(ConfigError, match="--holdout-split must be one of spread, tail"):
        distill_tool.split_indices(10, 0.3, "middle")


def test_photo_views_are_fixed_crops_and_mirrors() -> None:
    image = np.arange(100 * 60 * 3, dtype=np.uint8).reshape(100, 60, 3)
    views = photo_views(image)
    assert len(views) == len(PHOTO_VIEWS) == 8
    assert np.array_equal(views[0], image) and np.array_equal(views[1], image[:, ::-1])
    assert views[2].shape == (70, 42, 3) and np.array_equal(views[2], image[:70, :42])
    assert all(np.array_equal(a, b) for a, b in zip(views, photo_views(image)))


def test_skimage_photos_are_local_colour_photos_without_duplicates() -> None:
    photos = distill_tool.skimage_photos()
    assert {"astronaut", "chelsea", "coffee", "rocket"} <= set(photos)
    assert "cat" not in photos  # the same picture as chelsea
    for image in photos.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3


def test_eval_data_npz_and_skimage_scored_every_epoch(asset, tmp_path: Path, capsys) -> None:
    data = _npz_of_vtest(asset, tmp_path / "train.npz", 10)
    other = _npz_of_vtest(asset, tmp_path / "other.npz", 6, first=30)
    out, summary_path = tmp_path / "s.pt", tmp_path / "summary.json"
    argv = _common(data, out) + ["--holdout-split", "tail", "--eval-data", str(other),
                                 "--eval-data", "skimage", "--json", str(summary_path)]
    assert distill_tool.main(argv) == 0
    printed = capsys.readouterr().out
    assert "on 8 frames, 2 held out (tail)" in printed
    assert "fixed crops/mirrors" in printed and "| skimage centred_cosine" in printed
    assert "| other.npz centred_cosine" in printed
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary == json.loads(summary_path.read_text())
    assert summary["holdout_split"] == "tail" and summary["holdout_frames"] == 2
    assert summary["eval"]["other.npz"]["images"] == 6
    photos = summary["eval"]["skimage"]
    assert photos["images"] >= 8 * 8 and photos["images"] % len(PHOTO_VIEWS) == 0
    for figures in (summary["holdout"], summary["eval"]["other.npz"], photos):
        assert {"plain_cosine", "centred_cosine", "linear_cka"} <= set(figures)
        assert 0.0 <= figures["linear_cka"] <= 1.0 + 1e-6
    history = torch.load(out, weights_only=True)["history"]
    assert set(history[0]["eval"]) == {"other.npz", "skimage"}
    assert history[0]["eval"]["skimage"]["linear_cka"] == pytest.approx(photos["linear_cka"])


def test_bad_eval_source_and_split_name_exit_2(asset, tmp_path: Path, capsys) -> None:
    data = _npz_of_vtest(asset, tmp_path / "train.npz", 4)
    common = _common(data, tmp_path / "s.pt")
    assert distill_tool.main(common + ["--eval-data", str(tmp_path / "nowhere.avi")]) == 2
    err = capsys.readouterr().err
    assert f"--eval-data {tmp_path / 'nowhere.avi'} is neither 'skimage' nor an existing" in err
    assert distill_tool.main(common + ["--holdout-split", "middle"]) == 2
    assert "--holdout-split must be one of spread, tail, got 'middle'" in capsys.readouterr().err
    assert distill_tool.main(common + ["--schedule", "step"]) == 2
    assert "--schedule must be one of constant, cosine" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()


def test_cosine_schedule_decays_to_zero() -> None:
    args = distill_tool.build_parser().parse_args(
        ["--teacher", "a", "--student", "b", "--data", "x", "--lr", "0.01"])
    assert args.schedule == "cosine"
    assert distill_tool.lr_at(args, 0, 100) == pytest.approx(0.01)
    assert distill_tool.lr_at(args, 50, 100) == pytest.approx(0.005)
    assert distill_tool.lr_at(args, 100, 100) == pytest.approx(0.0, abs=1e-12)
    args.schedule = "constant"
    assert distill_tool.lr_at(args, 99, 100) == 0.01


def test_centred_term_is_zero_for_a_perfect_student_and_trains() -> None:
    teacher_features = torch.rand(6, 8) + 1.0
    mean = teacher_features.mean(dim=0)
    _, parts = distillation_loss(teacher_features, teacher_features, teacher_mean=mean)
    assert parts["centred"] == pytest.approx(0.0, abs=1e-5)
    # A constant student scores ~1 on the centred term while its plain cosine looks fine.
    _, parts = distillation_loss(mean.expand(6, 8) * 1.01, teacher_features, teacher_mean=mean)
    assert parts["cosine"] < 0.1 and parts["centred"] > 0.5
    with pytest.raises(ConfigError, match="teacher mean has width 3"):
        distillation_loss(teacher_features, teacher_features, teacher_mean=torch.zeros(3))
    teacher = create_model("realtime", output_dim=0).eval()
    student = create_model("realtime", output_dim=0)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    batch = torch.randn(4, 3, 64, 64)
    parts = train_step(student, teacher, batch, optimizer, teacher_mean=teacher(batch).mean(0)
                       .detach(), kl_weight=0.0)
    assert "centred" in parts and "kl" not in parts


def test_recalibrate_batchnorm_restores_eval_mode_variation(asset) -> None:
    from robot_vision_ros.compression.calibration import normalise_frames
    from robot_vision_ros.compression.distill import recalibrate_batchnorm
    frames = normalise_frames(read_video_frames(asset("vtest.avi"), 12), (64, 64))
    model = create_model("mobilenet_v3_small", output_dim=0)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:  # stale statistics, as after fast training
        m.running_var.fill_(1e6)
    model.eval()
    with torch.no_grad():
        stale = model(frames).std(dim=0).mean()
    assert recalibrate_batchnorm(model, frames, batch=4) == len(norms)
    assert not model.training and [m.momentum for m in norms] == momenta
    with torch.no_grad():
        fresh = model(frames).std(dim=0).mean()
    assert fresh > 10 * stale
    assert recalibrate_batchnorm(model, frames[:1]) == 0  # one frame: nothing to estimate
