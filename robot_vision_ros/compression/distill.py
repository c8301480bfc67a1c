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

Token-level (spatial) distillation (``token_weight > 0``, grid CNNs): pooled
supervision gives one target per image, and on one static scene the teacher's
pooled features hardly vary between frames, so the student never learns the
local structure behind those small variations. The token terms compare every
cell of the last feature grid instead (:func:`token_loss`): per-token
``(1 - cosine)`` + normalised MSE, plus ``(1 - cosine)`` after subtracting the
teacher's mean token at each grid position over the batch. The student's cells
go through its own ``proj``: a ``Linear`` is affine, so mean-pooling then
projecting equals projecting every cell then pooling; the pooled output the
node publishes is the mean of exactly the tokens trained here, and no extra
adapter exists to discard. A student grid of another size is resized to the
teacher's (bilinear, also affine-commuting).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..models.encoders.mobilenet import TorchvisionFeaturesEncoder
from ..models.encoders.realtime import RealtimeEncoder
from ..models.encoders.resnet import ResNetEncoder
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


def token_loss(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor,
               centre: bool = True) -> Dict[str, torch.Tensor]:
    """Per-token terms of ``[B, N, D]`` tokens at matching grid positions.

    ``cosine``: ``1 -`` mean cosine over all B*N tokens; ``mse``: MSE divided by
    the teacher tokens' mean square; with ``centre`` (and B >= 2) ``centred``:
    ``1 -`` mean cosine after subtracting the teacher's mean token of each
    position over the batch, so the large direction all tokens share does not
    hide how the cells differ.
    """
    if student_tokens.shape != teacher_tokens.shape or student_tokens.dim() != 3:
        raise ConfigError(f"student tokens {tuple(student_tokens.shape)} do not match the "
                          f"teacher's {tuple(teacher_tokens.shape)} (both [B, N, D]): resize "
                          f"the student grid to the teacher's and build it with "
                          f"output_dim={teacher_tokens.shape[-1]}")
    cosine = F.cosine_similarity(student_tokens, teacher_tokens, dim=-1, eps=1e-8).mean()
    scale = teacher_tokens.detach().pow(2).mean().clamp_min(1e-12)
    terms = {"cosine": 1.0 - cosine,
             "mse": F.mse_loss(student_tokens, teacher_tokens) / scale}
    if centre and student_tokens.shape[0] >= 2:
        mu = teacher_tokens.detach().mean(dim=0, keepdim=True)
        terms["centred"] = 1.0 - F.cosine_similarity(student_tokens - mu, teacher_tokens - mu,
                                                     dim=-1, eps=1e-8).mean()
    return terms


def distillation_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                      student_logits: Optional[torch.Tensor] = None,
                      teacher_logits: Optional[torch.Tensor] = None,
                      temperature: float = 4.0, kl_weight: float = 1.0,
                      teacher_mean: Optional[torch.Tensor] = None,
                      centred_weight: float = 1.0,
                      student_tokens: Optional[torch.Tensor] = None,
                      teacher_tokens: Optional[torch.Tensor] = None,
                      token_weight: float = 0.0, token_centre: bool = True
                      ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Total loss and its parts (``cosine``, ``mse``, ``centred``, ``kl``, ``token_*``).

    ``centred`` (weight ``centred_weight``) is only there when ``teacher_mean``
    is given. With ``token_weight > 0`` and both token sets given,
    ``token_weight * (token cosine + token mse + centred_weight * token centred)``
    (see :func:`token_loss`) is added; ``token_weight = 0`` is the pooled-only loss.
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
    if token_weight < 0:
        raise ConfigError(f"token_weight must be >= 0, got {token_weight}")
    if token_weight > 0:
        if student_tokens is None or teacher_tokens is None:
            raise ConfigError("token_weight > 0 needs the student's and the teacher's tokens")
        terms = token_loss(student_tokens, teacher_tokens, centre=token_centre and
                           centred_weight > 0)
        token_total = terms["cosine"] + terms["mse"]
        if "centred" in terms:
            token_total = token_total + centred_weight * terms["centred"]
        total = total + token_weight * token_total
        parts.update({f"token_{k}": float(v.detach()) for k, v in terms.items()})
    parts["loss"] = float(total.detach())
    return total, parts


