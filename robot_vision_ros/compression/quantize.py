"""INT8 quantisation of encoders for the CPU.

* :func:`quantize_dynamic_int8`: weights of every ``nn.Linear`` stored as
  INT8, activations quantised on the fly (ViTs, projection and heads). The
  model keeps its class, so every method stays available.
* :func:`quantize_static_int8`: FX graph-mode post-training quantisation of a
  grid CNN encoder (ResNet, MobileNet, EfficientNet, the real-time encoder)
  for the x86 (fbgemm/oneDNN) backend, calibrated on real frames. FX graph
  mode, because its converted modules call the fbgemm INT8 kernels (VNNI on
  AVX-512 CPUs) eagerly: fast without a compile step. PT2E's
  X86InductorQuantizer only pays off through ``torch.compile`` (minutes of
  compilation per input shape at start-up); it was not used. ``torch.ao``
  warns that FX mode moves to torchao; it still works in torch 2.14.

Fidelity measures (the stock recipe reaches only ~0.96 logit cosine on the
real MobileNetV2):

* per-channel symmetric weight observers;
* histogram activation observers (they pick the range that minimises the
  quantisation error instead of the min/max outliers) at full 8-bit range:
  ``reduce_range`` (7-bit activations) only avoids an int16 overflow on CPUs
  without VNNI, so it is switched on only there;
* a convolution whose output feeds ReLU6 is observed after the clamp
  (:func:`clamp_relu6_observers`): FX fuses Conv+BN+ReLU but not ReLU6, so the
  convolution output would otherwise be quantised over its whole pre-clamp
  range. Its quantised range then lies inside ``[0, 6]``, where saturation
  *is* ReLU6, and the ReLU6 nodes (a fifth of the INT8 time) are dropped
  (:func:`drop_redundant_relu6`);
* layers named by ``keep_float`` stay in float: by default the first
  convolution (it sees raw pixels) and the first depthwise convolution
  (measured: alone it takes MobileNetV2's feature cosine from 0.989 to 0.994).
"""
from __future__ import annotations

import copy
import logging
import threading
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn
from torch.ao.quantization import QConfig, QConfigMapping, quantize_dynamic
from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from ..core.errors import ConfigError, ModelError
from ..models.encoders.base import VisionEncoder
from ..models.encoders.mobilenet import TorchvisionFeaturesEncoder
from ..models.encoders.realtime import RealtimeEncoder
from ..models.encoders.resnet import ResNetEncoder, pool_grid
from .fidelity import eval_mode

LOG = logging.getLogger(__name__)

