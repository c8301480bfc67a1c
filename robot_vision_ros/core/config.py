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
    ParamSpec("publish_tokens", True,
              "Publish the stamped token table on features/tokens.", dynamic=True),
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
    ParamSpec("depth.min_m", 0.1,
              "Sensor depth below this (metres) is unknown.", min=0.0, max=100.0, dynamic=True),
    ParamSpec("depth.max_m", 10.0,
              "Sensor depth above this (metres) is unknown.", min=0.01, max=1000.0,
              dynamic=True),
    ParamSpec("sync.slop_s", 0.02,
              "Largest RGB/depth stamp difference (seconds) paired as one frame.",
              min=0.0, max=1.0, dynamic=True),
    ParamSpec("sync.depth_wait_s", 0.03,
              "How long a colour frame waits for its depth image before it is processed "
              "without depth (counted as a sync failure).", min=0.0, max=1.0, dynamic=True),
    ParamSpec("sync.use_depth", True,
              "Subscribe to the aligned depth image."),
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
    publish_tokens: bool
    rgbd_rgb_backbone: str
    rgbd_rgb_weights: str
    rgbd_use_depth: bool
    rgbd_use_temporal: bool
    rgbd_temporal_window: int
    rgbd_num_slots: int
    depth_min_m: float
    depth_max_m: float
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
    if reason is None and name == "input_size" and any(v % 32 for v in value):
        reason = "height and width must be multiples of 32"
    return None if reason is None else f"{name}={value!r}: {reason}"


def _cross_checks(values: Mapping[str, Any]) -> List[str]:
    """Checks across parameters, and of names against the model registry."""
    reasons = []
    lo, hi = values["depth.min_m"], values["depth.max_m"]
    if check_value("depth.min_m", lo) is None and check_value("depth.max_m", hi) is None \
            and lo >= hi:
        reasons.append(f"depth.min_m={lo} must be below depth.max_m={hi}")
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
