"""Pruning: unstructured (sparsity only) and structured (really smaller convs).

* :func:`prune_unstructured` zeroes the smallest-magnitude weights. Dense
  kernels still multiply the zeros, so it gives NO speed-up and no smaller
  file; it is here to measure how much a model tolerates sparsity.
* :func:`prune_structured` removes whole conv channels with ``torch-pruning``
  (Fang et al. 2023, DepGraph), which follows the dependencies (residual adds,
  depthwise convs, BatchNorm, squeeze-excitation) and rebuilds every affected
  layer narrower: fewer parameters, fewer FLOPs, faster on any backend.
  For a ViT it narrows every attention head (the same dimensions of q, k and
  v) and the hidden layer of every MLP; the residual width, the token count
  and the head count stay. Fidelity drops; :func:`finetune_distill` recovers
  part of it.
"""
from __future__ import annotations

import copy
import random
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..core.errors import ConfigError, ModelError
from ..models.encoders.base import VisionEncoder
from ..models.encoders.vit import VisionTransformer
from .distill import freeze_batchnorm, train_step
from .fidelity import logits_fn
from .quantize import GRID_ENCODERS, classifier_head


def _check_amount(amount: float) -> float:
    if not 0.0 <= float(amount) < 1.0:
        raise ConfigError(f"pruning amount must be in [0, 1), got {amount}")
    return float(amount)


def prunable_layers(model: nn.Module) -> List[nn.Module]:
    """Every Conv2d and Linear layer of ``model``."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """A copy of ``model`` with ``amount`` of each conv/linear weight set to zero (L1).

    Uses ``torch.nn.utils.prune.l1_unstructured`` per layer and makes it
    permanent with ``prune.remove`` (plain ``weight`` tensors, no masks or
    hooks left). This gives NO speed-up and no smaller state dict: dense
    kernels compute with the zeros. Use :func:`prune_structured` for speed.
    """
    amount = _check_amount(amount)
    pruned = copy.deepcopy(model)
    for layer in prunable_layers(pruned):
        torch_prune.l1_unstructured(layer, name="weight", amount=amount)
        torch_prune.remove(layer, "weight")
    pruned.compression = "prune_unstructured"
    return pruned


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero entries over all conv/linear weights."""
    zeros = total = 0
    for layer in prunable_layers(model):
        zeros += int((layer.weight == 0).sum())
        total += layer.weight.numel()
    return zeros / total if total else 0.0


