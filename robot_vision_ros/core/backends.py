"""Inference backends for an encoder: plain torch (optionally compiled) or ONNX Runtime.

Both take the preprocessed batch and return an :class:`EncoderOutput`, so
the pipeline does not care which one runs.
"""
from __future__ import annotations

import io
import logging
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..models.encoders.base import EncoderOutput, VisionEncoder
from .errors import ConfigError, ModelError

log = logging.getLogger(__name__)


class _PooledAndTokens(nn.Module):
    """Export wrapper: the two tensors of ``encode`` (geometry is constant per input size)."""

    def __init__(self, encoder: VisionEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor):
        out = self.encoder.encode(x)
        return out.pooled, out.tokens


def compile_encoder(encoder: VisionEncoder, mode: str) -> None:
    """Replace ``encoder.encode`` by its ``torch.compile``d version (``mode`` as torch's)."""
    try:
        encoder.encode = torch.compile(encoder.encode, mode=None if mode == "default" else mode)
    except RuntimeError as exc:  # e.g. no C++ compiler for the inductor backend
        raise ModelError(f"torch.compile({mode}) failed for '{encoder.name}': {exc}") from exc


def export_encoder_onnx(encoder: VisionEncoder, input_hw: Tuple[int, int]
                        ) -> Tuple[bytes, torch.Tensor, torch.Tensor]:
    """``(onnx model bytes, token_uv, token_level)`` of an RGB encoder at a fixed input size.

    The graph takes ``image`` ``[1, 3, H, W]`` and gives ``pooled`` and ``tokens``;
    token centres and levels come from one torch forward, since they depend
    only on the input size. The encoder is exported on the CPU (it is moved there).
    """
    if getattr(encoder, "uses_depth", False) or getattr(encoder, "use_temporal", False):
        raise ConfigError(f"backend onnxruntime runs RGB encoders; '{encoder.name}' takes "
                          "depth or history, use backend: torch")
    h, w = input_hw
    example = torch.zeros(1, 3, h, w)
    wrapper = _PooledAndTokens(encoder.cpu().eval()).eval()
    with torch.inference_mode():
        reference = encoder.encode(example)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        try:
            torch.onnx.export(wrapper, (example,), buffer, input_names=["image"],
                              output_names=["pooled", "tokens"], opset_version=18,
                              dynamo=False)
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
            raise ModelError(f"cannot export '{encoder.name}' to ONNX: {exc}") from exc
    return buffer.getvalue(), reference.token_uv.clone(), reference.token_level.clone()


def create_session(model: bytes, device: torch.device, threads: int = 0):
    """An ``onnxruntime.InferenceSession`` of serialised ``model``: CUDA provider when the
    device is CUDA and onnxruntime has it, else the CPU (warning when CUDA was wanted)."""
    import onnxruntime as ort

    providers: List[str] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            log.warning("onnxruntime has no CUDA provider here; running on the CPU")
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=providers)


class OnnxRuntimeEncoder:
    """The encoder exported with ``torch.onnx.export`` and run by onnxruntime.

    Exported once per configure for a fixed input size (:func:`export_encoder_onnx`).
    :meth:`from_onnx` runs an already exported (e.g. INT8-quantised) graph.
    ``providers`` defaults to CUDA when the device is CUDA and onnxruntime has
    it, else CPU (with a warning when CUDA was wanted).
    """

    def __init__(self, encoder: VisionEncoder, input_hw: tuple, device: torch.device,
                 threads: int = 0) -> None:
        model, token_uv, token_level = export_encoder_onnx(encoder, tuple(input_hw))
        self._open(model, token_uv, token_level, device, threads)

    @classmethod
    def from_onnx(cls, model: bytes, token_uv: torch.Tensor, token_level: torch.Tensor,
                  device: torch.device, threads: int = 0) -> "OnnxRuntimeEncoder":
        """Run a serialised graph with the inputs/outputs of :func:`export_encoder_onnx`."""
        runner = cls.__new__(cls)
        runner._open(model, token_uv, token_level, device, threads)
        return runner

    def _open(self, model: bytes, token_uv: torch.Tensor, token_level: torch.Tensor,
              device: torch.device, threads: int) -> None:
        self.token_uv = token_uv
        self.token_level = token_level
        self.session = create_session(model, device, threads)
        self.providers = self.session.get_providers()
        self._device = device

    def encode(self, x: torch.Tensor, depth: Optional[torch.Tensor] = None) -> EncoderOutput:
        """Run the exported graph on a preprocessed batch."""
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        pooled, tokens = self.session.run(None, {"image": array})
        return EncoderOutput(pooled=torch.from_numpy(pooled), tokens=torch.from_numpy(tokens),
                             token_uv=self.token_uv, token_level=self.token_level)
