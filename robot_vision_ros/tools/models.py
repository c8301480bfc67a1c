"""List the model zoo: ``python -m robot_vision_ros.tools.models [--kind encoder|depth|detector]``."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..models.registry import list_models


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("encoder", "depth", "detector"), default=None,
                        help="only this kind (default: all)")
    args = parser.parse_args(argv)
    for kind in ([args.kind] if args.kind else ["encoder", "depth", "detector"]):
        print(f"{kind}: {', '.join(list_models(kind))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
