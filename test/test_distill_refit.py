"""Batch mixing (CutMix / mixup) and the closed-form adapter refit of tools.distill:
synthetic checks of the algebra, then the tool end to end on real vtest.avi frames."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_vision_ros.compression.adapter import native_pooled, refit_adapter, ridge_fit
from robot_vision_ros.compression.calibration import read_video_frames
from robot_vision_ros.compression.distill import mix_batch
from robot_vision_ros.compression.fidelity import pooled_features
from robot_vision_ros.core.errors import ConfigError
from robot_vision_ros.models.registry import create_model
from robot_vision_ros.tools import distill as distill_tool


def _batch(count: int = 4, size: int = 16) -> torch.Tensor:
    # frame i is the constant i, so every output pixel tells which frame it came from
    return torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1).expand(
        count, 3, size, size).clone()


def test_cutmix_pastes_one_box_of_another_frame_at_the_same_place() -> None:
    batch = _batch()
    mixed = mix_batch(batch, "cutmix", 1.0, random.Random(0))
    assert mixed.shape == batch.shape and torch.equal(batch, _batch())  # input untouched
    for i in range(len(batch)):
        values = set(mixed[i].unique().tolist())
        assert i in values and len(values) == 2  # its own pixels and one other frame's
        other = (values - {i}).pop()
        rows, cols = torch.nonzero(mixed[i, 0] == other, as_tuple=True)
        box = mixed[i, 0, int(rows.min()):int(rows.max()) + 1, int(cols.min()):int(cols.max()) + 1]
        assert torch.all(box == other)  # one axis-aligned box
        assert 0.05 * 256 <= len(rows) <= 0.75 * 256


def test_mixup_blends_two_frames_and_prob_zero_or_none_is_identity() -> None:
    batch = _batch()
    mixed = mix_batch(batch, "mixup", 1.0, random.Random(1))
    for i in range(len(batch)):
        value = float(mixed[i, 0, 0, 0])
        assert torch.all(mixed[i] == value) and 0.0 <= value <= 3.0
    assert not torch.equal(mixed, batch)
    assert torch.equal(mix_batch(batch, "none", 1.0, random.Random(0)), batch)
    assert torch.equal(mix_batch(batch, "cutmix", 0.0, random.Random(0)), batch)
    assert torch.equal(mix_batch(batch[:1], "cutmix", 1.0, random.Random(0)), batch[:1])


def test_mix_rejects_bad_mode_and_probability() -> None:
    with pytest.raises(ConfigError, match="mix mode must be one of none, cutmix, mixup"):
        mix_batch(_batch(), "mosaic", 0.5, random.Random(0))
    with pytest.raises(ConfigError, match=r"mix probability must be in \[0, 1\], got 1.5"):
        mix_batch(_batch(), "cutmix", 1.5, random.Random(0))


def test_ridge_fit_recovers_an_affine_map_and_checks_shapes() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=generator)
    true_w, true_b = torch.randn(5, 8, generator=generator), torch.randn(5, generator=generator)
    weight, bias = ridge_fit(x, x @ true_w.T + true_b, 1e-6)
    assert torch.allclose(weight, true_w, atol=1e-3) and torch.allclose(bias, true_b, atol=1e-3)
    shrunk, _ = ridge_fit(x, x @ true_w.T + true_b, 10.0)
    assert float(shrunk.norm()) < 0.5 * float(true_w.norm())  # the ridge pulls towards 0
    with pytest.raises(ConfigError, match="same N"):
        ridge_fit(x, torch.zeros(10, 5), 1e-3)
    with pytest.raises(ConfigError, match="ridge must be > 0"):
        ridge_fit(x, x, 0.0)


def _frames(asset, count: int) -> torch.Tensor:
    from robot_vision_ros.compression.calibration import normalise_frames
    return normalise_frames(read_video_frames(asset("vtest.avi"), count), (64, 64))


def test_refit_adapter_matches_the_teacher_better_on_the_frames_it_saw(asset) -> None:
    torch.manual_seed(0)
    frames = _frames(asset, 24)
    teacher = create_model("resnet18", output_dim=0).eval()
    student = create_model("mobilenet_v3_small", output_dim=teacher.output_dim).eval()
    target = pooled_features(teacher, frames)
    native = native_pooled(student, frames)
    assert native.shape == (24, student.native_dim)
    before = float((pooled_features(student, frames) - target).pow(2).mean())
    fit = refit_adapter(student, frames, target, ridges=(1e-2, 1e-1))
    after = float((pooled_features(student, frames) - target).pow(2).mean())
    assert fit.ridge in (1e-2, 1e-1) and set(fit.candidates) == {1e-2, 1e-1}
    assert fit.frames == 24 and {"centred_cosine", "linear_cka"} <= set(fit.validation)
    assert after < 0.5 * before
    weight, bias = ridge_fit(native, target, fit.ridge)  # exactly the fit written into proj
    assert torch.allclose(student.proj.weight, weight) and torch.allclose(student.proj.bias, bias)


def test_refit_adapter_rejects_what_it_cannot_fit(asset) -> None:
    frames = _frames(asset, 10)
    same_width = create_model("mobilenet_v3_small", output_dim=0)
    with pytest.raises(ConfigError, match="no linear projection to refit"):
        refit_adapter(same_width, frames, torch.zeros(10, same_width.output_dim))
    student = create_model("mobilenet_v3_small", output_dim=16)
    with pytest.raises(ConfigError, match="10 frames but 5 teacher features"):
        refit_adapter(student, frames, torch.zeros(5, 16))
    with pytest.raises(ConfigError, match="at least 2 fitting and 2 validation frames"):
        refit_adapter(student, frames[:3], torch.zeros(3, 16))


def test_tool_mixes_refits_and_reports_before_and_after(asset, tmp_path: Path, capsys) -> None:
    frames = read_video_frames(asset("vtest.avi"), 20)
    data = tmp_path / "train.npz"
    np.savez(data, frames=np.stack([f[::8, ::8] for f in frames]))
    out = tmp_path / "s.pt"
    argv = ["--teacher", "resnet18", "--student", "mobilenet_v3_small", "--data", str(data),
            "--size", "64", "--epochs", "1", "--batch", "8", "--threads", "1", "--no-progress",
            "--holdout-split", "tail", "--mix", "cutmix", "--mix-prob", "1", "--refit-adapter",
            "--out", str(out)]
    assert distill_tool.main(argv) == 0
    printed = capsys.readouterr().out
    assert "adapter refit on 16 unaugmented training frames: ridge" in printed
    assert "after refit: held-out centred_cosine" in printed
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["mix"] == "cutmix" and summary["mix_prob"] == 1.0
    refit = summary["adapter_refit"]
    assert refit["ridge"] > 0 and {"centred_cosine", "linear_cka"} <= set(refit["before"])
    state = torch.load(out, weights_only=True)
    assert state["history"][-1]["refit_ridge"] == refit["ridge"]
    loaded = create_model("mobilenet_v3_small", output_dim=512, weights=str(out))
    assert torch.equal(loaded.proj.weight, state["state_dict"]["proj.weight"])


def test_tool_rejects_bad_mix_options(asset, tmp_path: Path, capsys) -> None:
    frames = read_video_frames(asset("vtest.avi"), 4)
    data = tmp_path / "train.npz"
    np.savez(data, frames=np.stack([f[::8, ::8] for f in frames]))
    common = ["--teacher", "resnet18", "--student", "mobilenet_v3_small", "--data", str(data),
              "--size", "64", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "s.pt")]
    assert distill_tool.main(common + ["--mix", "mosaic"]) == 2
    assert "--mix must be one of none, cutmix, mixup, got 'mosaic'" in capsys.readouterr().err
    assert distill_tool.main(common + ["--mix-prob", "-0.1"]) == 2
    assert "--mix-prob must be in [0, 1], got -0.1" in capsys.readouterr().err
    # refused before any training: 4 frames leave no 2 + 2 to fit and choose the ridge on
    assert distill_tool.main(common + ["--holdout", "0", "--refit-adapter"]) == 2
    assert "at least 2 fitting and 2 validation frames, got 4" in capsys.readouterr().err
    # a student of the teacher's own width has no projection to refit
    same_width = ["--teacher", "resnet18", "--student", "resnet18"] + common[4:]
    assert distill_tool.main(same_width + ["--holdout", "0", "--refit-adapter"]) == 2
    assert "has no linear projection to refit" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()
