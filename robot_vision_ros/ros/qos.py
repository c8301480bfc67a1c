"""QoS profiles of the node's subscriptions and publishers."""
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)

_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT,
                "reliable": ReliabilityPolicy.RELIABLE}


def keep_last(reliability: str, depth: int) -> QoSProfile:
    """Keep-last, volatile QoS with the given reliability name and depth."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=_RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)
