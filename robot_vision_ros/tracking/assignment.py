"""Box overlap and gated optimal assignment for track-detection matching."""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

# Stands in for "not allowed" so linear_sum_assignment still sees a finite matrix
# (it rejects inf when no complete assignment avoids it). Any real cost is <= 1.
_INFEASIBLE_COST = 1e6


def iou_matrix(boxes_a_xyxy: np.ndarray, boxes_b_xyxy: np.ndarray) -> np.ndarray:
    """``[A, B]`` intersection-over-union of two sets of xyxy boxes.

    numpy instead of ``torchvision.ops.box_iou``: the tracker works on numpy
    arrays of tens of boxes, where converting to tensors costs more than the maths.
    Zero-area pairs give 0, not NaN.
    """
    a = np.asarray(boxes_a_xyxy, dtype=np.float64)
    b = np.asarray(boxes_b_xyxy, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def linear_assignment(cost: np.ndarray, max_cost: float
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one matching that only accepts pairs with ``cost <= max_cost``.

    Returns ``matches [K, 2]`` (row, col), ``unmatched_rows`` and
    ``unmatched_cols`` (int64 index arrays, ascending). Pairs above
    ``max_cost`` (or NaN / inf, e.g. a class gate) are made infeasible before
    solving, so the solver never spends a row on a forbidden pair while a
    permitted one exists.
    """
    cost = np.asarray(cost, dtype=np.float64)
    n_rows, n_cols = cost.shape
    if n_rows == 0 or n_cols == 0:
        return (np.zeros((0, 2), np.int64), np.arange(n_rows, dtype=np.int64),
                np.arange(n_cols, dtype=np.int64))
    allowed = cost <= max_cost  # False for NaN as well
    rows, cols = linear_sum_assignment(np.where(allowed, cost, _INFEASIBLE_COST))
    keep = allowed[rows, cols]
    rows, cols = rows[keep], cols[keep]
    unmatched_rows = np.ones(n_rows, bool)
    unmatched_rows[rows] = False
    unmatched_cols = np.ones(n_cols, bool)
    unmatched_cols[cols] = False
    return (np.stack((rows, cols), axis=1).astype(np.int64),
            np.flatnonzero(unmatched_rows), np.flatnonzero(unmatched_cols))
