"""INT8 of the depth and detection heads, each with its own fidelity guard.

* Depth (``unet``): torch FX static INT8 of every traceable piece (the five
  encoder stages, each decoder block's convolutions, the head convolution),
  calibrated on the calibration frames. The U-Net's own ``forward`` (shape
  checks, resizing to the skip's size, concatenation) stays in Python and
  float, since FX cannot trace its data-dependent sizes; each piece gets a
  quantise/dequantise at its edges. Guard: AbsRel of the INT8 prediction
  against the fp32 one (:func:`depth_absrel`).
* Detection (``onnx``): ONNX Runtime static QDQ INT8 of the detector's graph,
  calibrated on the detector's own input (the frames resized as it resizes
  them). Only Conv/MatMul are quantised: the box decoding and NMS in the
  graph stay float. Guard: box agreement (:func:`box_agreement`, an F1).
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.ops
from torch import nn
from torch.ao.quantization import QConfigMapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from ..core.detections import Detections
from ..core.errors import ConfigError, ModelError
from .calibration import normalise_frames
from .fidelity import eval_mode
from .ort_quantize import DEFAULT_CALIBRATE_METHOD, quantize_onnx_static
from .quantize import FX_TRACE_LOCK, _require_x86_engine, int8_qconfig

LOG = logging.getLogger(__name__)

#: Operator types of a detector graph that are quantised.
DETECTOR_OPS: Tuple[str, ...] = ("Conv", "MatMul")
MATCH_IOU = 0.5


# -- depth --------------------------------------------------------------------------------
def _depth_pieces(network: nn.Module) -> List[Tuple[nn.Module, str]]:
    """(parent, attribute) of every traceable piece of a U-Net."""
    stages = getattr(network, "stages", None)
    decoder = getattr(network, "decoder", None)
    if stages is None or decoder is None or not hasattr(network, "head"):
        raise ConfigError(f"depth INT8 supports the unet depth network, not "
                          f"{type(network).__name__}")
    pieces: List[Tuple[nn.Module, str]] = [(stages, str(i)) for i in range(len(stages))]
    pieces += [(block, "convs") for block in decoder]
    pieces.append((network, "head"))
    return pieces


def _piece_inputs(network: nn.Module, pieces: Sequence[Tuple[nn.Module, str]],
                  example: torch.Tensor) -> List[torch.Tensor]:
    """The input each piece sees on ``example`` (recorded with forward pre-hooks)."""
    seen: Dict[int, torch.Tensor] = {}
    handles = []
    for index, (parent, name) in enumerate(pieces):
        def hook(_module, args, index=index):
            seen.setdefault(index, args[0].detach())
        handles.append(getattr(parent, name).register_forward_pre_hook(hook))
    try:
        with eval_mode(network):
            network(example)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[i] for i in range(len(pieces))]


def quantize_depth_int8(network: nn.Module, calibration_inputs: torch.Tensor,
                        batch: int = 4) -> nn.Module:
    """Static INT8 copy of a U-Net depth network, calibrated on normalised inputs.

    ``calibration_inputs``: ``[N, 3, H, W]`` CPU frames preprocessed as the
    depth head preprocesses them. The copy keeps the network's class and
    ``forward``; the input model is not changed.
    """
    if calibration_inputs.dim() != 4 or len(calibration_inputs) == 0:
        raise ConfigError(f"depth INT8 needs calibration inputs [N, 3, H, W], got "
                          f"{tuple(calibration_inputs.shape)}")
    _require_x86_engine()
    model = copy.deepcopy(network).cpu().float().eval()
    pieces = _depth_pieces(model)
    examples = _piece_inputs(model, pieces, calibration_inputs[:1])
    mapping = QConfigMapping().set_global(int8_qconfig())
    try:
        for (parent, name), example in zip(pieces, examples):
            with FX_TRACE_LOCK:
                setattr(parent, name, prepare_fx(getattr(parent, name), mapping,
                                                 example_inputs=(example,)))
        with eval_mode(model):
            for start in range(0, len(calibration_inputs), batch):
                model(calibration_inputs[start:start + batch])
        for parent, name in pieces:
            setattr(parent, name, convert_fx(getattr(parent, name)))
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        raise ModelError(f"depth INT8 failed: {type(exc).__name__}: {exc}") from exc
    model.compression = "int8_static"
    return model.eval()


def depth_absrel(reference: nn.Module, candidate: nn.Module, inputs: torch.Tensor,
                 batch: int = 4) -> float:
    """Mean ``|candidate - reference| / reference`` of the two depth predictions (metres)."""
    errors = []
    with eval_mode(reference, candidate):
        for start in range(0, len(inputs), batch):
            x = inputs[start:start + batch]
            ref = reference(x).float()
            cand = candidate(x).float()
            valid = torch.isfinite(ref) & (ref > 0)
            errors.append(((cand - ref).abs() / ref.clamp_min(1e-6))[valid])
    return float(torch.cat(errors).mean())


# -- detection ----------------------------------------------------------------------------
def detector_inputs(detector: Any, rgb_frames: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The arrays ``detector`` (an OnnxDetector) feeds its graph for these RGB frames."""
    from ..models.detection.decode import letterbox, stretch_resize

    inputs = []
    for rgb in rgb_frames:
        if detector.layout == "yolo":
            image, _ = letterbox(rgb, detector.input_hw)
            blob = np.ascontiguousarray(image.transpose(2, 0, 1)[None],
                                        dtype=detector._input_dtype)
            blob /= detector._input_dtype(255.0)
        else:
            image, _ = stretch_resize(rgb, detector.input_hw)
            blob = np.ascontiguousarray(image[None], dtype=detector._input_dtype)
        inputs.append(blob)
    return inputs