def default_ignored_layers(model: VisionEncoder) -> List[nn.Module]:
    """Layers whose output channels structured pruning must keep.

    The last convolution (its channels are the published feature width; the
    dependency graph then also keeps every layer tied to it, e.g. ResNet's last
    residual chain), the projection ``proj`` and the classifier.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1:] + _weight_layers(getattr(model, "proj", None), classifier_head(model))


def _weight_layers(*modules: Optional[nn.Module]) -> List[nn.Module]:
    """Every Linear and Conv2d inside ``modules`` (None entries skipped)."""
    return [m for module in modules if module is not None for m in module.modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))]


def vit_pruning_plan(model: VisionTransformer) -> Tuple[List[nn.Module], Dict[nn.Module, int]]:
    """``(ignored layers, {qkv: num_heads})`` for structured pruning of a ViT.

    Kept whole: every layer writing the residual stream (patch embedding,
    attention output projection, MLP ``fc2``) and the classifier/projection, so
    only the head dimensions (through ``qkv``, head by head) and the MLP hidden
    units shrink; ``Attention`` takes its head width from ``qkv``.
    """
    ignored: List[nn.Module] = [model.patch_embed.proj]
    for block in model.blocks:
        ignored += [block.attn.proj, block.mlp.fc2]
    ignored += _weight_layers(model.head, model.proj)
    return ignored, {block.attn.qkv: block.attn.num_heads for block in model.blocks}


def _import_torch_pruning():
    try:
        import torch_pruning
    except ImportError as exc:
        raise ConfigError("structured pruning needs the package torch-pruning "
                          "(pip install torch-pruning==1.6.1)") from exc
    return torch_pruning


def prune_structured(model: VisionEncoder, amount: float, example_input: torch.Tensor,
                     ignored_layers: Optional[Sequence[nn.Module]] = None,
                     round_to: Optional[int] = 8) -> VisionEncoder:
    """A copy of ``model`` with ``amount`` of the channels of each prunable conv group removed.

    L1-magnitude importance per channel group (torch-pruning's
    ``MagnitudeImportance(p=1)``), the same ratio for every group. Kept whole:
    the layers of :func:`default_ignored_layers` (output width, projection,
    classifier) plus ``ignored_layers`` (modules of the *input* model). The
    result is a genuinely smaller model with the same ``forward``/``encode``/
    ``logits`` and output width. ``round_to`` keeps channel counts multiples
    of 8 (SIMD-friendly: odd widths can make oneDNN slower than the unpruned
    model); ``None`` prunes the exact fraction. Grid CNN encoders lose
    channels; a ViT (:func:`vit_pruning_plan`) loses ``amount`` of each head's
    dimensions and of each MLP's hidden units.
    """
    amount = _check_amount(amount)
    is_vit = isinstance(model, VisionTransformer)
    if not (is_vit or isinstance(model, GRID_ENCODERS)):
        raise ConfigError(f"structured pruning supports the CNN encoders "
                          f"({', '.join(t.__name__ for t in GRID_ENCODERS)}) and "
                          f"VisionTransformer, not {type(model).__name__} "
                          f"'{getattr(model, 'name', '')}'")
    tp = _import_torch_pruning()
    # Map the caller's modules onto the copy by name before copying.
    names = {id(m): n for n, m in model.named_modules()}
    extra = [names[id(m)] for m in (ignored_layers or ()) if id(m) in names]
    pruned = copy.deepcopy(model).cpu().eval()
    modules = dict(pruned.named_modules())
    head_options: Dict[str, object] = {}
    if is_vit:
        ignored, num_heads = vit_pruning_plan(pruned)
        head_options = {"num_heads": num_heads, "prune_head_dims": True,
                        "prune_num_heads": False,
                        # channel dim of the token parameters (the residual width: kept)
                        "unwrapped_parameters": [(pruned.cls_token, 2), (pruned.pos_embed, 2)]}
    else:
        ignored = default_ignored_layers(pruned)
    ignored = ignored + [modules[n] for n in extra]
    has_logits = logits_fn(pruned) is not None

    def forward_fn(net: nn.Module, x: torch.Tensor):
        # Trace the classifier too, so its input width follows the pruned channels.
        return (net(x), net.logits(x)) if has_logits else net(x)

    width = pruned.output_dim
    try:
        pruner = tp.pruner.MetaPruner(
            pruned, example_input, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=amount, ignored_layers=ignored, global_pruning=False,
            forward_fn=forward_fn, round_to=round_to, **head_options)
        pruner.step()
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:
        raise ModelError(f"structured pruning of '{pruned.name}' failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    with torch.no_grad():
        out = pruned(example_input)
    if out.shape[-1] != width:
        raise ModelError(f"structured pruning changed the output width of '{pruned.name}' "
                         f"from {width} to {out.shape[-1]}")
    pruned.compression = f"prune_structured_{amount:g}"
    return pruned


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (packed INT8 weights counted as their element count)."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        weight_fn = getattr(module, "weight", None)
        if callable(weight_fn) and "quantized" in type(module).__module__:
            count += weight_fn().numel()
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            count += bias.numel() if bias is not None else 0
    return count


def finetune_distill(student: nn.Module, teacher: nn.Module, frames: torch.Tensor,
                     steps: int = 100, lr: float = 1e-4, batch: int = 8,
                     seed: int = 0) -> nn.Module:
    """Short feature-matching fine-tune of ``student`` (in place) towards ``teacher``.

    Random mini-batches of the normalised calibration ``frames`` with random
    horizontal flips; loss as in :func:`~robot_vision_ros.compression.distill.distillation_loss`
    (features, plus KL on logits when both classify). BatchNorm statistics are
    frozen. Returns ``student`` in eval mode.
    """
    if steps < 0 or lr <= 0 or batch < 1:
        raise ConfigError(f"finetune needs steps >= 0, lr > 0, batch >= 1; got {steps}, "
                          f"{lr}, {batch}")
    if len(frames) == 0:
        raise ConfigError("finetune_distill needs at least one frame")
    rng = random.Random(seed)
    teacher.eval()
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    student.train()
    freeze_batchnorm(student)
    for _ in range(steps):
        index = [rng.randrange(len(frames)) for _ in range(min(batch, len(frames)))]
        images = frames[index]
        if rng.random() < 0.5:
            images = images.flip(-1)
        train_step(student, teacher, images, optimizer)
    return student.eval()
