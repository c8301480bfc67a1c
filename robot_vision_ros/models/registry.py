"""One registry and factory for every model kind (encoders, depth, detectors).

Models register a factory function under a name at import time, like
torchvision's ``get_model`` or timm's ``create_model``; ``create_model``
rejects unknown names with the list of known ones.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

from ..core.errors import UnknownModelError

Factory = Callable[..., Any]


class Registry:
    """Name -> factory map for one kind of model."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: Dict[str, Factory] = {}

    def register(self, name: str) -> Callable[[Factory], Factory]:
        """Decorator that registers ``factory`` under ``name`` (unique)."""

        def decorator(factory: Factory) -> Factory:
            if name in self._factories:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> List[str]:
        """Sorted list of registered names."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the model registered as ``name`` with ``kwargs``."""
        try:
            factory = self._factories[name]
        except KeyError:
            raise UnknownModelError(
                f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}"
            ) from None
        return factory(**kwargs)


ENCODERS = Registry("encoder")
DEPTH_MODELS = Registry("depth model")
DETECTORS = Registry("detector")

_KINDS = {"encoder": ENCODERS, "depth": DEPTH_MODELS, "detector": DETECTORS}


def _ensure_loaded() -> None:
    # Importing the subpackages runs their @register decorators.
    from . import depth, detection, encoders  # noqa: F401


def create_model(name: str, kind: str = "encoder", **kwargs: Any) -> Any:
    """Create a registered model: ``create_model('resnet18', output_dim=0)``."""
    _ensure_loaded()
    if kind not in _KINDS:
        raise UnknownModelError(f"unknown model kind '{kind}'; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind].create(name, **kwargs)


def list_models(kind: str = "encoder") -> List[str]:
    """Names registered for ``kind`` ('encoder', 'depth' or 'detector')."""
    _ensure_loaded()
    if kind not in _KINDS:
        raise UnknownModelError(f"unknown model kind '{kind}'; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind].names()
