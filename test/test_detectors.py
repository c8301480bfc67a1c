"""Detectors: box mapping, YOLO decoding, the real SSD model on real footage,
torchvision detectors, the trainable YOLO-style head, and bad input."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest
import torch
from torchvision.models import detection as tvd
from torchvision.ops import box_iou

from conftest import asset_path
from robot_vision_ros.core.detections import Detections
from robot_vision_ros.core.errors import (ConfigError, InputError, ModelError, UnknownModelError,
                                          WeightsError)
from robot_vision_ros.models.detection.decode import (decode_yolo, letterbox, postprocess,
                                                      stretch_resize)
from robot_vision_ros.models.detection.labels import COCO_80, COCO_91, load_class_names
from robot_vision_ros.models.detection.onnx_detector import OnnxDetector
from robot_vision_ros.models.detection.torchvision_detectors import coco_weights_path
from robot_vision_ros.models.detection.yolo import train_step
from robot_vision_ros.models.registry import create_model, list_models

TV_DETECTORS = ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn",
                "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn"]


def assert_valid(dets: Detections, hw, score_threshold: float, max_detections: int,
                 num_classes: int) -> None:
    """Every invariant the Detections contract promises a caller."""
    h, w = hw
    assert len(dets) <= max_detections
    b = dets.boxes_xyxy
    assert np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= w) and np.all(b[:, 1] >= 0) \
        and np.all(b[:, 3] <= h)
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
    assert np.all(dets.scores >= score_threshold) and np.all(dets.scores <= 1.0)
    assert np.all(np.diff(dets.scores) <= 1e-6), "not sorted by score"
    assert np.all((dets.class_ids >= 0) & (dets.class_ids < num_classes))


# -- letterbox / resize mapping -------------------------------------------------------------
def test_letterbox_round_trip_and_pixels():
    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[100:200, 300:420] = 255  # a white block at known source pixels
    image, tf = letterbox(rgb, (320, 320))
    assert image.shape == (320, 320, 3)
    assert (tf.scale_x, tf.scale_y, tf.pad_x, tf.pad_y) == (0.5, 0.5, 0.0, 40.0)
    assert np.all(image[:40] == 114) and np.all(image[280:] == 114)  # grey bars top/bottom
    block = tf.to_input(torch.tensor([[300.0, 100.0, 420.0, 200.0]]))[0].round().int().tolist()
    assert block == [150, 90, 210, 140]
    ys, xs = np.nonzero(image[..., 0] > 200)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(block)

    boxes = torch.tensor([[0.0, 0.0, 640.0, 480.0], [12.5, 33.0, 101.0, 250.25]])
    back = tf.to_source(tf.to_input(boxes))
    assert torch.allclose(back, boxes, atol=1e-4)
    # Boxes running into the padding are clipped to the image.
    clipped = tf.to_source(torch.tensor([[-10.0, 0.0, 330.0, 320.0]]))
    assert clipped.tolist() == [[0.0, 0.0, 640.0, 480.0]]


def test_letterbox_odd_sizes_and_stretch_round_trip():
    rgb = np.zeros((101, 333, 3), np.uint8)
    image, tf = letterbox(rgb, (256, 192))
    assert image.shape == (256, 192, 3)
    boxes = torch.tensor([[1.0, 2.0, 300.0, 99.0]])
    assert torch.allclose(tf.to_source(tf.to_input(boxes)), boxes, atol=1e-3)
    image, tf = stretch_resize(rgb, (300, 300))
    assert image.shape == (300, 300, 3) and tf.pad_x == tf.pad_y == 0
    assert torch.allclose(tf.to_source(tf.to_input(boxes)), boxes, atol=1e-3)


# -- YOLOv8 layout decoding ------------------------------------------------------------------
def synthetic_yolo_output(num_classes: int = 3, num_anchors: int = 50) -> torch.Tensor:
    """``[1, 4+C, N]`` with five known boxes (cx, cy, w, h) among low-score noise."""
    gen = torch.Generator().manual_seed(0)
    pred = torch.zeros(1, 4 + num_classes, num_anchors)
    pred[0, :4] = torch.rand(4, num_anchors, generator=gen) * 300 + 20
    pred[0, 4:] = torch.rand(num_classes, num_anchors, generator=gen) * 0.2  # below 0.3
    known = [  # cx, cy, w, h, class, score
        (200, 300, 100, 200, 0, 0.90),  # A
        (204, 302, 100, 196, 0, 0.80),  # duplicate of A, same class: NMS removes it
        (210, 310, 100, 200, 1, 0.85),  # overlaps A, other class: per-class NMS keeps it
        (500, 200, 60, 60, 2, 0.70),  # alone
        (450, 450, 40, 40, 2, 0.25),  # below the score threshold
    ]
    for i, (cx, cy, w, h, cls, score) in enumerate(known):
        pred[0, :4, i] = torch.tensor([cx, cy, w, h], dtype=torch.float32)
        pred[0, 4:, i] = 0.01
        pred[0, 4 + cls, i] = score
    return pred


def test_decode_yolo_nms_per_class_and_unletterbox():
    pred = synthetic_yolo_output()
    _, tf = letterbox(np.zeros((480, 640, 3), np.uint8), (640, 640))  # pad_y = 80
    boxes, scores, class_ids = decode_yolo(pred, 0.3)
    assert len(scores) == 4  # the 25% box and the noise are gone before NMS
    dets = postprocess(boxes, scores, class_ids, tf, 0.3, 0.5, 100)
    assert dets.class_ids.tolist() == [0, 1, 2]
    np.testing.assert_allclose(dets.scores, [0.90, 0.85, 0.70], atol=1e-6)
    np.testing.assert_allclose(dets.boxes_xyxy, [[150, 120, 250, 320], [160, 130, 260, 330],
                                                 [470, 90, 530, 150]], atol=1e-4)
    # max_detections keeps the best ones.
    top = postprocess(boxes, scores, class_ids, tf, 0.3, 0.5, 2)
    assert top.class_ids.tolist() == [0, 1]
    with pytest.raises(ModelError, match=r"\[1, 4\+C, N\]"):
        decode_yolo(torch.zeros(1, 4, 10), 0.3)


class ConstantYoloModel(torch.nn.Module):
    """A real network graph that emits a fixed YOLOv8-layout tensor."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("pred", pred)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pred + 0.0 * images.mean()


