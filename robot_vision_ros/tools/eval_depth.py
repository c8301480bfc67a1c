"""``python -m robot_vision_ros.tools.eval_depth``: depth accuracy against exact ground truth.

On pybullet sequences whose seeds no training used (the exact rendered depth
is the ground truth), 30 % of the sensor pixels are removed in blobs (random
ellipses and rectangles, deterministic per seed and frame) and three ways of
recovering them are scored on the REMOVED pixels (AbsRel, delta < 1.25, RMSE):

* ``sensor nearest_fill``: each hole takes the nearest remaining sensor value;
* ``network alone``: the trained unet's metric output, no sensor at all;
* ``fused (node)``: :class:`~robot_vision_ros.core.heads.DepthHead` with the
  70 % remaining sensor pixels, i.e. exactly what the node publishes
  (network at ``--input-hw``, resized back, aligned and fused);
* ``residual fill (proposal)``: not what the node does, a candidate fusion
  (:func:`residual_fill`) scored beside it.

``--timing`` also measures the CPU time per frame of each depth model
(unet on resnet18 and mobilenet_v3_large, Depth Anything V2 Small built from
its config with random weights) at 320x240 and 640x480.

Example::

    python -m robot_vision_ros.tools.eval_depth --weights build/depth_unet.pt \\
        --seeds 100 101 102 --size 320x240 --json build/eval.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.depth_fusion import depth_metrics, nearest_fill, nearest_ratio_fill
from ..core.errors import ConfigError, VisionError
from ..core.ground_truth import remove_blobs  # noqa: F401 - part of this tool's API
from ..core.frames import RgbdFrame
from ..core.heads import DepthHead
from ..models.weights import load_checkpoint

DEFAULT_SEEDS = (100, 101, 102)
METHODS = ("sensor nearest_fill", "network alone", "fused (node)")
#: Ratio fill of the raw prediction without the global fit the node does first.
PROPOSAL = "ratio fill, no global fit"


def residual_fill(pred_m: np.ndarray, sensor_m: np.ndarray) -> np.ndarray:
    """Nearest-ratio fill of the raw prediction (no global fit first), for comparison."""
    return nearest_ratio_fill(pred_m, sensor_m)


def _parse_size(text: str) -> Tuple[int, int]:
    """'320x240' -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from exc
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return w, h


def unet_options(weights: str | Path) -> Dict[str, Any]:
    """The ``unet`` options a weights file was trained with (encoder and depth range)."""
    state = load_checkpoint(Path(weights), "unet depth weights",
                            "train one with `python -m robot_vision_ros.tools.train_depth`")
    config = state.get("config", {}) if isinstance(state, dict) else {}
    return {k: config[k] for k in ("encoder", "min_depth_m", "max_depth_m") if k in config}


