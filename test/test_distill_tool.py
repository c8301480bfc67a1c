"""tools.distill's scoring options: --eval-data (files and 'skimage'), --holdout-split,
the cosine schedule, the centred loss term and token-level (spatial) distillation, on
real frames at 64 px."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_vision_ros.compression.calibration import read_video_frames
from robot_vision_ros.compression.distill import (PHOTO_VIEWS, batch_loss, distillation_loss,
                                                  grid_outputs, photo_views, projected_tokens,
                                                  token_loss, train_step)
from robot_vision_ros.core.errors import ConfigError
from robot_vision_ros.models.encoders.realtime import RealtimeEncoder
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


def _frames_64(asset, count: int = 6) -> torch.Tensor:
    from robot_vision_ros.compression.calibration import normalise_frames
    return normalise_frames(read_video_frames(asset("vtest.avi"), count), (64, 64))


def test_token_loss_is_zero_for_a_perfect_student_and_checks_shapes() -> None:
    teacher_tokens = torch.rand(3, 4, 8) + 0.5
    terms = token_loss(teacher_tokens.clone(), teacher_tokens)
    assert set(terms) == {"cosine", "mse", "centred"}
    assert all(float(v) == pytest.approx(0.0, abs=1e-5) for v in terms.values())
    # Every token set to the teacher's mean token: plain cosine fine, centred term ~1.
    mean_tokens = teacher_tokens.mean(dim=0, keepdim=True).expand_as(teacher_tokens)
    terms = token_loss(mean_tokens, teacher_tokens)
    assert float(terms["cosine"]) < 0.2 and float(terms["centred"]) > 0.5
    assert "centred" not in token_loss(teacher_tokens, teacher_tokens, centre=False)
    assert "centred" not in token_loss(teacher_tokens[:1], teacher_tokens[:1])  # one image
    with pytest.raises(ConfigError, match=r"student tokens \(3, 4, 5\) do not match"):
        token_loss(torch.rand(3, 4, 5), teacher_tokens)
    with pytest.raises(ConfigError, match="token_weight > 0 needs the student's and the teacher's"):
        distillation_loss(torch.rand(3, 8), torch.rand(3, 8), token_weight=1.0)


def test_projected_tokens_pool_to_the_pooled_output_and_resize(asset) -> None:
    student = create_model("mobilenet_v3_small", output_dim=512).eval()
    frames = _frames_64(asset, 3)
    with torch.no_grad():
        out = grid_outputs(student, frames, with_logits=True)
        tokens = projected_tokens(student, out.grid)
        # proj is affine: the mean of the projected tokens is the pooled output.
        assert torch.allclose(tokens.mean(dim=1), student(frames), atol=1e-5)
        assert torch.allclose(out.pooled, student(frames), atol=1e-5)
        assert torch.allclose(out.logits, student.logits(frames), atol=1e-4)
        assert tokens.shape == (3, 4, 512)  # 64 px / stride 32 = 2 x 2 grid
        up = projected_tokens(student, out.grid, (4, 4))
        down = projected_tokens(student, out.grid[..., :1, :1], (1, 1))
    assert up.shape == (3, 16, 512) and down.shape == (3, 1, 512)
    # Resizing is a convex blend of cells: it keeps a constant grid constant.
    flat = torch.ones(1, 576, 2, 2)
    assert torch.allclose(projected_tokens(student, flat, (3, 3)),
                          projected_tokens(student, flat)[:, :1].expand(1, 9, 512), atol=1e-5)
    with pytest.raises(ConfigError, match=r"needs a \[B, C, h, w\] grid"):
        projected_tokens(student, tokens)


def test_token_weight_zero_is_the_pooled_loss_and_grids_of_other_strides_match(asset) -> None:
    torch.manual_seed(0)
    teacher = create_model("resnet18", output_dim=0).eval()
    student = create_model("mobilenet_v3_small", output_dim=512).eval()
    frames = _frames_64(asset, 4)
    mean = teacher(frames).mean(dim=0).detach()
    with torch.no_grad():
        _, old = distillation_loss(student(frames), teacher(frames), student.logits(frames),
                                   teacher.logits(frames), teacher_mean=mean)
        _, new = batch_loss(student, teacher, frames, teacher_mean=mean, token_weight=0.0)
        _, tokens = batch_loss(student, teacher, frames, teacher_mean=mean, token_weight=0.5)
    assert set(new) == set(old) and not any(k.startswith("token_") for k in new)
    for key in old:
        assert new[key] == pytest.approx(old[key], rel=1e-4, abs=1e-5)
    assert {"token_cosine", "token_mse", "token_centred"} <= set(tokens)
    expected = old["loss"] + 0.5 * (tokens["token_cosine"] + tokens["token_mse"]
                                    + tokens["token_centred"])
    assert tokens["loss"] == pytest.approx(expected, rel=1e-4)
    # A stride-16 teacher (4 x 4 grid at 64 px) against the stride-32 student (2 x 2).
    fine = RealtimeEncoder(blocks=((32, 2), (64, 2), (64, 2), (512, 1)), output_dim=0)
    fine.name = "realtime_stride16"
    assert grid_outputs(fine.eval(), frames).grid.shape[-2:] == (4, 4)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    parts = train_step(student.train(), fine, frames, optimizer, token_weight=1.0)
    assert {"token_cosine", "token_mse", "token_centred"} <= set(parts)
    assert np.isfinite(parts["loss"])


def test_token_weight_needs_grid_encoders(asset) -> None:
    teacher = create_model("resnet18_fpn", output_dim=0).eval()
    student = create_model("mobilenet_v3_small", output_dim=teacher.output_dim)
    frames = _frames_64(asset, 2)
    with pytest.raises(ConfigError, match="token distillation .* needs grid CNN encoders"):
        batch_loss(student, teacher, frames, token_weight=1.0)
    _, parts = batch_loss(student, teacher, frames, token_weight=0.0, kl_weight=0.0)
    assert "token_cosine" not in parts  # token weight 0 still works for any encoder


def test_token_distilled_student_loads_strict_and_resumes(asset, tmp_path: Path,
                                                          capsys) -> None:
    data = _npz_of_vtest(asset, tmp_path / "train.npz", 10)
    out = tmp_path / "s.pt"
    argv = _common(data, out) + ["--holdout-split", "tail", "--token-weight", "2"]
    assert distill_tool.main(argv) == 0
    printed = capsys.readouterr().out
    assert "token weight 2, centred per grid position" in printed
    assert "; token 1-cos" in printed
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["token_weight"] == 2.0 and summary["token_centre"] == "batch"
    state = torch.load(out, weights_only=True)
    student = create_model("mobilenet_v3_small", output_dim=512)
    student.load_state_dict(state["state_dict"], strict=True)  # no adapter left over
    assert set(state["state_dict"]) == set(student.state_dict())
    from_file = create_model("mobilenet_v3_small", output_dim=512, weights=str(out)).eval()
    frames = _frames_64(asset, 2)
    with torch.no_grad():
        assert torch.allclose(from_file(frames), student.eval()(frames), atol=1e-6)
    assert distill_tool.main(argv[:argv.index("--epochs") + 1] + ["2"]
                             + argv[argv.index("--epochs") + 2:] + ["--resume"]) == 0
    assert "epochs 2..2" in capsys.readouterr().out
    assert torch.load(out, weights_only=True)["epoch"] == 2


def test_bad_token_options_exit_2(asset, tmp_path: Path, capsys) -> None:
    data = _npz_of_vtest(asset, tmp_path / "train.npz", 4)
    common = _common(data, tmp_path / "s.pt")
    assert distill_tool.main(common + ["--token-weight", "-1"]) == 2
    assert "--token-weight must be >= 0, got -1.0" in capsys.readouterr().err
    assert distill_tool.main(common + ["--token-centre", "image"]) == 2
    assert "--token-centre must be one of batch, none, got 'image'" in capsys.readouterr().err
    vit = ["--teacher", "vit_tiny"] + common[2:]
    assert distill_tool.main(vit + ["--token-weight", "1"]) == 2
    assert "the teacher 'vit_tiny' has no plain feature grid" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()
