"""Node configuration: every parameter declared once, with description, range and default.

The table :data:`PARAMETERS` is the single source of truth. The ROS edge
declares ROS parameters from it (descriptions and ranges included), the
offline tools read the same YAML through :func:`load_yaml`, and
:func:`validate` turns a flat ``{name: value}`` mapping into a frozen
:class:`VisionConfig`, raising :class:`ConfigError` with every reason at once.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: ROS name, default (its type is the parameter's type), limits.

    ``dynamic`` parameters may change while the node is active
    (``ros2 param set``); the others take effect through a lifecycle
    reconfigure (deactivate, cleanup, configure, activate).
    """

    name: str
    default: Any
    description: str
    choices: Optional[Tuple[Any, ...]] = None
    min: Optional[float] = None
    max: Optional[float] = None
    length: Optional[int] = None
    dynamic: bool = False

    @property
    def field(self) -> str:
        """Attribute name on :class:`VisionConfig` (dots become underscores)."""
        return self.name.replace(".", "_")


PARAMETERS: Tuple[ParamSpec, ...] = (
    ParamSpec("autostart", True,
              "Configure and activate the lifecycle node at start-up."),
    ParamSpec("backbone", "resnet18",
              "Encoder from the model zoo (python -m robot_vision_ros.tools.models lists them)."),
    ParamSpec("output_dim", 768,
              "Width of the published feature vector; 0 = the backbone's native width "
              "(no projection, right for pretrained weights without a trained projection).",
              min=0, max=8192),
    ParamSpec("weights", "",
              "'' = random init, 'imagenet' = torchvision weights from the local torch "
              "cache ($TORCH_HOME/hub/checkpoints), or a path to a state dict/checkpoint."),
    ParamSpec("device", "auto",
              "auto (CUDA if available, else CPU), cpu, cuda or cuda:N."),
    ParamSpec("precision", "fp32",
              "fp32, fp16 or bf16 (autocast; fp16 falls back to fp32 on CPU).",
              choices=("fp32", "fp16", "bf16")),
    ParamSpec("input_size", [224, 224],
              "Encoder input [height, width] in pixels, multiples of 32; frames are resized to it.",
              min=32, max=2048, length=2),
    ParamSpec("backend", "torch",
              "Inference engine of the encoder: torch, or onnxruntime (exported at configure "
              "with torch.onnx.export; CUDA provider when the device is CUDA).",
              choices=("torch", "onnxruntime")),
    ParamSpec("compile", "none",
              "torch.compile mode for the encoder (backend torch): none, default, "
              "reduce-overhead or max-autotune. Compiling takes a while at configure.",
              choices=("none", "default", "reduce-overhead", "max-autotune")),
    ParamSpec("num_threads", 0,
              "torch intra-op CPU threads; 0 = torch's default.", min=0, max=256),
    ParamSpec("target_fps", 30.0,
              "Processing rate to hold; frames beyond it are skipped.",
              min=0.1, max=1000.0, dynamic=True),
    ParamSpec("skip_frames", 0,
              "N > 0 processes every (N+1)-th frame; 0 = adaptive (as many as target_fps "
              "and the processing time allow, skipping the rest).",
              min=0, max=1000, dynamic=True),
    ParamSpec("adaptive_heads", True,
              "Run depth and detection only when the frame's time budget (1/target_fps) "
              "still covers their measured cost, deferring them otherwise, so features keep "
              "the rate; false = strictly every_n.", dynamic=True),
    ParamSpec("heads.thread", True,
              "Run depth and detection on their own thread on the newest processed frame, so "
              "features never wait for them (they publish at the rate they manage); false = "
              "in the inference thread within each frame's time budget (adaptive_heads)."),
    ParamSpec("heads.threads", 1,
              "CPU intra-op threads of the heads thread (torch and the ONNX detector); "
              "0 = the libraries' default. Few threads leave the cores to the encoder.",
              min=0, max=256),
    ParamSpec("heads.nice", 10,
              "Niceness of the heads thread on Linux (0 = the encoder's priority): the heads "
              "get the CPU time the encoder leaves, so features keep target_fps.",
              min=0, max=19),
    ParamSpec("publish_tokens", True,
              "Publish the stamped token table on features/tokens.", dynamic=True),
    ParamSpec("compression.mode", "none",
              "Make the encoder cheaper: none, prune, int8 (static for CNNs with calibration "
              "frames, dynamic for ViTs; in ONNX Runtime with backend onnxruntime) or "
              "distilled (run a student from tools.distill).",
              choices=("none", "prune", "int8", "distilled")),
    ParamSpec("compression.prune_method", "structured",
              "structured (torch-pruning removes channels: faster) or unstructured (L1 "
              "zeroes weights: no speed-up on dense kernels).",
              choices=("structured", "unstructured")),
    ParamSpec("compression.prune_amount", 0.3,
              "Fraction of channels (structured; for a ViT: of each head's dimensions "
              "and each MLP's hidden units) or of weights (unstructured) pruned.",
              min=0.01, max=0.95),
    ParamSpec("compression.finetune_steps", 0,
              "Feature-matching fine-tune steps on the calibration frames after pruning.",
              min=0, max=100000),
    ParamSpec("compression.int8_method", "auto",
              "auto (static for CNN encoders, dynamic for the rest), static or dynamic.",
              choices=("auto", "static", "dynamic")),
    ParamSpec("compression.calibrate_method", "percentile",
              "backend onnxruntime, static INT8: how activation ranges are taken from the "
              "calibration frames (minmax, entropy or percentile).",
              choices=("minmax", "entropy", "percentile")),
    ParamSpec("compression.student", "",
              "distilled: the student's encoder name (the backbone is the teacher)."),
    ParamSpec("compression.student_weights", "",
              "distilled: the student file written by tools.distill."),
    ParamSpec("compression.calibration", "",
              "Calibration frames for INT8, pruning fine-tunes and the fidelity guard: a "
              "folder of images, a video, an .npz of uint8 frames, a ROS 2 bag (directory "
              "or .mcap/.db3; BAG#TOPIC picks the image topic) or live (the node runs the "
              "uncompressed encoder on its first frames, compresses in the background, "
              "swaps the result in, and deactivates itself if the guard fails)."),
    ParamSpec("compression.calibration_frames", 32,
              "How many calibration frames to read or collect (every 4th is held out for "
              "fidelity).",
              min=2, max=10000),
    ParamSpec("compression.min_fidelity", 0.95,
              "Refuse to activate when the compressed encoder's fidelity to the original on "
              "the held-out calibration frames is below this (0 = no guard).",
              min=0.0, max=1.0),
    ParamSpec("compression.fidelity_metric", "cosine",
              "Fidelity measure: cosine of pooled features, centred_cosine, linear_cka, "
              "top1_agreement or logit_cosine (the last two need classifier heads).",
              choices=("cosine", "centred_cosine", "linear_cka", "top1_agreement",
                       "logit_cosine")),
    ParamSpec("compression.heads", False,
              "int8 only: also quantise the unet depth network (torch static INT8) and the "
              "onnx detector (ONNX Runtime static INT8), each guarded on the calibration "
              "frames (a file or bag, not live)."),
    ParamSpec("compression.max_depth_absrel", 0.05,
              "Refuse to activate when the INT8 depth network's AbsRel to the fp32 one "
              "exceeds this (1 = no guard).", min=0.0, max=1.0),
    ParamSpec("compression.min_box_agreement", 0.9,
              "Refuse to activate when the INT8 detector's box agreement with the fp32 one "
              "(F1 of matches at IoU >= 0.5 above the score threshold) is below this "
              "(0 = no guard).", min=0.0, max=1.0),
    ParamSpec("rgbd.rgb_backbone", "mobilenet_v3_small",
              "rgbd_hybrid only: the RGB encoder inside the hybrid."),
    ParamSpec("rgbd.rgb_weights", "",
              "rgbd_hybrid only: weights of the RGB encoder ('', 'imagenet' or a file); "
              "'weights' then loads a whole trained hybrid on top."),
    ParamSpec("rgbd.use_depth", True, "rgbd_hybrid only: encode the depth image too."),
    ParamSpec("rgbd.use_temporal", False,
              "rgbd_hybrid only: an LSTM over the embeddings of recent frames."),
    ParamSpec("rgbd.temporal_window", 8,
              "rgbd_hybrid only: frames the LSTM sees (this one included).", min=2, max=64),
    ParamSpec("rgbd.num_slots", 0,
              "rgbd_hybrid only: object slots (slot attention) published as extra tokens; "
              "0 = none.", min=0, max=64),
    ParamSpec("depth.model", "sensor",
              "Depth estimator: none, sensor (the cleaned depth camera only), unet or "
              "depth_anything_v2; a network's prediction is aligned to the sensor's valid "
              "pixels and fills its holes."),
    ParamSpec("depth.weights", "",
              "Depth network weights: a unet file from tools.train_depth, or the local folder "
              "of a Depth Anything V2 checkpoint ('' = random unet)."),
    ParamSpec("depth.input_size", [240, 320],
              "Depth network input [height, width] in pixels, multiples of 16.",
              min=32, max=2048, length=2),
    ParamSpec("depth.every_n", 1,
              "Run the depth head every n-th processed frame.", min=1, max=1000, dynamic=True),
    ParamSpec("depth.reuse", True,
              "On frames where the depth head does not run, re-publish the last depth "
              "(counted as reused in diagnostics) instead of nothing.", dynamic=True),
    ParamSpec("depth.min_m", 0.1,
              "Sensor depth below this (metres) is unknown.", min=0.0, max=100.0, dynamic=True),
    ParamSpec("depth.max_m", 10.0,
              "Sensor depth above this (metres) is unknown.", min=0.01, max=1000.0,
              dynamic=True),
    ParamSpec("depth.fill_holes", "none",
              "depth.model sensor only: none (the sensor's holes stay NaN) or nearest (each "
              "hole pixel takes the depth of the nearest valid pixel).",
              choices=("none", "nearest")),
    ParamSpec("depth.fill_max_px", 0,
              "Holes farther than this (pixels) from a valid pixel stay NaN with "
              "depth.fill_holes nearest; 0 = fill every hole.", min=0, max=100000),
    ParamSpec("detection.model", "none",
              "Detector: none, onnx (detection.weights = the .onnx file: YOLOv8/YOLO11 or "
              "TF-OD-API SSD layout), ssdlite320_mobilenet_v3_large, "
              "fasterrcnn_mobilenet_v3_large_320_fpn, retinanet_resnet50_fpn_v2, "
              "fcos_resnet50_fpn, yolo_head or tabletop (class-agnostic objects standing on "
              "the dominant plane, from depth alone; no weights)."),
    ParamSpec("detection.weights", "",
              "The ONNX model file, or torchvision weights: 'coco' (local torch cache) or a "
              "file ('' = random init)."),
    ParamSpec("detection.class_names", "",
              "Class names: '' = the model's, coco, coco80, a labels file (one name per "
              "line) or comma-separated names."),
    ParamSpec("detection.score_threshold", 0.3,
              "Detections below this score are dropped.", min=0.0, max=1.0, dynamic=True),
    ParamSpec("detection.nms_iou", 0.5,
              "IoU above which same-class boxes are suppressed.", min=0.01, max=1.0,
              dynamic=True),
    ParamSpec("detection.max_detections", 100,
              "Most detections kept per frame.", min=1, max=10000),
    ParamSpec("detection.every_n", 1,
              "Run the detector every n-th processed frame; the tracker predicts in between.",
              min=1, max=1000, dynamic=True),
    ParamSpec("detection.marker_lifetime_s", 0.5,
              "Lifetime of the rviz markers, so objects that vanish are removed.",
              min=0.0, max=60.0, dynamic=True),
    ParamSpec("tracking.high_thresh", 0.5,
              "Detections above this score start the first association pass (ByteTrack).",
              min=0.0, max=1.0),
    ParamSpec("tracking.low_thresh", 0.1,
              "Detections between this and high_thresh only keep existing tracks alive.",
              min=0.0, max=1.0),
    ParamSpec("tracking.new_track_thresh", 0.6,
              "An unmatched detection above this score starts a new track.", min=0.0, max=1.0),
    ParamSpec("tracking.match_iou", 0.2,
              "Least IoU for a first-pass match.", min=0.0, max=1.0),
    ParamSpec("tracking.min_hits", 3,
              "Matched frames before a track is published.", min=1, max=100),
    ParamSpec("tracking.max_lost", 10,
              "Frames (at target_fps) a track survives without a match.", min=0, max=1000),
    ParamSpec("tracking.class_aware", True,
              "Detections only match tracks of the same class."),
    ParamSpec("input.rgb_transport", "raw",
              "raw (sensor_msgs/Image on the colour topic) or compressed (CompressedImage "
              "jpeg/png on <colour topic>/compressed, as image_transport publishes it).",
              choices=("raw", "compressed")),
    ParamSpec("input.depth_transport", "raw",
              "raw (sensor_msgs/Image) or compressedDepth (PNG on "
              "<depth topic>/compressedDepth).", choices=("raw", "compressedDepth")),
    ParamSpec("sync.slop_s", 0.02,
              "Largest RGB/depth stamp difference (seconds) paired as one frame.",
              min=0.0, max=1.0, dynamic=True),
    ParamSpec("sync.depth_wait_s", 0.03,
              "How long a colour frame waits for its depth image before it is processed "
              "without depth (counted as a sync failure).", min=0.0, max=1.0, dynamic=True),
    ParamSpec("sync.use_depth", True,
              "Subscribe to the aligned depth image (only when a stage uses it: the depth "
              "head, 3-D detections or an RGB-D encoder)."),
    ParamSpec("qos.image_reliability", "best_effort",
              "Reliability of the image subscriptions (sensor data: best_effort).",
              choices=("best_effort", "reliable")),
    ParamSpec("qos.image_depth", 1,
              "History depth of the image subscriptions (keep-last).", min=1, max=100),
    ParamSpec("qos.output_reliability", "reliable",
              "Reliability of the output publishers.", choices=("best_effort", "reliable")),
    ParamSpec("qos.output_depth", 1,
              "History depth of the output publishers (keep-last).", min=1, max=100),
    ParamSpec("diagnostics.period_s", 1.0,
              "Period of /diagnostics messages.", min=0.1, max=60.0),
    ParamSpec("diagnostics.max_age_ms", 250.0,
              "Capture-to-publish age (p99, milliseconds) above which diagnostics warn.",
              min=1.0, max=60000.0, dynamic=True),
    ParamSpec("diagnostics.stale_s", 1.0,
              "No frame for this long is a 'camera stopped' warning.", min=0.1, max=60.0,
              dynamic=True),
)

