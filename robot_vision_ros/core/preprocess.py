"""Image -> normalised model input, computed on the target device.

Replaces the seed's per-frame PIL ``Resize/ToTensor/Normalize`` chain: the
uint8 image is uploaded as it is (a quarter of the bytes of float), resized
there, and ``(x / 255 - mean) / std`` runs as one multiply-add with constants
built once.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, InputError

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without a copy where torch allows it.

    Negative strides (a flipped view) force a copy. Read-only arrays (decoded
    straight from a ``bytes`` buffer) are shared as they are: nothing here writes
    to the input, so torch's "not writable" warning is silenced for them.
    """
    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class _PinnedUploader:
    """Copies host arrays to a CUDA device through one reused pinned buffer.

    Pinned memory makes the copy asynchronous (``non_blocking``); an event
    recorded after each copy guards the buffer against being overwritten while
    the previous copy is still in flight.
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._host: Optional[torch.Tensor] = None
        self._copied = torch.cuda.Event()  # created lazily by CUDA on first record

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        source = _as_tensor(array)
        self._copied.synchronize()  # returns at once before the first record
        if (self._host is None or self._host.shape != source.shape
                or self._host.dtype != source.dtype):
            self._host = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)
        self._host.copy_(source)
        on_device = self._host.to(self._device, non_blocking=True)
        self._copied.record(torch.cuda.current_stream(self._device))
        return on_device


class Preprocessor:
    """``[H, W, 3]`` uint8 RGB -> ``[1, 3, h, w]`` normalised tensor on ``device``.

    The image is squashed to ``input_hw`` (no crop, no letterbox) with
    antialiased bilinear resampling. Output is ``dtype`` and, if
    ``channels_last``, in channels-last memory format.
    """

    def __init__(self, input_hw: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 device: torch.device, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False) -> None:
        if (not isinstance(input_hw, (tuple, list)) or len(input_hw) != 2
                or not all(isinstance(v, (int, np.integer)) for v in input_hw)
                or min(input_hw) <= 0):
            raise ConfigError(
                f"input_hw must be two positive ints (height, width), got {input_hw!r}")
        if len(mean) != 3 or len(std) != 3 or min(float(s) for s in std) <= 0.0:
            raise ConfigError(f"mean and std need 3 values each, std > 0; got {mean!r}, {std!r}")
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {_DTYPES}, got {dtype}")
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device} requested but CUDA is not available")
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        std_t = torch.tensor([float(s) for s in std], dtype=torch.float32)
        # (x / 255 - mean) / std == x * scale + bias
        self._scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1).to(self.device)
        self._bias = (-mean_t / std_t).view(1, 3, 1, 1).to(self.device)
        cuda = self.device.type == "cuda"
        self._upload_rgb = _PinnedUploader(self.device) if cuda else _as_tensor
        self._upload_depth = _PinnedUploader(self.device) if cuda else _as_tensor

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """Normalised ``[1, 3, h, w]`` input for one RGB frame."""
        if (not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3
                or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0):
            raise InputError(f"expected a non-empty [H, W, 3] uint8 RGB array, got "
                             f"{_describe(rgb)}", reason="bad_size")
        image = self._upload_rgb(rgb).permute(2, 0, 1).unsqueeze(0)  # [1, 3, H, W] view
        if self.device.type == "cpu":
            image = self._resize_uint8(image)
        else:
            image = self._resize_float(image.float())
        out = torch.empty((1, 3) + self.input_hw, dtype=torch.float32, device=self.device,
                          memory_format=self.memory_format)
        # One kernel: promotes uint8 to float, scales, shifts, writes the layout.
        torch.addcmul(self._bias, image, self._scale, out=out)
        if self.dtype != torch.float32:
            out = out.to(self.dtype)
        return out

    def _resize_uint8(self, image: torch.Tensor) -> torch.Tensor:
        """Torch's AVX2 uint8 antialiased bilinear path; needs channels-last input."""
        if tuple(image.shape[2:]) == self.input_hw:
            return image
        image = image.contiguous(memory_format=torch.channels_last)  # no-op unless padded
        return F.interpolate(image, size=self.input_hw, mode="bilinear",
                             align_corners=False, antialias=True)

    def _resize_float(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[2:]) == self.input_hw:
            return image
        return F.interpolate(image, size=self.input_hw, mode="bilinear",
                             align_corners=False, antialias=True)

    def depth(self, depth_m: np.ndarray) -> torch.Tensor:
        """``[H, W]`` float metres (NaN unknown) -> ``[1, 1, h, w]``, unknown = 0.

        Nearest-neighbour resize: interpolating would invent depths at object
        edges.
        """
        if (not isinstance(depth_m, np.ndarray) or depth_m.dtype not in (np.float32, np.float64)
                or depth_m.ndim != 2 or depth_m.size == 0):
            raise InputError(f"expected a non-empty [H, W] float depth array in metres, got "
                             f"{_describe(depth_m)}", reason="bad_size")
        depth = self._upload_depth(depth_m).to(torch.float32)[None, None]
        if tuple(depth.shape[2:]) != self.input_hw:
            depth = F.interpolate(depth, size=self.input_hw, mode="nearest-exact")
        return torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0).to(self.dtype)


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {tuple(value.shape)}"
    return type(value).__name__
