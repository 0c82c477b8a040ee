"""Split-conformal prediction regions for landmarks: a radius around each predicted point that holds the true point
with a chosen probability (coverage), calibrated once per trained model on images it was not trained on.

Nonconformity scores on the calibration images (Angelopoulos & Bates, "A gentle introduction to conformal
prediction", 2021, section 1; the finite-sample quantile of Vovk et al.):

* ``"fixed"``: the radial error itself; the region is a disc of radius ``q`` for every image;
* ``"adaptive"``: the radial error divided by the predicted heatmap's spread at that point
  (:func:`~monai_ext.uncertainty.spread.heatmap_spread`); the region's radius is ``q * spread``, so it grows where the
  network's heatmap is wide.

``q`` is the ``ceil((n + 1) * coverage)``-th smallest of the ``n`` calibration scores, which guarantees a coverage of at
least ``coverage`` on exchangeable new points (``inf`` when ``n`` is too small for it). Scores are pooled over the
landmarks by default (one ``q``; with few calibration images a per-landmark ``q`` would be ``inf`` at high coverage);
``per_landmark=True`` calibrates one ``q`` per landmark. A landmark missing in the ground truth (``NaN`` error) or
without a spread is left out of the calibration and counted (``n_missing``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from monai_ext.utils import atomic_write

__all__ = [
    "METHODS",
    "ConformalRegions",
    "angle_quantiles",
    "conformal_quantile",
    "load_calibration",
    "load_angle_calibration",
    "region_coverage",
    "save_calibration",
]

METHODS = ("fixed", "adaptive")


def conformal_quantile(scores: Sequence[float] | np.ndarray, coverage: float) -> float:
    """The split-conformal quantile of the finite ``scores``: the ``ceil((n + 1) * coverage)``-th smallest, ``inf``
    when that rank exceeds ``n`` (too few calibration points for this coverage)."""
    if not 0.0 < float(coverage) < 1.0:
        raise ValueError(f"conformal_quantile: coverage must be in (0, 1), got {coverage}")
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    s = s[np.isfinite(s)]
    rank = math.ceil((s.size + 1) * float(coverage) - 1e-9)
    return float(s[rank - 1]) if 1 <= rank <= s.size else math.inf


def _scores(errors: np.ndarray, spreads: np.ndarray | None, method: str) -> np.ndarray:
    if method not in METHODS:
        raise ValueError(f"unknown conformal method {method!r}; expected one of {METHODS}")
    if method == "fixed":
        return errors
    if spreads is None:
        raise ValueError("the adaptive conformal region needs the predicted heatmaps' spreads (pred_spread)")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(spreads > 0, errors / spreads, np.nan)


@dataclass
class ConformalRegions:
    """A calibrated region: ``radius = quantile`` (fixed) or ``quantile * spread`` (adaptive), in ``unit``.

    Attributes:
        method: ``"fixed"`` or ``"adaptive"``.
        coverage: the target probability that the true point lies within the radius.
        quantile: the calibrated ``q``, one value (pooled) or one per landmark.
        unit: unit of errors and radii (``"mm"`` or ``"px"``).
        n_calibration: calibration points used; ``n_missing``: points left out (missing ground truth or spread).
        landmark_names: the landmarks, in order (for a per-landmark ``quantile``).
    """

    method: str
    coverage: float
    quantile: float | list[float]
    unit: str = "mm"
    n_calibration: int = 0
    n_missing: int = 0
    landmark_names: list[str] = field(default_factory=list)

    @classmethod
    def fit(
        cls,
        errors: np.ndarray,
        coverage: float = 0.9,
        method: str = "fixed",
        spreads: np.ndarray | None = None,
        per_landmark: bool = False,
        unit: str = "mm",
        landmark_names: Sequence[str] = (),
    ) -> ConformalRegions:
        """Calibrate on radial ``errors`` ``(N, K)`` (``NaN``: missing ground truth) and, for ``"adaptive"``, the
        predicted ``spreads`` ``(N, K)`` in the same unit."""
        errors = np.asarray(errors, dtype=np.float64)
        if errors.ndim != 2:
            raise ValueError(f"ConformalRegions.fit: errors (N, K) expected, got shape {errors.shape}")
        spreads = None if spreads is None else np.asarray(spreads, dtype=np.float64).reshape(errors.shape)
        scores = _scores(errors, spreads, method)
        used = np.isfinite(scores)
        if per_landmark:
            quantile: float | list[float] = [conformal_quantile(scores[:, k], coverage) for k in range(errors.shape[1])]
        else:
            quantile = conformal_quantile(scores, coverage)
        return cls(method, float(coverage), quantile, unit, int(used.sum()), int((~used).sum()), list(landmark_names))

    def radii(self, spreads: np.ndarray | None = None, shape: Sequence[int] | None = None) -> np.ndarray:
        """Region radii ``(N, K)`` for ``spreads`` ``(N, K)`` (adaptive) or for ``shape`` ``(N, K)`` (fixed)."""
        q = np.asarray(self.quantile, dtype=np.float64)
        if self.method == "fixed":
            if shape is None:
                shape = np.shape(spreads) if spreads is not None else (1, q.size)
            return np.broadcast_to(q, tuple(shape)).astype(np.float64).copy()
        if spreads is None:
            raise ValueError("the adaptive conformal region needs the predicted heatmaps' spreads (pred_spread)")
        return q * np.asarray(spreads, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["quantile"] = _json_number(self.quantile)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformalRegions:
        q = data["quantile"]
        q = [float(v) for v in q] if isinstance(q, list) else float(q)
        return cls(data["method"], float(data["coverage"]), q, data.get("unit", "mm"), int(data.get("n_calibration", 0)),
                   int(data.get("n_missing", 0)), list(data.get("landmark_names", [])))


def _json_number(value: Any) -> Any:
    """``inf`` as the string "inf" (JSON has no infinity)."""
    if isinstance(value, list):
        return [_json_number(v) for v in value]
    return "inf" if math.isinf(value) else value


def save_calibration(regions: Sequence[ConformalRegions], path: str | os.PathLike, **info: Any) -> None:
    """Write the calibrated regions (several methods and coverages) to ``path`` (JSON, atomically)."""
    payload = {**info, "regions": [r.to_dict() for r in regions]}
    with atomic_write(path) as f:
        f.write(json.dumps(payload, indent=2) + "\n")


def load_calibration(path: str | os.PathLike) -> list[ConformalRegions]:
    """The regions written by :func:`save_calibration`; a clear error names the file when it is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
        return [ConformalRegions.from_dict(r) for r in data["regions"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a conformal calibration file ({e})") from e


def region_coverage(errors: np.ndarray, radii: np.ndarray) -> dict[str, float | int]:
    """Empirical coverage (fraction of points with ``error <= radius``), mean and median radius, on the points with a
    finite error and radius; ``n_points`` those points, ``n_missing`` the others."""
    errors, radii = np.asarray(errors, dtype=np.float64), np.asarray(radii, dtype=np.float64)
    ok = np.isfinite(errors) & ~np.isnan(radii)
    e, r = errors[ok], radii[ok]
    finite = np.isfinite(r)
    return {
        "coverage": float(np.mean(e <= r)) if e.size else math.nan,
        "mean_radius": float(np.mean(r[finite])) if finite.any() else math.nan,
        "median_radius": float(np.median(r)) if r.size else math.nan,
        "n_points": int(ok.sum()),
        "n_missing": int((~ok).sum()),
    }


def angle_quantiles(pred: np.ndarray, gt: np.ndarray, coverages: Sequence[float]) -> dict[str, list[float]]:
    """Split-conformal half-widths of angle intervals (e.g. the Cobb angles): for each coverage, one quantile per angle
    column of the absolute errors ``|pred - gt|`` ``(N, A)`` (rows with a NaN left out of that column), so that
    ``pred ± q`` holds the true angle with at least that probability. Keys: the coverage as text ("0.9")."""
    err = np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(gt, dtype=np.float64))
    if err.ndim != 2:
        raise ValueError(f"angle_quantiles: pred and gt must be (N, A), got {err.shape}")
    return {f"{float(c):g}": [conformal_quantile(err[:, a], c) for a in range(err.shape[1])] for c in coverages}


def load_angle_calibration(path: str | os.PathLike, coverage: float, key: str = "cobb") -> list[float] | None:
    """The angle half-widths stored under ``key`` (:func:`angle_quantiles`) at ``coverage`` in a calibration file, or
    ``None`` when the file has none for it."""
    with open(path) as f:
        data = json.load(f)
    values = (data.get(key) or {}).get(f"{float(coverage):g}")
    return None if values is None else [math.inf if v == "inf" else float(v) for v in values]