def quantize_onnx_detector(detector: Any, rgb_frames: Sequence[np.ndarray],
                           calibrate_method: str = DEFAULT_CALIBRATE_METHOD,
                           threads: int = 0) -> Any:
    """A copy of an OnnxDetector whose session runs its graph in static INT8.

    Calibrated on ``rgb_frames`` (uint8 RGB) as the detector prepares them;
    only :data:`DETECTOR_OPS` are quantised. Thresholds and class names are
    the detector's.
    """
    import onnxruntime as ort

    if not hasattr(detector, "session") or not hasattr(detector, "path"):
        raise ConfigError(f"detector INT8 supports the onnx detector, not "
                          f"{type(detector).__name__}")
    model = detector.path.read_bytes()
    input_name = detector.session.get_inputs()[0].name
    quantized = quantize_onnx_static(model, input_name, detector_inputs(detector, rgb_frames),
                                     calibrate_method, op_types=DETECTOR_OPS)
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    twin = copy.copy(detector)
    twin.session = ort.InferenceSession(quantized, options,
                                        providers=detector.session.get_providers())
    twin.compression = "int8_ort_static"
    return twin


def _matches(a: Detections, b: Detections, iou: float) -> int:
    """Greedy one-to-one matches (same class, IoU >= ``iou``), highest IoU first."""
    if not len(a) or not len(b):
        return 0
    overlap = torchvision.ops.box_iou(torch.from_numpy(a.boxes_xyxy),
                                      torch.from_numpy(b.boxes_xyxy)).numpy()
    overlap[a.class_ids[:, None] != b.class_ids[None, :]] = 0.0
    pairs = np.argwhere(overlap >= iou)
    order = np.argsort(-overlap[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_a, used_b, count = set(), set(), 0
    for i, j in pairs[order]:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            count += 1
    return count


def box_agreement(reference: Sequence[Detections], candidate: Sequence[Detections],
                  score_threshold: float, iou: float = MATCH_IOU) -> Dict[str, float]:
    """How well two detectors' boxes agree over the same frames.

    Boxes at or above ``score_threshold`` only; ``recall``: fraction of the
    reference boxes matched by the candidate (same class, IoU >= ``iou``),
    ``precision``: the reverse, ``box_f1`` their harmonic mean (1.0 when
    neither found anything).
    """
    if len(reference) != len(candidate):
        raise ConfigError(f"box_agreement needs the same frames: {len(reference)} vs "
                          f"{len(candidate)}")
    matched = total_ref = total_cand = 0
    for ref, cand in zip(reference, candidate):
        ref = ref.select(ref.scores >= score_threshold)
        cand = cand.select(cand.scores >= score_threshold)
        matched += _matches(ref, cand, iou)
        total_ref += len(ref)
        total_cand += len(cand)
    if total_ref == 0 and total_cand == 0:
        return {"recall": 1.0, "precision": 1.0, "box_f1": 1.0, "reference_boxes": 0}
    recall = matched / total_ref if total_ref else 0.0
    precision = matched / total_cand if total_cand else 0.0
    f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    return {"recall": recall, "precision": precision, "box_f1": f1,
            "reference_boxes": total_ref}


# -- both, with the guards ----------------------------------------------------------------
def _held_out(frames: Sequence[np.ndarray]) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    from .apply import MIN_FRAMES_FOR_HOLDOUT

    if len(frames) >= MIN_FRAMES_FOR_HOLDOUT:
        return ([f for i, f in enumerate(frames) if i % 4 != 3], list(frames[3::4]))
    return list(frames), list(frames)


def compress_depth(network: nn.Module, input_hw: Sequence[int],
                   rgb_frames: Sequence[np.ndarray], max_absrel: float
                   ) -> Tuple[nn.Module, Dict[str, Any]]:
    """INT8 depth network and its report; ConfigError when AbsRel exceeds ``max_absrel``."""
    train, held = _held_out(rgb_frames)
    mean, std = getattr(network, "mean"), getattr(network, "std")
    t0 = time.perf_counter()
    quantized = quantize_depth_int8(network, normalise_frames(train, input_hw, mean, std))
    held_inputs = normalise_frames(held, input_hw, mean, std)
    absrel = depth_absrel(network, quantized, held_inputs)
    report = {"absrel": absrel, "max": float(max_absrel), "frames": len(held),
              "seconds": time.perf_counter() - t0}
    if absrel > max_absrel:
        raise ConfigError(f"compressed depth head: AbsRel = {absrel:.4f} against the fp32 "
                          f"network on {len(held)} frames exceeds "
                          f"compression.max_depth_absrel = {max_absrel:.4f}; raise it or set "
                          f"compression.heads: false")
    LOG.info("depth head INT8: AbsRel %.4f (max %.3f) on %d held-out frames", absrel,
             max_absrel, len(held))
    return quantized, report


def compress_detector(detector: Any, rgb_frames: Sequence[np.ndarray], min_agreement: float,
                      calibrate_method: str = DEFAULT_CALIBRATE_METHOD, threads: int = 0
                      ) -> Tuple[Any, Dict[str, Any]]:
    """INT8 OnnxDetector and its report; ConfigError when box F1 is below ``min_agreement``."""
    train, held = _held_out(rgb_frames)
    t0 = time.perf_counter()
    quantized = quantize_onnx_detector(detector, train, calibrate_method, threads)
    agreement = box_agreement([detector.detect(f) for f in held],
                              [quantized.detect(f) for f in held], detector.score_threshold)
    report = dict(agreement, min=float(min_agreement), frames=len(held),
                  seconds=time.perf_counter() - t0)
    if agreement["box_f1"] < min_agreement:
        raise ConfigError(f"compressed detection head: box agreement F1 = "
                          f"{agreement['box_f1']:.4f} (recall {agreement['recall']:.3f}, "
                          f"precision {agreement['precision']:.3f}) with the fp32 detector on "
                          f"{len(held)} frames is below compression.min_box_agreement = "
                          f"{min_agreement:.4f}; lower it or set compression.heads: false")
    LOG.info("detection head INT8: box F1 %.4f (min %.2f) on %d held-out frames",
             agreement["box_f1"], min_agreement, len(held))
    return quantized, report


def compress_heads(depth_head: Optional[Any], detection_head: Optional[Any],
                   rgb_frames: Sequence[np.ndarray], max_depth_absrel: float,
                   min_box_agreement: float,
                   calibrate_method: str = DEFAULT_CALIBRATE_METHOD, threads: int = 0
                   ) -> Dict[str, Dict[str, Any]]:
    """Quantise a DepthHead's unet and a DetectionHead's onnx detector in place, guarded.

    Returns ``{'depth': {...'absrel'}, 'detection': {...'box_f1'}}`` for the
    heads it compressed. ConfigError (naming the head and the figure) when a
    guard fails; the heads are then left unchanged.
    """
    if len(rgb_frames) < 2:
        raise ConfigError(f"compression.heads needs at least 2 calibration frames, got "
                          f"{len(rgb_frames)}")
    report: Dict[str, Dict[str, Any]] = {}
    new_network = new_detector = None
    if depth_head is not None and depth_head.network is not None:
        if depth_head.device.type != "cpu":
            raise ConfigError(f"compression.heads: the INT8 depth network runs on the CPU, "
                              f"the depth head is on {depth_head.device}; use device: cpu")
        new_network, report["depth"] = compress_depth(
            depth_head.network, depth_head.preprocess.input_hw, rgb_frames, max_depth_absrel)
    if detection_head is not None:
        new_detector, report["detection"] = compress_detector(
            detection_head.detector, rgb_frames, min_box_agreement, calibrate_method, threads)
    if new_network is not None:
        depth_head.network = new_network
    if new_detector is not None:
        detection_head.detector = new_detector
    return report