def export_onnx(module: torch.nn.Module, path: Path, size) -> None:
    pytest.importorskip("onnx", reason="torch.onnx.export needs the 'onnx' package "
                        "(pip install onnx) to write the test model")
    with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript, but warns
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, *size),), str(path), dynamo=False,
                          input_names=["images"], output_names=["output0"], opset_version=17)


def test_onnx_yolo_layout_through_onnxruntime(tmp_path):
    pred = synthetic_yolo_output()
    path = tmp_path / "yolo_const.onnx"
    export_onnx(ConstantYoloModel(pred), path, (640, 640))
    det = create_model("onnx", kind="detector", path=str(path), class_names=["a", "b", "c"])
    assert det.layout == "yolo" and det.input_hw == (640, 640)
    assert det.class_names == ["a", "b", "c"]
    dets = det.detect(np.zeros((480, 640, 3), np.uint8))
    assert dets.class_ids.tolist() == [0, 1, 2]
    np.testing.assert_allclose(dets.boxes_xyxy, [[150, 120, 250, 320], [160, 130, 260, 330],
                                                 [470, 90, 530, 150]], atol=1e-3)
    # The same boxes land on a frame of another size through the letterbox.
    small = det.detect(np.zeros((240, 320, 3), np.uint8))
    np.testing.assert_allclose(small.boxes_xyxy, dets.boxes_xyxy / 2, atol=1e-3)
    with pytest.raises(ConfigError, match="tf_ssd"):
        OnnxDetector(path, layout="tf_ssd")
    with pytest.raises(ConfigError, match="input_size"):
        OnnxDetector(path, input_size=320)
    with pytest.raises(ConfigError, match="class_names has 2 names"):
        OnnxDetector(path, class_names=["a", "b"])


# -- the real TF-API SSD model on real footage -----------------------------------------------
@pytest.fixture(scope="module")
def vtest_frames() -> List[np.ndarray]:
    cap = cv2.VideoCapture(str(asset_path("vtest.avi")))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    frames = []
    for _ in range(11):  # frames 100..110
        ok, bgr = cap.read()
        assert ok, "vtest.avi ended early"
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


@pytest.fixture(scope="module")
def ssd() -> OnnxDetector:
    return create_model("onnx", kind="detector", path=str(asset_path("ssdlite_person.onnx")),
                        intra_op_num_threads=2)


def test_ssd_finds_people_in_vtest(ssd, vtest_frames):
    assert ssd.layout == "tf_ssd" and ssd.input_hw == (300, 300)
    counts = []
    for rgb in vtest_frames:
        dets = ssd.detect(rgb)
        assert_valid(dets, (576, 768), 0.3, 100, len(COCO_91))
        assert {ssd.class_names[c] for c in dets.class_ids} == {"person"}
        # People in this footage are upright: taller than wide, and not tiny.
        heights = dets.boxes_xyxy[:, 3] - dets.boxes_xyxy[:, 1]
        widths = dets.boxes_xyxy[:, 2] - dets.boxes_xyxy[:, 0]
        assert np.all(heights > widths) and np.all(heights > 30)
        counts.append(len(dets))
    assert min(counts) >= 3 and np.mean(counts) >= 4, counts


