"""Encoder zoo: every registered encoder on CPU with small random inputs."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torchvision
from torch import nn

from robot_vision_ros.core.errors import ConfigError, UnknownModelError, WeightsError
from robot_vision_ros.models import EncoderOutput, VisionEncoder, create_model, list_models
from robot_vision_ros.models.encoders.base import LEVEL_SLOT
from robot_vision_ros.models.encoders.efficientnet import B0_FEATURE_STRIDES
from robot_vision_ros.models.encoders.rgbd_hybrid import DEPTH_FEATURE_DIM, SlotAttention
from robot_vision_ros.models.encoders.vit import resample_pos_embed

EXPECTED_ENCODERS = {
    "resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small", "vit_base",
    "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small", "realtime", "rgbd_hybrid",
    "resnet18_fpn", "resnet50_fpn",
}
NATIVE_DIMS = {
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "vit_tiny": 192, "vit_small": 384,
    "vit_base": 768, "efficientnet_b0": 1280, "mobilenet_v2": 1280, "mobilenet_v3_small": 576,
    "realtime": 512, "rgbd_hybrid": 576, "resnet18_fpn": 768, "resnet50_fpn": 768,
}
VITS = ("vit_tiny", "vit_small", "vit_base")
MOBILENET_V3_SMALL_DIM = 576


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _image(b: int = 2, h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.randn(b, 3, h, w)


def _check_output(out: EncoderOutput, batch: int, dim: int) -> None:
    n = out.tokens.shape[1]
    assert out.pooled.shape == (batch, dim)
    assert out.tokens.shape == (batch, n, dim) and n > 0
    assert out.token_uv.shape == (n, 2)
    assert out.token_level.shape == (n,) and out.token_level.dtype == torch.int64
    assert torch.isfinite(out.pooled).all() and torch.isfinite(out.tokens).all()
    spatial = out.token_level != LEVEL_SLOT
    uv = out.token_uv[spatial]
    assert ((uv > 0) & (uv < 1)).all()
    assert torch.isnan(out.token_uv[~spatial]).all()


def test_registry_lists_every_encoder() -> None:
    assert set(list_models()) == EXPECTED_ENCODERS


@functools.lru_cache(maxsize=None)
def _shared_model(name: str, output_dim: int) -> VisionEncoder:
    """One eval-mode instance per (name, output_dim) for tests that only read it."""
    return create_model(name, output_dim=output_dim).eval()


@pytest.mark.parametrize("name", sorted(EXPECTED_ENCODERS))
def test_encoder_shapes_and_output_dim(name: str) -> None:
    x = _image()
    for output_dim in (0, 24):
        model = _shared_model(name, output_dim)
        assert isinstance(model, VisionEncoder) and model.name == name
        assert model.native_dim == NATIVE_DIMS[name]
        expected_dim = output_dim or NATIVE_DIMS[name]
        assert model.output_dim == expected_dim
        with torch.inference_mode():
            out = model.encode(x)
            pooled = model(x)
        _check_output(out, batch=2, dim=expected_dim)
        assert torch.allclose(pooled, out.pooled)
        if output_dim == 0:
            # Relative: random-init BN nets in eval mode shrink activations a lot
            # (EfficientNet's last map is ~1e-14), but images must stay apart.
            spread = (out.pooled[0] - out.pooled[1]).abs().max()
            assert spread > 1e-3 * out.pooled.abs().max(), "images must give different vectors"


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "mobilenet_v2",
                                  "mobilenet_v3_small", "realtime"])
def test_cnn_tokens_are_the_stride_32_grid(name: str) -> None:
    model = create_model(name, output_dim=0).eval()
    with torch.inference_mode():
        out = model.encode(_image(1, 64, 96))
        features = model.forward_features(_image(1, 64, 96))
    assert features.shape[-2:] == (2, 3)
    assert out.tokens.shape[1] == 6 and (out.token_level == 1).all()
    assert torch.allclose(out.token_uv[0], torch.tensor([1 / 6, 1 / 4]))
    # pooled is the mean of the tokens, the grid cells of forward_features
    assert torch.allclose(out.pooled, out.tokens.mean(dim=1), atol=1e-5)


@pytest.mark.parametrize("name", VITS)
def test_vit_non_square_input(name: str) -> None:
    model = _shared_model(name, 0)
    with torch.inference_mode():
        out = model.encode(_image(2, 64, 96))
        features = model.forward_features(_image(2, 64, 96))
    _check_output(out, batch=2, dim=NATIVE_DIMS[name])
    assert out.tokens.shape[1] == 4 * 6
    assert features.shape == (2, 1 + 24, NATIVE_DIMS[name])
    assert model.size_multiple == 16


def test_unknown_encoder_lists_known_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet1000")
    message = str(info.value)
    assert "resnet1000" in message
    assert all(name in message for name in ("resnet18", "vit_base", "rgbd_hybrid"))


def test_bad_inputs_and_options_raise_config_error() -> None:
    resnet = create_model("resnet18", output_dim=8).eval()
    with pytest.raises(ConfigError, match="multiples of 32, got 60x64"):
        resnet.encode(_image(1, 60, 64))
    with pytest.raises(ConfigError, match=r"expects \[B, 3, H, W\]"):
        resnet.encode(torch.randn(1, 1, 64, 64))
    with pytest.raises(ConfigError, match="multiples of 32"):
        resnet.logits(_image(1, 64, 72))
    vit = create_model("vit_tiny", output_dim=8).eval()
    with pytest.raises(ConfigError, match="multiples of 16, got 64x72"):
        vit.encode(_image(1, 64, 72))
    with pytest.raises(ConfigError, match="output_dim must be >= 0"):
        create_model("mobilenet_v2", output_dim=-1)
    with pytest.raises(ConfigError, match="unknown options"):
        create_model("resnet18", dropout=0.5)
    with pytest.raises(ConfigError, match="width_mult"):
        create_model("efficientnet_b0", width_mult=0.0)


def test_resnet_stages_logits_and_torchvision_layout() -> None:
    model = create_model("resnet18", output_dim=0).eval()
    x = _image(1, 64, 64)
    with torch.inference_mode():
        stages = model.get_intermediate_features(x)
        logits = model.logits(x)
        reference = model.backbone(x)
    assert [s.shape[-1] for s in stages] == [16, 8, 4, 2]
    assert [s.shape[1] for s in stages] == [64, 128, 256, 512]
    assert torch.allclose(logits, reference, atol=1e-5)
    plain = torchvision.models.resnet18(weights=None)
    model.backbone.load_state_dict(plain.state_dict(), strict=True)


def test_fpn_tokens_are_p5_then_p4() -> None:
    model = create_model("resnet18_fpn", output_dim=0).eval()
    x = _image(1, 64, 96)
    with torch.inference_mode():
        levels = model.pyramid(x)
        out = model.encode(x)
    assert [tuple(levels[k].shape[-2:]) for k in ("p2", "p3", "p4", "p5")] == [
        (16, 24), (8, 12), (4, 6), (2, 3)]
    assert all(levels[k].shape[1] == 256 for k in levels)
    assert out.tokens.shape[1] == 2 * 3 + 4 * 6
    assert out.token_level.tolist() == [1] * 6 + [2] * 24
    assert torch.allclose(out.pooled, torch.cat(
        [levels[k].mean(dim=(2, 3)) for k in ("p5", "p4", "p3")], dim=1), atol=1e-5)
    # first P5 token = [P5 cell, mean of its 2x2 P4 cells, mean of its 4x4 P3 cells]
    first = out.tokens[0, 0]
    assert torch.allclose(first[:256], levels["p5"][0, :, 0, 0], atol=1e-5)
    assert torch.allclose(first[256:512], levels["p4"][0, :, :2, :2].mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(first[512:], levels["p3"][0, :, :4, :4].mean(dim=(1, 2)), atol=1e-5)


def test_efficientnet_b0_strides_and_torchvision_layout() -> None:
    model = create_model("efficientnet_b0", output_dim=0).eval()
    x = _image(1, 64, 64)
    strides = []
    with torch.inference_mode():
        for stage in model.backbone.features:
            x = stage(x)
            strides.append(64 // x.shape[-1])
    assert strides == B0_FEATURE_STRIDES == [2, 2, 4, 8, 16, 16, 32, 32, 32]
    reference = torchvision.models.efficientnet_b0(weights=None).state_dict()
    own = model.backbone.state_dict()
    assert own.keys() == reference.keys()
    assert all(own[k].shape == reference[k].shape for k in own)
    # squeeze-excitation inside the MBConv blocks
    assert any(isinstance(m, torchvision.ops.SqueezeExcitation) for m in model.modules())


def test_efficientnet_multipliers() -> None:
    wide = create_model("efficientnet_b0", output_dim=0, width_mult=1.1, depth_mult=1.2).eval()
    base = create_model("efficientnet_b0", output_dim=0)
    assert wide.native_dim == 1408  # 4 x the scaled last stage width (320 x 1.1 = 352)
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in base.parameters())
    with torch.inference_mode():
        _check_output(wide.encode(_image()), batch=2, dim=1408)
    with pytest.raises(WeightsError, match="width_mult=1.0, depth_mult=1.0"):
        create_model("efficientnet_b0", weights="imagenet", width_mult=0.5)


def test_realtime_blocks_and_no_hidden_state() -> None:
    model = create_model("realtime", output_dim=0).eval()
    block = model.features[1]
    kinds = [type(m) for m in block.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d,
                                                                   nn.ReLU6))]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6] * 2
    assert block[0][0].groups == block[0][0].in_channels  # depthwise
    a, b = _image(1), _image(1)
    with torch.inference_mode():
        first, other, again = model(a), model(b), model(a)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3 * first.abs().max()


# -- ViT ---------------------------------------------------------------------------------
def test_vit_pos_embed_interpolation_is_identity_at_224() -> None:
    model = create_model("vit_tiny", output_dim=0).eval()
    pos = model.pos_embed.detach()
    resampled = resample_pos_embed(pos, (14, 14), (14, 14))
    assert torch.allclose(resampled, pos, atol=1e-5)
    assert model.pos_embed_for((14, 14)) is model.pos_embed
    x = _image(1, 224, 224)
    with torch.inference_mode():
        native = model.forward_features(x)
        tokens, _ = model.patch_embed(x)
        manual = torch.cat([model.cls_token, tokens], dim=1) + resampled
        for block in model.blocks:
            manual = block(manual)[0]
        manual = model.norm(manual)
    assert torch.allclose(native, manual, atol=1e-4)
    # other sizes resample the 14 x 14 grid; the CLS embedding is kept
    other = model.pos_embed_for((4, 6))
    assert other.shape == (1, 1 + 24, 192)
    assert torch.equal(other[:, 0], model.pos_embed[:, 0])


def test_vit_attention_maps() -> None:
    model = create_model("vit_tiny", output_dim=0).eval()
    x = _image(2, 64, 96)
    with torch.inference_mode():
        maps = model.get_attention_maps(x)
        cls_map = model.cls_attention_map(x)
        fast = model.forward_features(x)
        slow_tokens = model._run_blocks(x, attention_from=0)[0]
    assert len(maps) == 12
    for attention in maps:
        assert attention.shape == (2, 3, 25, 25)
        assert torch.allclose(attention.sum(dim=-1), torch.ones(2, 3, 25), atol=1e-5)
    assert cls_map.shape == (2, 4, 6)
    assert torch.allclose(cls_map.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)
    # the SDPA fast path and the explicit softmax path agree
    assert torch.allclose(fast, slow_tokens, atol=1e-4)


def test_vit_timm_parameter_names() -> None:
    keys = set(create_model("vit_small", output_dim=0).state_dict())
    for key in ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.11.norm1.weight",
                "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.3.norm2.bias",
                "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias", "norm.weight",
                "head.weight"):
        assert key in keys


# -- RGB-D hybrid ------------------------------------------------------------------------
def _depth(b: int = 2, h: int = 64, w: int = 64) -> torch.Tensor:
    depth_m = torch.rand(b, 1, h, w) * 4 + 0.3
    depth_m[:, :, :8] = 0.0  # unknown rows
    depth_m[:, :, -4:, :4] = float("nan")
    return depth_m


def _randomise(layer: nn.Linear) -> None:
    nn.init.normal_(layer.weight, std=0.05)
    nn.init.normal_(layer.bias, std=0.05)


@pytest.mark.parametrize("use_depth", [True, False])
@pytest.mark.parametrize("use_temporal", [True, False])
@pytest.mark.parametrize("num_slots", [0, 3])
def test_rgbd_hybrid_every_combination(use_depth: bool, use_temporal: bool,
                                       num_slots: int) -> None:
    model = create_model("rgbd_hybrid", output_dim=32, use_depth=use_depth,
                         use_temporal=use_temporal, temporal_window=4,
                         num_slots=num_slots).eval()
    expected_in = MOBILENET_V3_SMALL_DIM + (DEPTH_FEATURE_DIM if use_depth else 0)
    assert model.fusion[0].in_features == expected_in
    assert model.uses_depth is use_depth
    x = _image()
    history = torch.randn(2, 5, model.native_dim)
    with torch.inference_mode():
        for depth_m in (_depth(), None):
            for hist in (history, None):
                out, frame = model.encode_step(x, depth_m, hist)
                _check_output(out, batch=2, dim=32)
                assert frame.shape == (2, MOBILENET_V3_SMALL_DIM)
                assert out.tokens.shape[1] == 4 + num_slots
                assert (out.token_level[:4] == 1).all()
                assert (out.token_level[4:] == LEVEL_SLOT).all()
                again = model.encode(x, depth_m, hist)
                assert torch.equal(again.tokens, out.tokens), "eval must be deterministic"


def test_rgbd_hybrid_untrained_equals_rgb_backbone() -> None:
    model = create_model("rgbd_hybrid", output_dim=0, use_temporal=True).eval()
    x = _image()
    with torch.inference_mode():
        hybrid = model(x, _depth(), torch.randn(2, 3, model.native_dim))
        rgb = model.rgb(x)
    assert torch.allclose(hybrid, rgb, atol=1e-5)


def test_rgbd_hybrid_uses_depth_and_history() -> None:
    model = create_model("rgbd_hybrid", output_dim=0, use_temporal=True, temporal_window=3)
    model.eval()
    _randomise(model.fusion[-1])
    _randomise(model.temporal_out)
    x, depth_m = _image(), _depth()
    history = torch.randn(2, 2, model.native_dim)
    with torch.inference_mode():
        with_depth = model(x, depth_m)
        without = model(x, None)
        farther = model(x, depth_m + 1.0)
        with_history = model(x, depth_m, history)
        # only the newest temporal_window - 1 = 2 entries count
        longer = torch.cat([torch.randn(2, 4, model.native_dim), history], dim=1)
        with_longer = model(x, depth_m, longer)
        frame = model.frame_embedding(x, depth_m)
        _, step_frame = model.encode_step(x, depth_m, history)
        resized = model(x, torch.nn.functional.interpolate(depth_m, size=(32, 32)))
    assert not torch.allclose(with_depth, without, atol=1e-4)
    assert not torch.allclose(with_depth, farther, atol=1e-4)
    assert not torch.allclose(with_depth, with_history, atol=1e-4)
    assert torch.allclose(with_history, with_longer, atol=1e-5)
    assert torch.allclose(frame, step_frame, atol=1e-6)
    assert torch.isfinite(resized).all()


def test_rgbd_hybrid_other_backbones_and_errors() -> None:
    x = _image()
    for backbone, native in (("vit_tiny", 192), ("resnet18_fpn", 768)):
        model = create_model("rgbd_hybrid", output_dim=16, rgb_backbone=backbone,
                             num_slots=2).eval()
        assert model.native_dim == native
        assert model.size_multiple == model.rgb.size_multiple
        with torch.inference_mode():
            _check_output(model.encode(x, _depth()), batch=2, dim=16)
    model = create_model("rgbd_hybrid", output_dim=16, use_temporal=True).eval()
    with pytest.raises(ConfigError, match=r"depth must be \[B=2, 1, H, W\]"):
        model.encode(x, torch.rand(2, 64, 64))
    with pytest.raises(ConfigError, match=r"history must be \[B=2, T, D=576\]"):
        model.encode(x, None, torch.randn(2, 3, 16))
    with pytest.raises(ConfigError, match="itself"):
        create_model("rgbd_hybrid", rgb_backbone="rgbd_hybrid")
    with pytest.raises(UnknownModelError, match="mobilenet_v2"):
        create_model("rgbd_hybrid", rgb_backbone="mobilenet_v9")
    with pytest.raises(ConfigError, match="temporal_window"):
        create_model("rgbd_hybrid", temporal_window=0)
    with pytest.raises(WeightsError, match="rgb_weights='imagenet'"):
        create_model("rgbd_hybrid", weights="imagenet")


def test_slot_attention_competes_over_slots() -> None:
    slots_module = SlotAttention(num_slots=4, dim=32)
    inputs = torch.randn(2, 10, 32)
    slots_module.eval()
    slots, attention = slots_module(inputs)
    again, _ = slots_module(inputs)
    assert slots.shape == (2, 4, 32) and attention.shape == (2, 4, 10)
    assert torch.equal(slots, again)
    assert torch.allclose(attention.sum(dim=1), torch.ones(2, 10), atol=1e-5)
    assert not torch.allclose(slots[:, 0], slots[:, 1]), "slots must not collapse"
    slots_module.train()
    noisy, _ = slots_module(inputs)
    assert not torch.allclose(noisy, slots)
    assert math.isclose(float(attention[0, :, 0].sum().detach()), 1.0, abs_tol=1e-5)
