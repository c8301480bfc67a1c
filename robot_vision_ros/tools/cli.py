"""What the command-line tools share: running the work with exit statuses by error kind."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Tuple, TypeVar

from ..core.errors import ConfigError, VisionError

T = TypeVar("T")


def run_guarded(prog: str, work: Callable[[], T]) -> Tuple[int, Optional[T]]:
    """``(0, result)``; a ConfigError (bad options or inputs) prints ``prog: error: ...``
    and gives ``(2, None)``, any other VisionError ``(1, None)``."""
    try:
        return 0, work()
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2, None
    except VisionError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1, None
