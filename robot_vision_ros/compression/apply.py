"""One entry point for the node: compress an encoder by mode and say what it cost.

``compress(encoder, mode, options, calibration_frames)`` returns the model to
run and a report (parameters before/after, what was done, fidelity to the
original on held-out calibration frames). ``check_fidelity`` turns a fidelity
floor into a start-up error.

Options per mode (unknown keys are a ConfigError):

* ``none``: none.
* ``prune``: ``method`` (``structured`` default, or ``unstructured``: no
  speed-up), ``amount`` (0.3), ``finetune_steps`` (0), ``finetune_lr`` (1e-4).
* ``int8``: ``method`` (``auto`` default: static for CNN encoders, dynamic for
  the rest; ``static``; ``dynamic``), ``keep_float`` (list, see
  :func:`~robot_vision_ros.compression.quantize.resolve_keep_float`; torch
  only), ``calibrate_method`` (``minmax``/``entropy``/``percentile``: how ONNX
  Runtime picks activation ranges; onnxruntime only).

``backend='onnxruntime'`` makes ``int8`` an ONNX Runtime INT8 session
(:mod:`.ort_quantize`); ``prune`` and ``distilled`` give torch models that the
onnxruntime backend exports as it exports any encoder.
* ``distilled``: ``student`` (registry name), ``student_weights`` (file written
  by ``tools.distill``); the student replaces the encoder, built with the
  encoder's output width so its features stand in for the teacher's.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from ..core.errors import ConfigError
from ..models.registry import create_model
from .fidelity import feature_fidelity
from .ort_quantize import DEFAULT_CALIBRATE_METHOD, quantize_encoder_ort
from .prune import finetune_distill, parameter_count, prune_structured, prune_unstructured
from .quantize import (DEFAULT_KEEP_FLOAT, GRID_ENCODERS, quantize_dynamic_int8,
                       quantize_static_int8)

LOG = logging.getLogger(__name__)

MODES: Tuple[str, ...] = ("none", "prune", "int8", "distilled")
OPTION_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "none": {},
    "prune": {"method": "structured", "amount": 0.3, "finetune_steps": 0, "finetune_lr": 1e-4},
    "int8": {"method": "auto", "keep_float": list(DEFAULT_KEEP_FLOAT),
             "calibrate_method": DEFAULT_CALIBRATE_METHOD},
    "distilled": {"student": "", "student_weights": ""},
}
#: Fidelity metrics ``check_fidelity`` can hold a floor on.
METRICS: Tuple[str, ...] = ("cosine", "centred_cosine", "linear_cka", "top1_agreement",
                            "logit_cosine")
#: Inference engines ``compress`` can produce a model for.
BACKENDS: Tuple[str, ...] = ("torch", "onnxruntime")
#: With at least this many frames, every 4th is held out of calibration/fine-tuning.
MIN_FRAMES_FOR_HOLDOUT = 8


def resolve_options(mode: str, options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Defaults of ``mode`` updated with ``options``; ConfigError on unknown keys."""
    if mode not in MODES:
        raise ConfigError(f"unknown compression mode '{mode}'; known: {', '.join(MODES)}")
    resolved = dict(OPTION_DEFAULTS[mode])
    unknown = sorted(set(options or {}) - set(resolved))
    if unknown:
        raise ConfigError(f"compression mode '{mode}' got unknown options {unknown}; it takes "
                          f"{sorted(resolved) or 'none'}")
    resolved.update(options or {})
    return resolved


