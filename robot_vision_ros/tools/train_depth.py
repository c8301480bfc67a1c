"""``python -m robot_vision_ros.tools.train_depth``: train the ``unet`` depth network.

Supervision is the recording's own sensor depth (or the exact depth of
generated pybullet scenes with ``--synthetic-pybullet N``): the
scale-invariant log loss over the valid pixels, plus a multi-scale
gradient-matching term on log depth that sharpens object edges. Light
augmentation (horizontal flip, brightness/contrast/saturation jitter). A
checkpoint (model, optimizer, epoch) is written after every epoch and
``--resume`` continues from it; validation AbsRel and delta < 1.25 (network
alone, metric) are printed each epoch. The final weights are written with
:func:`~robot_vision_ros.models.depth.unet.save_unet_weights`, so
``depth.model: unet`` + ``depth.weights: OUT`` loads them in the node, and a
``OUT.json`` beside them records what the network saw (the pybullet seeds, so
the evaluation can refuse to test on them).

Example::

    python -m robot_vision_ros.tools.train_depth --synthetic-pybullet 400 \\
        --size 240 320 --epochs 8 --out build/depth_unet.pt
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset

from ..core.depth_fusion import depth_metrics
from ..core.errors import ConfigError, VisionError
from ..core.rgbd_dataset import RgbdRecording
from ..models.depth.base import scale_invariant_log_loss
from ..models.depth.unet import UNetDepth, encoder_names, save_unet_weights, unet

#: First seed of generated training scenes; evaluation seeds lie below it.
SYNTHETIC_SEED_BASE = 1000
DEFAULT_FRAMES_PER_SCENE = 20


# --- data ------------------------------------------------------------------------------------
def resize_pair(rgb: np.ndarray, depth_m: np.ndarray, size_hw: Tuple[int, int]
                ) -> Tuple[np.ndarray, np.ndarray]:
    """RGB area-resampled, depth nearest-neighbour (never blends two surfaces), to ``size_hw``."""
    h, w = size_hw
    if rgb.shape[:2] == (h, w):
        return rgb, depth_m
    rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    depth_m = cv2.resize(depth_m, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return rgb, depth_m


@dataclass
class FrameArrays:
    """Frames at the training size, held in memory: rgb [N,h,w,3] uint8, depth [N,h,w] f32."""

    rgb: np.ndarray
    depth_m: np.ndarray
    sources: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def split(self, val_fraction: float) -> Tuple["FrameArrays", "FrameArrays"]:
        """(train, val): validation is the contiguous tail, so neighbouring frames of one
        sequence rarely straddle the split."""
        n_val = int(round(len(self) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(self) > 1:
            n_val = 1
        if n_val >= len(self):
            raise ConfigError(f"--val-fraction {val_fraction} leaves no training frame out of "
                              f"{len(self)}")
        cut = len(self) - n_val
        return (FrameArrays(self.rgb[:cut], self.depth_m[:cut], self.sources),
                FrameArrays(self.rgb[cut:], self.depth_m[cut:], self.sources))


def load_recordings(recordings: Sequence[RgbdRecording], size_hw: Tuple[int, int],
                    max_frames: int = 0) -> FrameArrays:
    """Every frame of ``recordings`` resized to ``size_hw`` (at most ``max_frames``, 0 = all)."""
    rgbs, depths = [], []
    for rec in recordings:
        for i in range(len(rec)):
            if max_frames and len(rgbs) >= max_frames:
                break
            sample = rec[i]
            rgb, depth = resize_pair(sample.rgb, sample.depth_m, size_hw)
            rgbs.append(rgb)
            depths.append(depth)
    if not rgbs:
        raise ConfigError("no training frames: give --data PATH and/or --synthetic-pybullet N")
    return FrameArrays(np.stack(rgbs), np.stack(depths), [r.source for r in recordings])


def synthetic_recordings(num_frames: int, size_hw: Tuple[int, int],
                         frames_per_scene: int = DEFAULT_FRAMES_PER_SCENE,
                         cache_dir: Optional[Path] = None) -> Tuple[List[RgbdRecording],
                                                                   List[int]]:
    """``num_frames`` pybullet frames from scenes with seeds ``SYNTHETIC_SEED_BASE + k``."""
    from ..core.pybullet_scene import render_sequence
    recordings, seeds = [], []
    remaining, k = num_frames, 0
    while remaining > 0:
        n = min(frames_per_scene, remaining)
        seed = SYNTHETIC_SEED_BASE + k
        seq = render_sequence(seed, n, width=size_hw[1], height=size_hw[0], cache_dir=cache_dir)
        loaders = [(lambda i=i, s=seq: (s.rgb[i], s.depth_m[i])) for i in range(n)]
        recordings.append(RgbdRecording(f"pybullet seed {seed}", loaders,
                                        [f"s{seed}_{i}" for i in range(n)], [0] * n))
        seeds.append(seed)
        remaining -= n
        k += 1
    return recordings, seeds


class DepthTrainSet(Dataset):
    """Normalised RGB tensors and depth targets (NaN = no supervision), optionally augmented."""

    def __init__(self, frames: FrameArrays, mean: Sequence[float], std: Sequence[float],
                 augment: bool, seed: int = 0) -> None:
        self.frames = frames
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        rgb = torch.from_numpy(self.frames.rgb[index]).permute(2, 0, 1).float() / 255.0
        depth = torch.from_numpy(self.frames.depth_m[index]).unsqueeze(0)
        if self.augment:
            if self.rng.random() < 0.5:
                rgb, depth = rgb.flip(-1), depth.flip(-1)
            rgb = TF.adjust_brightness(rgb, float(self.rng.uniform(0.75, 1.25)))
            rgb = TF.adjust_contrast(rgb, float(self.rng.uniform(0.75, 1.25)))
            rgb = TF.adjust_saturation(rgb, float(self.rng.uniform(0.7, 1.3)))
        return (rgb - self.mean) / self.std, depth


# --- losses ----------------------------------------------------------------------------------
def gradient_matching_loss(pred_m: torch.Tensor, target_m: torch.Tensor,
                           valid: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Multi-scale gradient matching on log depth (MiDaS, Ranftl et al. 2020).

    Penalises ``|grad(log pred - log target)|`` where both neighbours are
    valid, at ``scales`` resolutions (every 2**k-th pixel): scale-free, and it
    rewards sharp discontinuities where the SI-log term alone blurs them.
    """
    safe = torch.where(valid, target_m, torch.ones_like(target_m))
    diff = torch.where(valid, torch.log(pred_m.clamp_min(1e-6)) - torch.log(safe),
                       torch.zeros_like(pred_m))
    total = pred_m.new_zeros(())
    for k in range(scales):
        step = 2 ** k
        d, m = diff[..., ::step, ::step], valid[..., ::step, ::step]
        mx = m[..., :, 1:] & m[..., :, :-1]
        my = m[..., 1:, :] & m[..., :-1, :]
        gx = (d[..., :, 1:] - d[..., :, :-1]).abs() * mx
        gy = (d[..., 1:, :] - d[..., :-1, :]).abs() * my
        count = (mx.sum() + my.sum()).clamp_min(1)
        total = total + (gx.sum() + gy.sum()) / count
    return total / scales


