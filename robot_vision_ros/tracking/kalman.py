"""Constant-velocity Kalman filter on boxes, batched over many tracks.

State per track: ``[cx, cy, w, h, vcx, vcy, vw, vh]`` (box centre and size in
pixels, velocities in pixels per nominal frame), as in BoT-SORT. The time unit
is one nominal frame so that ByteTrack's noise weights, tuned per frame, apply
unchanged; ``dt_frames`` may be fractional or larger than one, and the process
noise grows linearly with it, so predicting across skipped frames or irregular
stamps gives the same covariance growth as predicting frame by frame.

Written here rather than taken from filterpy because that filter handles one
track at a time: the tracker predicts and corrects all tracks with a few
batched numpy calls (``mean [N, 8]``, ``covariance [N, 8, 8]``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

STATE_DIM = 8
MEASURE_DIM = 4
_MIN_SIZE_PX = 1.0  # floor on w, h where they scale noise, so a shrunk box keeps some


def xyxy_to_cxcywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """``[N, 4]`` corner boxes to centre-size boxes (float64)."""
    b = np.asarray(boxes_xyxy, dtype=np.float64)
    out = np.empty_like(b)
    out[:, 0] = (b[:, 0] + b[:, 2]) * 0.5
    out[:, 1] = (b[:, 1] + b[:, 3]) * 0.5
    out[:, 2] = b[:, 2] - b[:, 0]
    out[:, 3] = b[:, 3] - b[:, 1]
    return out


def cxcywh_to_xyxy(boxes_cxcywh: np.ndarray) -> np.ndarray:
    """``[N, 4]`` centre-size boxes to corner boxes; sizes floored at 0."""
    b = np.asarray(boxes_cxcywh, dtype=np.float64)
    half_w = np.maximum(b[:, 2], 0.0) * 0.5
    half_h = np.maximum(b[:, 3], 0.0) * 0.5
    return np.stack((b[:, 0] - half_w, b[:, 1] - half_h,
                     b[:, 0] + half_w, b[:, 1] + half_h), axis=1)


class ConstantVelocityKalman:
    """Batched Kalman filter with size-proportional noise (ByteTrack tuning).

    ``std_weight_position`` and ``std_weight_velocity`` scale the noise standard
    deviations with the box width/height, so large (near) objects may move
    more pixels than small (far) ones.
    """

    def __init__(self, std_weight_position: float = 1.0 / 20,
                 std_weight_velocity: float = 1.0 / 160) -> None:
        self.std_weight_position = float(std_weight_position)
        self.std_weight_velocity = float(std_weight_velocity)

    def initiate(self, boxes_cxcywh: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """New tracks from measurements: zero velocity, wide velocity prior."""
        z = np.asarray(boxes_cxcywh, dtype=np.float64)
        mean = np.zeros((len(z), STATE_DIM))
        mean[:, :MEASURE_DIM] = z
        wh = self._sizes(z)
        std = np.concatenate((2.0 * self.std_weight_position * wh,
                              10.0 * self.std_weight_velocity * wh), axis=1)
        return mean, _diag(std ** 2)

    def predict(self, mean: np.ndarray, covariance: np.ndarray,
                dt_frames: float) -> Tuple[np.ndarray, np.ndarray]:
        """Advance all tracks by ``dt_frames`` nominal frames (>= 0)."""
        new_mean = mean.copy()
        new_mean[:, :MEASURE_DIM] += dt_frames * mean[:, MEASURE_DIM:]
        # F P F^T for F = [[I, dt I], [0, I]] written out block-wise: cheaper than
        # two batched 8x8 matmuls and exact.
        p = covariance
        pxx, pxv = p[:, :4, :4], p[:, :4, 4:]
        pvx, pvv = p[:, 4:, :4], p[:, 4:, 4:]
        new_cov = np.empty_like(p)
        new_cov[:, :4, :4] = pxx + dt_frames * (pxv + pvx) + dt_frames ** 2 * pvv
        new_cov[:, :4, 4:] = pxv + dt_frames * pvv
        new_cov[:, 4:, :4] = pvx + dt_frames * pvv
        new_cov[:, 4:, 4:] = pvv
        wh = self._sizes(mean[:, :MEASURE_DIM])
        q_var = np.concatenate(((self.std_weight_position * wh) ** 2,
                                (self.std_weight_velocity * wh) ** 2), axis=1)
        idx = np.arange(STATE_DIM)
        new_cov[:, idx, idx] += dt_frames * q_var
        return new_mean, new_cov

    def update(self, mean: np.ndarray, covariance: np.ndarray,
               boxes_cxcywh: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Correct each track ``i`` with measurement ``boxes_cxcywh[i]``."""
        z = np.asarray(boxes_cxcywh, dtype=np.float64)
        r_var = (self.std_weight_position * self._sizes(mean[:, :MEASURE_DIM])) ** 2
        s = covariance[:, :4, :4].copy()  # H P H^T + R with H = [I 0]
        idx = np.arange(MEASURE_DIM)
        s[:, idx, idx] += r_var
        pht = covariance[:, :, :4]  # P H^T, [N, 8, 4]
        # K = P H^T S^-1; S is symmetric so solve S K^T = (P H^T)^T.
        gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)
        innovation = z - mean[:, :MEASURE_DIM]
        new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
        new_cov = covariance - gain @ s @ gain.transpose(0, 2, 1)
        return new_mean, new_cov

    @staticmethod
    def _sizes(boxes_cxcywh: np.ndarray) -> np.ndarray:
        """``[N, 4]`` of ``(w, h, w, h)`` floored, the scale of each noise term."""
        wh = np.maximum(np.abs(boxes_cxcywh[:, 2:4]), _MIN_SIZE_PX)
        return np.concatenate((wh, wh), axis=1)


def _diag(variances: np.ndarray) -> np.ndarray:
    """``[N, D]`` variances to ``[N, D, D]`` diagonal covariances."""
    n, d = variances.shape
    out = np.zeros((n, d, d))
    idx = np.arange(d)
    out[:, idx, idx] = variances
    return out
