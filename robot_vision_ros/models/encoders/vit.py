"""Vision Transformer (ViT-Ti/S/B, patch 16) with timm's parameter names.

Written here rather than taken from torchvision because torchvision has no
ViT-Tiny/Small and its ViT neither exposes attention weights nor accepts input
sizes other than the one it was built for. Parameter names follow timm
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``, ...)
so timm checkpoints load from a file; torchvision's ``vit_b_16`` state dict is
renamed on load (:meth:`VisionTransformer.convert_state_dict`).

Any input whose sides are multiples of 16 works: the 14x14 position grid is
resampled bicubically (as timm does) to the patch grid of the input.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from ...core.errors import ConfigError
from ..registry import ENCODERS
from ..weights import load_weights
from .base import VisionEncoder, grid_token_geometry

PATCH_SIZE = 16
#: Image size the position embeddings are laid out for (a 14 x 14 patch grid).
BASE_IMAGE_SIZE = 224


def resample_pos_embed(pos_embed: torch.Tensor, src_hw: Tuple[int, int],
                       dst_hw: Tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubic resampling of ``[1, prefix + h*w, C]`` position embeddings to ``dst_hw``.

    The prefix (CLS) embedding is kept as is; mirrors timm's ``resample_abs_pos_embed``
    (bicubic, antialiased when shrinking).
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, src_hw[0], src_hw[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=dst_hw, mode="bicubic", antialias=True,
                         align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, dst_hw[0] * dst_hw[1], dim)
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)


def attention_to_map(attention: torch.Tensor, grid_hw: Tuple[int, int]) -> torch.Tensor:
    """CLS-to-patch attention of one block ``[B, heads, 1+N, 1+N]`` as ``[B, h, w]``.

    Averaged over heads and renormalised to sum to 1 over the patches, so maps
    of different inputs are comparable; upsample it to the image for display.
    """
    cls_to_patches = attention[:, :, 0, 1:].mean(dim=1)
    cls_to_patches = cls_to_patches / cls_to_patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return cls_to_patches.reshape(-1, grid_hw[0], grid_hw[1])


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, one strided convolution."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.proj(x)
        grid_hw = (int(x.shape[-2]), int(x.shape[-1]))
        return x.flatten(2).transpose(1, 2), grid_hw


class Attention(nn.Module):
    """Multi-head self-attention; SDPA unless the weights are asked for."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        b, n, _ = x.shape
        # Head width from qkv, not from x: structured pruning may narrow the heads.
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention = None
        if return_attention:
            attention = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = attention @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1)), attention


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        attn_out, attention = self.attn(self.norm1(x), return_attention)
        x = x + attn_out
        return x + self.mlp(self.norm2(x)), attention


# torchvision vit_b_16 name -> timm name (regex, replacement), applied in order.
_TORCHVISION_TO_TIMM: Sequence[Tuple[str, str]] = (
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.self_attention\.in_proj_weight$", ".attn.qkv.weight"),
    (r"\.self_attention\.in_proj_bias$", ".attn.qkv.bias"),
    (r"\.self_attention\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.(0|linear_1)\.", ".mlp.fc1."),
    (r"\.mlp\.(3|linear_2)\.", ".mlp.fc2."),
)