def depth_loss(pred_m: torch.Tensor, target_m: torch.Tensor, min_m: float, max_m: float,
               si_lambda: float, grad_weight: float) -> torch.Tensor:
    """SI-log over targets inside the network's range, plus ``grad_weight`` x gradient term."""
    with torch.no_grad():
        valid = torch.isfinite(target_m) & (target_m >= min_m) & (target_m <= max_m)
    loss = scale_invariant_log_loss(pred_m, target_m, valid, lam=si_lambda)
    if grad_weight > 0:
        loss = loss + grad_weight * gradient_matching_loss(pred_m, target_m, valid)
    return loss


# --- training --------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: UNetDepth, frames: FrameArrays, batch: int = 8) -> Dict[str, float]:
    """Network-alone AbsRel, delta < 1.25 and RMSE over all valid pixels of ``frames``."""
    model.eval()
    data = DepthTrainSet(frames, model.mean, model.std, augment=False)
    sums = {"abs_rel": 0.0, "delta1": 0.0, "rmse_sq": 0.0}
    n_total = 0
    for start in range(0, len(data), batch):
        items = [data[i] for i in range(start, min(start + batch, len(data)))]
        pred = model(torch.stack([x for x, _ in items]))
        for k, (_, target) in enumerate(items):
            m = depth_metrics(pred[k, 0].numpy(), target[0].numpy())
            n = m["n_pixels"]
            if n:
                sums["abs_rel"] += m["abs_rel"] * n
                sums["delta1"] += m["delta1"] * n
                sums["rmse_sq"] += m["rmse_m"] ** 2 * n
                n_total += n
    if not n_total:
        return {"abs_rel": math.nan, "delta1": math.nan, "rmse_m": math.nan, "n_pixels": 0}
    return {"abs_rel": sums["abs_rel"] / n_total, "delta1": sums["delta1"] / n_total,
            "rmse_m": math.sqrt(sums["rmse_sq"] / n_total), "n_pixels": n_total}


