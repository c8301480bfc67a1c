"""Print the params file generated from the parameter table (config/vision.yaml)."""
import sys

from ..core.config import render_yaml

if __name__ == "__main__":
    sys.stdout.write(render_yaml())