#: Encoder classes whose pooled output is ``proj(mean of the forward_features
#: grid)`` (their ``_pool_and_tokens`` is ``pool_grid(forward_features(x))``)
#: and whose ImageNet logits, where they have them, are a head on that native
#: mean. Only exact types: a subclass may pool differently.
GRID_ENCODERS: Tuple[type, ...] = (TorchvisionFeaturesEncoder, ResNetEncoder, RealtimeEncoder)


def is_grid_encoder(model: nn.Module) -> bool:
    """True when :func:`grid_outputs` reproduces ``model``'s pooled output and logits."""
    return type(model) in GRID_ENCODERS


def classifier_head(model: nn.Module) -> Optional[nn.Module]:
    """The ImageNet classifier on the native pooled vector of a grid encoder, or None."""
    if type(model) is TorchvisionFeaturesEncoder:
        return model.backbone.classifier
    if type(model) is ResNetEncoder:
        return model.backbone.fc
    return None


@dataclass
class GridOutputs:
    """One backbone pass of a grid encoder.

    ``pooled``: ``[B, output_dim]`` (as ``model(x)``); ``grid``: native
    ``[B, C, h, w]`` (as ``forward_features``); ``logits``: ``[B, 1000]`` (as
    ``model.logits(x)``) when asked for and the model has a classifier.
    """

    pooled: torch.Tensor
    grid: torch.Tensor
    logits: Optional[torch.Tensor]


def grid_outputs(model: nn.Module, x: torch.Tensor, with_logits: bool = False) -> GridOutputs:
    """Pooled features, native grid and logits of a grid encoder from ONE backbone pass.

    ``model(x)`` and ``model.logits(x)`` each run the backbone; training with
    the KL term would run both networks twice per batch.
    """
    if not is_grid_encoder(model):
        raise ConfigError(f"{type(model).__name__} is not a grid CNN encoder "
                          f"({', '.join(t.__name__ for t in GRID_ENCODERS)}): token "
                          f"distillation needs a [B, C, h, w] feature grid")
    model.check_input(x)
    grid = model.forward_features(x)
    native = grid.mean(dim=(2, 3))
    head = classifier_head(model) if with_logits else None
    return GridOutputs(pooled=model.proj(native), grid=grid,
                       logits=head(native) if head is not None else None)


def projected_tokens(model: nn.Module, grid: torch.Tensor,
                     size_hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """``[B, h*w, output_dim]`` row-major tokens of a native ``[B, C, h, w]`` grid.

    ``size_hw``: resize the grid to this (the teacher's) size first, bilinear
    (antialiased when shrinking). Resizing before ``proj`` is cheaper when the
    student is the narrower model and equal after it: both maps are affine.
    """
    if grid.dim() != 4:
        raise ConfigError(f"projected_tokens needs a [B, C, h, w] grid, got {tuple(grid.shape)}")
    if size_hw is not None and tuple(grid.shape[-2:]) != tuple(size_hw):
        shrink = size_hw[0] < grid.shape[-2] or size_hw[1] < grid.shape[-1]
        grid = F.interpolate(grid, size=tuple(size_hw), mode="bilinear", align_corners=False,
                             antialias=shrink)
    return model.proj(grid.flatten(2).transpose(1, 2))


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


#: ``mix_batch`` modes: none, CutMix (a box of another frame pasted at the same
#: place) or mixup (a convex blend of two frames).
MIX_MODES: Tuple[str, ...] = ("none", "cutmix", "mixup")


def mix_batch(batch: torch.Tensor, mode: str, prob: float,
              generator: random.Random) -> torch.Tensor:
    """Mix frames of a normalised ``[B, 3, H, W]`` batch with each other ("function matching").

    Distillation needs no labels, so the teacher can be asked about images
    that never occurred: Beyer et al. (2022, "Knowledge distillation: a good
    teacher is patient and consistent") found aggressive mixing essential for
    a student to follow its teacher off the training images. On one static
    scene it matters more: ``cutmix`` pastes a box of another frame at the
    same place (the camera does not move, so the background still fits),
    putting people where they never were together; ``mixup`` blends two
    frames. Each frame is mixed with probability ``prob`` with another frame
    of the batch. Normalisation is affine and the blend weights sum to one, so
    mixing normalised frames equals normalising mixed ones.
    """
    if mode not in MIX_MODES:
        raise ConfigError(f"mix mode must be one of {', '.join(MIX_MODES)}, got '{mode}'")
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"mix probability must be in [0, 1], got {prob}")
    if mode == "none" or prob == 0.0 or len(batch) < 2:
        return batch
    out = batch.clone()
    count, _, height, width = batch.shape
    for i in range(count):
        if generator.random() >= prob:
            continue
        j = generator.choice([k for k in range(count) if k != i])
        if mode == "mixup":
            weight = generator.uniform(0.0, 1.0)
            out[i] = weight * batch[i] + (1.0 - weight) * batch[j]
            continue
        area = generator.uniform(0.1, 0.6)
        aspect = math.exp(generator.uniform(math.log(1 / 2), math.log(2)))
        box_h = min(height, max(1, int(round(height * math.sqrt(area / aspect)))))
        box_w = min(width, max(1, int(round(width * math.sqrt(area * aspect)))))
        top = generator.randint(0, height - box_h)
        left = generator.randint(0, width - box_w)
        out[i, :, top:top + box_h, left:left + box_w] = batch[j, :, top:top + box_h,
                                                              left:left + box_w]
    return out


