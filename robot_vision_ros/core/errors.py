"""Exceptions raised by the ROS-free core.

The ROS edge (``robot_vision_ros/ros``) turns these into a log line, a counted
drop or a lifecycle failure; nothing below it should catch them silently.
"""


class VisionError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(VisionError, ValueError):
    """A parameter or constructor argument is invalid; the message says why."""


class UnknownModelError(ConfigError, KeyError):
    """A model name is not in the registry; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(VisionError):
    """A weights file is missing, unreadable or does not fit the model."""


class InputError(VisionError):
    """One input frame cannot be used (bad encoding, truncated data, ...).

    ``reason`` is a short machine-readable tag used to count drops by cause.
    """

    def __init__(self, message: str, reason: str = "bad_input") -> None:
        super().__init__(message)
        self.reason = reason


class ModelError(VisionError):
    """A model failed to build or run (for example CUDA out of memory)."""