SPECS: Dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True)
class VisionConfig:
    """Validated configuration (attribute = parameter name with dots as underscores)."""

    autostart: bool
    backbone: str
    output_dim: int
    weights: str
    device: str
    precision: str
    input_size: Tuple[int, int]
    backend: str
    compile: str
    num_threads: int
    target_fps: float
    skip_frames: int
    adaptive_heads: bool
    heads_thread: bool
    heads_threads: int
    heads_nice: int
    publish_tokens: bool
    compression_mode: str
    compression_prune_method: str
    compression_prune_amount: float
    compression_finetune_steps: int
    compression_int8_method: str
    compression_calibrate_method: str
    compression_student: str
    compression_student_weights: str
    compression_calibration: str
    compression_calibration_frames: int
    compression_min_fidelity: float
    compression_fidelity_metric: str
    compression_heads: bool
    compression_max_depth_absrel: float
    compression_min_box_agreement: float
    rgbd_rgb_backbone: str
    rgbd_rgb_weights: str
    rgbd_use_depth: bool
    rgbd_use_temporal: bool
    rgbd_temporal_window: int
    rgbd_num_slots: int
    depth_model: str
    depth_weights: str
    depth_input_size: Tuple[int, int]
    depth_every_n: int
    depth_reuse: bool
    depth_min_m: float
    depth_max_m: float
    depth_fill_holes: str
    depth_fill_max_px: int
    detection_model: str
    detection_weights: str
    detection_class_names: str
    detection_score_threshold: float
    detection_nms_iou: float
    detection_max_detections: int
    detection_every_n: int
    detection_marker_lifetime_s: float
    tracking_high_thresh: float
    tracking_low_thresh: float
    tracking_new_track_thresh: float
    tracking_match_iou: float
    tracking_min_hits: int
    tracking_max_lost: int
    tracking_class_aware: bool
    input_rgb_transport: str
    input_depth_transport: str
    sync_slop_s: float
    sync_depth_wait_s: float
    sync_use_depth: bool
    qos_image_reliability: str
    qos_image_depth: int
    qos_output_reliability: str
    qos_output_depth: int
    diagnostics_period_s: float
    diagnostics_max_age_ms: float
    diagnostics_stale_s: float

    def encoder_options(self) -> Dict[str, Any]:
        """Extra factory arguments of the chosen backbone."""
        if self.backbone != "rgbd_hybrid":
            return {}
        return {"rgb_backbone": self.rgbd_rgb_backbone, "rgb_weights": self.rgbd_rgb_weights,
                "use_depth": self.rgbd_use_depth, "use_temporal": self.rgbd_use_temporal,
                "temporal_window": self.rgbd_temporal_window, "num_slots": self.rgbd_num_slots}

    def compression_options(self) -> Dict[str, Any]:
        """Options of ``compression.compress`` for the configured mode."""
        if self.compression_mode == "prune":
            return {"method": self.compression_prune_method,
                    "amount": self.compression_prune_amount,
                    "finetune_steps": self.compression_finetune_steps}
        if self.compression_mode == "int8":
            return {"method": self.compression_int8_method,
                    "calibrate_method": self.compression_calibrate_method}
        if self.compression_mode == "distilled":
            return {"student": self.compression_student,
                    "student_weights": self.compression_student_weights}
        return {}

    def detector_options(self) -> Dict[str, Any]:
        """Factory arguments of the configured detector."""
        options: Dict[str, Any] = {"score_threshold": self.detection_score_threshold,
                                   "nms_iou": self.detection_nms_iou,
                                   "max_detections": self.detection_max_detections}
        if self.detection_model == "onnx":
            options["path"] = self.detection_weights
            if self.heads_thread:
                options["intra_op_num_threads"] = self.heads_threads
        elif self.detection_weights:
            options["weights"] = self.detection_weights
        return options

    def class_names_spec(self) -> Any:
        """``detection.class_names`` as the detectors take it (None = the model's own)."""
        text = self.detection_class_names.strip()
        if not text:
            return None
        if "," in text:
            return [name.strip() for name in text.split(",")]
        return text

    def tracker_options(self) -> Dict[str, Any]:
        """TrackerConfig fields from ``tracking.*`` (frame rate = target_fps)."""
        return {"high_thresh": self.tracking_high_thresh, "low_thresh": self.tracking_low_thresh,
                "new_track_thresh": self.tracking_new_track_thresh,
                "match_iou": self.tracking_match_iou, "min_hits": self.tracking_min_hits,
                "max_lost": self.tracking_max_lost, "class_aware": self.tracking_class_aware,
                "frame_rate_hz": min(self.target_fps, 240.0)}

    def to_params(self) -> Dict[str, Any]:
        """Back to ``{ros_name: value}``."""
        return {p.name: (list(v) if isinstance(v := getattr(self, p.field), tuple) else v)
                for p in PARAMETERS}

    def replace(self, **changes: Any) -> "VisionConfig":
        """A validated copy with ``{ros_name: value}`` changes applied."""
        params = self.to_params()
        params.update(changes)
        return validate(params)


