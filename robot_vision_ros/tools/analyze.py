"""``python -m robot_vision_ros.tools.analyze``: size, cost and receptive field of backbones.

Per backbone of the zoo, at one square input size:

* parameters: all of the module, and those ``forward_features`` uses (the
  rest is the ImageNet classifier head);
* FLOPs of ``forward_features`` at batch 1 (``torch.utils.flop_counter``:
  convolutions, matrix products and attention; 1 multiply-add = 2 FLOPs;
  normalisation and activations are not counted);
* the effective receptive field (Luo et al., 2016): the gradient of the
  centre unit of the last feature map with respect to the input, averaged
  over several inputs, as a heat map, summarised by the radii around the
  unit's centre that hold 50 % and 90 % of the gradient mass;
* for ViTs, the CLS token's attention over the patches in every block, on a
  real photo (``skimage.data.astronaut()`` unless ``--image``).

Prints a table; writes ``analysis.json``, ``erf_NAME.png`` and
``attention_NAME.png`` into ``--out``. Weights are random unless ``--weights``
names them (the ERF of an untrained network shows the architecture alone).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..core.errors import ConfigError, VisionError
from ..core.render import overlay_attention
from ..models.registry import create_model

DEFAULT_BACKBONES = ("resnet18", "efficientnet_b0", "mobilenet_v3_small", "vit_small")
MASS_FRACTIONS = (0.5, 0.9)
#: Photos shipped inside scikit-image (no download), used as real ERF inputs.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
          "colorwheel", "hubble_deep_field", "retina")

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


# --- size and cost ------------------------------------------------------------------------------
def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements of ``module`` (shared tensors once)."""
    return sum(p.numel() for p in module.parameters())


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU flash kernel that
# scaled_dot_product_attention dispatches to here; without this, ViT attention counts 0.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                        _cpu_sdpa_flops}


