"""Fuse a network's depth prediction with the aligned sensor depth (numpy, ROS-free).

* :func:`clean_sensor_depth`: sensor metres with NaN where the sensor has no
  reading (0, NaN, inf, outside the sensor's range). The ``sensor`` depth model
  of the node publishes exactly this.
* :func:`fit_scale_shift`: robust ``scale * pred + shift`` alignment of a
  prediction to the valid sensor pixels, in depth or disparity space.
* :func:`fuse_depth`: sensor pixels where valid, holes filled with the aligned
  prediction.
* :func:`fill_nearest`: holes take the nearest valid pixel's depth (optionally
  only up to a distance); :func:`nearest_fill` cleans a raw sensor image first
  (the sensor-only baseline).
* :func:`depth_metrics`: AbsRel, RMSE and delta < 1.25 for benchmarks.

Every depth here is float metres; 16UC1 millimetres are converted at the ROS edge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
from scipy import ndimage

from .errors import ConfigError, InputError

OUTPUT_KINDS = ("metric", "relative_depth", "relative_disparity")
FIT_SPACES = ("depth", "disparity")

# Aligned disparities at or below this are "infinitely far": unknown, not 1e9 metres.
_MIN_DISPARITY = 1e-6


@dataclass(frozen=True)
class ScaleShiftFit:
    """``aligned = scale * pred + shift`` in ``space`` ('depth' or 'disparity').

    ``residual_m``: RMS difference in metres between the aligned prediction and
    the sensor on the inliers. ``inlier_fraction``: inliers among the valid
    pixels used for the fit. ``n_valid``: valid sensor pixels seen. ``valid``
    is False (with ``reason``) when the fit must not be used.
    """

    scale: float
    shift: float
    residual_m: float
    inlier_fraction: float
    n_valid: int
    space: str = "depth"
    valid: bool = True
    reason: str = ""

    def apply(self, pred: np.ndarray) -> np.ndarray:
        """Aligned depth in metres (float32), NaN where it is not positive or finite."""
        return self.aligned_depth(pred).astype(np.float32)

    def aligned_depth(self, pred: np.ndarray) -> np.ndarray:
        """:meth:`apply` in float64."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            aligned = self.scale * np.asarray(pred, dtype=np.float64) + self.shift
            if self.space == "disparity":
                depth = np.where(aligned > _MIN_DISPARITY, 1.0 / aligned, np.nan)
            else:
                depth = np.where(aligned > 0, aligned, np.nan)
        depth[~np.isfinite(depth)] = np.nan
        return depth


@dataclass(frozen=True)
class FusedDepth:
    """Depth in metres ``[H, W]`` float32 (NaN = unknown) and how it was made.

    ``source``: 'fused' (sensor + aligned prediction), 'network' (prediction
    only) or 'sensor' (cleaned sensor depth only).
    """

    depth_m: np.ndarray
    fit: Optional[ScaleShiftFit]
    source: str


def _as_2d(name: str, array: object) -> np.ndarray:
    """``array`` as a 2-D float array; leading singleton axes ([1,1,H,W]) are dropped."""
    arr = np.asarray(array)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"{name} must be a non-empty [H, W] array, got shape "
                         f"{np.shape(array)}", reason="bad_size")
    if arr.dtype.kind != "f":
        raise InputError(f"{name} must be floating point metres, got {arr.dtype} "
                         f"(convert 16UC1 millimetres with / 1000 first)", reason="bad_dtype")
    return arr


