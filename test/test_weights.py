"""Weight loading: real ImageNet MobileNetV2 weights, the torch cache, bad files."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Dict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from skimage import data as skdata
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from robot_vision_ros.core.errors import WeightsError
from robot_vision_ros.models import create_model, load_weights
from robot_vision_ros.models.encoders.vit import VisionTransformer

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
EGYPTIAN_CAT, ESPRESSO = 285, 967
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _preprocess(image) -> torch.Tensor:
    """HxWx3 uint8 -> normalised [1, 3, 224, 224] (plain torch, as the pipeline does)."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float().unsqueeze(0)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x / 255.0 - MEAN) / STD


def _crops(image):
    """Two different, overlapping crops (top-left and bottom-right 85 %)."""
    h, w = image.shape[:2]
    return image[: int(h * 0.85), : int(w * 0.85)], image[int(h * 0.15):, int(w * 0.15):]


@pytest.fixture
def mobilenet_file(asset) -> Path:
    """The ImageNet MobileNetV2 state dict from the shared assets (skips if missing)."""
    return asset(MOBILENET_V2_FILE)


def _state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- real ImageNet weights ------------------------------------------------------------------
def test_imagenet_mobilenet_v2_features_and_logits(mobilenet_file: Path) -> None:
    model = create_model("mobilenet_v2", output_dim=0, weights=str(mobilenet_file)).eval()
    cat, coffee = skdata.chelsea(), skdata.coffee()
    images = [cat, coffee, *_crops(cat), *_crops(coffee)]
    with torch.inference_mode():
        x = torch.cat([_preprocess(im) for im in images])
        pooled = F.normalize(model(x), dim=1)
        top1 = model.logits(x).argmax(dim=1).tolist()
    sim = pooled @ pooled.T
    cat_vs_coffee = float(sim[0, 1])
    cat_crops, coffee_crops = float(sim[2, 3]), float(sim[4, 5])
    cat_crop_vs_coffee_crop = float(sim[2:4, 4:6].max())
    print(f"cosine: cat/coffee {cat_vs_coffee:.3f}, cat crops {cat_crops:.3f}, "
          f"coffee crops {coffee_crops:.3f}, cat crop/coffee crop max "
          f"{cat_crop_vs_coffee_crop:.3f}; top-1 {top1}")
    assert model.native_dim == 1280 and pooled.shape == (6, 1280)
    assert cat_crops > 0.85 and coffee_crops > 0.85
    assert cat_vs_coffee < 0.6 and cat_crop_vs_coffee_crop < 0.6
    assert top1 == [EGYPTIAN_CAT, ESPRESSO, EGYPTIAN_CAT, EGYPTIAN_CAT, ESPRESSO, ESPRESSO]


def test_imagenet_spec_reads_the_torch_cache(mobilenet_file: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from_file = create_model("mobilenet_v2", output_dim=0, weights=str(mobilenet_file))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / MOBILENET_V2_FILE).symlink_to(mobilenet_file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from_cache = create_model("mobilenet_v2", output_dim=16, weights="imagenet")
    report = load_weights(from_cache, "imagenet")
    assert report.source == str(checkpoints / MOBILENET_V2_FILE)
    assert report.target == "backbone"
    assert report.missing_keys == ["proj.weight", "proj.bias"]
    assert report.unexpected_keys == []
    reference = from_file.backbone.state_dict()
    for key, value in from_cache.backbone.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_imagenet_spec_without_file_names_the_path(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / MOBILENET_V2_FILE
    with pytest.raises(WeightsError) as info:
        create_model("mobilenet_v2", weights="imagenet")
    message = str(info.value)
    assert str(expected) in message and MOBILENET_V2_URL in message
    assert "file path" in message
    with pytest.raises(WeightsError, match=r"hub/checkpoints/vit_b_16-c867db91\.pth"):
        create_model("vit_base", weights="imagenet")
    for vit in ("vit_tiny", "vit_small"):
        with pytest.raises(WeightsError, match="torchvision has no ImageNet weights.*timm"):
            create_model(vit, weights="imagenet")


# -- files that do not fit ----------------------------------------------------------------------
def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_weights.pth"
    with pytest.raises(WeightsError, match="no_such_weights.pth does not exist.*torch.save"):
        create_model("resnet18", weights=str(missing))


def test_removed_key_is_reported(mobilenet_file: Path, tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    state = torch.load(mobilenet_file, map_location="cpu", weights_only=True)
    del state["features.3.conv.2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    model = create_model("mobilenet_v2", output_dim=0)
    before = model.backbone.features[4].conv[2].weight.clone()
    with pytest.raises(WeightsError, match=r"features\.3\.conv\.2\.weight.*strict=False"):
        load_weights(model, str(path))
    assert torch.equal(model.backbone.features[4].conv[2].weight, before), "refused = untouched"
    with caplog.at_level(logging.WARNING, logger="robot_vision_ros.models.weights"):
        report = load_weights(model, str(path), strict=False)
    assert report.missing_keys == ["backbone.features.3.conv.2.weight"]
    assert "backbone.features.3.conv.2.weight" in caplog.text
    loaded = model.backbone.state_dict()
    assert torch.equal(loaded["features.4.conv.2.weight"], state["features.4.conv.2.weight"])


def test_shape_mismatch_lists_keys(mobilenet_file: Path, tmp_path: Path) -> None:
    state = torch.load(mobilenet_file, map_location="cpu", weights_only=True)
    state["classifier.1.weight"] = torch.zeros(10, 1280)
    state["classifier.1.bias"] = torch.zeros(10)
    path = tmp_path / "ten_classes.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"2 keys: classifier\.1\.weight: file \(10, 1280\) "
                                           r"vs model \(1000, 1280\)"):
        create_model("mobilenet_v2", weights=str(path))
    with pytest.raises(WeightsError, match="none of its .* keys .* fit 'resnet18'"):
        create_model("resnet18", weights=str(mobilenet_file))


class _WritesMarker:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_running_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"state_dict": {"conv1.weight": _WritesMarker(marker)}}, zipped)
    paths = [zipped]
    for protocol in (2, pickle.DEFAULT_PROTOCOL):  # torch's legacy (non-zip) format
        raw = tmp_path / f"evil_raw_{protocol}.pth"
        with raw.open("wb") as f:
            pickle.dump({"conv1.weight": _WritesMarker(marker)}, f, protocol=protocol)
        paths.append(raw)
    for path in paths:
        with pytest.raises(WeightsError, match="refused it.*could run code"):
            create_model("resnet18", weights=str(path))
    assert not marker.exists()


def test_invalid_files_are_weights_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a weights file")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    for path, pattern in ((text, "is not a weights file"),
                          (empty, "is not a weights file torch.load can read"),
                          (listed, "holds no state dict")):
        with pytest.raises(WeightsError, match=pattern):
            create_model("resnet18", weights=str(path))