#: Encoders whose pooled vector and tokens come from one ``forward_features`` grid.
GRID_ENCODERS: Tuple[type, ...] = (ResNetEncoder, TorchvisionFeaturesEncoder, RealtimeEncoder)
#: What ``keep_float`` understands besides module names.
KEEP_FLOAT_GROUPS: Tuple[str, ...] = ("first_conv", "first_depthwise", "depthwise", "last_conv")
#: The stem sees raw pixels; MobileNet's first depthwise conv has per-channel output
#: ranges that differ by orders of magnitude (Nagel et al. 2019), which one
#: per-tensor activation scale cannot hold. Both are cheap in float.
DEFAULT_KEEP_FLOAT: Tuple[str, ...] = ("first_conv", "first_depthwise")
#: Quantised backends that run INT8 convolutions on x86 CPUs.
X86_ENGINES: Tuple[str, ...] = ("x86", "fbgemm")
CALIBRATION_BATCH = 8
#: FX symbolic tracing patches ``nn.Module.__call__`` for the whole process while it
#: traces, so a module called on another thread meanwhile is routed into the tracer
#: and fails. Tracing holds this lock; inference that may overlap a background
#: quantisation (``compression.calibration: live``) takes it too.
FX_TRACE_LOCK = threading.Lock()


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantised to INT8.

    Meant for ViTs (almost all their compute is Linear) and linear heads; it
    leaves convolutions in float. The copy keeps the model's class and methods.
    """
    _require_x86_engine()
    quantized = quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
    quantized.compression = "int8_dynamic"
    return quantized


def _require_x86_engine() -> None:
    engine = torch.backends.quantized.engine
    if engine not in X86_ENGINES:
        supported = torch.backends.quantized.supported_engines
        if "x86" not in supported:
            raise ConfigError(f"INT8 quantisation here needs the x86 quantised engine; this "
                              f"torch offers {supported} (engine now '{engine}')")
        torch.backends.quantized.engine = "x86"


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (int8 dot products into int32)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def int8_qconfig(reduce_range: Optional[bool] = None) -> QConfig:
    """Per-channel symmetric INT8 weights, histogram-observed uint8 activations."""
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    return QConfig(
        activation=HistogramObserver.with_args(dtype=torch.quint8, reduce_range=reduce_range),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                  qscheme=torch.per_channel_symmetric))


class ReLU6HistogramObserver(HistogramObserver):
    """Histogram observer that records ``clamp(x, 0, 6)``.

    Put on a convolution's output that feeds ReLU6: FX fuses Conv+BN+ReLU but
    not ReLU6, so the convolution output would be quantised over its whole
    pre-clamp range, wasting levels on values ReLU6 clips anyway. Over a range
    inside ``[0, 6]`` saturating quantisation *is* ReLU6.
    """

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        super().forward(x_orig.detach().clamp(0.0, 6.0))
        return x_orig


def _module_of(graph_module: fx.GraphModule, node: object) -> Optional[nn.Module]:
    if isinstance(node, fx.Node) and node.op == "call_module":
        return graph_module.get_submodule(str(node.target))
    return None


def clamp_relu6_observers(prepared: fx.GraphModule) -> int:
    """Give every ``conv -> observer -> ReLU6`` observer the ``[0, 6]`` clamp.

    Must run after ``prepare_fx`` and before calibration. Only observers of
    convolution outputs are touched, never an input observer. Returns how many.
    """
    replaced = 0
    for node in prepared.graph.nodes:
        if not isinstance(_module_of(prepared, node), nn.ReLU6) or not node.args:
            continue
        observer_node = node.args[0]
        observer = _module_of(prepared, observer_node)
        if not isinstance(observer, HistogramObserver) or isinstance(
                observer, ReLU6HistogramObserver):
            continue
        if not isinstance(_module_of(prepared, observer_node.args[0]), nn.Conv2d):
            continue
        clamped = ReLU6HistogramObserver(dtype=observer.dtype, qscheme=observer.qscheme,
                                         reduce_range=observer.reduce_range)
        # FX shares one observer instance between a ReLU6's input and output.
        for name, child in list(prepared.named_children()):
            if child is observer:
                setattr(prepared, name, clamped)
        replaced += 1
    return replaced


def _conv_names(root: nn.Module) -> List[Tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in root.named_modules() if isinstance(m, nn.Conv2d)]


def resolve_keep_float(root: nn.Module, keep_float: Iterable[str]) -> List[str]:
    """Module names (in ``root``) that ``keep_float`` asks to leave in float.

    Entries are groups (``first_conv``, ``depthwise`` = every grouped conv with
    one input channel per group, ``first_depthwise``, ``last_conv``) or module
    names relative to the encoder (``backbone.features.1``).
    """
    convs = _conv_names(root)
    modules = dict(root.named_modules())
    names: List[str] = []
    for entry in keep_float:
        if entry == "first_conv":
            names += [convs[0][0]] if convs else []
        elif entry == "last_conv":
            names += [convs[-1][0]] if convs else []
        elif entry in ("depthwise", "first_depthwise"):
            depthwise = [n for n, m in convs if m.groups > 1 and m.groups == m.in_channels]
            names += depthwise[:1] if entry == "first_depthwise" else depthwise
        elif entry in modules:
            names.append(entry)
        elif f"encoder.{entry}" in modules:  # names relative to the encoder
            names.append(f"encoder.{entry}")
        else:
            raise ConfigError(f"keep_float entry '{entry}' is neither one of "
                              f"{', '.join(KEEP_FLOAT_GROUPS)} nor a module of the encoder "
                              f"(e.g. {', '.join(list(modules)[1:4])})")
    return sorted(set(names))


def _output_qparams(graph_module: fx.GraphModule, node: fx.Node
                    ) -> Optional[Tuple[float, int, int]]:
    """(scale, zero_point, quant_max) of a node's quantised output, when known statically."""
    if node.op == "call_module":
        module = graph_module.get_submodule(str(node.target))
        if "quantized" in type(module).__module__ and hasattr(module, "scale"):
            return float(module.scale), int(module.zero_point), 255
    if node.op == "call_function" and node.target is torch.quantize_per_tensor:
        scale_node, zero_node, dtype = node.args[1], node.args[2], node.args[3]
        if (dtype == torch.quint8 and isinstance(scale_node, fx.Node)
                and isinstance(zero_node, fx.Node) and scale_node.op == "get_attr"
                and zero_node.op == "get_attr"):
            scale = getattr(graph_module, str(scale_node.target))
            zero = getattr(graph_module, str(zero_node.target))
            return float(scale), int(zero), 255
    return None