def split_frames(frames: Optional[torch.Tensor]
                 ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(frames to calibrate/fine-tune on, frames to measure fidelity on).

    Every 4th frame is held out once there are enough; with fewer, both are
    the same frames (fidelity then flatters the model a little).
    """
    if frames is None:
        return None, None
    if len(frames) >= MIN_FRAMES_FOR_HOLDOUT:
        keep = [i for i in range(len(frames)) if i % 4 != 3]
        return frames[keep], frames[3::4]
    return frames, frames


def _need_frames(frames: Optional[torch.Tensor], what: str) -> torch.Tensor:
    if frames is None or len(frames) == 0:
        raise ConfigError(f"{what} needs calibration frames: set compression.calibration "
                          f"to a folder of images, a video, an .npz of frames, a ROS 2 bag "
                          f"or 'live'")
    return frames


def _prune(encoder: nn.Module, opts: Dict[str, Any], train_frames: Optional[torch.Tensor]
           ) -> Tuple[nn.Module, Dict[str, Any]]:
    amount = float(opts["amount"])
    if opts["method"] == "unstructured":
        return prune_unstructured(encoder, amount), {"method": "unstructured", "amount": amount,
                                                     "note": "no speed-up on dense kernels"}
    if opts["method"] != "structured":
        raise ConfigError(f"prune method must be 'structured' or 'unstructured', got "
                          f"'{opts['method']}'")
    example = (train_frames[:1] if train_frames is not None
               else torch.zeros(1, 3, 224, 224))
    model = prune_structured(encoder, amount, example)
    details: Dict[str, Any] = {"method": "structured", "amount": amount}
    steps = int(opts["finetune_steps"])
    if steps > 0:
        finetune_distill(model, encoder, _need_frames(train_frames, "prune fine-tuning"),
                         steps=steps, lr=float(opts["finetune_lr"]))
        details["finetune_steps"] = steps
    return model, details


def _int8(encoder: nn.Module, opts: Dict[str, Any], train_frames: Optional[torch.Tensor]
          ) -> Tuple[nn.Module, Dict[str, Any]]:
    method = opts["method"]
    if method == "auto":
        method = "static" if isinstance(encoder, GRID_ENCODERS) else "dynamic"
    if method == "dynamic":
        return quantize_dynamic_int8(encoder), {"method": "dynamic"}
    if method != "static":
        raise ConfigError(f"int8 method must be 'auto', 'static' or 'dynamic', got '{method}'")
    frames = _need_frames(train_frames, "static INT8")
    model = quantize_static_int8(encoder, frames, frames[:1], keep_float=opts["keep_float"])
    return model, {"method": "static", "calibration_frames": len(frames),
                   "kept_float": model.kept_float}


def _distilled(encoder: nn.Module, opts: Dict[str, Any]) -> Tuple[nn.Module, Dict[str, Any]]:
    if not opts["student"] or not opts["student_weights"]:
        raise ConfigError("compression mode 'distilled' needs options student (a registry "
                          "name) and student_weights (the file tools.distill wrote)")
    output_dim = int(getattr(encoder, "output_dim", 0))
    student = create_model(opts["student"], output_dim=output_dim,
                           weights=str(opts["student_weights"]))
    return student.eval(), {"student": opts["student"], "weights": str(opts["student_weights"])}


def _int8_ort(encoder: nn.Module, opts: Dict[str, Any], train_frames: Optional[torch.Tensor],
              input_hw: Optional[Tuple[int, int]], device: torch.device, threads: int
              ) -> Tuple[nn.Module, Dict[str, Any]]:
    if input_hw is None:
        if train_frames is None:
            raise ConfigError("ONNX Runtime INT8 needs input_hw (the fixed input size) or "
                              "calibration frames")
        input_hw = (int(train_frames.shape[-2]), int(train_frames.shape[-1]))
    return quantize_encoder_ort(encoder, input_hw, train_frames, opts["method"],
                                opts["calibrate_method"], device, threads)


def compress(encoder: nn.Module, mode: str, options: Optional[Mapping[str, Any]] = None,
             calibration_frames: Optional[torch.Tensor] = None, backend: str = "torch",
             input_hw: Optional[Tuple[int, int]] = None,
             device: torch.device = torch.device("cpu"), threads: int = 0
             ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Compress ``encoder`` (not changed) by ``mode``; returns ``(model, report)``.

    ``calibration_frames``: normalised CPU frames ``[N, 3, H, W]`` of the
    deployment scene (see :func:`~robot_vision_ros.compression.calibration.load_calibration_frames`);
    needed by static INT8 and pruning fine-tunes, and used for the report's
    ``fidelity`` when given (on held-out frames once there are 8 or more).
    ``backend``: ``onnxruntime`` turns ``int8`` into an ONNX Runtime session
    at the fixed ``input_hw`` (default: the frames' size) on ``device`` with
    ``threads`` intra-op threads (0: onnxruntime's default).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"compression backend must be one of {', '.join(BACKENDS)}, got "
                          f"{backend!r}")
    opts = resolve_options(mode, options)
    train_frames, eval_frames = split_frames(calibration_frames)
    encoder = encoder.eval()
    if mode == "none":
        model, details = encoder, {}
    elif mode == "prune":
        model, details = _prune(encoder, opts, train_frames)
    elif mode == "int8" and backend == "onnxruntime":
        model, details = _int8_ort(encoder, opts, train_frames, input_hw, device, threads)
    elif mode == "int8":
        model, details = _int8(encoder, opts, train_frames)
    else:
        model, details = _distilled(encoder, opts)
    after = parameter_count(model)
    if getattr(model, "runs_onnxruntime", False):  # a session: same weights, INT8
        after = parameter_count(encoder)
    report: Dict[str, Any] = {"mode": mode, **details,
                              "parameters_before": parameter_count(encoder),
                              "parameters_after": after}
    if eval_frames is not None and len(eval_frames) >= 2 and mode != "none":
        report["fidelity"] = feature_fidelity(encoder, model, eval_frames)
        report["fidelity_frames"] = len(eval_frames)
    LOG.info("compression %s: %s", mode, report)
    return model.eval(), report


def check_fidelity(reference: nn.Module, candidate: nn.Module, frames: torch.Tensor,
                   min_fidelity: float, metric: str = "cosine") -> float:
    """Measured ``metric`` of ``candidate`` against ``reference``; ConfigError below the floor.

    ``metric`` is one of :data:`METRICS` (``cosine``: mean per-frame cosine of
    the pooled features).
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown fidelity metric '{metric}'; known: {', '.join(METRICS)}")
    report = feature_fidelity(reference, candidate, frames)
    if metric not in report:
        raise ConfigError(f"fidelity metric '{metric}' cannot be measured for these models "
                          f"(measured: {', '.join(report)})")
    value = float(report[metric])
    if value < min_fidelity:
        # More digits when 4 would print the figure equal to the floor.
        shown = f"{value:.4f}" if min_fidelity - value >= 5e-5 else f"{value:.7f}"
        raise ConfigError(f"compressed model fidelity {metric} = {shown} on "
                          f"{len(frames)} frames is below compression.min_fidelity = "
                          f"{min_fidelity:.4f}; use a milder setting or mode 'none'")
    return value
