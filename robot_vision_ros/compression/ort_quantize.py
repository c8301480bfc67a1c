"""INT8 encoders in ONNX Runtime (``backend: onnxruntime`` with ``compression.mode: int8``).

The fp32 encoder is exported exactly as the onnxruntime backend exports it
(:func:`~robot_vision_ros.core.backends.export_encoder_onnx`), then quantised
by ``onnxruntime.quantization``:

* ``static`` (CNN encoders): ``quantize_static`` in QDQ format, per-channel
  symmetric INT8 weights, uint8 activations whose ranges come from the
  calibration frames (``calibrate_method`` ``minmax``, ``entropy`` or
  ``percentile``), after ``quant_pre_process`` (shape inference and graph
  optimisation, so Conv+BN+ReLU are fused before the ranges are observed);
* ``dynamic`` (ViTs and other MatMul-heavy encoders): ``quantize_dynamic``,
  INT8 weights with activation ranges computed per call; needs no frames.

The result, :class:`OrtEncoder`, is an ``nn.Module`` whose ``forward`` gives the
pooled vector, so the fidelity guard measures it against the fp32 torch
encoder on the same held-out frames as any torch model.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..core.backends import OnnxRuntimeEncoder, export_encoder_onnx
from ..core.errors import ConfigError, ModelError
from ..models.encoders.base import EncoderOutput, VisionEncoder
from .quantize import GRID_ENCODERS, cpu_has_vnni

LOG = logging.getLogger(__name__)

#: ``calibrate_method`` names and the onnxruntime ``CalibrationMethod`` member of each.
CALIBRATE_METHODS: Dict[str, str] = {"minmax": "MinMax", "entropy": "Entropy",
                                     "percentile": "Percentile"}
#: Measured on vtest.avi (see README, compression): percentile keeps the encoders
#: a little closer to fp32 than MinMax (centred cosine), at no extra cost.
DEFAULT_CALIBRATE_METHOD = "percentile"
ORT_INT8_METHODS: Tuple[str, ...] = ("auto", "static", "dynamic")


def _quantization():
    """``onnxruntime.quantization`` (it needs the ``onnx`` package as well)."""
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise ConfigError(f"ONNX Runtime INT8 needs onnxruntime and onnx installed: "
                          f"{exc}") from exc
    return quantization


def make_reader(input_name: str, inputs: Sequence[np.ndarray]):
    """A ``CalibrationDataReader`` that feeds ``inputs`` one by one as ``input_name``."""
    quantization = _quantization()

    class _Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator[np.ndarray] = iter(())
            self.rewind()

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            item = next(self._items, None)
            return None if item is None else {input_name: item}

        def rewind(self) -> None:
            self._items = iter(inputs)

    return _Reader()


def _check_calibrate_method(name: str) -> str:
    if name not in CALIBRATE_METHODS:
        raise ConfigError(f"calibrate_method must be one of {', '.join(CALIBRATE_METHODS)}, "
                          f"got {name!r}")
    return name


def _prepared(model: bytes, folder: Path, preprocess: bool = True) -> Path:
    """``model`` written to ``folder``, after ``quant_pre_process`` when it succeeds."""
    source = folder / "fp32.onnx"
    source.write_bytes(model)
    if not preprocess:
        return source
    prepared = folder / "prepared.onnx"
    try:
        _quantization().quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # noqa: BLE001 - optional step: quantise the raw graph instead
        LOG.warning("quant_pre_process failed (quantising the raw graph): %s", exc)
        return source
    return prepared


def quantize_onnx_static(model: bytes, input_name: str, inputs: Sequence[np.ndarray],
                         calibrate_method: str = DEFAULT_CALIBRATE_METHOD,
                         per_channel: bool = True, preprocess: bool = True,
                         op_types: Optional[Sequence[str]] = None,
                         reduce_range: Optional[bool] = None) -> bytes:
    """Static QDQ INT8 of a serialised ONNX ``model`` calibrated on ``inputs``.

    ``inputs``: arrays fed one at a time as ``input_name`` (the model's own
    input: dtype and layout as it takes them). ``op_types``: operator types
    to quantise (None: onnxruntime's default set). ``reduce_range``: 7-bit
    weights; None picks it only on CPUs without VNNI, where the u8s8 kernels
    can saturate. Returns the quantised model's bytes.
    """
    quantization = _quantization()
    _check_calibrate_method(calibrate_method)
    if len(inputs) == 0:
        raise ConfigError("static ONNX Runtime INT8 needs at least one calibration input")
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    with tempfile.TemporaryDirectory(prefix="rv_ort_int8_") as tmp:
        source = _prepared(model, Path(tmp), preprocess)
        target = Path(tmp) / "int8.onnx"

        def quantize(name: str) -> None:
            quantization.quantize_static(
                str(source), str(target), make_reader(input_name, inputs),
                quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
                reduce_range=reduce_range, activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=getattr(quantization.CalibrationMethod,
                                         CALIBRATE_METHODS[name]),
                op_types_to_quantize=list(op_types) if op_types else None,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})

        try:
            try:
                quantize(calibrate_method)
            except ValueError as exc:
                # The histogram methods cannot bin a tensor whose calibration values are
                # (nearly) constant; min/max ranges still work for it.
                if calibrate_method == "minmax" or "bins" not in str(exc):
                    raise
                LOG.warning("ONNX Runtime %s calibration failed (%s); using minmax",
                            calibrate_method, exc)
                quantize("minmax")
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelError(f"ONNX Runtime static INT8 failed: {type(exc).__name__}: "
                             f"{exc}") from exc
        return target.read_bytes()


def quantize_onnx_dynamic(model: bytes) -> bytes:
    """Dynamic INT8 (weights INT8, activation ranges per call) of a serialised ONNX model."""
    quantization = _quantization()
    with tempfile.TemporaryDirectory(prefix="rv_ort_int8_") as tmp:
        source, target = _prepared(model, Path(tmp)), Path(tmp) / "int8.onnx"
        try:
            quantization.quantize_dynamic(str(source), str(target),
                                          weight_type=quantization.QuantType.QInt8)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelError(f"ONNX Runtime dynamic INT8 failed: {type(exc).__name__}: "
                             f"{exc}") from exc
        return target.read_bytes()


class OrtEncoder(nn.Module):
    """An encoder run by an onnxruntime session, with the encoder's interface.

    ``encode(x)`` gives the :class:`EncoderOutput` the pipeline publishes and
    ``forward(x)`` the pooled vector (what the fidelity guard compares). The
    graph has a fixed ``[1, 3, H, W]`` input, so a batch runs frame by frame.
    Not available: ``logits``, ``forward_features`` and training.
    """

    uses_depth = False
    #: The pipeline runs ``encode`` as it is instead of exporting the module again.
    runs_onnxruntime = True

    def __init__(self, encoder: VisionEncoder, runner: OnnxRuntimeEncoder,
                 compression: str) -> None:
        super().__init__()
        self.runner = runner
        self.name = encoder.name
        self.mean, self.std = encoder.mean, encoder.std
        self.size_multiple = getattr(encoder, "size_multiple", 32)
        self.native_dim = int(getattr(encoder, "native_dim", encoder.output_dim))
        self.output_dim = int(encoder.output_dim)
        self.compression = compression

    def encode(self, x: torch.Tensor, depth: Optional[torch.Tensor] = None) -> EncoderOutput:
        """Pooled vector and tokens of a preprocessed batch ``[B, 3, H, W]``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"{self.name} expects [B, 3, H, W], got {tuple(x.shape)}")
        outs = [self.runner.encode(x[i:i + 1]) for i in range(len(x))]
        if len(outs) == 1:
            return outs[0]
        return EncoderOutput(pooled=torch.cat([o.pooled for o in outs]),
                             tokens=torch.cat([o.tokens for o in outs]),
                             token_uv=outs[0].token_uv, token_level=outs[0].token_level)

    def forward(self, x: torch.Tensor, depth: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pooled vector ``[B, output_dim]``."""
        return self.encode(x).pooled


def ort_int8_method(encoder: nn.Module, method: str) -> str:
    """``auto`` -> static for the grid CNN encoders, dynamic for the rest."""
    if method not in ORT_INT8_METHODS:
        raise ConfigError(f"int8 method must be one of {', '.join(ORT_INT8_METHODS)}, got "
                          f"{method!r}")
    if method == "auto":
        return "static" if isinstance(encoder, GRID_ENCODERS) else "dynamic"
    return method


def quantize_encoder_ort(encoder: VisionEncoder, input_hw: Sequence[int],
                         calibration_frames: Optional[torch.Tensor] = None,
                         method: str = "auto",
                         calibrate_method: str = DEFAULT_CALIBRATE_METHOD,
                         device: torch.device = torch.device("cpu"), threads: int = 0
                         ) -> Tuple[OrtEncoder, Dict[str, Any]]:
    """ONNX Runtime INT8 of ``encoder`` (not changed) at the fixed input size ``input_hw``.

    ``calibration_frames``: normalised ``[N, 3, H, W]`` CPU frames at
    ``input_hw`` (static only). Returns ``(model, details)``.
    """
    import copy

    method = ort_int8_method(encoder, method)
    _check_calibrate_method(calibrate_method)
    input_hw = (int(input_hw[0]), int(input_hw[1]))
    model, token_uv, token_level = export_encoder_onnx(copy.deepcopy(encoder).float(),
                                                       input_hw)
    details: Dict[str, Any] = {"method": method, "engine": "onnxruntime"}
    if method == "dynamic":
        quantized = quantize_onnx_dynamic(model)
    else:
        if calibration_frames is None or len(calibration_frames) == 0:
            raise ConfigError("static INT8 needs calibration frames: set "
                              "compression.calibration (folder, video, .npz, ROS 2 bag or "
                              "live)")
        if tuple(calibration_frames.shape[-2:]) != input_hw:
            raise ConfigError(f"calibration frames are {tuple(calibration_frames.shape[-2:])}, "
                              f"the encoder input is {input_hw}")
        inputs: List[np.ndarray] = [np.ascontiguousarray(f[None].float().cpu().numpy())
                                    for f in calibration_frames]
        quantized = quantize_onnx_static(model, "image", inputs, calibrate_method)
        details.update(calibrate_method=calibrate_method, calibration_frames=len(inputs))
    runner = OnnxRuntimeEncoder.from_onnx(quantized, token_uv, token_level, device, threads)
    details["onnx_bytes_before"], details["onnx_bytes_after"] = len(model), len(quantized)
    LOG.info("ONNX Runtime INT8 (%s) of %s: %.1f -> %.1f MB", method, encoder.name,
             len(model) / 1e6, len(quantized) / 1e6)
    return OrtEncoder(encoder, runner, f"int8_ort_{method}").eval(), details
