"""Closed-form refit of a distilled student's linear adapter (its ``proj``).

Gradient training moves the backbone and the projection together on
augmented crops; once the backbone is fixed, the projection that best maps
the student's native pooled vector to the teacher's features on real,
unaugmented frames has a closed form: ridge regression. Measured on a
MobileNetV2 -> MobileNetV3-Small student (README, "Distillation, measured"),
the refit raised held-out CKA and centred cosine more than 40 further epochs
did. The ridge strength is chosen on the last block of the frames given (a
video's later frames, as the held-out test is) and the fit is then redone on
all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..core.errors import ConfigError
from .fidelity import centred_cosine, eval_mode, linear_cka, run_batched

#: Ridge strengths tried, relative to the mean variance of the native features.
DEFAULT_RIDGES: Tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


@dataclass
class AdapterFit:
    """The chosen ridge, its validation figures and every candidate's centred cosine."""

    ridge: float
    validation: Dict[str, float]
    candidates: Dict[float, float] = field(default_factory=dict)
    frames: int = 0


def _linear_proj(model: nn.Module) -> nn.Linear:
    proj = getattr(model, "proj", None)
    if not isinstance(proj, nn.Linear):
        raise ConfigError(f"{type(model).__name__} has no linear projection to refit (built "
                          f"with output_dim 0 or the teacher's width); the refit needs a "
                          f"student whose output_dim differs from its native width")
    return proj


def validation_count(frame_count: int, validation_fraction: float = 0.2) -> int:
    """Frames of ``frame_count`` the ridge is chosen on; ConfigError if too few to fit."""
    if not 0.0 < validation_fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    n_val = int(round(frame_count * validation_fraction))
    if n_val < 2 or frame_count - n_val < 2:
        raise ConfigError(f"refit_adapter needs at least 2 fitting and 2 validation frames, "
                          f"got {frame_count} frames")
    return n_val


def check_refittable(model: nn.Module, frame_count: int,
                     validation_fraction: float = 0.2) -> None:
    """ConfigError unless :func:`refit_adapter` can work on ``model`` with that many frames.

    For callers that train first: they learn it before, not after, the training.
    """
    _linear_proj(model)
    validation_count(frame_count, validation_fraction)


def native_pooled(model: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` pooled vectors entering ``model.proj`` (eval mode, no gradients).

    Taken with a forward pre-hook on ``proj``, so it works for every encoder of
    the shared interface: ``encode`` projects the pooled ``[B, C]`` vector and
    the ``[B, N, C]`` tokens; only the 2-D input is the pooled one.
    """
    proj = _linear_proj(model)
    captured: List[torch.Tensor] = []

    def grab(_module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
        if inputs[0].dim() == 2:
            captured.append(inputs[0].detach().float())

    handle = proj.register_forward_pre_hook(grab)
    try:
        with eval_mode(model):
            run_batched(model, frames)
    finally:
        handle.remove()
    return torch.cat(captured)


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(weight [D, C], bias [D])`` minimising ``|x W^T + b - y|^2 + ridge * s * |W|^2``.

    ``s`` is the mean variance of the columns of ``x``, so ``ridge`` is unitless.
    Solved in float64 on centred data (the bias is not penalised).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"ridge_fit needs x [N, C] and y [N, D] with the same N, got "
                          f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 2:
        raise ConfigError("ridge_fit needs at least 2 rows")
    if ridge <= 0:
        raise ConfigError(f"ridge must be > 0, got {ridge}")
    xd, yd = x.double(), y.double()
    x_mean, y_mean = xd.mean(dim=0), yd.mean(dim=0)
    xc, yc = xd - x_mean, yd - y_mean
    scale = float(xc.pow(2).mean()) or 1.0
    gram = xc.T @ xc + ridge * scale * xc.shape[0] * torch.eye(xc.shape[1], dtype=xd.dtype)
    weight = torch.linalg.solve(gram, xc.T @ yc).T  # [D, C]
    bias = y_mean - weight @ x_mean
    return weight.float(), bias.float()


def _figures(teacher: torch.Tensor, predicted: torch.Tensor) -> Dict[str, float]:
    return {"centred_cosine": centred_cosine(teacher, predicted),
            "linear_cka": linear_cka(teacher, predicted)}


def refit_adapter(student: nn.Module, frames: torch.Tensor, teacher_features: torch.Tensor,
                  ridges: Sequence[float] = DEFAULT_RIDGES,
                  validation_fraction: float = 0.2) -> AdapterFit:
    """Replace ``student.proj`` by the ridge fit to ``teacher_features`` of ``frames``.

    ``frames``: normalised, in their temporal order; the ridge with the best
    centred cosine on the last ``validation_fraction`` of them (fitted on the
    rest) is kept, then refitted on all frames and written into ``proj``.
    """
    if len(frames) != len(teacher_features):
        raise ConfigError(f"refit_adapter: {len(frames)} frames but "
                          f"{len(teacher_features)} teacher features")
    if not ridges:
        raise ConfigError("refit_adapter needs at least one ridge strength")
    n_val = validation_count(len(frames), validation_fraction)
    native = native_pooled(student, frames)
    target = teacher_features.float()
    fit_x, fit_y = native[:-n_val], target[:-n_val]
    val_x, val_y = native[-n_val:], target[-n_val:]
    candidates: Dict[float, float] = {}
    best = None
    for ridge in ridges:
        weight, bias = ridge_fit(fit_x, fit_y, ridge)
        figures = _figures(val_y, val_x @ weight.T + bias)
        candidates[float(ridge)] = figures["centred_cosine"]
        if best is None or figures["centred_cosine"] > best[1]["centred_cosine"]:
            best = (float(ridge), figures)
    weight, bias = ridge_fit(native, target, best[0])
    with torch.no_grad():
        student.proj.weight.copy_(weight)
        student.proj.bias.copy_(bias)
    return AdapterFit(ridge=best[0], validation=best[1], candidates=candidates,
                      frames=len(frames))
