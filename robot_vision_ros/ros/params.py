"""Declare the node's ROS parameters from the core's single parameter table."""
from __future__ import annotations

from typing import Any, Dict, List

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node

from ..core.config import PARAMETERS, ParamSpec


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """ParameterDescriptor with description, choices and numeric range."""
    text = spec.description
    if spec.choices:
        text += f" One of: {', '.join(map(str, spec.choices))}."
    if not spec.dynamic:
        text += " Changes take effect on the next lifecycle configure."
    desc = ParameterDescriptor(description=text)
    if isinstance(spec.default, bool):
        return desc
    if isinstance(spec.default, int) and spec.min is not None and spec.max is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max),
                                           step=1)]
    elif isinstance(spec.default, float) and spec.min is not None and spec.max is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min),
                                                        to_value=float(spec.max), step=0.0)]
    return desc


def declare_all(node: Node) -> List[str]:
    """Declare every parameter; return the reasons of overrides that were refused.

    A params-file value of the wrong type or out of range would make rclpy
    raise in the constructor; instead the default is kept and the reason is
    returned, so the node can report it and fail its configure transition.
    """
    errors: List[str] = []
    for spec in PARAMETERS:
        try:
            node.declare_parameter(spec.name, spec.default, descriptor(spec))
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            errors.append(f"{spec.name}: {exc}")
            node.declare_parameter(spec.name, spec.default, descriptor(spec),
                                   ignore_override=True)
    return errors


def read_all(node: Node) -> Dict[str, Any]:
    """Current values as ``{name: python value}`` (arrays as lists)."""
    values: Dict[str, Any] = {}
    for spec in PARAMETERS:
        value = node.get_parameter(spec.name).value
        if isinstance(spec.default, list):
            value = list(value) if value is not None else []
        values[spec.name] = value
    return values
