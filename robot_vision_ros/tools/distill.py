"""Distil a big encoder into a small one on unlabeled frames.

``python -m robot_vision_ros.tools.distill --teacher resnet50 --student
mobilenet_v3_small --data FRAMES [--teacher-weights W] [--student-weights W]
[--epochs N] [--batch 16] [--size 224] [--lr 1e-3] [--schedule cosine]
[--centred-weight 1] [--kl-weight 1] [--temperature 4] [--token-weight W]
[--token-centre batch|none] [--mix none|cutmix|mixup] [--mix-prob P]
[--refit-adapter] [--no-bn-recalibration]
[--out student.pt] [--resume] [--holdout 0.2] [--holdout-split spread|tail]
[--eval-data skimage|PATH ...] [--json PATH]``

``--data`` is a folder of images, a video or an ``.npz`` of uint8 frames. The
student learns the teacher's pooled features and, with ``--token-weight`` > 0
(grid CNNs), every cell of its last feature grid (see
:mod:`robot_vision_ros.compression.distill`); when the widths differ it is
built with ``output_dim`` = the teacher's width, its projection being the
learned adapter for the pooled vector and the tokens alike (no other adapter
exists, so nothing is discarded). ``--out`` is written after every epoch: the
student's state dict under ``state_dict`` (so ``weights: student.pt`` with ``backbone:
STUDENT`` and ``output_dim:`` as printed loads it), plus the optimizer state,
the epoch and the held-out fidelity history; ``--resume`` continues it.

Fidelity is scored after every epoch on the held-out frames of ``--data``
(``--holdout-split tail`` keeps the last part of a video out as one block:
neighbouring video frames are near-duplicates, so evenly spread held-out
frames flatter the student) and on every ``--eval-data`` source, which the
student never trains on: ``skimage`` (the colour photos that ship with
scikit-image, each in fixed crops/mirrors) or anything ``--data`` accepts.
The last line printed is a JSON summary (also written to ``--json``).

``--mix cutmix`` (or ``mixup``) shows both networks frames mixed with each
other, so the student learns the teacher on images it would never see in the
recording (:func:`~robot_vision_ros.compression.distill.mix_batch`).
``--refit-adapter`` replaces the student's projection after the last epoch by
the closed-form ridge fit on the unaugmented training frames
(:mod:`robot_vision_ros.compression.adapter`); the summary then has the
held-out figures before and after.

After every epoch the student's BatchNorm statistics are re-estimated on
unaugmented training frames (see
:func:`~robot_vision_ros.compression.distill.recalibrate_batchnorm`). A teacher
without weights is initialised from ``--seed``: the student then mimics that
one random network, which a node building the same teacher unseeded does not
have.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..compression.adapter import check_refittable, refit_adapter
from ..compression.calibration import even_indices, normalise_frames, read_frames
from ..compression.distill import (GRID_ENCODERS, MIX_MODES, PHOTO_VIEWS, augment,
                                   both_have_logits, holdout_fidelity, is_grid_encoder,
                                   mix_batch, photo_views,
                                   recalibrate_batchnorm, teacher_mean_feature, train_step)
from ..compression.fidelity import eval_mode, run_batched
from ..core.errors import ConfigError
from .cli import run_guarded
from ..models.encoders.base import VisionEncoder
from ..models.registry import create_model
from ..models.weights import load_checkpoint

#: Frames are stored this much larger than ``--size`` so random crops keep detail.
STORE_SCALE = 8 / 7
#: ``--holdout-split`` values: evenly spread frames, or the last block of the sequence.
HOLDOUT_SPLITS: Tuple[str, ...] = ("spread", "tail")
#: ``--schedule`` values: constant learning rate, or cosine decay to 0 over all epochs.
SCHEDULES: Tuple[str, ...] = ("constant", "cosine")
#: ``--eval-data`` keyword for scikit-image's bundled colour photos.
SKIMAGE_KEYWORD = "skimage"
#: Colour photos that ship inside the scikit-image wheel (functions returning one
#: RGB image, or the stereo pair's two views). The colour photos ``skimage.data``
#: downloads on first use (``skin``) are not listed: nothing may download, and
#: under pytest scikit-image skips the calling test instead of raising.
SKIMAGE_PHOTOS: Tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket",
                                   "hubble_deep_field", "immunohistochemistry", "retina",
                                   "stereo_motorcycle", "cat")
#: ``--token-centre`` values: centre tokens per grid position over the batch, or not.
TOKEN_CENTRES: Tuple[str, ...] = ("batch", "none")
#: Default ``--token-weight`` (chosen by measurement, see the README's
#: "Distillation, measured").
DEFAULT_TOKEN_WEIGHT = 4.0
#: Training frames (unaugmented) the teacher's mean feature (for the centred
#: loss) and the student's BatchNorm statistics after each epoch come from.
MEAN_FRAMES = 256


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
                   help="fraction of frames kept out for fidelity")
    p.add_argument("--holdout-split", default="spread",
                   help="spread (held-out frames evenly spread) or tail (the last block: "
                        "the honest test for a video)")
    p.add_argument("--eval-data", action="append", default=[], metavar="SOURCE",
                   help="extra frames never trained on, scored every epoch (repeatable): "
                        "'skimage' (scikit-image's colour photos, 8 fixed crops/mirrors "
                        "each) or a folder, video or .npz")
    p.add_argument("--schedule", default="cosine",
                   help="learning rate: constant or cosine (decay to 0 over --epochs)")
    p.add_argument("--centred-weight", type=float, default=1.0,
                   help="weight of the (1 - centred cosine) loss term (0 = off)")
    p.add_argument("--kl-weight", type=float, default=1.0,
                   help="weight of the KL term on logits when both models have classifiers "
                        "(0 = off, e.g. for a teacher whose classifier is untrained)")
    p.add_argument("--token-weight", type=float, default=DEFAULT_TOKEN_WEIGHT,
                   help="weight of the per-token (spatial) terms on the last feature grid "
                        "(grid CNNs; 0 = pooled features only, the old behaviour)")
    p.add_argument("--token-centre", default="batch",
                   help="batch (also match tokens after removing the teacher's mean token "
                        "of each grid position over the batch, weighted by --centred-weight) "
                        "or none")
    p.add_argument("--mix", default="none",
                   help="mix training frames with each other: none, cutmix (a box of another "
                        "frame pasted at the same place) or mixup (a blend); the teacher sees "
                        "the same mixed image")
    p.add_argument("--mix-prob", type=float, default=0.5,
                   help="probability that a training frame is mixed with another (--mix)")
    p.add_argument("--refit-adapter", action="store_true",
                   help="after the last epoch, replace the student's projection by the "
                        "closed-form ridge fit to the teacher's features on the unaugmented "
                        "training frames (ridge chosen on their last 20%%)")
    p.add_argument("--no-bn-recalibration", action="store_true",
                   help="keep the student's BatchNorm running statistics from training "
                        "instead of re-estimating them on unaugmented frames each epoch")
    p.add_argument("--json", default="", help="also write the final summary JSON here")
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
    if args.holdout_split not in HOLDOUT_SPLITS:
        raise ConfigError(f"--holdout-split must be one of {', '.join(HOLDOUT_SPLITS)}, "
                          f"got '{args.holdout_split}'")
    if args.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, "
                          f"got '{args.schedule}'")
    if args.centred_weight < 0 or args.kl_weight < 0:
        raise ConfigError(f"--centred-weight and --kl-weight must be >= 0, got "
                          f"{args.centred_weight}, {args.kl_weight}")
    if args.token_weight < 0:
        raise ConfigError(f"--token-weight must be >= 0, got {args.token_weight}")
    if args.token_centre not in TOKEN_CENTRES:
        raise ConfigError(f"--token-centre must be one of {', '.join(TOKEN_CENTRES)}, "
                          f"got '{args.token_centre}'")
    if args.mix not in MIX_MODES:
        raise ConfigError(f"--mix must be one of {', '.join(MIX_MODES)}, got '{args.mix}'")
    if not 0.0 <= args.mix_prob <= 1.0:
        raise ConfigError(f"--mix-prob must be in [0, 1], got {args.mix_prob}")
    for source in args.eval_data:
        if source != SKIMAGE_KEYWORD and not Path(source).expanduser().exists():
            raise ConfigError(f"--eval-data {source} is neither '{SKIMAGE_KEYWORD}' nor an "
                              f"existing folder of images, video file or .npz")


def build_models(args: argparse.Namespace) -> Tuple[VisionEncoder, VisionEncoder]:
    """Teacher (native width) and student (teacher's width, through its projection)."""
    teacher = create_model(args.teacher, output_dim=0, weights=args.teacher_weights).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    probe = create_model(args.student, output_dim=0)
    output_dim = 0 if probe.native_dim == teacher.output_dim else teacher.output_dim
    student = create_model(args.student, output_dim=output_dim, weights=args.student_weights)
    if args.token_weight > 0:
        for role, model in (("teacher", teacher), ("student", student)):
            if not is_grid_encoder(model):
                raise ConfigError(
                    f"--token-weight {args.token_weight}: the {role} '{model.name}' has no "
                    f"plain feature grid (token distillation supports "
                    f"{', '.join(t.__name__ for t in GRID_ENCODERS)}); use --token-weight 0")
    return teacher, student


def split_indices(count: int, holdout: float, split: str = "spread"
                  ) -> Tuple[List[int], List[int]]:
    """(train, held-out) frame indices.

    ``split``: ``spread`` spreads the held-out frames evenly over the sequence;
    ``tail`` holds out the last ``holdout`` fraction as one block.
    """
    if split not in HOLDOUT_SPLITS:
        raise ConfigError(f"--holdout-split must be one of {', '.join(HOLDOUT_SPLITS)}, "
                          f"got '{split}'")
    n_hold = int(round(count * holdout))
    if n_hold == 0:
        return list(range(count)), []
    if count - n_hold < 1:
        raise ConfigError(f"--holdout {holdout} leaves no training frames out of {count}")
    if split == "tail":
        return list(range(count - n_hold)), list(range(count - n_hold, count))
    held = sorted({int(round(i)) for i in np.linspace(0, count - 1, n_hold)})
    held_set = set(held)
    return [i for i in range(count) if i not in held_set], held


def load_data(args: argparse.Namespace) -> Tuple[torch.Tensor, torch.Tensor]:
    """Training frames (uint8 ``[N, 3, S, S]``) and held-out ones (normalised, ``--size``)."""
    if not Path(args.data).expanduser().exists():
        raise ConfigError(f"--data {args.data} does not exist (give a folder of images, a "
                          f"video file or an .npz of uint8 frames)")
    frames = read_frames(args.data, args.max_frames)
    train_idx, held_idx = split_indices(len(frames), args.holdout, args.holdout_split)
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


def skimage_photos() -> Dict[str, np.ndarray]:
    """scikit-image's colour photos that are on this machine, by name (uint8 RGB).

    A listed image missing from this install (``skimage.data`` would need
    ``pooch`` and the network) is skipped with a message on stderr; nothing is
    fetched.
    Duplicates (``cat`` is ``chelsea``) are dropped.
    """
    try:
        from skimage import data as skdata
    except ImportError as exc:
        raise ConfigError(f"--eval-data {SKIMAGE_KEYWORD} needs scikit-image "
                          f"(pip install scikit-image): {exc}") from exc
    photos: Dict[str, np.ndarray] = {}
    seen = set()
    for name in SKIMAGE_PHOTOS:
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            loaded = loader()
        except (ModuleNotFoundError, OSError) as exc:  # pooch missing, or no network
            print(f"distill: skimage.data.{name} is not on this machine, skipped "
                  f"({type(exc).__name__})", file=sys.stderr)
            continue
        images = loaded[:2] if isinstance(loaded, tuple) else (loaded,)  # stereo pair
        for index, image in enumerate(images):
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8
                    and image.ndim == 3 and image.shape[-1] == 3):
                continue
            digest = hashlib.sha1(image.tobytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            photos[name if len(images) == 1 else f"{name}_{index}"] = image
    if len(photos) < 2:
        raise ConfigError(f"--eval-data {SKIMAGE_KEYWORD}: fewer than 2 colour photos of "
                          f"skimage.data load on this machine ({sorted(photos)})")
    return photos


def load_eval_sets(args: argparse.Namespace) -> Dict[str, Tuple[torch.Tensor, str]]:
    """``{name: (normalised frames, description)}`` for every ``--eval-data`` source."""
    sets: Dict[str, Tuple[torch.Tensor, str]] = {}
    size = (args.size, args.size)
    for source in args.eval_data:
        if source == SKIMAGE_KEYWORD:
            photos = skimage_photos()
            views = [v for image in photos.values() for v in photo_views(image)]
            name = SKIMAGE_KEYWORD
            note = (f"{len(photos)} skimage.data colour photos ({', '.join(photos)}) x "
                    f"{len(PHOTO_VIEWS)} fixed crops/mirrors = {len(views)} images")
            frames = normalise_frames(views, size)
        else:
            images = read_frames(source, args.max_frames)
            name = Path(source).expanduser().name or source
            note = f"{len(images)} frames of {source}"
            frames = normalise_frames(images, size)
        if len(frames) < 2:
            raise ConfigError(f"--eval-data {source} gives {len(frames)} frame; fidelity "
                              f"needs at least 2")
        unique, count = name, 2
        while unique in sets:
            unique, count = f"{name}#{count}", count + 1
        sets[unique] = (frames, note)
    return sets


def lr_at(args: argparse.Namespace, step: int, total_steps: int) -> float:
    """Learning rate at optimisation ``step`` of ``total_steps`` under ``--schedule``.

    A function of the step alone (no scheduler state), so ``--resume`` picks
    the schedule up where it stopped.
    """
    if args.schedule == "constant" or total_steps <= 1:
        return args.lr
    return 0.5 * args.lr * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


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
    saved = {"holdout_split": "spread", **state.get("meta", {})}  # older files: spread
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


def _plain_frames(train_frames: torch.Tensor, size: int, mean: torch.Tensor,
                  std: torch.Tensor) -> torch.Tensor:
    """Up to MEAN_FRAMES training frames, unaugmented, normalised at ``size``, shuffled.

    Shuffled with a fixed seed so each BatchNorm recalibration batch mixes
    distant frames, as training batches do (neighbouring video frames alike
    would understate the variance).
    """
    chosen = torch.tensor(even_indices(len(train_frames), MEAN_FRAMES))
    chosen = chosen[torch.randperm(len(chosen), generator=torch.Generator().manual_seed(0))]
    return _normalised(train_frames[chosen], size, mean, std)


def _normalised(frames_uint8: torch.Tensor, size: int, mean: torch.Tensor,
                std: torch.Tensor) -> torch.Tensor:
    """Stored uint8 ``[N, 3, S, S]`` frames, unaugmented, resized to ``size`` and normalised."""
    frames = F.interpolate(frames_uint8.float() / 255.0, size=(size, size), mode="bilinear",
                           align_corners=False, antialias=True)
    return (frames - mean) / std


def _mean_std(model: VisionEncoder) -> Tuple[torch.Tensor, torch.Tensor]:
    """The model's input normalisation as ``[1, 3, 1, 1]`` tensors."""
    return (torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1))