def defaults() -> Dict[str, Any]:
    """``{ros_name: default}`` for every parameter."""
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default)
            for p in PARAMETERS}


def _check_type(spec: ParamSpec, value: Any) -> Optional[str]:
    expected = type(spec.default)
    if expected is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if expected is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else \
            "must be an integer"
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(float(value)):
            return "must be finite"
        return None if ok else "must be a number"
    if expected is str:
        return None if isinstance(value, str) else "must be a string"
    if expected is list:
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "must be a list of integers"
        if spec.length is not None and len(value) != spec.length:
            return f"must have {spec.length} elements"
        return None
    return f"has unsupported type {expected.__name__}"


def _check_limits(spec: ParamSpec, value: Any) -> Optional[str]:
    if spec.choices is not None and value not in spec.choices:
        return f"must be one of {', '.join(map(str, spec.choices))}"
    items: Sequence[Any] = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if spec.min is not None and v < spec.min:
            return f"must be >= {spec.min:g}"
        if spec.max is not None and v > spec.max:
            return f"must be <= {spec.max:g}"
    return None


def check_value(name: str, value: Any) -> Optional[str]:
    """Reason why ``value`` is invalid for parameter ``name``, or None if it is valid."""
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown parameter '{name}'"
    reason = _check_type(spec, value) or _check_limits(spec, value)
    if reason is None and name == "device" and not _DEVICE_RE.match(value):
        reason = "must be auto, cpu, cuda or cuda:N"
    multiple = {"input_size": 32, "depth.input_size": 16}.get(name)
    if reason is None and multiple and any(v % multiple for v in value):
        reason = f"height and width must be multiples of {multiple}"
    return None if reason is None else f"{name}={value!r}: {reason}"


