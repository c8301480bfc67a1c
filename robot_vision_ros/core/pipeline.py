"""The encoder stage: frame -> preprocessing on the device -> encoder -> FeatureResult."""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional, Tuple

import numpy as np
import torch

from ..models.encoders.base import VisionEncoder
from ..models.registry import create_model
from .config import VisionConfig
from .backends import OnnxRuntimeEncoder, compile_encoder
from .device import ComputeTarget, resolve_target
from .errors import ConfigError, ModelError
from .frames import FeatureResult, RgbdFrame
from .preprocess import Preprocessor

log = logging.getLogger(__name__)


def compress_encoder(encoder: VisionEncoder, cfg: VisionConfig,
                     frames: Optional[torch.Tensor] = None
                     ) -> Tuple[VisionEncoder, Dict[str, Any]]:
    """Apply ``compression.*`` and the fidelity guard; ConfigError below the floor.

    ``frames``: normalised calibration frames at the encoder input size; None
    reads them from ``compression.calibration`` (a folder, video, .npz or ROS 2
    bag; with ``live`` the node's own frames are passed in, see
    :class:`~robot_vision_ros.compression.live.LiveCompression`).
    Every 4th is held out, and the guard compares the compressed encoder with
    the original on those (the figure is in the error, the log and
    diagnostics). With ``backend: onnxruntime`` INT8 is done by ONNX Runtime
    and the guard measures that session against the fp32 torch encoder.
    """
    from ..compression import check_fidelity, compress, load_calibration_frames
    from ..compression.apply import split_frames
    from ..compression.calibration import LIVE

    if frames is None and cfg.compression_calibration and cfg.compression_calibration != LIVE:
        frames = load_calibration_frames(cfg.compression_calibration,
                                         cfg.compression_calibration_frames, cfg.input_size)
    if frames is None and cfg.compression_min_fidelity > 0:
        raise ConfigError("compression.min_fidelity > 0 needs compression.calibration (a "
                          "folder of images, a video, an .npz of frames, a ROS 2 bag or "
                          "'live') to measure on; set compression.min_fidelity: 0 to run "
                          "without the guard")
    target = resolve_target(cfg.device, cfg.precision)
    model, report = compress(encoder, cfg.compression_mode, cfg.compression_options(), frames,
                             backend=cfg.backend, input_hw=cfg.input_size,
                             device=target.device, threads=cfg.num_threads)
    if frames is not None:
        _, held_out = split_frames(frames)
        figure = check_fidelity(encoder, model, held_out, cfg.compression_min_fidelity,
                                cfg.compression_fidelity_metric)
        report["guard"] = {"metric": cfg.compression_fidelity_metric, "value": figure,
                           "min": cfg.compression_min_fidelity, "frames": len(held_out)}
        log.info("compression %s: fidelity %s = %.4f (floor %.2f) on %d held-out frames",
                 cfg.compression_mode, cfg.compression_fidelity_metric, figure,
                 cfg.compression_min_fidelity, len(held_out))
    model.name = getattr(model, "name", "") or encoder.name
    return model, report


def _runnable(model: VisionEncoder, cfg: VisionConfig, target: ComputeTarget
              ) -> Tuple[VisionEncoder, Callable[..., Any]]:
    """``(model on the device, its encode function)`` for the configured backend."""
    if getattr(model, "runs_onnxruntime", False) and cfg.backend == "onnxruntime":
        return model, model.encode  # already an onnxruntime session (ORT INT8)
    model = model.eval().to(target.device)
    if target.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.backend == "onnxruntime":
        return model, OnnxRuntimeEncoder(model, cfg.input_size, target.device,
                                         cfg.num_threads).encode
    if cfg.compile != "none":
        compile_encoder(model, cfg.compile)
    return model, model.encode


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc)