def count_flops(features: FeatureFn, x: torch.Tensor) -> Tuple[int, Dict[str, int]]:
    """Total FLOPs of ``features(x)`` and the count per aten operator."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    with torch.no_grad(), counter:
        features(x)
    per_op = {str(op).split(".")[1] if str(op).startswith("aten.") else str(op): int(n)
              for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


# --- effective receptive field -----------------------------------------------------------------
@dataclass(frozen=True)
class ReceptiveField:
    """Effective receptive field of the centre unit of a feature map.

    ``heatmap [H, W]``: mean absolute input gradient (summed over colour
    channels), normalised to sum to 1. ``centre_xy``: the centroid of that
    gradient mass in input pixels; ``unit_centre_xy``: the unit's nominal
    centre (its grid cell's centre), which padding conventions can shift by up
    to half a stride from where the unit really looks. ``radii_px``: {mass
    fraction: radius in pixels around ``centre_xy`` that holds it}.
    ``support_radius_px``: farthest pixel with any gradient (the theoretical
    receptive field, clipped by the image).
    ``grid_hw``: size of the feature map. ``used_parameters``: parameter
    elements the unit depends on (those that received a gradient).
    """

    heatmap: np.ndarray
    centre_xy: Tuple[float, float]
    unit_centre_xy: Tuple[float, float]
    radii_px: Dict[float, float]
    support_radius_px: float
    grid_hw: Tuple[int, int]
    used_parameters: int


def centre_unit(features: torch.Tensor, input_hw: Tuple[int, int], prefix_tokens: int = 1
                ) -> Tuple[torch.Tensor, Tuple[float, float], Tuple[int, int]]:
    """Per-sample sum over channels of the centre unit, its centre (x, y) in px, grid size.

    ``features``: ``[B, C, h, w]`` maps, or ``[B, prefix + h*w, C]`` tokens whose
    grid has the input's aspect (``prefix_tokens`` CLS-like tokens first).
    """
    H, W = input_hw
    if features.dim() == 4:
        h, w = int(features.shape[-2]), int(features.shape[-1])
        i, j = h // 2, w // 2
        score = features[:, :, i, j].sum(dim=1)
    elif features.dim() == 3:
        n = int(features.shape[1]) - prefix_tokens
        stride = math.sqrt(H * W / n) if n > 0 else 0.0
        h, w = (round(H / stride), round(W / stride)) if stride else (0, 0)
        if n <= 0 or h * w != n:
            raise ConfigError(f"cannot lay {features.shape[1]} tokens ({prefix_tokens} prefix) "
                              f"out as a grid over a {H}x{W} input")
        i, j = h // 2, w // 2
        score = features[:, prefix_tokens + i * w + j, :].sum(dim=1)
    else:
        raise ConfigError(f"features must be [B, C, h, w] or [B, T, C], got "
                          f"{tuple(features.shape)}")
    centre = ((j + 0.5) * W / w - 0.5, (i + 0.5) * H / h - 0.5)
    return score, centre, (h, w)


def mass_radius(heatmap: np.ndarray, centre_xy: Tuple[float, float],
                fractions: Sequence[float] = MASS_FRACTIONS) -> Dict[float, float]:
    """Smallest radius (px) around ``centre_xy`` whose disc holds each fraction of the mass."""
    h, w = heatmap.shape
    yy, xx = np.mgrid[0:h, 0:w]
    distance = np.hypot(xx - centre_xy[0], yy - centre_xy[1]).ravel()
    weights = np.abs(heatmap).ravel().astype(np.float64)
    total = weights.sum()
    if not total > 0:
        return {f: math.nan for f in fractions}
    order = np.argsort(distance, kind="stable")
    cumulative = np.cumsum(weights[order]) / total
    out = {}
    for f in fractions:
        k = min(int(np.searchsorted(cumulative, f - 1e-12)), len(order) - 1)
        out[f] = float(distance[order[k]])
    return out


def effective_receptive_field(features: FeatureFn, inputs: torch.Tensor,
                              parameters: Sequence[nn.Parameter] = (),
                              prefix_tokens: int = 1) -> ReceptiveField:
    """ERF of ``features`` (a module or callable) over the batch ``inputs`` ``[B, 3, H, W]``.

    The module must be in eval mode (batch statistics would couple the samples).
    ``parameters``: counted in ``used_parameters`` when they get a gradient.
    """
    for p in parameters:
        p.grad = None
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = features(x)
        score, centre, grid = centre_unit(out, (x.shape[-2], x.shape[-1]), prefix_tokens)
        score.sum().backward()
    grad = x.grad.detach().abs().sum(dim=1).mean(dim=0).double().numpy()
    total = grad.sum()
    heatmap = (grad / total if total > 0 else grad).astype(np.float32)
    h, w = heatmap.shape
    yy, xx = np.mgrid[0:h, 0:w]
    nonzero = heatmap > 0
    centroid = (float((heatmap * xx).sum()), float((heatmap * yy).sum())) if total > 0 \
        else centre
    support = float(np.hypot(xx - centroid[0], yy - centroid[1])[nonzero].max()) \
        if nonzero.any() else math.nan
    used = sum(p.numel() for p in parameters if p.grad is not None)
    for p in parameters:
        p.grad = None
    return ReceptiveField(heatmap, centroid, centre, mass_radius(heatmap, centroid), support,
                          grid, used)


# --- inputs ----------------------------------------------------------------------------------
def _square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop resized to ``size`` (uint8 RGB)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = rgb[top:top + side, left:left + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def load_image(path: str) -> np.ndarray:
    """An RGB uint8 image: a file, or ``skimage:NAME`` for a photo shipped with scikit-image."""
    if path.startswith("skimage:"):
        import skimage.data

        name = path.split(":", 1)[1]
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ConfigError(f"scikit-image has no photo {name!r}; e.g. {', '.join(PHOTOS)}")
        image = loader()
        image = image[0] if isinstance(image, tuple) else image
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"cannot read image {path} (missing, or not an image OpenCV reads)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def normalise(images: Sequence[np.ndarray], mean: Sequence[float],
              std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB images of one size -> the encoder's normalised ``[B, 3, H, W]`` batch."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def erf_inputs(kind: str, count: int, size: int, mean: Sequence[float],
               std: Sequence[float], seed: int = 0) -> torch.Tensor:
    """``count`` inputs: real photos (centre crops, then mirrored) or standard normal noise."""
    if kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(count, 3, size, size, generator=generator)
    if kind != "real":
        raise ConfigError(f"ERF inputs must be 'real' or 'noise', got {kind!r}")
    photos = [_square(load_image(f"skimage:{name}"), size)
              for name in PHOTOS[:min(count, len(PHOTOS))]]
    images = [photos[k % len(photos)] if k < len(photos) else photos[k % len(photos)][:, ::-1]
              for k in range(count)]
    return normalise([np.ascontiguousarray(i) for i in images], mean, std)


# --- attention ----------------------------------------------------------------------------------
def cls_attention_per_block(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """``[blocks, h, w]`` CLS-to-patch attention (head mean, sums to 1) of the first image."""
    from ..models.encoders.vit import attention_to_map

    with torch.no_grad():
        maps = model.get_attention_maps(x)
    n = int(maps[0].shape[-1]) - 1
    stride = math.sqrt(x.shape[-2] * x.shape[-1] / n)
    grid = (round(x.shape[-2] / stride), round(x.shape[-1] / stride))
    return np.stack([attention_to_map(a, grid)[0].float().numpy() for a in maps])


def normalised_entropy(p: np.ndarray) -> float:
    """Entropy of a distribution over its cells divided by log(cells): 1 = uniform."""
    q = p.ravel().astype(np.float64)
    q = q[q > 0] / q.sum()
    return float(-(q * np.log(q)).sum() / math.log(p.size)) if p.size > 1 else 0.0


# --- pictures -----------------------------------------------------------------------------------
def render_erf(field: ReceptiveField, title: str, min_side: int = 256) -> np.ndarray:
    """The ERF heat map (square-root scale, so the tails show) with the mass circles."""
    heat = np.sqrt(field.heatmap / max(float(field.heatmap.max()), 1e-30))
    index = np.clip(heat * 255 + 0.5, 0, 255).astype(np.uint8)
    picture = cv2.cvtColor(cv2.applyColorMap(index, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    scale = max(1, math.ceil(min_side / max(picture.shape[:2])))
    picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cx, cy = ((field.centre_xy[0] + 0.5) * scale, (field.centre_xy[1] + 0.5) * scale)
    for fraction, radius in field.radii_px.items():
        if math.isfinite(radius):
            cv2.circle(picture, (round(cx), round(cy)), max(1, round(radius * scale)),
                       (0, 255, 0) if fraction < 0.75 else (0, 160, 255), 1, cv2.LINE_AA)
    label = title + "  " + "  ".join(f"r{round(f * 100)}={r:.0f}px"
                                     for f, r in field.radii_px.items())
    cv2.putText(picture, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
    return picture


def render_attention(image: np.ndarray, maps: np.ndarray, columns: int = 4) -> np.ndarray:
    """Overlays of every block's CLS attention on ``image``, tiled in rows."""
    tiles = []
    for k, attention in enumerate(maps):
        tile = overlay_attention(image, attention)
        cv2.putText(tile, f"block {k}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(image))
    rows = [np.hstack(tiles[r:r + columns]) for r in range(0, len(tiles), columns)]
    return np.vstack(rows)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise ConfigError(f"cannot write {path}")


# --- one backbone ---------------------------------------------------------------------------------
def analyze_backbone(name: str, size: int, weights: str = "", erf_kind: str = "real",
                     erf_samples: int = 8, image: Optional[np.ndarray] = None,
                     out_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Parameters, FLOPs, ERF and (ViT) attention of backbone ``name`` at ``size`` x ``size``.

    Writes the PNGs into ``out_dir`` when given. Raises UnknownModelError,
    WeightsError, or ConfigError (for example a size the backbone cannot take).
    """
    torch.manual_seed(0)
    model = create_model(name, output_dim=0, weights=weights).eval()
    multiple = int(getattr(model, "size_multiple", 1))
    if size % multiple:
        raise ConfigError(f"{name} needs a size that is a multiple of {multiple}, got {size}")
    params = list(model.parameters())
    report: Dict[str, Any] = {"backbone": name, "size": size, "weights": weights or "random",
                              "parameters": count_parameters(model)}
    x1 = torch.zeros(1, 3, size, size)
    flops, per_op = count_flops(model.forward_features, x1)
    report.update(flops=flops, gflops=flops / 1e9, gmacs=flops / 2e9, flops_per_op=per_op)
    with torch.no_grad():
        feature_shape = list(model.forward_features(x1).shape[1:])
    report["feature_shape"] = feature_shape
    inputs = erf_inputs(erf_kind, erf_samples, size, model.mean, model.std)
    field = effective_receptive_field(model.forward_features, inputs, params)
    report["feature_parameters"] = field.used_parameters
    report["erf"] = {"inputs": erf_kind, "samples": erf_samples,
                     "grid_hw": list(field.grid_hw),
                     "centre_xy": [round(c, 2) for c in field.centre_xy],
                     "unit_centre_xy": [round(c, 2) for c in field.unit_centre_xy],
                     **{f"r{round(f * 100)}_px": round(r, 2) for f, r in field.radii_px.items()},
                     "support_radius_px": round(field.support_radius_px, 2),
                     "image_half_diagonal_px": round(math.hypot(size, size) / 2, 2)}
    if out_dir is not None:
        _write_png(out_dir / f"erf_{name}.png", render_erf(field, name))
        report["erf"]["png"] = f"erf_{name}.png"
    if hasattr(model, "get_attention_maps"):
        picture = _square(image if image is not None else load_image("skimage:astronaut"), size)
        maps = cls_attention_per_block(model, normalise([picture], model.mean, model.std))
        last = maps[-1]
        peak = np.unravel_index(int(np.argmax(last)), last.shape)
        report["attention"] = {"blocks": int(maps.shape[0]), "grid_hw": list(last.shape),
                               "last_block_entropy": round(normalised_entropy(last), 4),
                               "entropy_per_block": [round(normalised_entropy(m), 4)
                                                     for m in maps],
                               "last_block_peak_ij": [int(peak[0]), int(peak[1])]}
        if out_dir is not None:
            _write_png(out_dir / f"attention_{name}.png", render_attention(picture, maps))
            report["attention"]["png"] = f"attention_{name}.png"
    return report


def format_table(reports: Sequence[Dict[str, Any]]) -> str:
    """One row per backbone: sizes, cost, ERF radii, attention entropy."""
    header = (f"{'backbone':<20}{'params M':>9}{'feat M':>8}{'GFLOPs':>8}{'GMACs':>7}"
              f"{'features':>16}{'ERF r50':>8}{'r90':>6}{'RF':>6}{'attn H':>8}")
    lines = [header, "-" * len(header)]
    for r in reports:
        erf = r["erf"]
        attn = r.get("attention")
        shape = "x".join(map(str, r["feature_shape"]))
        lines.append(f"{r['backbone']:<20}{r['parameters'] / 1e6:>9.2f}"
                     f"{r['feature_parameters'] / 1e6:>8.2f}{r['gflops']:>8.2f}"
                     f"{r['gmacs']:>7.2f}{shape:>16}{erf['r50_px']:>8.1f}{erf['r90_px']:>6.1f}"
                     f"{erf['support_radius_px']:>6.0f}"
                     + (f"{attn['last_block_entropy']:>8.3f}" if attn else f"{'-':>8}"))
    size = reports[0]["size"] if reports else 0
    lines.append(f"input {size}x{size}; FLOPs of forward_features at batch 1 (1 MAC = 2 FLOPs); "
                 "feat M: parameters forward_features uses;\nERF r50/r90: radii in px around "
                 "the centre unit's gradient centroid holding 50/90 % of its gradient mass; "
                 "RF: farthest pixel with any gradient;\nattn H: last block's CLS attention "
                 "entropy (1 = uniform)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m robot_vision_ros.tools.analyze",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES),
                        help="comma-separated encoder names (python -m "
                             "robot_vision_ros.tools.models lists them)")
    parser.add_argument("--size", type=int, default=224, help="square input side in pixels")
    parser.add_argument("--out", default="analysis_out", help="output folder (created)")
    parser.add_argument("--image", default="", help="photo for the ViT attention maps "
                        "(default: skimage.data.astronaut(); 'skimage:NAME' for another)")
    parser.add_argument("--weights", default="", help="weights for every backbone: '' random, "
                        "'imagenet' (local torch cache) or a file")
    parser.add_argument("--erf-inputs", choices=("real", "noise"), default="real",
                        help="average the ERF over real photos or over Gaussian noise")
    parser.add_argument("--erf-samples", type=int, default=8, help="inputs averaged for the ERF")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names = [n.strip() for n in args.backbones.split(",") if n.strip()]
        if not names:
            raise ConfigError("--backbones is empty")
        if args.size < 16:
            raise ConfigError(f"--size must be >= 16, got {args.size}")
        if args.erf_samples < 1:
            raise ConfigError(f"--erf-samples must be >= 1, got {args.erf_samples}")
        image = load_image(args.image) if args.image else None
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        reports = []
        for name in names:
            print(f"analyzing {name} ...", file=sys.stderr, flush=True)
            reports.append(analyze_backbone(name, args.size, args.weights, args.erf_inputs,
                                            args.erf_samples, image, out))
    except VisionError as exc:
        print(f"analyze: error: {exc}", file=sys.stderr)
        return 2
    (out / "analysis.json").write_text(json.dumps(
        {"size": args.size, "weights": args.weights or "random",
         "erf_inputs": args.erf_inputs, "backbones": reports}, indent=2) + "\n")
    print(format_table(reports))
    print(f"plots and analysis.json in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