class VisionTransformer(VisionEncoder):
    """ViT with CLS pooling; tokens = patch tokens (level 1) after the final norm."""

    size_multiple = PATCH_SIZE

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, output_dim: int = 768) -> None:
        super().__init__(native_dim=embed_dim, output_dim=output_dim)
        self.base_grid = (BASE_IMAGE_SIZE // PATCH_SIZE, BASE_IMAGE_SIZE // PATCH_SIZE)
        self.patch_embed = PatchEmbed(PATCH_SIZE, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, 1 + self.base_grid[0] * self.base_grid[1], embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head: nn.Module = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.imagenet_weights = None
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- token pipeline ---------------------------------------------------------
    def pos_embed_for(self, grid_hw: Tuple[int, int]) -> torch.Tensor:
        """Position embeddings for a patch grid (the stored ones for 14 x 14)."""
        if tuple(grid_hw) == self.base_grid:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, self.base_grid, grid_hw)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        tokens, grid_hw = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed_for(grid_hw), grid_hw

    def _run_blocks(self, x: torch.Tensor, attention_from: int
                    ) -> Tuple[torch.Tensor, Tuple[int, int], List[torch.Tensor]]:
        """Normed tokens, grid size and the attention of blocks ``attention_from``.. ."""
        self.check_input(x)
        tokens, grid_hw = self._embed(x)
        maps: List[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            tokens, attention = block(tokens, return_attention=index >= attention_from)
            if attention is not None:
                maps.append(attention)
        return self.norm(tokens), grid_hw, maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + N, C]``: CLS then patch tokens, after the final norm (as in timm)."""
        return self._run_blocks(x, attention_from=len(self.blocks))[0]

    def _pool_and_tokens(self, x: torch.Tensor, depth: Optional[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, grid_hw, _ = self._run_blocks(x, attention_from=len(self.blocks))
        uv, levels = grid_token_geometry(*grid_hw, level=1, device=x.device)
        return tokens[:, 0], tokens[:, 1:], uv, levels

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier head on the CLS token (``[B, num_classes]``)."""
        return self.head(self.forward_features(x)[:, 0])

    # -- attention --------------------------------------------------------------
    def get_attention_maps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Softmax attention of every block, each ``[B, heads, 1 + N, 1 + N]``."""
        return self._run_blocks(x, attention_from=0)[2]

    def cls_attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's CLS attention over the patches as ``[B, H/16, W/16]`` (sums to 1)."""
        _, grid_hw, maps = self._run_blocks(x, attention_from=len(self.blocks) - 1)
        return attention_to_map(maps[-1], grid_hw)

    # -- weights ------------------------------------------------------------------
    def convert_state_dict(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Rename a torchvision ViT state dict to timm names; fit ``pos_embed`` to 14 x 14.

        Called by :func:`robot_vision_ros.models.weights.load_weights`. timm-layout
        dicts pass through; a position grid of another size (e.g. a 384 checkpoint)
        is resampled as timm does when loading.
        """
        if "conv_proj.weight" in state:
            renamed = {}
            for key, value in state.items():
                for pattern, replacement in _TORCHVISION_TO_TIMM:
                    key = re.sub(pattern, replacement, key)
                renamed[key] = value
            state = renamed
        pos = state.get("pos_embed")
        own = self.pos_embed.shape[1]
        if pos is not None and pos.dim() == 3 and pos.shape[1] != own:
            side = math.isqrt(pos.shape[1] - 1)
            if side * side == pos.shape[1] - 1:
                state["pos_embed"] = resample_pos_embed(pos, (side, side), self.base_grid)
        return state


_VIT_CONFIGS = {
    "vit_tiny": (192, 3),
    "vit_small": (384, 6),
    "vit_base": (768, 12),
}


def _make(name: str, output_dim: int, weights: str, num_classes: int,
          kwargs: Dict[str, Any]) -> VisionTransformer:
    if kwargs:
        raise ConfigError(f"encoder '{name}' got unknown options {sorted(kwargs)}; it takes "
                          f"output_dim, weights and num_classes")
    embed_dim, heads = _VIT_CONFIGS[name]
    model = VisionTransformer(embed_dim, 12, heads, num_classes=num_classes,
                              output_dim=output_dim)
    model.name = name
    if name == "vit_base":
        model.imagenet_weights = tvm.ViT_B_16_Weights
    if weights:
        load_weights(model, weights)
    return model


@ENCODERS.register("vit_tiny")
def vit_tiny(output_dim: int = 768, weights: str = "", num_classes: int = 1000,
             **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 (192 wide, 3 heads, 12 blocks); ImageNet weights only from a timm file."""
    return _make("vit_tiny", output_dim, weights, num_classes, kwargs)


@ENCODERS.register("vit_small")
def vit_small(output_dim: int = 768, weights: str = "", num_classes: int = 1000,
              **kwargs: Any) -> VisionTransformer:
    """ViT-S/16 (384 wide, 6 heads, 12 blocks); ImageNet weights only from a timm file."""
    return _make("vit_small", output_dim, weights, num_classes, kwargs)


@ENCODERS.register("vit_base")
def vit_base(output_dim: int = 768, weights: str = "", num_classes: int = 1000,
             **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 (768 wide, 12 heads); ``imagenet`` = torchvision's vit_b_16 file, renamed."""
    return _make("vit_base", output_dim, weights, num_classes, kwargs)
