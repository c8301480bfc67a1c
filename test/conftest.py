"""Shared pytest fixtures: where the real test assets live."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    """``$ROBOT_VISION_ASSETS`` or ``../shared/assets`` beside the repository."""
    env = os.environ.get("ROBOT_VISION_ASSETS")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "assets"


def asset_path(name: str) -> Path:
    """Path of a real asset, or skip the test naming the missing file."""
    path = assets_dir() / name
    if not path.is_file():
        pytest.skip(f"test asset {path} is missing (set ROBOT_VISION_ASSETS to the folder "
                    f"holding {name}; see ../shared/assets/README.md)")
    return path


@pytest.fixture
def asset():
    """Fixture form of :func:`asset_path`: ``asset('vtest.avi')``."""
    return asset_path


def _isolate_ros() -> None:
    """One DDS domain per test run, discovery on this host only, the large-data profile."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE",
                          str(REPO_ROOT / "config" / "fastdds_large_data.xml"))
    os.environ.setdefault("ROS_HOME", str(REPO_ROOT / "build" / "ros_home"))
    os.environ.setdefault("ROS_LOG_DIR", str(Path(os.environ["ROS_HOME"]) / "log"))


_isolate_ros()
