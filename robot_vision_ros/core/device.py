"""Resolve the ``device`` and ``precision`` parameters to what this machine can run."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ComputeTarget:
    """Where and how to run: device, autocast dtype (None = plain fp32), channels_last."""

    device: torch.device
    autocast_dtype: Optional[torch.dtype]
    channels_last: bool

    @property
    def precision(self) -> str:
        for name, dtype in _DTYPES.items():
            if dtype == self.autocast_dtype:
                return name
        return "fp32"


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda``/``cuda:N`` must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec!r} but CUDA is not available here "
                              "(use device: auto or cpu)")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={spec!r} but only {torch.cuda.device_count()} CUDA "
                              "device(s) exist")
        return torch.device("cuda", index)
    raise ConfigError(f"device={spec!r}: must be auto, cpu, cuda or cuda:N")


def resolve_target(device: str, precision: str) -> ComputeTarget:
    """Device plus the autocast dtype it supports; fp16 on CPU falls back to fp32."""
    dev = resolve_device(device)
    if precision not in _DTYPES:
        raise ConfigError(f"precision={precision!r}: must be one of {', '.join(_DTYPES)}")
    dtype: Optional[torch.dtype] = None if precision == "fp32" else _DTYPES[precision]
    if dev.type == "cpu" and dtype == torch.float16:
        log.warning("precision fp16 is not supported for CPU inference; using fp32")
        dtype = None
    if dev.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision=bf16 but {torch.cuda.get_device_name(dev)} has no bf16")
    return ComputeTarget(device=dev, autocast_dtype=dtype, channels_last=dev.type == "cuda")