def test_ssd_boxes_map_back_from_a_resized_frame(ssd, vtest_frames):
    rgb = vtest_frames[5]
    full = ssd.detect(rgb)
    small = ssd.detect(cv2.resize(rgb, (512, 384), interpolation=cv2.INTER_AREA))
    assert len(full) >= 3
    back = small.boxes_xyxy * 1.5  # 768 / 512
    matched = 0
    for box in full.boxes_xyxy:
        err = np.abs(back - box).max(axis=1)
        matched += int(err.min() <= 4.0)
    assert matched >= len(full) - 1, (full.boxes_xyxy, back)


def test_ssd_threshold_and_max_detections(vtest_frames):
    path = str(asset_path("ssdlite_person.onnx"))
    strict = OnnxDetector(path, score_threshold=0.6, max_detections=2)
    dets = strict.detect(vtest_frames[0])
    assert 1 <= len(dets) <= 2 and np.all(dets.scores >= 0.6)


# -- errors --------------------------------------------------------------------------------
def test_onnx_missing_or_broken_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(WeightsError, match=str(missing)):
        create_model("onnx", kind="detector", path=str(missing))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="cannot load"):
        OnnxDetector(broken)
    with pytest.raises(ConfigError, match="layout"):
        OnnxDetector(asset_path("ssdlite_person.onnx"), layout="detr")
    with pytest.raises(ConfigError, match="needs path"):
        create_model("onnx", kind="detector")


def test_wrong_image_raises_input_error(ssd):
    for bad in (np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8),
                np.zeros((0, 64, 3), np.uint8)):
        with pytest.raises(InputError, match=r"\[H, W, 3\]") as info:
            ssd.detect(bad)
        assert info.value.reason == "bad_size"
    with pytest.raises(InputError, match="uint8") as info:
        ssd.detect(np.zeros((64, 64, 3), np.float32))
    assert info.value.reason == "bad_dtype"