def _head_compression_checks(values: Mapping[str, Any]) -> List[str]:
    """Why ``compression.heads: true`` cannot work with these values (empty: it can)."""
    reasons = []
    if values["compression.mode"] != "int8":
        reasons.append("compression.heads=true quantises the heads to INT8: it needs "
                       "compression.mode='int8'")
    calibration = values["compression.calibration"]
    if calibration in ("", "live"):
        reasons.append(f"compression.heads=true needs compression.calibration to be a folder, "
                       f"video, .npz or ROS 2 bag (got {calibration!r}: the heads are "
                       f"guarded on raw frames at configure)")
    depth_model, detector = values["depth.model"], values["detection.model"]
    if depth_model not in ("none", "sensor", "unet"):
        reasons.append(f"compression.heads=true quantises depth.model 'unet' only, not "
                       f"{depth_model!r}")
    if detector not in ("none", "onnx"):
        reasons.append(f"compression.heads=true quantises detection.model 'onnx' only, not "
                       f"{detector!r}")
    if depth_model != "unet" and detector != "onnx":
        reasons.append("compression.heads=true but there is no unet depth network or onnx "
                       "detector to quantise")
    return reasons


def _cross_checks(values: Mapping[str, Any]) -> List[str]:
    """Checks across parameters, and of names against the model registry."""
    reasons = []
    lo, hi = values["depth.min_m"], values["depth.max_m"]
    if check_value("depth.min_m", lo) is None and check_value("depth.max_m", hi) is None \
            and lo >= hi:
        reasons.append(f"depth.min_m={lo} must be below depth.max_m={hi}")
    depth_model = values["depth.model"]
    detector = values["detection.model"]
    if isinstance(depth_model, str) or isinstance(detector, str):
        from ..models.registry import list_models
        depth_known = ["none", "sensor"] + list_models("depth")
        if isinstance(depth_model, str) and depth_model not in depth_known:
            reasons.append(f"depth.model={depth_model!r}: unknown; known: "
                           f"{', '.join(depth_known)}")
        det_known = ["none"] + list_models("detector")
        if isinstance(detector, str) and detector not in det_known:
            reasons.append(f"detection.model={detector!r}: unknown; known: "
                           f"{', '.join(det_known)}")
        if detector == "onnx" and not values["detection.weights"]:
            reasons.append("detection.model='onnx' needs detection.weights = the .onnx file")
    mode = values["compression.mode"]
    if mode == "distilled" and not (values["compression.student"]
                                    and values["compression.student_weights"]):
        reasons.append("compression.mode='distilled' needs compression.student and "
                       "compression.student_weights (the file tools.distill wrote)")
    if values["compression.heads"] is True:
        reasons += _head_compression_checks(values)
    low, high = values["tracking.low_thresh"], values["tracking.high_thresh"]
    if isinstance(low, float) and isinstance(high, float) and low > high:
        reasons.append(f"tracking.low_thresh={low} must not exceed tracking.high_thresh={high}")
    backbone = values["backbone"]
    if isinstance(backbone, str):
        # Imported here: the model registry imports torch, config must stay light.
        from ..models.registry import list_models
        known = list_models("encoder")
        if backbone not in known:
            reasons.append(f"backbone={backbone!r}: unknown encoder; known: {', '.join(known)}")
        inner = values["rgbd.rgb_backbone"]
        if backbone == "rgbd_hybrid" and isinstance(inner, str) and (
                inner not in known or inner == "rgbd_hybrid"):
            reasons.append(f"rgbd.rgb_backbone={inner!r}: must be an RGB encoder; known: "
                           f"{', '.join(k for k in known if k != 'rgbd_hybrid')}")
    return reasons


