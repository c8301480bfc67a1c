"""Feature distillation: teach a small encoder to produce a big one's features.

The student learns the teacher's *pooled features* on unlabeled frames, so it
can replace the teacher in front of a policy. When the widths differ, the
student is built with ``output_dim`` = the teacher's width: its projection
(``proj``, a ``Linear``) is the learned adapter and is saved with it, so
``create_model(student, output_dim=teacher_width, weights=file)`` gives
teacher-compatible features.

Loss (:func:`distillation_loss`): ``(1 - cosine)`` + MSE of the features
divided by the teacher's RMS (so magnitude is matched too, at a scale-free
weight), plus, when both have ImageNet classifiers, Hinton et al.'s KL term on
temperature-softened logits with ``reduction='batchmean'`` and the ``T^2``
factor that keeps its gradients comparable across temperatures. Given the
teacher's mean feature, a ``(1 - centred cosine)`` term is added: post-ReLU
features share a large common direction, so the plain cosine is near 1 long
before the student follows how frames *differ*, which is what the held-out
centred cosine and CKA measure.
"""
from __future__ import annotations

import math
import random
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from .fidelity import (centred_cosine, eval_mode, linear_cka, logits_fn, mean_cosine,
                       run_batched)


def feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(1 - mean cosine, MSE / teacher mean square)`` of ``[B, D]`` pooled features."""
    if student.shape != teacher.shape:
        raise ConfigError(f"student features {tuple(student.shape)} do not match the "
                          f"teacher's {tuple(teacher.shape)}: build the student with "
                          f"output_dim={teacher.shape[-1]} (its projection is the adapter)")
    cosine = F.cosine_similarity(student, teacher, dim=1, eps=1e-8).mean()
    scale = teacher.detach().pow(2).mean().clamp_min(1e-12)
    return 1.0 - cosine, F.mse_loss(student, teacher) / scale


def centred_cosine_loss(student: torch.Tensor, teacher: torch.Tensor,
                        teacher_mean: torch.Tensor) -> torch.Tensor:
    """``1 - mean cosine`` of ``[B, D]`` features after subtracting the teacher's mean ``[D]``."""
    if teacher_mean.shape[-1] != teacher.shape[-1]:
        raise ConfigError(f"teacher mean has width {teacher_mean.shape[-1]}, features "
                          f"{teacher.shape[-1]}")
    mu = teacher_mean.reshape(1, -1).to(teacher.dtype)
    return 1.0 - F.cosine_similarity(student - mu, teacher - mu, dim=1, eps=1e-8).mean()


def kd_logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over the batch (Hinton et al. 2015)."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature ** 2


def distillation_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                      student_logits: Optional[torch.Tensor] = None,
                      teacher_logits: Optional[torch.Tensor] = None,
                      temperature: float = 4.0, kl_weight: float = 1.0,
                      teacher_mean: Optional[torch.Tensor] = None,
                      centred_weight: float = 1.0
                      ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Total loss and its parts (``cosine``, ``mse``, ``centred``, ``kl``) for one batch.

    ``centred`` (weight ``centred_weight``) is only there when ``teacher_mean``
    is given.
    """
    cosine_term, mse_term = feature_loss(student_features, teacher_features)
    total = cosine_term + mse_term
    parts = {"cosine": float(cosine_term.detach()), "mse": float(mse_term.detach())}
    if teacher_mean is not None and centred_weight > 0:
        centred_term = centred_cosine_loss(student_features, teacher_features, teacher_mean)
        total = total + centred_weight * centred_term
        parts["centred"] = float(centred_term.detach())
    if student_logits is not None and teacher_logits is not None:
        if student_logits.shape != teacher_logits.shape:
            raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher "
                              f"logits {tuple(teacher_logits.shape)} differ")
        kl_term = kd_logit_loss(student_logits, teacher_logits, temperature)
        total = total + kl_weight * kl_term
        parts["kl"] = float(kl_term.detach())
    parts["loss"] = float(total.detach())
    return total, parts


def both_have_logits(student: nn.Module, teacher: nn.Module) -> bool:
    """True when both models expose ``logits`` (then the KL term is used)."""
    return logits_fn(student) is not None and logits_fn(teacher) is not None


def augment(images_uint8: torch.Tensor, size_hw: Tuple[int, int], mean: torch.Tensor,
            std: torch.Tensor, generator: random.Random) -> torch.Tensor:
    """Light augmentation of a ``[B, 3, H, W]`` uint8 batch -> normalised float batch.

    Random crop (60-100 % of the area, aspect 3/4-4/3), horizontal flip and
    brightness/contrast/saturation jitter (+-20 %), all in torch: the same
    frame never reaches the student twice in the same way, so a few hundred
    frames of one scene do not get memorised.
    """
    out = []
    _, _, height, width = images_uint8.shape
    for image in images_uint8:
        area = height * width * generator.uniform(0.6, 1.0)
        aspect = math.exp(generator.uniform(math.log(3 / 4), math.log(4 / 3)))
        crop_h = min(height, max(1, int(round(math.sqrt(area / aspect)))))
        crop_w = min(width, max(1, int(round(math.sqrt(area * aspect)))))
        top = generator.randint(0, height - crop_h)
        left = generator.randint(0, width - crop_w)
        crop = image[:, top:top + crop_h, left:left + crop_w].float()[None] / 255.0
        crop = F.interpolate(crop, size=size_hw, mode="bilinear", align_corners=False,
                             antialias=True)
        if generator.random() < 0.5:
            crop = crop.flip(-1)
        crop = crop * generator.uniform(0.8, 1.2)  # brightness
        grey = crop.mean(dim=1, keepdim=True)
        crop = grey.mean() + (crop - grey.mean()) * generator.uniform(0.8, 1.2)  # contrast
        grey = crop.mean(dim=1, keepdim=True)
        crop = grey + (crop - grey) * generator.uniform(0.8, 1.2)  # saturation
        out.append(crop.clamp(0.0, 1.0))
    return (torch.cat(out) - mean) / std


def train_step(student: nn.Module, teacher: nn.Module, batch: torch.Tensor,
               optimizer: torch.optim.Optimizer, temperature: float = 4.0,
               use_logits: Optional[bool] = None,
               teacher_mean: Optional[torch.Tensor] = None,
               centred_weight: float = 1.0, kl_weight: float = 1.0) -> Dict[str, float]:
    """One optimisation step of ``student`` towards ``teacher`` on a normalised batch.

    ``teacher_mean`` (the teacher's mean pooled feature, ``[D]``) adds the
    centred-cosine term; see :func:`distillation_loss`.
    """
    if use_logits is None:
        use_logits = both_have_logits(student, teacher)
    use_logits = use_logits and kl_weight > 0
    with torch.no_grad():
        teacher_features = teacher(batch)
        teacher_logits = teacher.logits(batch) if use_logits else None
    student_features = student(batch)
    student_logits = student.logits(batch) if use_logits else None
    loss, parts = distillation_loss(student_features, teacher_features, student_logits,
                                    teacher_logits, temperature, kl_weight=kl_weight,
                                    teacher_mean=teacher_mean, centred_weight=centred_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return parts


def freeze_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm layers in eval mode (running statistics kept) inside a training model.

    Short fine-tunes on a few frames would otherwise overwrite statistics
    learned on ImageNet with those of tiny, correlated batches.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def recalibrate_batchnorm(model: nn.Module, frames: torch.Tensor, batch: int = 16) -> int:
    """Re-estimate the BatchNorm running statistics of ``model`` on ``frames``; returns #layers.

    The running averages gathered while the weights move fast (a student
    trained from scratch at a high learning rate) can be far from the
    statistics of the final weights, the more so with torchvision's
    MobileNetV3/EfficientNet BatchNorm momentum of 0.01 (an average over ~100
    steps): measured here, a mobilenet_v3_small student's eval-mode features
    varied 1000x less across frames than in train mode, which scored a
    held-out centred cosine of ~0. Recomputing the
    statistics as an exact average over unaugmented frames with the weights
    fixed ("precise BN") removes that gap. Weights are not touched; the
    layers' momentum and the model's train/eval flag are restored.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats]
    if not layers or len(frames) < 2:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches below
        model.train()
        with torch.no_grad():
            for start in range(0, len(frames), batch):
                chunk = frames[start:start + batch]
                if len(chunk) > 1:  # train-mode BatchNorm needs 2+ samples
                    model(chunk)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(layers)