def drop_redundant_relu6(graph_module: fx.GraphModule) -> int:
    """Remove ReLU6 nodes whose quantised input can only hold values in ``[0, 6]``.

    With zero point 0 and ``scale * 255 <= 6`` every representable value already
    lies in ``[0, 6]``, so the clamp is exactly the identity; it still costs a
    full pass over the tensor (a fifth of MobileNetV2's INT8 time). Returns
    how many were removed.
    """
    removed = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not node.args:
            continue
        if not isinstance(graph_module.get_submodule(str(node.target)), nn.ReLU6):
            continue
        source = node.args[0]
        qparams = _output_qparams(graph_module, source) if isinstance(source, fx.Node) else None
        if qparams is None:
            continue
        scale, zero_point, quant_max = qparams
        if zero_point == 0 and scale * quant_max <= 6.0 + 1e-6:
            node.replace_all_uses_with(source)
            graph_module.graph.erase_node(node)
            removed += 1
    if removed:
        graph_module.graph.lint()
        graph_module.delete_all_unused_submodules()
        graph_module.recompile()
    return removed


class _FeatureMap(nn.Module):
    """Traceable root: normalised image -> the encoder's native feature map."""

    def __init__(self, encoder: VisionEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(x)


def classifier_head(encoder: nn.Module) -> Optional[nn.Module]:
    """The float module mapping the pooled native vector to logits, if the encoder has one."""
    backbone = getattr(encoder, "backbone", None)
    if isinstance(encoder, ResNetEncoder):
        return backbone.fc
    if isinstance(encoder, TorchvisionFeaturesEncoder):
        return backbone.classifier
    return None


class QuantizedEncoder(VisionEncoder):
    """A grid CNN encoder whose feature extractor is an INT8 FX graph.

    Available: ``forward(x)`` (pooled ``[B, output_dim]``), ``encode(x)``
    (pooled + grid tokens), ``forward_features(x)`` (native map, float) and
    ``check_input``. The pooling, the projection (``proj``) and, in
    :class:`QuantizedClassifierEncoder`, the classifier stay in float: they
    are a negligible share of the work and averaging in float keeps the
    pooled vector precise. Not available: ``get_intermediate_features`` and
    training (the graph is inference-only).
    """

    def __init__(self, encoder: VisionEncoder, features: nn.Module,
                 kept_float: Sequence[str], runner: Optional[nn.Module] = None) -> None:
        super().__init__(native_dim=encoder.native_dim, output_dim=0)
        self.output_dim = encoder.output_dim
        self.proj = copy.deepcopy(encoder.proj)
        self.features = features
        # A frozen TorchScript trace of ``features`` (same weights, constants
        # inlined, no Python per op); ``features`` stays for the state dict.
        self.runner = runner
        self.name = encoder.name
        self.mean, self.std = encoder.mean, encoder.std
        self.size_multiple = encoder.size_multiple
        self.kept_float = list(kept_float)
        self.compression = "int8_static"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.runner or self.features)(x)

    def _pool_and_tokens(self, x: torch.Tensor, depth: Optional[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return pool_grid(self.forward_features(x))


class QuantizedClassifierEncoder(QuantizedEncoder):
    """:class:`QuantizedEncoder` that also offers ``logits(x)`` (float classifier)."""

    def __init__(self, encoder: VisionEncoder, features: nn.Module, kept_float: Sequence[str],
                 head: nn.Module, runner: Optional[nn.Module] = None) -> None:
        super().__init__(encoder, features, kept_float, runner)
        self.head = copy.deepcopy(head)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits from the float classifier on the pooled INT8 features."""
        self.check_input(x)
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def _check_static_inputs(encoder: nn.Module, calibration_frames: torch.Tensor,
                         example_input: torch.Tensor) -> None:
    if not isinstance(encoder, GRID_ENCODERS):
        raise ConfigError(
            f"static INT8 supports the grid CNN encoders ({', '.join(t.__name__ for t in GRID_ENCODERS)}), "
            f"not {type(encoder).__name__} '{getattr(encoder, 'name', '')}'; use dynamic "
            f"INT8 (quantize_dynamic_int8) for ViTs and other encoders")
    for label, tensor in (("calibration_frames", calibration_frames),
                          ("example_input", example_input)):
        if not torch.is_tensor(tensor) or tensor.dim() != 4 or tensor.shape[1] != 3:
            raise ConfigError(f"{label} must be a [N, 3, H, W] tensor, got "
                              f"{getattr(tensor, 'shape', type(tensor).__name__)}")
    if len(calibration_frames) == 0:
        raise ConfigError("static INT8 needs at least one calibration frame")
    if calibration_frames.device.type != "cpu":
        raise ConfigError("static INT8 runs on the CPU: pass calibration frames on the CPU")


def build_qconfig_mapping(root: nn.Module, keep_float: Sequence[str],
                          reduce_range: Optional[bool] = None
                          ) -> Tuple[QConfigMapping, List[str]]:
    """The QConfigMapping for ``root`` and the module names left in float."""
    base = int8_qconfig(reduce_range)
    mapping = QConfigMapping().set_global(base)
    kept = resolve_keep_float(root, keep_float)
    for name in kept:
        mapping.set_module_name(name, None)
    return mapping, kept


def freeze_graph(graph_module: nn.Module, example_input: torch.Tensor) -> Optional[nn.Module]:
    """``torch.jit.freeze(torch.jit.trace(...))`` of the INT8 graph, or None if it fails.

    Removes the Python dispatch of ~60 modules a frame: measured here (1 thread)
    MobileNetV2 INT8 went from 6.2 to 4.3 ms. The trace has no shape-dependent
    Python, so it serves any batch and input size.
    """
    try:
        with torch.no_grad():
            traced = torch.jit.trace(graph_module.eval(), example_input)
            frozen = torch.jit.freeze(traced)
            frozen(example_input)
        return frozen
    except (RuntimeError, TypeError, AttributeError) as exc:
        LOG.warning("INT8 graph not frozen (runs unfrozen, slower): %s", exc)
        return None


def quantize_static_int8(model: VisionEncoder, calibration_frames: torch.Tensor,
                         example_input: Optional[torch.Tensor] = None,
                         keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
                         reduce_range: Optional[bool] = None,
                         freeze: bool = True) -> QuantizedEncoder:
    """Post-training static INT8 of a grid CNN encoder, calibrated on real frames.

    ``calibration_frames``: normalised ``[N, 3, H, W]`` CPU frames (a few
    dozen real frames of the deployment scene; more frames, better ranges).
    ``example_input``: one batch of the input size used for tracing (defaults
    to the first calibration frame). ``keep_float``: groups or module names
    left in float (see :func:`resolve_keep_float`). ``reduce_range``: None
    picks 7-bit activations only on CPUs without VNNI. ``freeze``: run a frozen
    TorchScript trace of the graph (:func:`freeze_graph`). Returns a
    :class:`QuantizedEncoder` (with ``logits`` when the encoder has a
    classifier); the input model is not changed.
    """
    if example_input is None and torch.is_tensor(calibration_frames):
        example_input = calibration_frames[:1]
    _check_static_inputs(model, calibration_frames, example_input)
    _require_x86_engine()
    encoder = copy.deepcopy(model).cpu().float().eval()
    root = _FeatureMap(encoder).eval()
    mapping, kept = build_qconfig_mapping(root, keep_float, reduce_range)
    try:
        with FX_TRACE_LOCK:
            prepared = prepare_fx(root, mapping, example_inputs=(example_input,))
        clamp_relu6_observers(prepared)
        with eval_mode(prepared):
            for start in range(0, len(calibration_frames), CALIBRATION_BATCH):
                prepared(calibration_frames[start:start + CALIBRATION_BATCH])
        converted = convert_fx(prepared)
        drop_redundant_relu6(converted)
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        raise ModelError(f"static INT8 of '{encoder.name}' failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    runner = freeze_graph(converted, example_input) if freeze else None
    head = classifier_head(encoder)
    if head is not None:
        quantized: QuantizedEncoder = QuantizedClassifierEncoder(encoder, converted, kept, head,
                                                                 runner)
    else:
        quantized = QuantizedEncoder(encoder, converted, kept, runner)
    LOG.info("static INT8 %s: %d calibration frames, kept in float: %s", encoder.name,
             len(calibration_frames), kept or "nothing")
    return quantized.eval()


def quantized_summary(model: nn.Module) -> Dict[str, int]:
    """Counts of quantised and float conv/linear modules, to see what really is INT8."""
    counts = {"int8_modules": 0, "float_modules": 0}
    for module in model.modules():
        kind = type(module).__module__
        if "quantized" in kind and hasattr(module, "weight"):
            counts["int8_modules"] += 1
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            counts["float_modules"] += 1
    return counts
