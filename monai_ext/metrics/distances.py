"""Landmark distance metrics: radial errors in mm (or pixels) and their summary (MRE, SDR/PCK, outliers).

Missing and failed points (one decision, used by every metric of the package):

* a landmark whose ground truth is missing (NaN) has error ``NaN``: it is excluded from every statistic
  and counted in ``n_missing_gt``;
* a landmark with ground truth but a NaN prediction (the model found nothing, or the image failed) has
  error ``+inf``: it counts as a miss in SDR/PCK and as an outlier, is excluded from the means
  (MRE, std, median, max are over finite errors) and is counted in ``n_failed``.

SDR ("successful detection rate", ISBI challenges) and PCK ("percentage of correct keypoints") are the
same number: the percentage of points with ground truth whose error is ``<= radius``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monai_ext.errors import LandmarkDataError

__all__ = [
    "DEFAULT_RADII",
    "STATISTICS",
    "format_summary",
    "parse_statistic",
    "radial_errors",
    "radial_errors_tensor",
    "radius_key",
    "reference_distance_spacing",
    "select_statistic",
    "summarize_errors",
]

DEFAULT_RADII: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0, 10.0, 20.0)
#: scalar statistics accepted by :func:`select_statistic`, besides ``"sdr@<r>"`` / ``"pck@<r>"``.
STATISTICS = ("mre", "std", "median", "max", "n_points", "n_missing_gt", "n_failed", "n_outliers", "n_images")
_RADIUS_STAT = re.compile(r"^(sdr|pck)@(\d+(?:\.\d*)?|\.\d+)(mm|px)?$")


def radius_key(radius: float) -> str:
    """Key of a radius in the summary dict: ``2.0 -> "2"``, ``2.5 -> "2.5"``."""
    return f"{float(radius):g}"


def radial_errors_tensor(
    pred: torch.Tensor, gt: torch.Tensor, spacing: torch.Tensor | None = None
) -> torch.Tensor:
    """Torch version of :func:`radial_errors` (keeps device; float64 unless the inputs are float64 already).

    Args:
        pred: predicted points ``(N, K, D)`` or ``(K, D)`` in pixels.
        gt: ground truth, same shape, NaN where missing.
        spacing: ``(N, D)``, ``(D,)`` or a scalar, mm per pixel along each axis; None gives pixels.

    Returns:
        errors ``(N, K)`` (or ``(K,)``): NaN where gt is missing, +inf where gt exists and pred is NaN.
    """
    pred = torch.as_tensor(pred).to(torch.float64)
    gt = torch.as_tensor(gt).to(device=pred.device, dtype=torch.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}.")
    if pred.ndim not in (2, 3):
        raise ValueError(f"points must be (K, D) or (N, K, D), got shape {tuple(pred.shape)}.")
    dims = pred.shape[-1]
    diff = pred - gt
    if spacing is not None:
        spacing = torch.as_tensor(spacing).to(device=pred.device, dtype=torch.float64)
        if spacing.ndim == 0:
            spacing = spacing.expand(dims)
        if spacing.shape not in ((dims,), (*pred.shape[:-2], dims)):
            per_image = f" or ({pred.shape[0]}, {dims})" if pred.ndim == 3 else ""
            raise ValueError(f"spacing must be a scalar, ({dims},){per_image} mm/pixel, got {tuple(spacing.shape)}.")
        if not bool(torch.isfinite(spacing).all()) or bool((spacing <= 0).any()):
            raise ValueError(f"spacing must be finite and positive (mm/pixel), got {spacing.tolist()}.")
        diff = diff * (spacing.unsqueeze(-2) if spacing.ndim == 2 else spacing)
    errors = torch.linalg.vector_norm(diff, dim=-1)
    gt_missing = torch.isnan(gt).any(dim=-1)
    pred_missing = torch.isnan(pred).any(dim=-1)
    errors = torch.where(pred_missing, torch.full_like(errors, math.inf), errors)
    return torch.where(gt_missing, torch.full_like(errors, math.nan), errors)


def _as_tensor(data: Any) -> torch.Tensor:
    return data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data, dtype=np.float64))


def radial_errors(pred: Any, gt: Any, spacing: Any | None = None) -> np.ndarray:
    """Euclidean error of each landmark, in mm when ``spacing`` is given, else in pixels.

    ``error = sqrt((dx * sx)^2 + (dy * sy)^2)`` with ``(dx, dy)`` in pixels and ``(sx, sy)`` in mm/pixel.

    Args:
        pred: predicted points ``(N, K, 2)`` or ``(K, 2)`` in pixels ``(x, y)`` (numpy, torch or nested lists).
        gt: ground-truth points of the same shape, NaN where missing.
        spacing: ``(N, 2)``, ``(2,)`` or a scalar ``(sx, sy)`` mm/pixel; None gives errors in pixels.

    Returns:
        float64 array ``(N, K)`` (``(K,)`` for a single image): NaN where gt is missing, +inf where the
        ground truth exists but the prediction is NaN (a failed detection, see the module docstring).
    """
    s = None if spacing is None else _as_tensor(spacing)
    return radial_errors_tensor(_as_tensor(pred), _as_tensor(gt), s).detach().cpu().numpy()


def reference_distance_spacing(gt: Any, i: int, j: int, distance_mm: float = 50.0, source: str = "") -> float:
    """Isotropic mm/pixel for the reference-distance convention: landmarks ``i`` and ``j`` are ``distance_mm`` apart.

    This is the hand-radiograph convention of Payer et al. (2019): the wrist width (landmarks 1 and 5) is
    50 mm, so an error in mm is ``distance_mm * |p - g| / |g_i - g_j|``.

    Args:
        gt: ground-truth points ``(K, 2)`` in pixels of one image.
        i, j: indices of the two reference landmarks.
        distance_mm: their assumed physical distance.
        source: the image (or file and row) named in error messages.

    Raises:
        LandmarkDataError: when a reference landmark is missing or out of range, or the two coincide.
    """
    points = np.asarray(gt, dtype=np.float64)
    where = f"{source}: " if source else ""
    if points.ndim != 2:
        raise LandmarkDataError(f"{where}ground truth must be (K, 2) points, got shape {points.shape}.")
    for idx in (i, j):
        if not -points.shape[0] <= idx < points.shape[0]:
            raise LandmarkDataError(f"{where}reference landmark {idx} out of range for {points.shape[0]} landmarks.")
        if np.isnan(points[idx]).any():
            raise LandmarkDataError(f"{where}reference landmark {idx} is missing; cannot derive the mm/pixel scale.")
    dist = float(np.linalg.norm(points[i] - points[j]))
    if dist <= 0:
        raise LandmarkDataError(f"{where}reference landmarks {i} and {j} coincide; cannot derive the mm/pixel scale.")
    return float(distance_mm) / dist


def _stats(errors: np.ndarray, radii: Sequence[float]) -> dict[str, Any]:
    """MRE/std/median/max over finite errors and SDR (%) over all non-NaN errors of a flat array."""
    valid = errors[~np.isnan(errors)]
    finite = valid[np.isfinite(valid)]
    out: dict[str, Any] = {
        "mre": float(np.mean(finite)) if finite.size else math.nan,
        "std": float(np.std(finite)) if finite.size else math.nan,
        "median": float(np.median(finite)) if finite.size else math.nan,
        "max": float(np.max(finite)) if finite.size else math.nan,
    }
    out["sdr"] = {
        radius_key(r): (100.0 * float(np.count_nonzero(valid <= r)) / valid.size if valid.size else math.nan)
        for r in radii
    }
    return out


def summarize_errors(
    errors: Any,
    radii: Sequence[float] = DEFAULT_RADII,
    outlier_radius: float = 10.0,
    landmark_names: Sequence[str] | None = None,
    unit: str = "mm",
) -> dict[str, Any]:
    """Summary statistics of radial errors (see the module docstring for NaN and +inf errors).

    Args:
        errors: ``(N, K)`` radial errors (``(K,)`` is one image), as from :func:`radial_errors`.
        radii: SDR/PCK radii in ``unit``.
        outlier_radius: errors above it (and failed detections) are outliers.
        landmark_names: K names for ``per_landmark``; default ``"landmark_<k>"``.
        unit: unit of the errors, ``"mm"`` or ``"px"``; it suffixes the flat SDR keys.

    Returns:
        a JSON-ready dict (NaN where a statistic has no data)::

            {"unit": "mm", "n_images": N, "n_landmarks": K,
             "n_points": points with ground truth (failed included), "n_missing_gt", "n_failed",
             "n_outliers", "outlier_radius",
             "mre", "std" (population), "median", "max",        # over finite errors
             "sdr": {"2": 91.2, "2.5": ...},                     # % of n_points with error <= radius
             "sdr@2mm": 91.2, "sdr@2.5mm": ...,                  # the same numbers, flat keys
             "radii": [2.0, ...],
             "per_landmark": [{"index", "name", "n", "n_missing_gt", "n_failed", "n_outliers",
                               "mre", "std", "median", "max", "sdr": {...}}, ...]}
    """
    errs = np.asarray(errors.detach().cpu() if isinstance(errors, torch.Tensor) else errors, dtype=np.float64)
    if errs.ndim == 1:
        errs = errs[None]
    if errs.ndim != 2:
        raise ValueError(f"errors must be (N, K) or (K,), got shape {errs.shape}.")
    if np.any(errs < 0):
        raise ValueError("radial errors must be non-negative.")
    n_images, n_landmarks = errs.shape
    if landmark_names is None:
        landmark_names = [f"landmark_{k}" for k in range(n_landmarks)]
    elif len(landmark_names) != n_landmarks:
        raise ValueError(f"got {len(landmark_names)} landmark names for {n_landmarks} landmarks.")
    radii = [float(r) for r in radii]

    def counts(e: np.ndarray) -> dict[str, int]:
        return {
            "n_points": int(np.count_nonzero(~np.isnan(e))),
            "n_missing_gt": int(np.count_nonzero(np.isnan(e))),
            "n_failed": int(np.count_nonzero(np.isposinf(e))),
            "n_outliers": int(np.count_nonzero(e > outlier_radius)),
        }

    summary: dict[str, Any] = {"unit": unit, "n_images": n_images, "n_landmarks": n_landmarks}
    summary.update(counts(errs))
    summary["outlier_radius"] = float(outlier_radius)
    summary.update(_stats(errs.ravel(), radii))
    for r in radii:
        summary[f"sdr@{radius_key(r)}{unit}"] = summary["sdr"][radius_key(r)]
    summary["radii"] = radii
    per_landmark = []
    for k, name in enumerate(landmark_names):
        c = counts(errs[:, k])
        entry: dict[str, Any] = {"index": k, "name": str(name), "n": c.pop("n_points"), **c}
        entry.update(_stats(errs[:, k], radii))
        per_landmark.append(entry)
    summary["per_landmark"] = per_landmark
    return summary


def parse_statistic(statistic: str, unit: str | None = None) -> tuple[str, float | None]:
    """Parse a statistic name: ``"mre"`` -> ``("mre", None)``, ``"sdr@2"`` / ``"pck@2.5mm"`` -> ``("sdr", 2.0)``.

    Accepted: the names in :data:`STATISTICS`, ``"summary"`` (the whole dict), and ``"sdr@<r>"`` or
    ``"pck@<r>"`` with an optional unit suffix that must match ``unit`` when given.
    """
    name = str(statistic).strip().lower()
    if name in STATISTICS or name == "summary":
        return name, None
    match = _RADIUS_STAT.match(name)
    if match is None:
        raise ValueError(
            f"unknown landmark statistic {statistic!r}: expected one of {STATISTICS + ('summary',)} "
            "or 'sdr@<radius>' / 'pck@<radius>' (e.g. 'sdr@2', 'pck@10mm')."
        )
    if unit is not None and match.group(3) is not None and match.group(3) != unit:
        raise ValueError(f"statistic {statistic!r} is in {match.group(3)} but the errors are in {unit}.")
    return "sdr", float(match.group(2))


def select_statistic(
    errors: Any,
    statistic: str,
    radii: Sequence[float] = DEFAULT_RADII,
    outlier_radius: float = 10.0,
    landmark_names: Sequence[str] | None = None,
    unit: str = "mm",
) -> Any:
    """One statistic of :func:`summarize_errors` (a float; counts as int; ``"summary"`` gives the dict).

    ``"sdr@<r>"`` / ``"pck@<r>"`` work for any radius, not only those in ``radii``.
    """
    kind, radius = parse_statistic(statistic, unit)
    if radius is not None:
        radii = [*radii, radius]
    summary = summarize_errors(errors, radii, outlier_radius, landmark_names, unit)
    if kind == "summary":
        return summary
    if kind == "sdr":
        return summary["sdr"][radius_key(radius)]
    return summary[kind]


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable multi-line text of a :func:`summarize_errors` dict (overall line, SDR line, per landmark)."""
    u = summary["unit"]
    lines = [
        f"images {summary['n_images']}, points {summary['n_points']} (missing gt {summary['n_missing_gt']}, "
        f"failed {summary['n_failed']}, outliers > {summary['outlier_radius']:g} {u}: {summary['n_outliers']})",
        f"MRE {summary['mre']:.3f} +- {summary['std']:.3f} {u}, median {summary['median']:.3f} {u}, "
        f"max {summary['max']:.3f} {u}",
        "SDR/PCK " + ", ".join(f"{r} {u}: {v:.2f} %" for r, v in summary["sdr"].items()),
        "per landmark:",
    ]
    radii = list(summary["sdr"])
    head = [f"{'name':<16}", f"{'n':>5}", f"{'mre':>8}", f"{'median':>8}"] + [f"{'<=' + r:>8}" for r in radii]
    lines.append("  " + "  ".join(head))
    for e in summary["per_landmark"]:
        cells = [f"{e['name'][:16]:<16}", f"{e['n']:>5}", f"{e['mre']:>8.3f}", f"{e['median']:>8.3f}"]
        lines.append("  " + "  ".join(cells + [f"{e['sdr'][r]:>7.2f}%" for r in radii]))
    return "\n".join(lines)