def holdout_fidelity(student: nn.Module, teacher: nn.Module, frames: torch.Tensor,
                     teacher_features: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """``centred_cosine`` and ``linear_cka`` of the student's pooled features on ``frames``.

    ``teacher_features``: the teacher's pooled features of ``frames`` when
    already known (the teacher is frozen, so callers scoring every epoch
    compute them once).
    """
    if len(frames) < 2:
        return {}
    with eval_mode(student, teacher):
        if teacher_features is None:
            teacher_features = run_batched(teacher, frames)
        student_features = run_batched(student, frames)
    report = {"linear_cka": linear_cka(teacher_features, student_features)}
    if teacher_features.shape == student_features.shape:
        report["centred_cosine"] = centred_cosine(teacher_features, student_features)
        report["plain_cosine"] = mean_cosine(teacher_features, student_features)
    return report


def teacher_mean_feature(teacher: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """The teacher's mean pooled feature ``[D]`` over normalised ``frames`` (eval mode)."""
    if len(frames) == 0:
        raise ConfigError("teacher_mean_feature needs at least one frame")
    with eval_mode(teacher):
        return run_batched(teacher, frames).mean(dim=0)


#: Deterministic views of one photo for scoring: (top, left, height, width) as
#: fractions of the image, and whether to mirror it.
PHOTO_VIEWS: Tuple[Tuple[float, float, float, float, bool], ...] = (
    (0.0, 0.0, 1.0, 1.0, False), (0.0, 0.0, 1.0, 1.0, True),
    (0.0, 0.0, 0.7, 0.7, False), (0.0, 0.3, 0.7, 0.7, True),
    (0.3, 0.0, 0.7, 0.7, True), (0.3, 0.3, 0.7, 0.7, False),
    (0.15, 0.15, 0.7, 0.7, False), (0.25, 0.25, 0.5, 0.5, True),
)


def photo_views(image: np.ndarray) -> List[np.ndarray]:
    """``len(PHOTO_VIEWS)`` fixed crops/mirrors of a uint8 RGB ``[H, W, 3]`` photo.

    A handful of photos gives a noisy CKA (it is estimated from the frames'
    pairwise similarities); fixed views multiply the frames without any
    randomness, so scores stay comparable between epochs and runs.
    """
    height, width = image.shape[:2]
    views = []
    for top, left, frac_h, frac_w, mirror in PHOTO_VIEWS:
        y0, x0 = int(round(top * height)), int(round(left * width))
        y1 = min(height, y0 + max(1, int(round(frac_h * height))))
        x1 = min(width, x0 + max(1, int(round(frac_w * width))))
        view = image[y0:y1, x0:x1]
        views.append(np.ascontiguousarray(view[:, ::-1] if mirror else view))
    return views