class EncoderPipeline:
    """Builds the configured encoder once and turns frames into feature results."""

    def __init__(self, encoder: VisionEncoder, input_hw: Tuple[int, int],
                 target: ComputeTarget, backend: str = "torch", compile_mode: str = "none",
                 num_threads: int = 0) -> None:
        self.backbone = encoder.name
        self.target = target
        self.input_hw = input_hw
        try:
            encoder = encoder.eval().to(target.device)
            if target.channels_last:
                encoder = encoder.to(memory_format=torch.channels_last)
        except RuntimeError as exc:
            if _is_oom(exc):
                raise ModelError(f"out of memory on {target.device} while loading encoder "
                                 f"'{encoder.name}' ({input_hw[0]}x{input_hw[1]})") from exc
            raise
        self.encoder = encoder
        self.backend = backend
        #: What compression did, with the guard's fidelity figure (empty: none).
        self.compression: Dict[str, Any] = {}
        self._encode = encoder.encode
        #: Set with ``compression.calibration: live`` (see :meth:`from_config`).
        self.live: Optional[Any] = None
        if backend == "onnxruntime" and getattr(encoder, "runs_onnxruntime", False):
            log.info("encoder '%s' runs its ONNX Runtime %s session", encoder.name,
                     getattr(encoder, "compression", ""))
        elif backend == "onnxruntime":
            ort_encoder = OnnxRuntimeEncoder(encoder, input_hw, target.device, num_threads)
            encoder.to(target.device)
            self._encode = ort_encoder.encode
            log.info("encoder '%s' exported to ONNX, providers %s", encoder.name,
                     ort_encoder.providers)
        elif compile_mode != "none":
            compile_encoder(encoder, compile_mode)
            self._encode = encoder.encode
        self.output_dim = int(encoder.output_dim)
        self.preprocess = Preprocessor(input_hw, encoder.mean, encoder.std, target.device,
                                       dtype=torch.float32, channels_last=target.channels_last)
        # Temporal encoders (rgbd_hybrid with use_temporal) take their recent
        # per-frame embeddings explicitly; the pipeline, not the module, keeps them.
        window = int(getattr(encoder, "temporal_window", 0) or 0)
        self._uses_history = bool(getattr(encoder, "use_temporal", False)) and window > 1
        self._history: Deque[torch.Tensor] = deque(maxlen=max(window - 1, 1))
        # Token centres and levels depend only on the input size: copied to the
        # host once, not on every frame (that would be a second device sync).
        self._geometry: Optional[Tuple[np.ndarray, np.ndarray]] = None

    @classmethod
    def from_config(cls, cfg: VisionConfig) -> "EncoderPipeline":
        """Build the configured encoder (weights loaded) and its pipeline."""
        target = resolve_target(cfg.device, cfg.precision)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        encoder = create_model(cfg.backbone, output_dim=cfg.output_dim, weights=cfg.weights,
                               **cfg.encoder_options())
        if not cfg.weights:
            log.warning("encoder '%s' has random weights: its features carry no meaning until "
                        "weights are given (weights: imagenet or a file)", cfg.backbone)
        from ..compression.calibration import LIVE

        live = cfg.compression_mode != "none" and cfg.compression_calibration == LIVE
        report: Dict[str, Any] = {}
        if cfg.compression_mode != "none" and not live:
            encoder, report = compress_encoder(encoder, cfg)
        pipeline = cls(encoder, cfg.input_size, target, cfg.backend, cfg.compile,
                       cfg.num_threads)
        pipeline.compression = report
        if live:
            pipeline._start_live(cfg)
        return pipeline

    def _start_live(self, cfg: VisionConfig) -> None:
        """Run fp32 while the first frames are collected; compress them in the background."""
        from ..compression.live import FAILED, LiveCompression
        from ..compression.quantize import FX_TRACE_LOCK

        if self._uses_history or self.encoder.uses_depth:
            raise ConfigError(f"compression.calibration 'live' collects RGB encoder inputs; "
                              f"'{self.backbone}' takes depth or history: calibrate from a "
                              f"file or bag instead")
        reference = copy.deepcopy(self.encoder).cpu().eval()
        target = self.target

        def compress_fn(frames: torch.Tensor):
            model, report = compress_encoder(reference, cfg, frames)
            model, encode = _runnable(model, cfg, target)
            with torch.inference_mode():  # warm up here, not on the first swapped frame
                encode(frames[:1].to(target.device))
            return model, encode, report

        live = LiveCompression(cfg.compression_calibration_frames, compress_fn)
        fp32_encode = self._encode

        def encode(x: torch.Tensor, depth: Optional[torch.Tensor] = None):
            ready = live.poll()
            if ready is not None:
                self.swap_encoder(*ready)
                return self._encode(x, depth)
            if live.state == FAILED:
                raise ModelError(f"compressed encoder failed its guard: {live.error}")
            live.offer(x)
            with FX_TRACE_LOCK:  # not while the background thread FX-traces
                return fp32_encode(x, depth)

        self.live = live
        self._encode = encode
        log.info("compression %s: collecting %d live frames, running the uncompressed "
                 "encoder meanwhile", cfg.compression_mode, live.wanted)

    def swap_encoder(self, model: VisionEncoder, encode: Callable[..., Any],
                     report: Dict[str, Any]) -> None:
        """Run ``model`` (through ``encode``) from the next frame on; call between frames.

        The output width must stay the same (subscribers see no change).
        """
        if int(model.output_dim) != self.output_dim:
            raise ModelError(f"swapped encoder gives {model.output_dim} floats, the "
                             f"pipeline publishes {self.output_dim}")
        self.encoder, self._encode, self.compression = model, encode, report
        log.info("compressed encoder swapped in: %s", {k: v for k, v in report.items()
                                                       if k in ("mode", "method", "guard")})

    def reset(self) -> None:
        """Forget temporal context (after a stamp reset)."""
        self._history.clear()

    def _autocast(self):
        dtype = self.target.autocast_dtype
        return torch.autocast(self.target.device.type, dtype=dtype, enabled=dtype is not None)

    @torch.inference_mode()
    def process(self, frame: RgbdFrame) -> FeatureResult:
        """Encode one frame. Raises ModelError (for example out of memory)."""
        t0 = time.perf_counter()
        try:
            x = self.preprocess(frame.rgb)
            depth = None
            if self.encoder.uses_depth and frame.depth_m is not None:
                depth = self.preprocess.depth(frame.depth_m)
            t1 = time.perf_counter()
            with self._autocast():
                if self._uses_history:
                    history = (torch.stack(list(self._history), dim=1) if self._history
                               else None)
                    out, embedding = self.encoder.encode_step(x, depth, history)
                    self._history.append(embedding)
                else:
                    out = self._encode(x, depth)
            # One device->host copy for everything that is published.
            table = torch.cat([out.pooled[:1], out.tokens[0]], dim=0).float().cpu().numpy()
        except RuntimeError as exc:
            if _is_oom(exc):
                torch.cuda.empty_cache()
                raise ModelError(f"out of memory on {self.target.device} running "
                                 f"'{self.backbone}'") from exc
            raise
        t2 = time.perf_counter()
        if self._geometry is None or len(self._geometry[1]) != out.token_level.shape[0]:
            self._geometry = (out.token_uv.float().cpu().numpy(),
                              out.token_level.cpu().numpy().astype(np.uint32))
        uv, levels = self._geometry
        uv_px = uv * np.array([frame.width, frame.height], dtype=np.float32)
        return FeatureResult(
            stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, backbone=self.backbone,
            pooled=np.ascontiguousarray(table[0]), tokens=table[1:],
            token_uv_px=uv_px.astype(np.float32),
            token_level=levels,
            timings_ms={"preprocess_ms": (t1 - t0) * 1e3, "encoder_ms": (t2 - t1) * 1e3})

    def warmup(self, iterations: int = 2) -> None:
        """Run a few black frames so the first real frame is not slow."""
        h, w = self.input_hw
        blank = RgbdFrame(rgb=np.zeros((h, w, 3), np.uint8), stamp_ns=0)
        with self.live.paused() if self.live is not None else contextlib.nullcontext():
            for _ in range(iterations):
                self.process(blank)
        self.reset()
