"""Load encoder weights from a local file or the local torch cache, never the web.

``load_weights(model, spec)`` understands three specs:

* ``""``: keep the random initialisation (nothing is loaded);
* ``"imagenet"``: torchvision's ImageNet file for the model, looked up in
  ``torch.hub.get_dir()/checkpoints`` (which honours ``$TORCH_HOME``) under the
  file name of the torchvision weights URL; a missing file is a
  :class:`WeightsError` naming the path and the URL to fetch it from;
* a file path: a raw state dict or a checkpoint dict holding it under
  ``state_dict``, ``model`` or ``encoder``, read with ``weights_only=True`` so a
  file cannot run code.

A state dict is loaded into the whole encoder when its keys fit the encoder
(a checkpoint saved from this package), otherwise into the encoder's
``backbone`` submodule (torchvision layout). Models may define
``convert_state_dict(state_dict)`` to rename foreign layouts first (the ViT maps
torchvision's names to timm's).
"""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from ..core.errors import WeightsError

LOG = logging.getLogger(__name__)

#: Keys a file may lack without being incomplete: the projection this package
#: adds and a classifier head (feature-only checkpoints drop it).
OPTIONAL_PREFIXES: Tuple[str, ...] = ("proj.", "head.")
#: Checkpoint dict entries that may hold the state dict.
CHECKPOINT_KEYS: Tuple[str, ...] = ("state_dict", "model", "encoder")

# What torch.load raises for a file that is not a weights file (not a zip or
# pickle, truncated, or a pickle naming a global outside the weights_only allowlist).
_LOAD_ERRORS = (OSError, RuntimeError, EOFError, ValueError, TypeError,
                AttributeError, ImportError, IndexError, KeyError, zipfile.BadZipFile,
                UnicodeDecodeError)


@dataclass
class LoadReport:
    """What ``load_weights`` did: where the weights came from and which keys did not fit.

    ``missing_keys``: model parameters/buffers left at their initial values
    (names relative to the whole encoder). ``unexpected_keys``: file entries the
    model has no place for (only non-empty when loading with ``strict=False``).
    ``target``: ``"encoder"``, ``"backbone"`` or ``""`` when nothing was loaded.
    """

    source: str
    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    target: str = ""