def _training_record(weights: str | Path) -> Dict[str, Any]:
    """The ``WEIGHTS.json`` train_depth wrote beside the weights, or {} if there is none."""
    info_path = Path(str(weights) + ".json")
    if not info_path.is_file():
        return {}
    try:
        return dict(json.loads(info_path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the training record {info_path}: {exc}") from exc


def trained_size(weights: str | Path, default: Tuple[int, int] = (240, 320)) -> Tuple[int, int]:
    """(height, width) the network was trained at, from its training record."""
    size = _training_record(weights).get("size_hw")
    return (int(size[0]), int(size[1])) if size and len(size) == 2 else default


def check_seeds_unseen(weights: str | Path, seeds: Sequence[int]) -> None:
    """ConfigError if the training record beside ``weights`` lists an evaluation seed."""
    trained = set(_training_record(weights).get("synthetic_seeds", []))
    overlap = sorted(trained.intersection(seeds))
    if overlap:
        raise ConfigError(f"seeds {overlap} were used to train {weights} "
                          f"({weights}.json); evaluate on other seeds")


class _Accumulator:
    """Pixel-weighted AbsRel, delta1 and RMSE over many frames."""

    def __init__(self) -> None:
        self.abs_rel = self.delta1 = self.sq = 0.0
        self.n = self.n_truth = 0

    def add(self, pred_m: np.ndarray, gt_m: np.ndarray, mask: np.ndarray) -> None:
        m = depth_metrics(pred_m, gt_m, mask)
        n = m["n_pixels"]
        with np.errstate(invalid="ignore"):
            self.n_truth += int((mask & np.isfinite(gt_m) & (gt_m > 0)).sum())
        if n:
            self.abs_rel += m["abs_rel"] * n
            self.delta1 += m["delta1"] * n
            self.sq += m["rmse_m"] ** 2 * n
            self.n += n

    def result(self) -> Dict[str, float]:
        if not self.n:
            return {"abs_rel": math.nan, "delta1": math.nan, "rmse_m": math.nan,
                    "coverage": 0.0, "n_pixels": 0}
        return {"abs_rel": self.abs_rel / self.n, "delta1": self.delta1 / self.n,
                "rmse_m": math.sqrt(self.sq / self.n),
                "coverage": self.n / max(self.n_truth, 1), "n_pixels": self.n}


def evaluate(weights: str | Path, seeds: Sequence[int] = DEFAULT_SEEDS,
             size_wh: Tuple[int, int] = (320, 240), frames_per_seed: int = 10,
             input_hw: Tuple[int, int] = (240, 320), fraction: float = 0.3,
             cache_dir: Optional[Path] = None, min_m: float = 0.1,
             max_m: float = 10.0) -> Dict[str, Any]:
    """Scores of the three methods on the removed pixels (see the module docstring)."""
    from ..core.pybullet_scene import render_sequence
    check_seeds_unseen(weights, seeds)
    head = DepthHead("unet", str(weights), input_hw, torch.device("cpu"), min_m=min_m,
                     max_m=max_m, options=unet_options(weights))
    acc = {name: _Accumulator() for name in METHODS + (PROPOSAL,)}
    removed_fractions: List[float] = []
    for seed in seeds:
        seq = render_sequence(seed, frames_per_seed, width=size_wh[0], height=size_wh[1],
                              cache_dir=cache_dir)
        for i in range(len(seq)):
            gt = seq.depth_m[i]
            with np.errstate(invalid="ignore"):
                in_range = np.isfinite(gt) & (gt >= min_m) & (gt <= max_m)
            removed = remove_blobs(in_range, fraction, seed=seed * 10_000 + i)
            removed_fractions.append(float(removed.sum() / max(in_range.sum(), 1)))
            sensor = gt.copy()
            sensor[removed | ~in_range] = np.nan
            frame = seq.frame(i)
            acc[METHODS[0]].add(nearest_fill(sensor, min_m, max_m), gt, removed)
            alone = head.run(RgbdFrame(frame.rgb, frame.stamp_ns, frame.frame_id, None,
                                       frame.intrinsics))
            acc[METHODS[1]].add(alone.depth_m, gt, removed)
            fused = head.run(RgbdFrame(frame.rgb, frame.stamp_ns, frame.frame_id, sensor,
                                       frame.intrinsics))
            acc[METHODS[2]].add(fused.depth_m, gt, removed)
            acc[PROPOSAL].add(residual_fill(alone.depth_m, sensor), gt, removed)
    return {"weights": str(weights), "seeds": list(seeds), "size_wh": list(size_wh),
            "input_hw": list(input_hw), "frames": len(removed_fractions),
            "removed_fraction": float(np.mean(removed_fractions)),
            "rows": {name: a.result() for name, a in acc.items()}}


def format_table(result: Dict[str, Any]) -> str:
    """The rows of :func:`evaluate` as a fixed-width text table."""
    lines = [f"{result['frames']} frames, seeds {result['seeds']}, "
             f"{result['size_wh'][0]}x{result['size_wh'][1]}, network at "
             f"{result['input_hw'][0]}x{result['input_hw'][1]}, "
             f"{result['removed_fraction']:.1%} of the sensor pixels removed; scored on them:",
             f"{'method':<26}{'AbsRel':>9}{'d<1.25':>9}{'RMSE m':>9}{'coverage':>10}"]
    for name, r in result["rows"].items():
        lines.append(f"{name:<26}{r['abs_rel']:>9.4f}{r['delta1']:>9.4f}{r['rmse_m']:>9.4f}"
                     f"{r['coverage']:>10.3f}")
    return "\n".join(lines)


# --- timing ----------------------------------------------------------------------------------
def _depth_anything_small_dir(folder: Path) -> Path:
    """Depth Anything V2 Small's architecture with random weights, saved to ``folder``.

    The config mirrors depth-anything/Depth-Anything-V2-Small-hf (DINOv2-S/14
    backbone, neck 48-384, fusion 64); no download is needed to build it.
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                            patch_size=14, image_size=518, mlp_ratio=4,
                            out_features=["stage9", "stage10", "stage11", "stage12"],
                            reshape_hidden_states=False, layerscale_value=1.0)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[48, 96, 192, 384],
                                 fusion_hidden_size=64, head_hidden_size=32,
                                 reassemble_factors=[4, 2, 1, 0.5],
                                 depth_estimation_type="relative")
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    return folder


def time_models(sizes_wh: Sequence[Tuple[int, int]] = ((320, 240), (640, 480)),
                repeats: int = 5) -> List[Dict[str, Any]]:
    """Median CPU ms per frame of each depth model through DepthHead (network + fusion)."""
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        specs: List[Tuple[str, str, str, Dict[str, Any]]] = [
            ("unet resnet18", "unet", "", {"encoder": "resnet18"}),
            ("unet mobilenet_v3_large", "unet", "", {"encoder": "mobilenet_v3_large"}),
        ]
        try:
            specs.append(("depth_anything_v2 small (random)", "depth_anything_v2",
                          str(_depth_anything_small_dir(Path(tmp) / "da2s")), {}))
        except ImportError as exc:
            rows.append({"model": "depth_anything_v2 small", "error": f"not built: {exc}"})
        for label, model, weights, options in specs:
            for w, h in sizes_wh:
                head = DepthHead(model, weights, (h, w), torch.device("cpu"), options=options)
                rng = np.random.default_rng(0)
                frame = RgbdFrame(rgb=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                                  stamp_ns=0,
                                  depth_m=rng.uniform(0.5, 3.0, (h, w)).astype(np.float32))
                head.warmup(1)
                net, total = [], []
                for _ in range(repeats):
                    result = head.run(frame)
                    net.append(result.timings_ms["network_ms"])
                    total.append(result.timings_ms["depth_ms"])
                rows.append({"model": label, "size_wh": [w, h],
                             "network_ms": float(np.median(net)),
                             "depth_head_ms": float(np.median(total))})
                del head
    return rows


def format_timing(rows: List[Dict[str, Any]]) -> str:
    lines = [f"{'model':<34}{'size':>9}{'network ms':>12}{'head ms':>10}  "
             f"(CPU, {torch.get_num_threads()} threads, median)"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<34}  {r['error']}")
        else:
            lines.append(f"{r['model']:<34}{r['size_wh'][0]:>4}x{r['size_wh'][1]:<4}"
                         f"{r['network_ms']:>12.1f}{r['depth_head_ms']:>10.1f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m robot_vision_ros.tools.eval_depth",
                                description="Depth accuracy on pybullet scenes with exact "
                                            "ground truth and 30 %% of the sensor removed.")
    p.add_argument("--weights", default="", help="unet weights from tools.train_depth")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--size", type=_parse_size, default=(320, 240), help="320x240 or 640x480")
    p.add_argument("--frames", type=int, default=10, help="frames per seed")
    p.add_argument("--input-hw", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="network input (the node's depth.input_size); default: the training "
                        "size recorded in WEIGHTS.json, else 240 320")
    p.add_argument("--fraction", type=float, default=0.3, help="sensor pixels removed")
    p.add_argument("--cache-dir", type=Path, default=None, help="pybullet sequence cache")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--timing", action="store_true", help="also time every depth model")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not args.weights and not args.timing:
        print("error: give --weights (and/or --timing)", file=sys.stderr)
        return 2
    out: Dict[str, Any] = {}
    try:
        if args.weights:
            t0 = time.perf_counter()
            input_hw = tuple(args.input_hw) if args.input_hw else trained_size(args.weights)
            out["accuracy"] = evaluate(args.weights, args.seeds, args.size, args.frames,
                                       input_hw, args.fraction, args.cache_dir)
            print(format_table(out["accuracy"]))
            print(f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.timing:
            out["timing"] = time_models()
            print(format_timing(out["timing"]))
    except VisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