def batch_loss(student: nn.Module, teacher: nn.Module, batch: torch.Tensor,
               temperature: float = 4.0, use_logits: Optional[bool] = None,
               teacher_mean: Optional[torch.Tensor] = None, centred_weight: float = 1.0,
               kl_weight: float = 1.0, token_weight: float = 0.0, token_centre: bool = True
               ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The distillation loss of ``student`` on a normalised batch (teacher under no_grad).

    Grid CNNs on both sides run once each (:func:`grid_outputs`); other
    encoders through ``forward`` and ``logits``. ``token_weight > 0`` needs
    grid CNNs; the student's grid is resized to the teacher's when they differ.
    """
    if use_logits is None:
        use_logits = both_have_logits(student, teacher)
    use_logits = use_logits and kl_weight > 0
    fused = is_grid_encoder(student) and is_grid_encoder(teacher)
    if token_weight > 0 and not fused:
        raise ConfigError(f"token distillation (token_weight {token_weight}) needs grid CNN "
                          f"encoders on both sides ({', '.join(t.__name__ for t in GRID_ENCODERS)}"
                          f"), got teacher {type(teacher).__name__}, student "
                          f"{type(student).__name__}; use token_weight 0")
    student_tokens = teacher_tokens = None
    if fused:
        with torch.no_grad():
            taught = grid_outputs(teacher, batch, use_logits)
        learnt = grid_outputs(student, batch, use_logits)
        teacher_features, teacher_logits = taught.pooled, taught.logits
        student_features, student_logits = learnt.pooled, learnt.logits
        if token_weight > 0:
            size_hw = (int(taught.grid.shape[-2]), int(taught.grid.shape[-1]))
            with torch.no_grad():
                teacher_tokens = projected_tokens(teacher, taught.grid)
            student_tokens = projected_tokens(student, learnt.grid, size_hw)
    else:
        with torch.no_grad():
            teacher_features = teacher(batch)
            teacher_logits = teacher.logits(batch) if use_logits else None
        student_features = student(batch)
        student_logits = student.logits(batch) if use_logits else None
    return distillation_loss(student_features, teacher_features, student_logits,
                             teacher_logits, temperature, kl_weight=kl_weight,
                             teacher_mean=teacher_mean, centred_weight=centred_weight,
                             student_tokens=student_tokens, teacher_tokens=teacher_tokens,
                             token_weight=token_weight, token_centre=token_centre)


def train_step(student: nn.Module, teacher: nn.Module, batch: torch.Tensor,
               optimizer: torch.optim.Optimizer, temperature: float = 4.0,
               use_logits: Optional[bool] = None,
               teacher_mean: Optional[torch.Tensor] = None,
               centred_weight: float = 1.0, kl_weight: float = 1.0,
               token_weight: float = 0.0, token_centre: bool = True) -> Dict[str, float]:
    """One optimisation step of ``student`` towards ``teacher`` on a normalised batch.

    ``teacher_mean`` (the teacher's mean pooled feature, ``[D]``) adds the
    centred-cosine term; ``token_weight`` the token terms; see
    :func:`distillation_loss` and :func:`batch_loss`.
    """
    loss, parts = batch_loss(student, teacher, batch, temperature, use_logits, teacher_mean,
                             centred_weight, kl_weight, token_weight, token_centre)
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