# -- layouts -------------------------------------------------------------------------------------
def test_checkpoint_dicts_and_whole_encoder_round_trip(mobilenet_file: Path,
                                                       tmp_path: Path) -> None:
    state = torch.load(mobilenet_file, map_location="cpu", weights_only=True)
    wrapped = tmp_path / "ddp_checkpoint.pth"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    model = create_model("mobilenet_v2", output_dim=8, weights=str(wrapped)).eval()
    assert torch.equal(model.backbone.features[0][0].weight, state["features.0.0.weight"])

    saved = tmp_path / "encoder.pth"
    torch.save({"state_dict": model.state_dict()}, saved)
    restored = create_model("mobilenet_v2", output_dim=8)
    report = load_weights(restored, str(saved))
    assert report.target == "encoder" and report.missing_keys == []
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(restored.eval()(x), model(x))


def test_torchvision_vit_state_dict_is_renamed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = TorchvisionViT(image_size=224, patch_size=16, num_layers=2, num_heads=3,
                               hidden_dim=192, mlp_dim=768).eval()
    path = tmp_path / "torchvision_vit.pth"
    torch.save(reference.state_dict(), path)
    model = VisionTransformer(embed_dim=192, depth=2, num_heads=3, output_dim=0).eval()
    model.name = "vit_2_blocks"
    report = load_weights(model, str(path))
    assert report.missing_keys == [] and report.unexpected_keys == []
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(model.logits(x), reference(x), atol=1e-4)
    # a timm-layout file trained at 384 (24 x 24 grid) is resampled to 14 x 14 on load
    timm_state = model.state_dict()
    timm_state["pos_embed"] = torch.randn(1, 1 + 24 * 24, 192)
    torch.save(timm_state, path)
    assert load_weights(model, str(path)).missing_keys == []
    assert model.pos_embed.shape == (1, 197, 192)


def test_torchvision_resnet_file_into_fpn_reports_the_fpn(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = create_model("resnet18_fpn", output_dim=0)
    report = load_weights(model, str(path))
    assert report.target == "backbone" and report.unexpected_keys == []
    assert report.missing_keys and all(k.startswith("fpn.") for k in report.missing_keys)
    assert "fpn.layer_blocks.3.0.weight" in report.missing_keys


def test_hybrid_rgb_weights_reach_the_rgb_backbone(mobilenet_file: Path) -> None:
    hybrid = create_model("rgbd_hybrid", output_dim=0, rgb_backbone="mobilenet_v2",
                          rgb_weights=str(mobilenet_file), use_temporal=True).eval()
    plain = create_model("mobilenet_v2", output_dim=0, weights=str(mobilenet_file)).eval()
    x = _preprocess(skdata.chelsea())
    depth_m = torch.full((1, 1, 224, 224), 1.5)
    with torch.inference_mode():
        # untrained fusion/temporal layers are zero-initialised residuals
        assert torch.allclose(hybrid(x, depth_m), plain(x), atol=1e-5)
        assert hybrid.rgb.logits(x).argmax().item() == EGYPTIAN_CAT
