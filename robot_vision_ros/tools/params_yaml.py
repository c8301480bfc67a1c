"""Print the params file (``config/vision.yaml``) or, with ``--markdown``, the README's
parameter table, both generated from the parameter table in ``core/config.py``."""
import sys

from ..core.config import render_markdown, render_yaml

if __name__ == "__main__":
    sys.stdout.write(render_markdown() if "--markdown" in sys.argv[1:] else render_yaml())