def torch_cache_path(url: str) -> Path:
    """Where the local torch cache (``$TORCH_HOME/hub/checkpoints``) keeps the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def load_checkpoint(path: Path, what: str, how_to_get: str) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure as a WeightsError.

    ``what`` names the file in messages; ``how_to_get`` says how to obtain it
    when it is missing. Only tensors and plain containers load: a file that
    would run code when unpickled is refused, never opened another way.
    """
    if not path.is_file():
        raise WeightsError(f"{what} file {path} does not exist; {how_to_get}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        detail = detail.split(" Please use")[0]
        raise WeightsError(f"{path} is not a weights file that loads safely: "
                           f"torch.load(weights_only=True) refused it ({detail[:200]}). A file "
                           f"holding objects other than tensors could run code when loaded, so "
                           f"it is not opened any other way; re-save the plain state dict with "
                           f"torch.save(model.state_dict(), path)") from exc
    except _LOAD_ERRORS as exc:
        raise WeightsError(f"{path} is not a weights file torch.load can read "
                           f"({type(exc).__name__}: {str(exc)[:200]})") from exc


def imagenet_weights_path(model: nn.Module) -> Path:
    """Local path of the torchvision ImageNet file for ``model`` (first existing candidate).

    Candidates are the files of every ImageNet entry of the model's torchvision
    ``Weights`` enum (``model.imagenet_weights``), ``IMAGENET1K_V1`` first.
    Raises WeightsError naming the expected path and its URL when none exists.
    """
    weights_enum = getattr(model, "imagenet_weights", None)
    name = getattr(model, "name", "") or type(model).__name__
    if weights_enum is None:
        raise WeightsError(
            f"torchvision has no ImageNet weights for '{name}'; give a weights file path "
            f"instead (for a ViT, a timm checkpoint file of the same model, e.g. "
            f"vit_small_patch16_224's for vit_small)")
    members = sorted(weights_enum, key=lambda w: w.name != "IMAGENET1K_V1")
    for member in members:
        path = torch_cache_path(member.url)
        if path.is_file():
            return path
    preferred = members[0]
    expected = torch_cache_path(preferred.url)
    raise WeightsError(
        f"ImageNet weights for '{name}' not found: expected {expected} "
        f"(set TORCH_HOME to change the cache folder). On a machine with network, "
        f"download {preferred.url} and copy it there, or give the file path as the "
        f"weights parameter instead")


def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Tensors of a weights file, unwrapped from a checkpoint dict, ``module.`` stripped."""
    obj: Any = load_checkpoint(
        path, "weights",
        "give the path of a state dict saved with torch.save (for example a torchvision or "
        "timm checkpoint copied from a machine with network), 'imagenet' for the torch "
        "cache, or '' for random init")
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path} holds no state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsError(f"{path} is not a state dict: entries {bad[:5]} are not "
                           f"name -> tensor")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def _choose_target(model: nn.Module, state: Mapping[str, torch.Tensor]
                   ) -> Tuple[str, nn.Module]:
    """The encoder itself or its ``backbone``, whichever shares more keys with ``state``."""
    own = set(model.state_dict())
    score_model = sum(k in own for k in state)
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        backbone_keys = set(backbone.state_dict())
        score_backbone = sum(k in backbone_keys for k in state)
        if score_backbone > score_model:
            return "backbone", backbone
    return "encoder", model


def load_state_dict_into(model: nn.Module, state: Mapping[str, torch.Tensor],
                         source: str, strict: bool = True) -> LoadReport:
    """Load ``state`` into ``model`` (or its backbone) and report what did not fit.

    Shape mismatches are always a WeightsError. With ``strict`` (default),
    unexpected keys and missing keys of the loaded part are too, except the
    projection/head keys (``OPTIONAL_PREFIXES``) and keys outside the backbone
    when a torchvision-layout file is loaded into it; those are reported.
    """
    convert = getattr(model, "convert_state_dict", None)
    if callable(convert):
        state = convert(dict(state))
    target_name, target = _choose_target(model, state)
    prefix = "" if target is model else "backbone."
    expected = target.state_dict()
    if not any(k in expected for k in state):
        sample = ", ".join(list(state)[:3])
        raise WeightsError(f"{source}: none of its {len(state)} keys (e.g. {sample}) fit "
                           f"'{getattr(model, 'name', '') or type(model).__name__}'")
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if mismatched:
        raise WeightsError(f"{source}: shapes do not fit the model for "
                           f"{len(mismatched)} keys: " + "; ".join(mismatched[:20]))
    # Checked before loading so a refused file leaves the model untouched.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    fatal_missing = [k for k in missing if not k.startswith(OPTIONAL_PREFIXES)]
    if strict and (unexpected or fatal_missing):
        raise WeightsError(f"{source} does not fit the model's {target_name} "
                           f"(strict): missing {fatal_missing[:20]}, unexpected "
                           f"{unexpected[:20]}; pass strict=False to load it anyway")
    target.load_state_dict(state, strict=False)
    missing = [prefix + k for k in missing]
    if prefix:
        missing += [k for k in model.state_dict()
                    if not k.startswith(prefix) and not k.endswith("num_batches_tracked")]
    report = LoadReport(source=source, missing_keys=missing, unexpected_keys=unexpected,
                        target=target_name)
    _log_report(model, report)
    return report


def _log_report(model: nn.Module, report: LoadReport) -> None:
    name = getattr(model, "name", "") or type(model).__name__
    LOG.info("loaded %s into %s of %s", report.source, report.target, name)
    if report.missing_keys:
        LOG.warning("%s: %d keys not in %s keep their initial values: %s", name,
                    len(report.missing_keys), report.source, report.missing_keys)
    if report.unexpected_keys:
        LOG.warning("%s: %d keys of %s were not used: %s", name,
                    len(report.unexpected_keys), report.source, report.unexpected_keys)


def load_weights(model: nn.Module, spec: Union[str, "os.PathLike[str]", None],
                 strict: bool = True) -> LoadReport:
    """Load ``spec`` (``""``, ``"imagenet"`` or a file path) into ``model``.

    Raises WeightsError for a missing or invalid file, shapes that do not fit,
    or (with ``strict``) keys that do not fit; see :func:`load_state_dict_into`.
    """
    if not spec:
        return LoadReport(source="random init")
    if spec == "imagenet":
        path = imagenet_weights_path(model)
    else:
        path = Path(os.fspath(spec)).expanduser()
    state = read_state_dict(path)
    with torch.no_grad():
        return load_state_dict_into(model, state, source=str(path), strict=strict)
