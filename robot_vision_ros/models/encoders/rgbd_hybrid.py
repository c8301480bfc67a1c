"""RGB-D hybrid encoder: an RGB backbone, a depth CNN, optional LSTM and Slot Attention.

Per frame, the RGB backbone's pooled vector and a small depth CNN's vector
are fused into a *frame embedding* (native width = the RGB backbone's). When
depth is off at build time the fusion input is RGB only; when depth is on but
missing at run time (``depth=None``) a learned "no depth" vector takes the
depth CNN's place, so the fusion input width never changes.

With ``use_temporal`` an LSTM runs over the caller's recent frame embeddings
plus the current one. The module keeps no per-call state: the caller holds
the history. Per frame::

    out, frame = model.encode_step(x, depth_m, history)  # history [B, T, D] or None
    recent.append(frame)                                  # deque(maxlen=temporal_window - 1)
    history = torch.stack(list(recent), dim=1)

``D`` is ``model.native_dim``; only the newest ``temporal_window - 1``
entries are used. With ``num_slots > 0``, Slot Attention (Locatello et al.
2020) groups the RGB backbone's spatial tokens into object slots, appended
after the spatial tokens with ``LEVEL_SLOT`` and NaN uv.

The fusion and temporal outputs are residual with zero-initialised last
layers: before training, pooled == the RGB backbone's pooled vector, so an
ImageNet RGB backbone is useful from the start and training adds depth/time.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn

from ...core.errors import ConfigError, WeightsError
from ..registry import ENCODERS
from ..weights import load_weights
from .base import LEVEL_SLOT, EncoderOutput, VisionEncoder

DEPTH_FEATURE_DIM = 128
#: Depth beyond this is clipped before normalising to 0..1.
MAX_DEPTH_M = 10.0
SLOT_ITERATIONS = 3


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int
                  ) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DepthEncoder(nn.Module):
    """Metric depth ``[B, 1, H, W]`` (0/NaN = unknown) -> ``[B, out_dim]``.

    Input channels: depth clipped to ``max_depth_m`` and scaled to 0..1, and a
    validity mask (1 where depth is known), so holes are not read as "near".
    """

    def __init__(self, out_dim: int = DEPTH_FEATURE_DIM, max_depth_m: float = MAX_DEPTH_M
                 ) -> None:
        super().__init__()
        self.max_depth_m = max_depth_m
        self.net = nn.Sequential(
            _conv_bn_relu(2, 32, 5, 2),
            _conv_bn_relu(32, 64, 3, 2),
            _conv_bn_relu(64, 128, 3, 2),
            _conv_bn_relu(128, out_dim, 3, 2),
        )

    def forward(self, depth_m: torch.Tensor) -> torch.Tensor:
        valid = torch.isfinite(depth_m) & (depth_m > 0)
        scaled = torch.where(valid, depth_m, torch.zeros_like(depth_m))
        scaled = scaled.clamp(max=self.max_depth_m) / self.max_depth_m
        features = self.net(torch.cat([scaled, valid.to(scaled.dtype)], dim=1))
        return features.mean(dim=(2, 3))


class SlotAttention(nn.Module):
    """Slot Attention (Locatello et al. 2020): slots compete for inputs.

    Written here because neither torch nor torchvision ships it. Attention is
    normalised over the slots (softmax, dim=1), then each slot takes the
    weighted mean of the inputs; a GRU and a residual MLP update the slots.
    Each slot has its own learned initial mean: at eval time the slots start
    exactly there (deterministic output); in training Gaussian noise with a
    learned scale is added. Per-slot means (not one shared mean) are what
    keeps deterministic slots from staying identical.
    """

    def __init__(self, num_slots: int, dim: int, iterations: int = SLOT_ITERATIONS,
                 hidden_dim: Optional[int] = None, eps: float = 1e-8) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.iterations = iterations
        self.eps = eps
        self.scale = dim ** -0.5
        self.slots_mu = nn.Parameter(torch.randn(1, num_slots, dim) * dim ** -0.5)
        self.slots_log_sigma = nn.Parameter(torch.full((1, 1, dim), -2.0))
        self.norm_inputs = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        hidden = hidden_dim or 2 * dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, dim))

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``inputs [B, N, D]`` -> ``(slots [B, K, D], attention [B, K, N])``."""
        b, _, d = inputs.shape
        slots = self.slots_mu.expand(b, -1, -1)
        if self.training:
            slots = slots + self.slots_log_sigma.exp() * torch.randn_like(slots)
        inputs = self.norm_inputs(inputs)
        keys, values = self.to_k(inputs), self.to_v(inputs)
        attention = inputs.new_zeros(b, self.num_slots, inputs.shape[1])
        for _ in range(self.iterations):
            previous = slots
            queries = self.to_q(self.norm_slots(slots))
            logits = torch.einsum("bkd,bnd->bkn", queries, keys) * self.scale
            attention = logits.softmax(dim=1) + self.eps
            weights = attention / attention.sum(dim=-1, keepdim=True)
            updates = weights @ values
            slots = self.gru(updates.reshape(-1, d), previous.reshape(-1, d)).reshape(b, -1, d)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, attention