def _teacher_features(teacher: VisionEncoder, frames: torch.Tensor) -> torch.Tensor:
    with eval_mode(teacher):
        return run_batched(teacher, frames)


def _train_epoch(args: argparse.Namespace, epoch: int, student: VisionEncoder,
                 teacher: VisionEncoder, optimizer: torch.optim.Optimizer,
                 train_frames: torch.Tensor, use_logits: bool,
                 teacher_mean: Optional[torch.Tensor]) -> Dict[str, float]:
    """One pass over the augmented training frames; the loss parts averaged over batches."""
    mean, std = _mean_std(student)
    rng = random.Random(args.seed * 1000 + epoch)
    generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    n_batches = -(-len(train_frames) // args.batch)
    bar = _progress(n_batches, f"epoch {epoch + 1}/{args.epochs}", args.no_progress)
    student.train()
    sums: Dict[str, float] = {}
    for step, index in enumerate(_batches(len(train_frames), args.batch, generator)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(args, epoch * n_batches + step, n_batches * args.epochs)
        batch = augment(train_frames[index], (args.size, args.size), mean, std, rng)
        batch = mix_batch(batch, args.mix, args.mix_prob, rng)
        parts = train_step(student, teacher, batch, optimizer, args.temperature, use_logits,
                           teacher_mean=teacher_mean, centred_weight=args.centred_weight,
                           kl_weight=args.kl_weight, token_weight=args.token_weight,
                           token_centre=args.token_centre == "batch")
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss {parts['loss']:.3f}")
    if bar is not None:
        bar.close()
    return {k: v / n_batches for k, v in sums.items()}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Train; returns ``{'out', 'epoch', 'history', 'output_dim', 'summary'}``."""
    check_args(args)
    run_started = time.perf_counter()
    torch.manual_seed(args.seed)
    teacher, student = build_models(args)
    train_frames, held_frames = load_data(args)
    if args.refit_adapter:
        check_refittable(student, len(train_frames))
    eval_sets = load_eval_sets(args)
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"teacher": args.teacher, "student": args.student,
            "output_dim": student.output_dim if student.output_dim != student.native_dim else 0,
            "size": args.size, "holdout_split": args.holdout_split}
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=1e-4)
    start_epoch, history = 0, []
    if args.resume:
        start_epoch, history = _resume(out, student, optimizer, meta)
    use_logits = both_have_logits(student, teacher) and args.kl_weight > 0
    mean, std = _mean_std(student)
    # The teacher is frozen: its features of the scored frames are computed once.
    held_teacher = _teacher_features(teacher, held_frames) if len(held_frames) >= 2 else None
    eval_teacher = {name: _teacher_features(teacher, frames)
                    for name, (frames, _) in eval_sets.items()}
    plain_frames = _plain_frames(train_frames, args.size, mean, std)
    teacher_mean = (teacher_mean_feature(teacher, plain_frames)
                    if args.centred_weight > 0 else None)
    centred_tokens = (args.token_weight > 0 and args.token_centre == "batch"
                      and args.centred_weight > 0)
    print(f"distilling {args.teacher} -> {args.student} (output_dim {meta['output_dim']}, "
          f"KL on logits: {use_logits}, token weight {args.token_weight:g}"
          f"{', centred per grid position' if centred_tokens else ''}) on "
          f"{len(train_frames)} frames, {len(held_frames)} held out ({args.holdout_split}); epochs "
          f"{start_epoch + 1}..{args.epochs}", flush=True)
    for name, (_, note) in eval_sets.items():
        print(f"eval set '{name}' (never trained on): {note}", flush=True)
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        record: Dict[str, Any] = _train_epoch(args, epoch, student, teacher, optimizer,
                                              train_frames, use_logits, teacher_mean)
        if not args.no_bn_recalibration:
            recalibrate_batchnorm(student, plain_frames)
        record["lr_end"] = optimizer.param_groups[0]["lr"]
        record.update(holdout_fidelity(student, teacher, held_frames, held_teacher))
        record["eval"] = {name: holdout_fidelity(student, teacher, frames, eval_teacher[name])
                          for name, (frames, _) in eval_sets.items()}
        record["epoch"] = epoch + 1
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        _save(out, {"state_dict": student.state_dict(), "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1, "history": history, "meta": meta})
        print(_epoch_line(record, args.epochs), flush=True)
    if args.refit_adapter:
        history.append(_refit(args, student, teacher, train_frames, held_frames, held_teacher,
                              eval_sets, eval_teacher))
        _save(out, {"state_dict": student.state_dict(), "optimizer": optimizer.state_dict(),
                    "epoch": args.epochs, "history": history, "meta": meta})
    print(f"wrote {out}: use backbone: {args.student}, output_dim: {meta['output_dim']}, "
          f"weights: {out}", flush=True)
    summary = _summary(args, meta, history, eval_sets, len(train_frames), len(held_frames),
                       out, time.perf_counter() - run_started)
    line = json.dumps(summary, sort_keys=True)
    if args.json:
        json_path = Path(args.json).expanduser()
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(line, flush=True)
    return {"out": out, "epoch": args.epochs, "history": history,
            "output_dim": meta["output_dim"], "summary": summary}


def _refit(args: argparse.Namespace, student: VisionEncoder, teacher: VisionEncoder,
           train_frames: torch.Tensor, held_frames: torch.Tensor,
           held_teacher: Optional[torch.Tensor], eval_sets: Dict[str, Tuple[torch.Tensor, str]],
           eval_teacher: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """Refit the student's projection in closed form (``--refit-adapter``); its record."""
    started = time.perf_counter()
    ordered = _normalised(train_frames, args.size, *_mean_std(student))
    fit = refit_adapter(student, ordered, _teacher_features(teacher, ordered))
    record: Dict[str, Any] = {"epoch": args.epochs, "refit_ridge": fit.ridge,
                              "refit_validation": fit.validation,
                              "refit_candidates": {f"{k:g}": v for k, v in
                                                   fit.candidates.items()},
                              "refit_frames": fit.frames}
    record.update(holdout_fidelity(student, teacher, held_frames, held_teacher))
    record["eval"] = {name: holdout_fidelity(student, teacher, frames, eval_teacher[name])
                      for name, (frames, _) in eval_sets.items()}
    record["seconds"] = time.perf_counter() - started
    print(f"adapter refit on {fit.frames} unaugmented training frames: ridge {fit.ridge:g} "
          f"(validation centred_cosine {fit.validation['centred_cosine']:.4f}, linear_cka "
          f"{fit.validation['linear_cka']:.4f} on their last 20%)", flush=True)
    print(f"after refit: {_fidelity_line(record)} {record['seconds']:.1f}s", flush=True)
    return record


def _fidelity_keys(record: Dict[str, Any]) -> Dict[str, float]:
    return {k: record[k] for k in ("plain_cosine", "centred_cosine", "linear_cka")
            if k in record}


def _summary(args: argparse.Namespace, meta: Dict[str, Any], history: List[Dict[str, Any]],
             eval_sets: Dict[str, Tuple[torch.Tensor, str]], n_train: int, n_held: int,
             out: Path, seconds: float) -> Dict[str, Any]:
    """The run's settings and its last epoch's fidelity figures."""
    last = history[-1] if history else {}
    return {
        "teacher": args.teacher, "teacher_weights": args.teacher_weights or "random init",
        "student": args.student, "student_weights": args.student_weights or "random init",
        "output_dim": meta["output_dim"], "size": args.size, "epochs": args.epochs,
        "batch": args.batch, "lr": args.lr, "schedule": args.schedule,
        "centred_weight": args.centred_weight, "kl_weight": args.kl_weight,
        "token_weight": args.token_weight, "token_centre": args.token_centre,
        "mix": args.mix, "mix_prob": args.mix_prob,
        "temperature": args.temperature, "data": args.data,
        "bn_recalibration": not args.no_bn_recalibration,
        "train_frames": n_train, "holdout_frames": n_held, "holdout_split": args.holdout_split,
        "holdout": _fidelity_keys(last),
        "adapter_refit": ({"ridge": last["refit_ridge"], "validation": last["refit_validation"],
                           "before": _fidelity_keys(history[-2]) if len(history) > 1 else {}}
                          if "refit_ridge" in last else None),
        "eval": {name: {"images": len(frames), "what": note,
                        **_fidelity_keys(last.get("eval", {}).get(name, {}))}
                 for name, (frames, note) in eval_sets.items()},
        "out": str(out), "seconds": round(seconds, 1),
    }


def _epoch_line(record: Dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {int(record['epoch'])}/{epochs}", f"loss {record.get('loss', 0.0):.4f}",
             f"(1-cos {record.get('cosine', 0.0):.4f}, mse {record.get('mse', 0.0):.4f}"
             + (f", 1-ccos {record['centred']:.4f}" if "centred" in record else "")
             + (f", kl {record['kl']:.4f}" if "kl" in record else "")
             + (f"; token 1-cos {record['token_cosine']:.4f}, mse {record['token_mse']:.4f}"
                if "token_cosine" in record else "")
             + (f", 1-ccos {record['token_centred']:.4f}" if "token_centred" in record else "")
             + ")"]
    return " ".join(parts + [_fidelity_line(record), f"{record['seconds']:.1f}s"])


def _fidelity_line(record: Dict[str, Any]) -> str:
    """The held-out and eval-set figures of one history record."""
    parts = []
    if "linear_cka" in record:
        parts.append(f"held-out centred_cosine {record.get('centred_cosine', float('nan')):.4f} "
                     f"linear_cka {record['linear_cka']:.4f} "
                     f"cosine {record.get('plain_cosine', float('nan')):.4f}")
    for name, figures in record.get("eval", {}).items():
        if figures:
            parts.append(f"| {name} centred_cosine "
                         f"{figures.get('centred_cosine', float('nan')):.4f} linear_cka "
                         f"{figures['linear_cka']:.4f} cosine "
                         f"{figures.get('plain_cosine', float('nan')):.4f}")
    return " ".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit status (2 for bad arguments)."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    status, _ = run_guarded("distill", lambda: run(args))
    return status


if __name__ == "__main__":
    sys.exit(main())
