"""Multi-object tracking: Kalman filter, assignment and the ByteTrack tracker."""
from .assignment import iou_matrix, linear_assignment
from .config import TrackerConfig
from .kalman import ConstantVelocityKalman, cxcywh_to_xyxy, xyxy_to_cxcywh
from .tracker import Tracker

__all__ = ["ConstantVelocityKalman", "Tracker", "TrackerConfig", "cxcywh_to_xyxy",
           "iou_matrix", "linear_assignment", "xyxy_to_cxcywh"]
