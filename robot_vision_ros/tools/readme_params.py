"""Refresh the parameter table between the README's ``params`` markers."""
import re
import sys
from pathlib import Path

from ..core.config import render_markdown

START, END = "<!-- params:start -->", "<!-- params:end -->"


def refresh(text: str) -> str:
    """``text`` with the generated table between the markers."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{render_markdown()}{END}", text)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(refresh(path.read_text()))
