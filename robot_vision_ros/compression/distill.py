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
factor that keeps its gradients comparable across temperatures.
"""
from __future__ import annotations

import math
import random
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from .fidelity import centred_cosine, eval_mode, linear_cka, logits_fn, run_batched


def feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(1 - mean cosine, MSE / teacher mean square)`` of ``[B, D]`` pooled features."""
    if student.shape != teacher.shape:
        raise ConfigError(f"student features {tuple(student.shape)} do not match the "
                          f"teacher's {tuple(teacher.shape)}: build the student with "
                          f"output_dim={teacher.shape[-1]} (its projection is the adapter)")
    cosine = F.cosine_similarity(student, teacher, dim=1, eps=1e-8).mean()
    scale = teacher.detach().pow(2).mean().clamp_min(1e-12)
    return 1.0 - cosine, F.mse_loss(student, teacher) / scale


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
                      temperature: float = 4.0, kl_weight: float = 1.0
                      ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Total loss and its parts (``cosine``, ``mse``, ``kl``) for one batch."""
    cosine_term, mse_term = feature_loss(student_features, teacher_features)
    total = cosine_term + mse_term
    parts = {"cosine": float(cosine_term.detach()), "mse": float(mse_term.detach())}
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
               use_logits: Optional[bool] = None) -> Dict[str, float]:
    """One optimisation step of ``student`` towards ``teacher`` on a normalised batch."""
    if use_logits is None:
        use_logits = both_have_logits(student, teacher)
    with torch.no_grad():
        teacher_features = teacher(batch)
        teacher_logits = teacher.logits(batch) if use_logits else None
    student_features = student(batch)
    student_logits = student.logits(batch) if use_logits else None
    loss, parts = distillation_loss(student_features, teacher_features, student_logits,
                                    teacher_logits, temperature)
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


def holdout_fidelity(student: nn.Module, teacher: nn.Module, frames: torch.Tensor
                     ) -> Dict[str, float]:
    """``centred_cosine`` and ``linear_cka`` of the student's pooled features on ``frames``."""
    if len(frames) < 2:
        return {}
    with eval_mode(student, teacher):
        teacher_features = run_batched(teacher, frames)
        student_features = run_batched(student, frames)
    report = {"linear_cka": linear_cka(teacher_features, student_features)}
    if teacher_features.shape == student_features.shape:
        report["centred_cosine"] = centred_cosine(teacher_features, student_features)
    return report
