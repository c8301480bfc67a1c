"""Distil a big encoder into a small one on unlabeled frames.

``python -m robot_vision_ros.tools.distill --teacher resnet50 --student
mobilenet_v3_small --data FRAMES [--teacher-weights W] [--student-weights W]
[--epochs N] [--batch 16] [--size 224] [--out student.pt] [--resume]
[--holdout 0.2] [--temperature 4]``

``--data`` is a folder of images, a video or an ``.npz`` of uint8 frames. The
student learns the teacher's pooled features (see
:mod:`robot_vision_ros.compression.distill`); when the widths differ it is
built with ``output_dim`` = the teacher's width, its projection being the
learned adapter. ``--out`` is written after every epoch: the student's state
dict under ``state_dict`` (so ``weights: student.pt`` with ``backbone:
STUDENT`` and ``output_dim:`` as printed loads it), plus the optimizer state,
the epoch and the held-out fidelity history; ``--resume`` continues it.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..compression.calibration import normalise_frames, read_frames
from ..compression.distill import augment, both_have_logits, holdout_fidelity, train_step
from ..core.errors import ConfigError, VisionError
from ..models.encoders.base import VisionEncoder
from ..models.registry import create_model
from ..models.weights import load_checkpoint

#: Frames are stored this much larger than ``--size`` so random crops keep detail.
STORE_SCALE = 8 / 7


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m robot_vision_ros.tools.distill",
                                description="Distil a teacher encoder's pooled features "
                                            "into a student encoder on unlabeled frames.")
    p.add_argument("--teacher", required=True, help="teacher encoder name (registry)")
    p.add_argument("--student", required=True, help="student encoder name (registry)")
    p.add_argument("--data", required=True,
                   help="folder of images, video file or .npz of uint8 frames")
    p.add_argument("--teacher-weights", default="",
                   help="'' (random), 'imagenet' (local torch cache) or a file")
    p.add_argument("--student-weights", default="", help="student start weights (as above)")
    p.add_argument("--epochs", type=int, default=10, help="total epochs (with --resume too)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224, help="square training resolution")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=4.0, help="KL temperature T")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="fraction of frames (evenly spread) kept out for fidelity")
    p.add_argument("--max-frames", type=int, default=2000, help="frames read from --data")
    p.add_argument("--out", default="student.pt", help="checkpoint and weights file")
    p.add_argument("--resume", action="store_true", help="continue from --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_args(args: argparse.Namespace) -> None:
    """ConfigError for option values that cannot work."""
    for name in ("epochs", "batch", "max_frames"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.size < 32 or args.size % 32:
        raise ConfigError(f"--size must be a multiple of 32 (>= 32), got {args.size}")
    if not 0.0 <= args.holdout < 1.0:
        raise ConfigError(f"--holdout must be in [0, 1), got {args.holdout}")
    if args.temperature <= 0 or args.lr <= 0:
        raise ConfigError(f"--temperature and --lr must be > 0, got {args.temperature}, "
                          f"{args.lr}")


def build_models(args: argparse.Namespace) -> Tuple[VisionEncoder, VisionEncoder]:
    """Teacher (native width) and student (teacher's width, through its projection)."""
    teacher = create_model(args.teacher, output_dim=0, weights=args.teacher_weights).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    probe = create_model(args.student, output_dim=0)
    output_dim = 0 if probe.native_dim == teacher.output_dim else teacher.output_dim
    student = create_model(args.student, output_dim=output_dim, weights=args.student_weights)
    return teacher, student


def split_indices(count: int, holdout: float) -> Tuple[List[int], List[int]]:
    """(train, held-out) frame indices; held-out ones spread evenly over the sequence."""
    n_hold = int(round(count * holdout))
    if n_hold == 0:
        return list(range(count)), []
    if count - n_hold < 1:
        raise ConfigError(f"--holdout {holdout} leaves no training frames out of {count}")
    held = sorted({int(round(i)) for i in np.linspace(0, count - 1, n_hold)})
    held_set = set(held)
    return [i for i in range(count) if i not in held_set], held


def load_data(args: argparse.Namespace) -> Tuple[torch.Tensor, torch.Tensor]:
    """(training frames uint8 ``[N, 3, S, S]``, held-out frames normalised ``[M, 3, size, size]``)."""
    if not Path(args.data).expanduser().exists():
        raise ConfigError(f"--data {args.data} does not exist (give a folder of images, a "
                          f"video file or an .npz of uint8 frames)")
    frames = read_frames(args.data, args.max_frames)
    train_idx, held_idx = split_indices(len(frames), args.holdout)
    store = int(round(args.size * STORE_SCALE))
    stored = []
    for i in train_idx:
        image = torch.from_numpy(np.ascontiguousarray(frames[i])).permute(2, 0, 1)[None]
        image = F.interpolate(image.float(), size=(store, store), mode="bilinear",
                              align_corners=False, antialias=True)
        stored.append(image.round().clamp(0, 255).to(torch.uint8))
    held = (normalise_frames([frames[i] for i in held_idx], (args.size, args.size))
            if held_idx else torch.empty(0, 3, args.size, args.size))
    return torch.cat(stored), held


class _PrintedBar:
    """Minimal progress bar on stderr, for when tqdm is not installed."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        filled = int(30 * self.done / max(1, self.total))
        print(f"\r{self.desc} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}",
              end="", file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str) -> None:
        del text

    def close(self) -> None:
        print(file=sys.stderr, flush=True)


def _progress(total: int, desc: str, disabled: bool):
    if disabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience; training works without it
        return _PrintedBar(total, desc)
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, mininterval=1.0)


def _save(path: Path, state: Dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a crash while saving leaves the previous checkpoint intact


def _resume(path: Path, student: VisionEncoder, optimizer: torch.optim.Optimizer,
            meta: Dict[str, Any]) -> Tuple[int, List[Dict[str, float]]]:
    state = load_checkpoint(path, "--resume checkpoint",
                            "train without --resume first, with the same --out")
    if not isinstance(state, dict) or "state_dict" not in state or "optimizer" not in state:
        raise ConfigError(f"--resume: {path} is not a checkpoint written by tools.distill")
    saved = state.get("meta", {})
    differs = {k: (saved.get(k), v) for k, v in meta.items() if saved.get(k) != v}
    if differs:
        raise ConfigError(f"--resume: {path} was trained with other settings "
                          f"(saved, now): {differs}")
    student.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]), list(state.get("history", []))


def _batches(count: int, batch: int, generator: torch.Generator) -> Iterable[torch.Tensor]:
    order = torch.randperm(count, generator=generator)
    for start in range(0, count, batch):
        yield order[start:start + batch]


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Train; returns ``{'out', 'epoch', 'history', 'output_dim'}``."""
    check_args(args)
    torch.manual_seed(args.seed)
    teacher, student = build_models(args)
    train_frames, held_frames = load_data(args)
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"teacher": args.teacher, "student": args.student,
            "output_dim": student.output_dim if student.output_dim != student.native_dim else 0,
            "size": args.size}
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=1e-4)
    start_epoch, history = 0, []
    if args.resume:
        start_epoch, history = _resume(out, student, optimizer, meta)
    use_logits = both_have_logits(student, teacher)
    mean = torch.tensor(student.mean).view(1, 3, 1, 1)
    std = torch.tensor(student.std).view(1, 3, 1, 1)
    print(f"distilling {args.teacher} -> {args.student} (output_dim {meta['output_dim']}, "
          f"KL on logits: {use_logits}) on {len(train_frames)} frames, "
          f"{len(held_frames)} held out; epochs {start_epoch + 1}..{args.epochs}", flush=True)
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        rng = random.Random(args.seed * 1000 + epoch)
        generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        n_batches = -(-len(train_frames) // args.batch)
        bar = _progress(n_batches, f"epoch {epoch + 1}/{args.epochs}", args.no_progress)
        student.train()
        sums: Dict[str, float] = {}
        for index in _batches(len(train_frames), args.batch, generator):
            batch = augment(train_frames[index], (args.size, args.size), mean, std, rng)
            parts = train_step(student, teacher, batch, optimizer, args.temperature, use_logits)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"loss {parts['loss']:.3f}")
        if bar is not None:
            bar.close()
        record = {k: v / n_batches for k, v in sums.items()}
        record.update(holdout_fidelity(student, teacher, held_frames))
        record["epoch"] = epoch + 1
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        _save(out, {"state_dict": student.state_dict(), "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1, "history": history, "meta": meta})
        print(_epoch_line(record, args.epochs), flush=True)
    print(f"wrote {out}: use backbone: {args.student}, output_dim: {meta['output_dim']}, "
          f"weights: {out}", flush=True)
    return {"out": out, "epoch": args.epochs, "history": history,
            "output_dim": meta["output_dim"]}


def _epoch_line(record: Dict[str, float], epochs: int) -> str:
    parts = [f"epoch {int(record['epoch'])}/{epochs}", f"loss {record.get('loss', 0.0):.4f}",
             f"(1-cos {record.get('cosine', 0.0):.4f}, mse {record.get('mse', 0.0):.4f}"
             + (f", kl {record['kl']:.4f})" if "kl" in record else ")")]
    if "linear_cka" in record:
        parts.append(f"held-out centred_cosine {record.get('centred_cosine', float('nan')):.4f} "
                     f"linear_cka {record['linear_cka']:.4f}")
    parts.append(f"{record['seconds']:.1f}s")
    return " ".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit status (2 for bad arguments)."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run(args)
    except ConfigError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except VisionError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
