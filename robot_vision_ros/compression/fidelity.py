"""How close a compressed encoder's outputs stay to the original's.

Raw cosine of pooled CNN features flatters a model: post-ReLU features are
all positive, so even an unrelated (or constant) output scores well. The
report therefore also gives the cosine after removing the reference's mean
feature (``centred_cosine``) and linear CKA (Kornblith et al., 2019, "Similarity
of Neural Network Representations Revisited"), which compares how the two
models arrange the frames relative to each other and works across widths.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError

#: Frames run through the models at once.
DEFAULT_BATCH = 16


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put models in eval mode under ``no_grad`` and restore their training flags after."""
    flags = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, flag in zip(models, flags):
            m.train(flag)


def logits_fn(model: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The model's ``logits`` method, or None when it has no classifier."""
    fn = getattr(model, "logits", None)
    return fn if callable(fn) else None


def run_batched(fn: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor,
                batch: int = DEFAULT_BATCH) -> torch.Tensor:
    """``fn`` over ``frames`` in chunks, concatenated, as float32."""
    return torch.cat([fn(frames[i:i + batch]).float() for i in range(0, len(frames), batch)])


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the cosine between matching rows of ``a`` and ``b``."""
    return float(F.cosine_similarity(a, b, dim=1, eps=1e-12).mean())


def centred_cosine(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean row cosine after subtracting the reference's mean row from both.

    A constant candidate scores about 0: what is left of the reference then
    points in every direction across frames while the candidate does not move.
    """
    mu = reference.mean(dim=0, keepdim=True)
    return mean_cosine(reference - mu, candidate - mu)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two ``[n, d]`` feature sets (widths may differ), in [0, 1].

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred
    features; 0 when either set does not vary across the n frames.
    """
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"linear_cka needs the same frames: {x.shape[0]} vs {y.shape[0]} rows")
    xc = (x - x.mean(dim=0, keepdim=True)).double()
    yc = (y - y.mean(dim=0, keepdim=True)).double()
    cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    denominator = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    if float(denominator) <= 1e-30:
        return 0.0
    return float(cross / denominator)


def pooled_features(model: nn.Module, frames: torch.Tensor,
                    batch: int = DEFAULT_BATCH) -> torch.Tensor:
    """``model(frames)`` in eval mode without gradients, ``[N, D]`` float32."""
    with eval_mode(model):
        return run_batched(model, frames, batch)


def compare_features(reference: torch.Tensor, candidate: torch.Tensor) -> Dict[str, float]:
    """Fidelity metrics of two ``[N, D]`` pooled feature sets of the same frames.

    ``cosine`` and ``centred_cosine`` need equal widths and are left out
    otherwise; ``linear_cka`` is always there.
    """
    report: Dict[str, float] = {}
    if reference.shape[1] == candidate.shape[1]:
        report["cosine"] = mean_cosine(reference, candidate)
        report["centred_cosine"] = centred_cosine(reference, candidate)
    report["linear_cka"] = linear_cka(reference, candidate)
    return report


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor) -> Dict[str, float]:
    """``top1_agreement`` (fraction of frames with the same argmax) and ``logit_cosine``."""
    return {
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).float().mean()),
        "logit_cosine": mean_cosine(reference, candidate),
    }


def _outputs(model: nn.Module, frames: torch.Tensor, with_logits: bool, batch: int
             ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    with eval_mode(model):
        pooled = run_batched(model, frames, batch)
        logits_method = logits_fn(model) if with_logits else None
        logits = run_batched(logits_method, frames, batch) if logits_method else None
    return pooled, logits


def feature_fidelity(reference: nn.Module, candidate: nn.Module, frames: torch.Tensor,
                     batch: int = DEFAULT_BATCH) -> Dict[str, float]:
    """Fidelity of ``candidate`` to ``reference`` on normalised ``frames`` ``[N, 3, H, W]``.

    Keys: ``cosine`` (mean per-frame cosine of the pooled features),
    ``centred_cosine``, ``linear_cka`` (see the module docstring) and, when
    both models have ``logits``, ``top1_agreement`` and ``logit_cosine``.
    ``cosine``/``centred_cosine`` are absent when the widths differ. Both
    models run in eval mode without gradients; their modes are restored.
    """
    if frames.dim() != 4 or len(frames) < 2:
        raise ConfigError(f"feature_fidelity needs at least 2 frames [N, 3, H, W], got "
                          f"{tuple(frames.shape)}")
    both_logits = logits_fn(reference) is not None and logits_fn(candidate) is not None
    ref_pooled, ref_logits = _outputs(reference, frames, both_logits, batch)
    cand_pooled, cand_logits = _outputs(candidate, frames, both_logits, batch)
    report = compare_features(ref_pooled, cand_pooled)
    if ref_logits is not None and cand_logits is not None:
        report.update(compare_logits(ref_logits, cand_logits))
    return report