def checkpoint_path(out: Path) -> Path:
    """Where the resumable checkpoint of ``out`` lives: ``OUT.ckpt`` beside it."""
    return out.with_name(out.name + ".ckpt")


def _cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    # Cosine decay to 5 % of the base rate; computed per epoch so resuming needs no state.
    return base_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1))))


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    weights_path: Path
    checkpoint_path: Path
    epochs_run: int
    history: List[Dict[str, float]]


def _build_model(args: argparse.Namespace) -> UNetDepth:
    return unet(encoder=args.encoder, encoder_weights=args.encoder_weights,
                min_depth_m=args.min_depth, max_depth_m=args.max_depth)


def _init_head_bias(model: UNetDepth, depth_m: np.ndarray) -> None:
    """Start the output at the median training depth instead of mid-range.

    The head is ``min + (max - min) * sigmoid(logit)``: at init it predicts
    about (min + max) / 2 = 5 m everywhere, and the (mostly scale-invariant)
    loss takes many epochs to walk the global scale to a table-top's 1-2 m.
    """
    valid = depth_m[np.isfinite(depth_m)]
    valid = valid[(valid > model.min_depth_m) & (valid < model.max_depth_m)]
    if not valid.size:
        return
    p = (float(np.median(valid)) - model.min_depth_m) / (model.max_depth_m - model.min_depth_m)
    with torch.no_grad():
        model.head.bias.fill_(math.log(p / (1.0 - p)))


def train(args: argparse.Namespace) -> TrainResult:
    """Run the training described by parsed command-line ``args``."""
    torch.manual_seed(args.seed)
    size_hw = (int(args.size[0]), int(args.size[1]))
    if min(size_hw) < 32:
        raise ConfigError(f"--size must be at least 32x32, got {size_hw[0]}x{size_hw[1]}")
    recordings: List[RgbdRecording] = []
    seeds: List[int] = []
    if args.data:
        recordings.append(RgbdRecording.open(args.data, args.bag_rgb_topic, args.bag_depth_topic,
                                             args.bag_slop))
    if args.synthetic_pybullet:
        synthetic, seeds = synthetic_recordings(args.synthetic_pybullet, size_hw,
                                                args.frames_per_scene, args.cache_dir)
        recordings.extend(synthetic)
    if not recordings:
        raise ConfigError("nothing to train on: give --data PATH and/or --synthetic-pybullet N")
    frames = load_recordings(recordings, size_hw, args.max_frames)
    train_frames, val_frames = frames.split(args.val_fraction)
    print(f"data: {len(train_frames)} training and {len(val_frames)} validation frames at "
          f"{size_hw[0]}x{size_hw[1]} from {', '.join(r.source for r in recordings[:3])}"
          f"{' ...' if len(recordings) > 3 else ''}", flush=True)

    model = _build_model(args)
    if not args.resume:
        _init_head_bias(model, train_frames.depth_m)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = checkpoint_path(out)
    start_epoch, history = 0, []
    if args.resume:
        start_epoch, history = _resume(ckpt_path, model, optimizer)
        print(f"resumed from {ckpt_path} after epoch {start_epoch}", flush=True)

    # Seeds offset by the start epoch: a resumed run does not replay the first epochs' order.
    loader = DataLoader(DepthTrainSet(train_frames, model.mean, model.std, augment=True,
                                      seed=args.seed + start_epoch),
                        batch_size=args.batch, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed + start_epoch))
    for epoch in range(start_epoch, args.epochs):
        lr = _cosine_lr(args.lr, epoch, args.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        t0 = time.perf_counter()
        losses = []
        bar = _progress(loader, f"epoch {epoch + 1}/{args.epochs}", args.no_progress)
        for x, target in bar:
            pred = model(x)
            loss = depth_loss(pred, target, args.min_depth, args.max_depth, args.si_lambda,
                              args.grad_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach().item())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        val = evaluate(model, val_frames, args.batch) if len(val_frames) else {}
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)),
                  "seconds": time.perf_counter() - t0,
                  **{f"val_{k}": float(v) for k, v in val.items()}}
        history.append(record)
        _save_checkpoint(ckpt_path, model, optimizer, epoch + 1, history, args)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {record['train_loss']:.4f}  "
              f"val AbsRel {val.get('abs_rel', math.nan):.4f}  "
              f"delta<1.25 {val.get('delta1', math.nan):.4f}  "
              f"RMSE {val.get('rmse_m', math.nan):.3f} m  ({record['seconds']:.0f} s)",
              flush=True)

    model.eval()
    save_unet_weights(model, out)
    info = {"encoder": args.encoder, "encoder_weights": args.encoder_weights,
            "min_depth_m": args.min_depth, "max_depth_m": args.max_depth,
            "size_hw": list(size_hw), "data": str(args.data) if args.data else "",
            "synthetic_seeds": seeds, "frames_train": len(train_frames),
            "frames_val": len(val_frames), "history": history}
    out.with_name(out.name + ".json").write_text(json.dumps(info, indent=1))
    print(f"wrote {out} (depth.model: unet, depth.weights: {out}) and {ckpt_path}", flush=True)
    return TrainResult(out, ckpt_path, len(history), history)


