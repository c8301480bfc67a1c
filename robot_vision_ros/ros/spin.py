"""Spin a node until a condition holds or for a while (tools and tests that listen)."""
from __future__ import annotations

import time
from typing import Callable

import rclpy
from rclpy.node import Node


def spin_until(node: Node, condition: Callable[[], bool], timeout_s: float,
               step_s: float = 0.05) -> bool:
    """Spin ``node`` until ``condition()`` is true (returns True) or ``timeout_s`` passes."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        rclpy.spin_once(node, timeout_sec=step_s)
    return condition()


def spin_for(node: Node, seconds: float, step_s: float = 0.05) -> None:
    """Spin ``node`` for ``seconds``."""
    spin_until(node, lambda: False, seconds, step_s)