def validate(values: Mapping[str, Any]) -> VisionConfig:
    """Validate ``{ros_name: value}`` (missing names take defaults) into a VisionConfig.

    Raises ConfigError listing every invalid value with its reason.
    """
    merged = defaults()
    reasons = [f"unknown parameter '{k}'" for k in values if k not in SPECS]
    merged.update({k: v for k, v in values.items() if k in SPECS})
    reasons += [r for r in (check_value(n, v) for n, v in merged.items()) if r]
    reasons += _cross_checks(merged)
    if reasons:
        raise ConfigError("invalid parameters: " + "; ".join(reasons))
    kwargs = {SPECS[n].field: (tuple(v) if isinstance(v, list) else
                               float(v) if isinstance(SPECS[n].default, float) else v)
              for n, v in merged.items()}
    return VisionConfig(**kwargs)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{'sync': {'slop_s': 0.1}}`` -> ``{'sync.slop_s': 0.1}``."""
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def load_yaml(path: str | Path, node_name: str = "vision") -> Dict[str, Any]:
    """Read a ROS 2 params file (``NODE: ros__parameters: {...}``) into flat parameters."""
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read params file {path}: {exc}") from exc
    for key in (node_name, f"/{node_name}", "/**", "**"):
        node = tree.get(key) if isinstance(tree, Mapping) else None
        if isinstance(node, Mapping) and isinstance(node.get("ros__parameters"), Mapping):
            return flatten(node["ros__parameters"])
    raise ConfigError(f"{path}: no '{node_name}: ros__parameters:' section")


def field_names() -> List[str]:
    """VisionConfig attribute names (for consistency checks)."""
    return [f.name for f in fields(VisionConfig)]


def render_yaml(node_name: str = "vision") -> str:
    """The params file for every parameter: default value and a comment per key.

    ``config/vision.yaml`` is this text (a test keeps them equal); regenerate it
    with ``python -m robot_vision_ros.tools.params_yaml > config/vision.yaml``.
    """
    import textwrap

    lines = ["# robot_vision_ros: parameters of the `vision` node "
             "(ros2 launch robot_vision_ros vision.launch.py).",
             "# Generated from robot_vision_ros/core/config.py (python -m "
             "robot_vision_ros.tools.params_yaml).",
             "# Keys marked 'live' can change at run time (ros2 param set /vision KEY VALUE);",
             "# the others take effect on the next lifecycle configure (deactivate, cleanup,",
             "# configure, activate) without restarting the process.",
             f"{node_name}:", "  ros__parameters:"]
    group = None
    for spec in PARAMETERS:
        *parent, key = spec.name.split(".")
        if parent and parent[0] != group:
            lines.append(f"    {parent[0]}:")
        group = parent[0] if parent else None
        indent = "      " if parent else "    "
        notes = []
        if spec.choices:
            notes.append("one of: " + ", ".join(map(str, spec.choices)))
        if spec.min is not None:
            notes.append(f"range {spec.min:g}..{spec.max:g}")
        if spec.dynamic:
            notes.append("live")
        comment = spec.description + (f" [{'; '.join(notes)}]" if notes else "")
        lines += [f"{indent}# {line}" for line in textwrap.wrap(comment, 90 - len(indent))]
        value = (f'"{spec.default}"' if isinstance(spec.default, str) else
                 str(spec.default).lower() if isinstance(spec.default, bool) else
                 "[" + ", ".join(map(str, spec.default)) + "]"
                 if isinstance(spec.default, list) else repr(spec.default))
        lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines) + "\n"


def render_markdown() -> str:
    """The parameter table of the README (a test keeps the README's copy equal)."""
    rows = ["| parameter | default | changes | meaning |", "|---|---|---|---|"]
    for spec in PARAMETERS:
        default = spec.default
        text = (f'"{default}"' if isinstance(default, str) else
                str(default).lower() if isinstance(default, bool) else str(default))
        notes = []
        if spec.choices:
            notes.append(" / ".join(map(str, spec.choices)))
        if spec.min is not None:
            notes.append(f"{spec.min:g} to {spec.max:g}")
        meaning = spec.description + (f" ({'; '.join(notes)})" if notes else "")
        rows.append(f"| `{spec.name}` | `{text}` | {'live' if spec.dynamic else 'configure'} "
                    f"| {meaning.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