class RGBDHybridEncoder(VisionEncoder):
    """RGB backbone + depth CNN + optional LSTM / Slot Attention; see the module docstring."""

    def __init__(self, rgb: VisionEncoder, output_dim: int = 768, use_depth: bool = True,
                 use_temporal: bool = False, temporal_window: int = 8, num_slots: int = 0,
                 depth_dim: int = DEPTH_FEATURE_DIM) -> None:
        if temporal_window < 1:
            raise ConfigError(f"temporal_window must be >= 1, got {temporal_window}")
        if num_slots < 0:
            raise ConfigError(f"num_slots must be >= 0 (0 = no slots), got {num_slots}")
        embed_dim = rgb.native_dim
        super().__init__(native_dim=embed_dim, output_dim=output_dim)
        self.rgb = rgb
        self.size_multiple = rgb.size_multiple
        self.mean, self.std = rgb.mean, rgb.std
        self.uses_depth = use_depth
        self.use_temporal = use_temporal
        self.temporal_window = temporal_window
        self.num_slots = num_slots
        self.imagenet_weights = None
        self.depth_dim = depth_dim if use_depth else 0
        if use_depth:
            self.depth_encoder = DepthEncoder(depth_dim)
            self.no_depth = nn.Parameter(torch.zeros(1, depth_dim))
        self.fusion = nn.Sequential(
            nn.Linear(embed_dim + self.depth_dim, embed_dim),
            nn.LayerNorm(embed_dim),
            nn.GELU(),
            nn.Linear(embed_dim, embed_dim),
        )
        nn.init.zeros_(self.fusion[-1].weight)
        nn.init.zeros_(self.fusion[-1].bias)
        if use_temporal:
            self.temporal = nn.LSTM(embed_dim, embed_dim, batch_first=True)
            self.temporal_out = nn.Linear(embed_dim, embed_dim)
            nn.init.zeros_(self.temporal_out.weight)
            nn.init.zeros_(self.temporal_out.bias)
        if num_slots:
            self.slot_attention = SlotAttention(num_slots, embed_dim)

    # -- input checks ---------------------------------------------------------------
    def _check_depth(self, x: torch.Tensor, depth_m: torch.Tensor) -> torch.Tensor:
        if depth_m.dim() != 4 or depth_m.shape[1] != 1 or depth_m.shape[0] != x.shape[0]:
            raise ConfigError(f"{self.name}: depth must be [B={x.shape[0]}, 1, H, W] in "
                              f"metres, got {tuple(depth_m.shape)}")
        if depth_m.shape[-2:] != x.shape[-2:]:
            # Nearest keeps object edges sharp: no depth is invented between surfaces.
            depth_m = nn.functional.interpolate(depth_m, size=x.shape[-2:], mode="nearest")
        return depth_m.to(x.dtype)

    def _check_history(self, x: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        if (history.dim() != 3 or history.shape[0] != x.shape[0]
                or history.shape[2] != self.native_dim):
            raise ConfigError(f"{self.name}: history must be [B={x.shape[0]}, T, "
                              f"D={self.native_dim}] frame embeddings, got "
                              f"{tuple(history.shape)}")
        keep = self.temporal_window - 1
        return history[:, -keep:] if keep else history[:, :0]

    # -- forward ------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The RGB backbone's native features."""
        return self.rgb.forward_features(x)

    def _fuse(self, rgb_pooled: torch.Tensor, x: torch.Tensor,
              depth_m: Optional[torch.Tensor]) -> torch.Tensor:
        parts = [rgb_pooled]
        if self.uses_depth:
            if depth_m is None:
                parts.append(self.no_depth.expand(x.shape[0], -1).to(rgb_pooled.dtype))
            else:
                parts.append(self.depth_encoder(self._check_depth(x, depth_m)))
        return rgb_pooled + self.fusion(torch.cat(parts, dim=1))

    def _compute(self, x: torch.Tensor, depth_m: Optional[torch.Tensor],
                 history: Optional[torch.Tensor]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Native ``(pooled, tokens, uv, level, frame_embedding)``."""
        self.check_input(x)
        rgb_pooled, tokens, uv, level = self.rgb._pool_and_tokens(x, None)
        frame = self._fuse(rgb_pooled, x, depth_m)
        pooled = frame
        if self.use_temporal:
            sequence = frame.unsqueeze(1)
            if history is not None:
                sequence = torch.cat([self._check_history(x, history).to(frame.dtype),
                                      sequence], dim=1)
            outputs, _ = self.temporal(sequence)
            pooled = frame + self.temporal_out(outputs[:, -1])
        if self.num_slots:
            slots, _ = self.slot_attention(tokens)
            tokens = torch.cat([tokens, slots], dim=1)
            uv = torch.cat([uv, uv.new_full((self.num_slots, 2), float("nan"))])
            level = torch.cat([level, level.new_full((self.num_slots,), LEVEL_SLOT)])
        return pooled, tokens, uv, level, frame

    def _pool_and_tokens(self, x: torch.Tensor, depth: Optional[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._compute(x, depth, None)[:4]

    def encode_step(self, x: torch.Tensor, depth: Optional[torch.Tensor] = None,
                    history: Optional[torch.Tensor] = None
                    ) -> Tuple[EncoderOutput, torch.Tensor]:
        """:meth:`encode` plus this frame's embedding ``[B, native_dim]`` for the history."""
        pooled, tokens, uv, level, frame = self._compute(x, depth, history)
        out = EncoderOutput(pooled=self.proj(pooled), tokens=self.proj(tokens),
                            token_uv=uv, token_level=level)
        return out, frame

    def encode(self, x: torch.Tensor, depth: Optional[torch.Tensor] = None,
               history: Optional[torch.Tensor] = None) -> EncoderOutput:
        """Pooled vector and tokens; ``history`` is ignored without ``use_temporal``."""
        return self.encode_step(x, depth, history)[0]

    def forward(self, x: torch.Tensor, depth: Optional[torch.Tensor] = None,
                history: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.encode(x, depth, history).pooled

    def frame_embedding(self, x: torch.Tensor, depth: Optional[torch.Tensor] = None
                        ) -> torch.Tensor:
        """This frame's fused RGB(-D) embedding ``[B, native_dim]`` (one history entry)."""
        self.check_input(x)
        rgb_pooled = self.rgb._pool_and_tokens(x, None)[0]
        return self._fuse(rgb_pooled, x, depth)


@ENCODERS.register("rgbd_hybrid")
def rgbd_hybrid(output_dim: int = 768, weights: str = "",
                rgb_backbone: str = "mobilenet_v3_small", use_depth: bool = True,
                use_temporal: bool = False, temporal_window: int = 8, num_slots: int = 0,
                rgb_weights: str = "", **kwargs: Any) -> RGBDHybridEncoder:
    """Hybrid RGB-D encoder over any other registered encoder (``rgb_backbone``).

    ``rgb_weights`` go to the RGB backbone (e.g. ``imagenet``); ``weights`` is a
    checkpoint file of the whole hybrid.
    """
    if kwargs:
        raise ConfigError(f"encoder 'rgbd_hybrid' got unknown options {sorted(kwargs)}")
    if rgb_backbone == "rgbd_hybrid":
        raise ConfigError("rgbd_hybrid cannot use itself as rgb_backbone")
    if weights == "imagenet":
        raise WeightsError("rgbd_hybrid has no ImageNet weights of its own: set "
                           "rgb_weights='imagenet' for its RGB backbone, and weights to a "
                           "whole-hybrid checkpoint file (or '')")
    rgb = ENCODERS.create(rgb_backbone, output_dim=0, weights=rgb_weights)
    model = RGBDHybridEncoder(rgb, output_dim, use_depth=use_depth, use_temporal=use_temporal,
                              temporal_window=temporal_window, num_slots=num_slots)
    model.name = "rgbd_hybrid"
    if weights:
        load_weights(model, weights)
    return model