def _progress(loader: DataLoader, desc: str, disabled: bool):
    if disabled:
        return loader
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience; training works without it
        return loader
    return tqdm(loader, desc=desc, leave=False, mininterval=5.0, file=sys.stderr)


def _save_checkpoint(path: Path, model: UNetDepth, optimizer: torch.optim.Optimizer,
                     epoch: int, history: List[Dict[str, float]],
                     args: argparse.Namespace) -> None:
    state = {"config": model.config, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
             "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a crash while saving leaves the previous checkpoint intact


def _resume(path: Path, model: UNetDepth, optimizer: torch.optim.Optimizer
            ) -> Tuple[int, List[Dict[str, float]]]:
    if not path.is_file():
        raise ConfigError(f"--resume: checkpoint {path} does not exist (train without "
                          f"--resume first, with the same --out)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("config") != model.config:
        raise ConfigError(f"--resume: {path} was trained with {state.get('config')}, this run "
                          f"asks for {model.config}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]), list(state.get("history", []))


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m robot_vision_ros.tools.train_depth",
                                description="Train the unet depth network on RGB-D recordings.")
    p.add_argument("--data", default="", help="folder (rgb/ + depth/, or *.npz), .npz file or "
                   "ROS 2 bag directory")
    p.add_argument("--bag-rgb-topic", default="", help="colour Image topic of a bag")
    p.add_argument("--bag-depth-topic", default="", help="depth Image topic of a bag")
    p.add_argument("--bag-slop", type=float, default=0.02,
                   help="largest RGB/depth stamp difference paired, seconds")
    p.add_argument("--synthetic-pybullet", type=int, default=0, metavar="N",
                   help=f"also train on N generated pybullet frames (seeds from "
                        f"{SYNTHETIC_SEED_BASE}, disjoint from the evaluation seeds)")
    p.add_argument("--frames-per-scene", type=int, default=DEFAULT_FRAMES_PER_SCENE,
                   help="frames per generated pybullet scene")
    p.add_argument("--cache-dir", type=Path, default=None, help="pybullet sequence cache")
    p.add_argument("--encoder", default="resnet18", choices=encoder_names())
    p.add_argument("--encoder-weights", default="",
                   help="'' (random), 'imagenet' (local torch cache) or a torchvision file")
    p.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"),
                   help="training resolution; match the node's depth.input_size")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--si-lambda", type=float, default=0.5,
                   help="scale-invariance of the SI-log loss (1 = scale ignored; 0.5 as "
                        "Eigen et al.: a metric network must learn the scale too)")
    p.add_argument("--grad-weight", type=float, default=0.5,
                   help="weight of the gradient-matching term (0 = off)")
    p.add_argument("--min-depth", type=float, default=0.1)
    p.add_argument("--max-depth", type=float, default=10.0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--max-frames", type=int, default=0, help="cap on frames (0 = all)")
    p.add_argument("--out", default="depth_unet.pt", help="final weights file")
    p.add_argument("--resume", action="store_true", help="continue from OUT.ckpt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("epochs", "batch"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1", file=sys.stderr)
            return 2
    if not 0.0 <= args.val_fraction < 1.0:
        print("error: --val-fraction must be in [0, 1)", file=sys.stderr)
        return 2
    try:
        train(args)
    except VisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