@pytest.mark.parametrize("kwargs, name", [
    ({"score_threshold": 1.5}, "score_threshold"),
    ({"score_threshold": "high"}, "score_threshold"),
    ({"nms_iou": 0.0}, "nms_iou"),
    ({"max_detections": 0}, "max_detections"),
    ({"max_detections": 2.5}, "max_detections"),
    ({"input_size": (300, -1)}, "input_size"),
    ({"intra_op_num_threads": -1}, "intra_op_num_threads"),
    ({"class_names": "/no/such/labels.txt"}, "class_names"),
])
def test_bad_arguments_raise_config_error(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        OnnxDetector(asset_path("ssdlite_person.onnx"), **kwargs)


def test_unknown_detector_name():
    with pytest.raises(UnknownModelError, match="unknown detector 'yolov99'.*onnx"):
        create_model("yolov99", kind="detector")
    assert set(TV_DETECTORS + ["onnx", "yolo_head"]) <= set(list_models("detector"))


# -- labels --------------------------------------------------------------------------------
def test_labels(tmp_path):
    assert COCO_91 == tvd.SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"]
    assert len(COCO_80) == 80 and COCO_80[0] == "person" and COCO_80[-1] == "toothbrush"
    labels = tmp_path / "labels.txt"
    labels.write_text("cup\nrobot arm\n\n")
    assert load_class_names(str(labels)) == ["cup", "robot arm"]
    assert load_class_names(["a", "b"]) == ["a", "b"]
    assert load_class_names(None) is None and load_class_names("") is None
    assert load_class_names("coco80") == COCO_80
    labels.write_text("cup\n\nplate\n")
    with pytest.raises(ConfigError, match="blank line 2"):
        load_class_names(labels)


# -- torchvision detectors -----------------------------------------------------------------
@pytest.mark.parametrize("name", TV_DETECTORS)
def test_torchvision_detector_random_weights(name):
    torch.manual_seed(0)
    det = create_model(name, kind="detector", weights="", score_threshold=0.0,
                       max_detections=20, input_size=128)
    assert det.class_names == COCO_91
    rgb = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    dets = det.detect(rgb)
    assert len(dets) > 0
    assert_valid(dets, (96, 128), 0.0, 20, len(COCO_91))


def test_torchvision_coco_weights_missing_names_path_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    file_name = "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth"
    expected = tmp_path / "hub" / "checkpoints" / file_name
    assert coco_weights_path(name) == expected
    with pytest.raises(WeightsError) as info:
        create_model(name, kind="detector", weights="coco")
    assert str(expected) in str(info.value)
    assert tvd.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1.url in str(info.value)


def test_torchvision_weights_from_file_and_coco_cache(tmp_path, monkeypatch):
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    torch.manual_seed(1)
    source = create_model(name, kind="detector", score_threshold=0.0, input_size=128)
    path = tmp_path / "frcnn.pth"
    # As torchvision's COCO file: FrozenBatchNorm2d has no num_batches_tracked.
    state = {k: v for k, v in source.model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    rgb = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    expected = source.detect(rgb)
    torch.manual_seed(2)
    loaded = create_model(name, kind="detector", weights=str(path), score_threshold=0.0,
                          input_size=128)
    got = loaded.detect(rgb)
    np.testing.assert_allclose(got.boxes_xyxy, expected.boxes_xyxy, atol=1e-4)
    np.testing.assert_array_equal(got.class_ids, expected.class_ids)
    # 'coco' finds the same file in the torch cache under torchvision's file name.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    coco_weights_path(name).parent.mkdir(parents=True)
    path.rename(coco_weights_path(name))
    cached = create_model(name, kind="detector", weights="coco", score_threshold=0.0,
                          input_size=128)
    np.testing.assert_allclose(cached.detect(rgb).boxes_xyxy, expected.boxes_xyxy, atol=1e-4)
    # A state dict of another model is refused with the keys that do not fit.
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(WeightsError, match="does not fit"):
        create_model(name, kind="detector", weights=str(other))


# -- the trainable YOLO-style head ---------------------------------------------------------
RECT_XYXY = np.array([[20.0, 12.0, 48.0, 44.0]], np.float32)


def rectangle_image() -> np.ndarray:
    rgb = np.full((64, 64, 3), 40, np.uint8)
    x0, y0, x1, y1 = RECT_XYXY[0].astype(int)
    rgb[y0:y1, x0:x1] = (220, 30, 30)
    return rgb


@pytest.fixture(scope="module")
def trained_yolo() -> Dict[str, object]:
    """yolo_head trained for a few dozen SGD steps on one rectangle."""
    torch.manual_seed(0)
    det = create_model("yolo_head", kind="detector", num_classes=1, class_names=["rect"],
                       input_size=64, backbone="resnet18", head_channels=32)
    rgb = rectangle_image()
    x, target = det.training_sample(rgb, RECT_XYXY, np.array([0]))
    optimizer = torch.optim.SGD(det.model.parameters(), lr=0.01, momentum=0.9)
    losses = [train_step(det, optimizer, x, [target])["loss"] for _ in range(30)]
    return {"detector": det, "losses": losses, "rgb": rgb}


def test_yolo_head_training_learns_the_rectangle(trained_yolo):
    losses = trained_yolo["losses"]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
    det = trained_yolo["detector"]
    dets = det.detect(trained_yolo["rgb"])
    assert len(dets) >= 1 and dets.class_ids[0] == 0
    iou = box_iou(torch.from_numpy(dets.boxes_xyxy[:1]), torch.from_numpy(RECT_XYXY))
    assert float(iou) > 0.5, (dets, float(iou))


def test_yolo_head_exports_to_the_onnx_yolo_layout(trained_yolo, tmp_path):
    det = trained_yolo["detector"]
    path = tmp_path / "yolo_head.onnx"
    export_onnx(det.export_module(), path, det.input_hw)
    onnx_det = create_model("onnx", kind="detector", path=str(path), class_names=["rect"])
    assert onnx_det.layout == "yolo" and onnx_det.input_hw == (64, 64)
    rgb = trained_yolo["rgb"]
    ref, got = det.detect(rgb), onnx_det.detect(rgb)
    assert len(got) == len(ref) >= 1
    np.testing.assert_allclose(got.boxes_xyxy, ref.boxes_xyxy, atol=0.05)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-3)


def test_yolo_head_loss_without_objects_and_bad_arguments():
    det = create_model("yolo_head", kind="detector", backbone="mobilenet_v3_large",
                       input_size=64, head_channels=16)
    assert det.class_names == COCO_80
    x, _ = det.preprocess(np.zeros((48, 64, 3), np.uint8))
    out = det.model(x)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = det.loss(out, [empty])
    assert float(losses["box"]) == 0.0 and float(losses["loss"].detach()) > 0.0
    losses["loss"].backward()  # a frame without objects still trains the scores down
    dets = det.detect(np.zeros((48, 64, 3), np.uint8))
    assert_valid(dets, (48, 64), 0.3, 100, 80)
    with pytest.raises(ConfigError, match="multiple of 32"):
        create_model("yolo_head", kind="detector", input_size=100)
    with pytest.raises(ConfigError, match="backbone"):
        create_model("yolo_head", kind="detector", backbone="vgg11")
    with pytest.raises(WeightsError, match="missing.pth"):
        create_model("yolo_head", kind="detector", input_size=64, weights="/tmp/missing.pth")