def _same_shape(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise InputError(f"{a_name} {a.shape} and {b_name} {b.shape} differ in shape "
                         f"(resize the prediction to the sensor image first)", reason="bad_size")


def clean_sensor_depth(sensor_depth_m: np.ndarray, min_depth_m: float = 0.0,
                       max_depth_m: float = math.inf) -> np.ndarray:
    """Float32 metres with NaN where there is no usable reading.

    Unusable: NaN, +-inf, <= 0 (the REP-118 "no return" value) and outside
    ``[min_depth_m, max_depth_m]``.
    """
    depth = _as_2d("sensor_depth_m", sensor_depth_m).astype(np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(depth) | (depth <= 0) | (depth < min_depth_m) | (depth > max_depth_m)
    depth[bad] = np.nan
    return depth


def _weighted_line_fit(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(scale, shift) minimising sum(((scale * p + shift - y) / y)^2): relative residuals.

    Relative weighting matches the relative inlier test and AbsRel, and keeps
    far pixels from dominating; 2x2 normal equations, since lstsq on [N, 2] is
    slower and the system is well conditioned for positive y.
    """
    a = p / y
    b = 1.0 / y
    a11, a12, a22 = float(a @ a), float(a @ b), float(b @ b)
    r1, r2 = float(a.sum()), float(b.sum())
    det = a11 * a22 - a12 * a12
    if not math.isfinite(det) or abs(det) <= 1e-12 * max(a11 * a22, 1e-300):
        return math.nan, math.nan
    return (a22 * r1 - a12 * r2) / det, (a11 * r2 - a12 * r1) / det


def _ransac_line(p: np.ndarray, y: np.ndarray, threshold: float, n_hypotheses: int,
                 max_eval_points: int, rng: np.random.Generator) -> tuple[float, float]:
    """Best (scale, shift) by inlier count over 2-point hypotheses, scored in one array op."""
    n = p.size
    pairs = rng.integers(0, n, size=(n_hypotheses, 2))
    p1, p2 = p[pairs[:, 0]], p[pairs[:, 1]]
    y1, y2 = y[pairs[:, 0]], y[pairs[:, 1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (y1 - y2) / (p1 - p2)
        shift = y1 - scale * p1
    # The plain fit on every point is one more hypothesis: exact on clean data.
    ls_scale, ls_shift = _weighted_line_fit(p, y)
    scale = np.append(scale, ls_scale)
    shift = np.append(shift, ls_shift)
    usable = np.isfinite(scale) & np.isfinite(shift) & (scale > 0)
    if not usable.any():
        return math.nan, math.nan
    scale, shift = scale[usable], shift[usable]
    idx = rng.choice(n, size=min(n, max_eval_points), replace=False)
    pe, ye = p[idx], y[idx]
    residual = np.abs(scale[:, None] * pe[None, :] + shift[:, None] - ye[None, :])
    counts = (residual <= threshold * ye[None, :]).sum(axis=1)
    best = int(np.argmax(counts))
    return float(scale[best]), float(shift[best])


def _invalid_fit(n_valid: int, space: str, reason: str) -> ScaleShiftFit:
    return ScaleShiftFit(scale=math.nan, shift=math.nan, residual_m=math.nan,
                         inlier_fraction=0.0, n_valid=n_valid, space=space, valid=False,
                         reason=reason)


def fit_scale_shift(pred: np.ndarray, sensor_depth_m: np.ndarray,
                    valid_mask: Optional[np.ndarray] = None, space: str = "depth",
                    max_iters: int = 10, inlier_threshold: float = 0.1,
                    min_valid: int = 100, min_inlier_fraction: float = 0.25,
                    n_hypotheses: int = 64, max_fit_points: int = 20000,
                    max_eval_points: int = 2048, seed: int = 0) -> ScaleShiftFit:
    """Robustly align ``pred`` to the valid sensor pixels: ``scale * pred + shift``.

    ``space='disparity'`` fits ``1 / sensor_depth_m`` (for disparity-like
    predictions); ``'depth'`` fits the depth itself. A pixel is an inlier when
    its aligned value is within ``inlier_threshold`` (relative, 0.1 = 10 %) of
    the sensor value, which is the same test in both spaces to first order.

    Method: RANSAC over ``n_hypotheses`` two-point lines, scored together on a
    sub-sample in one array operation, then up to ``max_iters`` rounds of
    weighted least squares on the inliers until the inlier set stops changing.
    RANSAC rather than IRLS because IRLS starts from the least-squares fit and
    with many gross outliers (flying pixels, sky, reflections) converges to the
    wrong line; RANSAC does not depend on a start, and the refit makes the
    result exact on clean data. At most ``max_fit_points`` valid pixels (a
    fixed random sample, ``seed``) are used, which bounds the cost per frame.

    Never raises for data it cannot fit: fewer than ``min_valid`` valid pixels,
    a degenerate (constant) prediction, a non-positive scale or fewer inliers
    than ``min_inlier_fraction`` give a fit with ``valid=False`` and a reason.
    Raises InputError (``bad_size``) for mismatched shapes.
    """
    if space not in FIT_SPACES:
        raise ConfigError(f"space must be one of {', '.join(FIT_SPACES)}, got {space!r}")
    if not 0.0 < inlier_threshold < 1.0:
        raise ConfigError(f"inlier_threshold is relative and must be in (0, 1), "
                          f"got {inlier_threshold}")
    if max_iters < 1 or min_valid < 2 or n_hypotheses < 1:
        raise ConfigError("need max_iters >= 1, min_valid >= 2 and n_hypotheses >= 1")
    pred = _as_2d("pred", pred)
    sensor = _as_2d("sensor_depth_m", sensor_depth_m)
    _same_shape("pred", pred, "sensor_depth_m", sensor)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(pred) & np.isfinite(sensor) & (sensor > 0)
    if valid_mask is not None:
        mask = np.asarray(valid_mask)
        _same_shape("valid_mask", mask, "sensor_depth_m", sensor)
        valid &= mask.astype(bool)
    n_valid = int(valid.sum())
    if n_valid < min_valid:
        return _invalid_fit(n_valid, space, f"{n_valid} valid sensor pixels, need {min_valid}")

    rng = np.random.default_rng(seed)
    p = pred[valid].astype(np.float64)
    depth = sensor[valid].astype(np.float64)
    if n_valid > max_fit_points:
        keep = rng.choice(n_valid, size=max_fit_points, replace=False)
        p, depth = p[keep], depth[keep]
    y = 1.0 / depth if space == "disparity" else depth

    scale, shift = _ransac_line(p, y, inlier_threshold, n_hypotheses, max_eval_points, rng)
    if not math.isfinite(scale):
        return _invalid_fit(n_valid, space, "prediction is constant over the valid pixels")
    inliers = np.abs(scale * p + shift - y) <= inlier_threshold * y
    for _ in range(max_iters):
        if inliers.sum() < 2:
            break
        new_scale, new_shift = _weighted_line_fit(p[inliers], y[inliers])
        if not math.isfinite(new_scale):
            break
        scale, shift = new_scale, new_shift
        new_inliers = np.abs(scale * p + shift - y) <= inlier_threshold * y
        if np.array_equal(new_inliers, inliers):
            break
        inliers = new_inliers

    inlier_fraction = float(inliers.mean())
    fit = ScaleShiftFit(scale=scale, shift=shift, residual_m=math.nan,
                        inlier_fraction=inlier_fraction, n_valid=n_valid, space=space)
    if inliers.any():
        aligned = fit.aligned_depth(p[inliers])
        err = aligned - depth[inliers]
        err = err[np.isfinite(err)]
        residual_m = float(np.sqrt(np.mean(err ** 2))) if err.size else math.nan
    else:
        residual_m = math.nan
    reason = ""
    if not scale > 0:
        reason = f"non-positive scale {scale:.4g}"
    elif inlier_fraction < min_inlier_fraction:
        reason = (f"only {inlier_fraction:.0%} of the valid pixels agree with the fit, "
                  f"need {min_inlier_fraction:.0%}")
    return ScaleShiftFit(scale=scale, shift=shift, residual_m=residual_m,
                         inlier_fraction=inlier_fraction, n_valid=n_valid, space=space,
                         valid=not reason, reason=reason)


def _positive_or_nan(depth: np.ndarray) -> np.ndarray:
    out = depth.astype(np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        out[~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def fuse_depth(pred: Optional[np.ndarray], sensor_depth_m: Optional[np.ndarray],
               output_kind: str = "metric", *, min_depth_m: float = 0.0,
               max_depth_m: float = math.inf, max_fill_m: float = math.inf,
               align_metric: bool = True, inlier_threshold: float = 0.1,
               max_iters: int = 10, min_valid: int = 100,
               min_inlier_fraction: float = 0.25, local_correction: bool = True) -> FusedDepth:
    """One depth image in metres from a prediction and/or the sensor.

    * ``pred`` and sensor: valid sensor pixels (finite, > 0, inside
      ``[min_depth_m, max_depth_m]``) are kept; holes are filled with the
      prediction aligned by :func:`fit_scale_shift` (disparity space for
      ``relative_disparity``, depth space otherwise; metric predictions are
      aligned too unless ``align_metric`` is False). If the fit is invalid, a
      metric prediction fills the holes unaligned and a relative one cannot:
      the holes stay NaN (source 'sensor').
    * ``pred`` only: a metric prediction is published as is (source
      'network'). A relative prediction has no metres without a sensor, so
      ``depth_m`` is all NaN: publishing relative values on a metres topic
      would put wrong 3-D positions on every detection.
    * sensor only (``pred=None``, the ``sensor`` depth model): the cleaned
      sensor depth, holes NaN.

    With ``local_correction`` (default) the aligned prediction is further
    scaled, inside each hole, by the ``sensor / prediction`` ratio at the
    nearest valid sensor pixel (:func:`nearest_ratio_fill`): one global fit
    cannot undo a network's local errors, while the ratio keeps the
    prediction's shape inside the hole and the sensor's level at its border
    (on pybullet scenes with 30% removed: AbsRel 0.040 against 0.105 for the
    global fit alone and 0.051 for nearest-pixel fill).

    Filled values beyond ``max_fill_m`` become NaN. Shapes must match
    (InputError ``bad_size``); ``pred`` may be ``[H, W]`` or ``[1, 1, H, W]``.
    """
    if output_kind not in OUTPUT_KINDS:
        raise ConfigError(f"output_kind must be one of {', '.join(OUTPUT_KINDS)}, "
                          f"got {output_kind!r}")
    if pred is None and sensor_depth_m is None:
        raise InputError("fuse_depth needs a prediction, a sensor depth image or both",
                         reason="no_depth")
    sensor = (None if sensor_depth_m is None
              else clean_sensor_depth(sensor_depth_m, min_depth_m, max_depth_m))
    if pred is None:
        return FusedDepth(depth_m=sensor, fit=None, source="sensor")
    pred = _as_2d("pred", pred)
    if sensor is None:
        if output_kind == "metric":
            return FusedDepth(depth_m=_limit(_positive_or_nan(pred), max_fill_m), fit=None,
                              source="network")
        return FusedDepth(depth_m=np.full(pred.shape, np.nan, dtype=np.float32), fit=None,
                          source="network")
    _same_shape("pred", pred, "sensor_depth_m", sensor)

    fit: Optional[ScaleShiftFit] = None
    if output_kind != "metric" or align_metric:
        space = "disparity" if output_kind == "relative_disparity" else "depth"
        fit = fit_scale_shift(pred, sensor, space=space, max_iters=max_iters,
                              inlier_threshold=inlier_threshold, min_valid=min_valid,
                              min_inlier_fraction=min_inlier_fraction)
    if fit is not None and fit.valid:
        filler = fit.apply(pred)
    elif output_kind == "metric":
        filler = _positive_or_nan(pred)
    else:
        return FusedDepth(depth_m=sensor, fit=fit, source="sensor")
    if local_correction:
        return FusedDepth(depth_m=_limit_holes(nearest_ratio_fill(filler, sensor), sensor,
                                               max_fill_m), fit=fit, source="fused")
    filler = _limit(filler, max_fill_m)
    holes = np.isnan(sensor)
    depth = sensor.copy()
    depth[holes] = filler[holes]
    return FusedDepth(depth_m=depth, fit=fit, source="fused")


def _limit_holes(depth: np.ndarray, sensor: np.ndarray, max_fill_m: float) -> np.ndarray:
    """Filled (non-sensor) values beyond ``max_fill_m`` become NaN."""
    holes = np.isnan(sensor)
    depth[holes & ~(depth <= max_fill_m)] = np.nan
    return depth


def nearest_ratio_fill(pred_m: np.ndarray, sensor_m: np.ndarray) -> np.ndarray:
    """Sensor depth with holes filled by the prediction times the ``sensor / pred``
    ratio at the nearest pixel where both are valid (scipy's exact distance
    transform gives that pixel; the ratio is taken in log space)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sensor_ok = np.isfinite(sensor_m) & (sensor_m > 0)
        both = sensor_ok & np.isfinite(pred_m) & (pred_m > 0)
        out = np.where(sensor_ok, sensor_m, np.nan).astype(np.float32)
        if not both.any():
            return out
        log_ratio = np.where(both, np.log(sensor_m) - np.log(pred_m), 0.0)
    rows, cols = ndimage.distance_transform_edt(~both, return_distances=False,
                                                return_indices=True)
    with np.errstate(invalid="ignore"):
        filled = pred_m * np.exp(log_ratio[rows, cols])
    holes = ~sensor_ok
    out[holes] = filled[holes]
    return out


def _limit(depth_m: np.ndarray, max_m: float) -> np.ndarray:
    if math.isfinite(max_m):
        with np.errstate(invalid="ignore"):
            depth_m[depth_m > max_m] = np.nan
    return depth_m


def fill_nearest(depth_m: np.ndarray, max_distance_px: float = math.inf) -> np.ndarray:
    """``depth_m`` with every NaN pixel set to the depth of the nearest finite pixel.

    Exact Euclidean nearest neighbour through scipy's distance transform. Holes
    farther than ``max_distance_px`` from every finite pixel stay NaN; finite
    pixels are returned unchanged; all NaN stays all NaN. Expects cleaned depth
    (:func:`clean_sensor_depth`: NaN is the only "unknown"). Returns a new array.
    """
    depth = _as_2d("depth_m", depth_m).astype(np.float32, copy=True)
    if isinstance(max_distance_px, bool) or not isinstance(max_distance_px, (int, float)) \
            or not max_distance_px > 0:
        raise ConfigError(f"max_distance_px must be a number > 0 (inf = no limit), got "
                          f"{max_distance_px!r}")
    holes = np.isnan(depth)
    if not holes.any() or holes.all():
        return depth
    if math.isinf(max_distance_px):
        rows, cols = ndimage.distance_transform_edt(holes, return_distances=False,
                                                    return_indices=True)
        return depth[rows, cols]
    distance, (rows, cols) = ndimage.distance_transform_edt(holes, return_indices=True)
    filled = depth[rows, cols]
    filled[distance > max_distance_px] = np.nan
    return filled


def nearest_fill(sensor_depth_m: np.ndarray, min_depth_m: float = 0.0,
                 max_depth_m: float = math.inf) -> np.ndarray:
    """Sensor-only baseline: the cleaned sensor depth (:func:`clean_sensor_depth`)
    with every hole filled from the nearest valid pixel (:func:`fill_nearest`);
    all NaN when the sensor has no valid pixel at all."""
    return fill_nearest(clean_sensor_depth(sensor_depth_m, min_depth_m, max_depth_m))


def depth_metrics(pred_m: np.ndarray, gt_m: np.ndarray,
                  mask: Optional[np.ndarray] = None) -> Dict[str, float]:
    """AbsRel, RMSE (metres) and delta < 1.25 over pixels with valid truth and prediction.

    Pixels inside ``mask`` (all if None) with finite positive ``gt_m`` are
    scored where ``pred_m`` is finite and positive; ``coverage`` is the
    fraction of them the prediction covers, ``n_pixels`` how many were scored.
    Metrics are NaN when nothing could be scored.
    """
    pred = _as_2d("pred_m", pred_m)
    gt = _as_2d("gt_m", gt_m)
    _same_shape("pred_m", pred, "gt_m", gt)
    with np.errstate(invalid="ignore"):
        scored = np.isfinite(gt) & (gt > 0)
        if mask is not None:
            mask_arr = np.asarray(mask)
            _same_shape("mask", mask_arr, "gt_m", gt)
            scored &= mask_arr.astype(bool)
        n_truth = int(scored.sum())
        scored &= np.isfinite(pred) & (pred > 0)
    n = int(scored.sum())
    coverage = n / n_truth if n_truth else math.nan
    if n == 0:
        return {"abs_rel": math.nan, "rmse_m": math.nan, "delta1": math.nan,
                "n_pixels": 0, "coverage": coverage}
    p = pred[scored].astype(np.float64)
    g = gt[scored].astype(np.float64)
    ratio = np.maximum(p / g, g / p)
    return {"abs_rel": float(np.mean(np.abs(p - g) / g)),
            "rmse_m": float(np.sqrt(np.mean((p - g) ** 2))),
            "delta1": float(np.mean(ratio < 1.25)),
            "n_pixels": n, "coverage": coverage}
