"""Evaluate a landmark prediction file against ground truth: MRE, SDR/PCK, outliers, per landmark.

Usage::

    python scripts/evaluate_predictions.py --pred eval/predictions.json --gt data/datalist.json \\
        [--section validation] [--spacing_mode auto] [--out_dir eval]
    # hand radiographs (no spacing): the wrist width (landmarks 1 and 5) is 50 mm
    python scripts/evaluate_predictions.py --pred preds.csv --gt ../shared/data/hand_xray/landmarks.csv \\
        --spacing_mode reference_distance --reference 1,5 --distance_mm 50

Predictions: our JSON or long CSV, or a wide CSV (``image,x0,y0,...``); ground truth: a datalist JSON
(``--section``) or a wide CSV (see :mod:`monai_ext.data.predictions`). Images are paired by resolved path,
falling back to the file name when unique. Writes ``summary.json``, ``per_landmark.csv`` and
``errors.csv`` (one row per image and landmark) to ``--out_dir`` when given.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import fire
import numpy as np

from monai_ext.data.predictions import match_images, read_ground_truth, read_prediction_file
from monai_ext.errors import LandmarkDataError
from monai_ext.metrics.distances import (
    DEFAULT_RADII,
    format_summary,
    radial_errors,
    reference_distance_spacing,
    summarize_errors,
)
from monai_ext.utils import atomic_write

SPACING_MODES = ("auto", "datalist", "image", "reference_distance", "pixel")


def _int_pair(value: Any) -> tuple[int, int]:
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, Sequence) else [value]
    if len(items) != 2:
        raise ValueError(f"--reference must be two landmark indices 'i,j', got {value!r}.")
    return int(items[0]), int(items[1])


def _floats(value: Any) -> list[float]:
    if isinstance(value, str):
        return [float(v) for v in value.split(",") if v.strip()]
    if isinstance(value, Sequence):
        return [float(v) for v in value]
    return [float(value)]


def _jsonable(value: Any) -> Any:
    """Replace NaN/inf floats by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _choose_spacing_mode(mode: str, gt_mode: str | None, gt_has: bool, pred_has: bool) -> str:
    """``auto``: pixel datalists stay in pixels; else the datalist's spacing when every image has one; else
    the reference distance when the datalist uses it; else the spacing recorded with every prediction; else pixels."""
    if mode != "auto":
        return mode
    if gt_mode == "pixel":
        return "pixel"
    if gt_has:
        return "datalist"
    if gt_mode == "reference_distance":
        return "reference_distance"
    return "image" if pred_has else "pixel"


def _reference(reference: Any, distance_mm: float | None, datalist_reference: dict | None) -> tuple[int, int, float]:
    """``(i, j, distance_mm)`` from the command line, else from the datalist's ``reference``."""
    if reference is None and datalist_reference is not None:
        reference = datalist_reference.get("landmarks")
        distance_mm = distance_mm if distance_mm is not None else datalist_reference.get("distance_mm")
    if reference is None:
        raise ValueError("spacing_mode 'reference_distance' needs --reference i,j (and --distance_mm).")
    i, j = _int_pair(reference)
    return i, j, float(distance_mm if distance_mm is not None else 50.0)


class PredictionErrors(NamedTuple):
    """Radial errors of a prediction file against its ground truth (:func:`prediction_errors`)."""

    errors: np.ndarray  # (N, K) in ``unit``: NaN where the ground truth is missing, +inf for a failed point
    images: list[str]  # N ground-truth image keys, in ground-truth order (absolute paths for a datalist)
    unit: str  # "mm" or "px"
    landmark_names: list[str] | None  # K names (ground truth's, else the predictions'), None when unknown
    evaluation: dict[str, Any]  # files, section, spacing mode, matched/unmatched/failed images


def prediction_errors(
    pred: str,
    gt: str,
    section: str = "validation",
    spacing_mode: str = "auto",
    reference: Any = None,
    distance_mm: float | None = None,
    missing: str = "fail",
) -> PredictionErrors:
    """Pair the images of a prediction file with the ground truth and compute every point's radial error.

    The arguments are those of :func:`evaluate_predictions`; ``errors`` is ``(N, K)`` for the N evaluated
    ground-truth images (with ``missing="fail"`` those without a prediction too, all ``+inf``).
    """
    if spacing_mode not in SPACING_MODES:
        raise ValueError(f"--spacing_mode must be one of {SPACING_MODES}, got {spacing_mode!r}.")
    if missing not in ("fail", "skip"):
        raise ValueError(f"--missing must be 'fail' or 'skip', got {missing!r}.")
    preds = read_prediction_file(pred)
    truth = read_ground_truth(gt, section=section)
    pairs, unmatched_pred, unmatched_gt = match_images(
        preds.landmarks, truth.landmarks, Path(pred).resolve().parent, Path(gt).resolve().parent
    )
    if not pairs and not (missing == "fail" and unmatched_gt):
        raise LandmarkDataError(f"{pred}: no prediction matches an image of {gt} (section {section!r}).")
    evaluated: list[tuple[str | None, str]] = list(pairs)
    if missing == "fail":
        evaluated += [(None, g) for g in unmatched_gt]

    mode = _choose_spacing_mode(
        spacing_mode,
        truth.spacing_mode,
        all(g in truth.spacing for _, g in evaluated),
        all(p in preds.spacing for p, _ in evaluated if p is not None) and any(p is not None for p, _ in evaluated),
    )
    ref = _reference(reference, distance_mm, truth.reference) if mode == "reference_distance" else None

    gt_points, pred_points, spacings = [], [], []
    for p, g in evaluated:
        g_pts = truth.landmarks[g]
        p_pts = preds.landmarks[p] if p is not None else np.full_like(g_pts, np.nan)
        if p_pts.shape != g_pts.shape:
            if np.isnan(p_pts).all():  # a failed image recorded with a different landmark count
                p_pts = np.full_like(g_pts, np.nan)
            else:
                raise LandmarkDataError(f"{pred}: image {p!r} has {len(p_pts)} landmarks, ground truth {len(g_pts)}.")
        if mode == "datalist":
            if g not in truth.spacing:
                raise LandmarkDataError(f"{gt}: image {g!r} has no spacing (spacing_mode 'datalist').")
            spacings.append(truth.spacing[g])
        elif mode == "image":
            if p is None:
                spacings.append(np.ones(2))  # all points failed: the spacing does not change an infinite error
            elif p not in preds.spacing:
                raise LandmarkDataError(f"{pred}: image {p!r} has no spacing (spacing_mode 'image').")
            else:
                spacings.append(preds.spacing[p])
        elif ref is not None:
            s = reference_distance_spacing(g_pts, ref[0], ref[1], ref[2], source=f"{gt}: image {g!r}")
            spacings.append(np.array([s, s]))
        gt_points.append(g_pts)
        pred_points.append(p_pts)
    n_landmarks = {len(x) for x in gt_points}
    if len(n_landmarks) > 1:
        raise LandmarkDataError(f"{gt}: images have different landmark counts {sorted(n_landmarks)}.")

    errors = radial_errors(np.stack(pred_points), np.stack(gt_points), np.stack(spacings) if spacings else None)
    names = truth.landmark_names or preds.landmark_names
    if names is not None and len(names) != errors.shape[1]:
        names = None
    evaluation = {
        "pred_file": str(pred),
        "gt_file": str(gt),
        "section": section if Path(gt).suffix.lower() == ".json" else None,
        "spacing_mode": mode,
        "reference": list(ref[:2]) if ref is not None else None,
        "distance_mm": ref[2] if ref is not None else None,
        "missing": missing,
        "n_matched": len(pairs),
        "n_failed_images": sum(1 for p, _ in pairs if p in preds.errors),
        "unmatched_predictions": unmatched_pred,
        "unmatched_ground_truth": unmatched_gt,
    }
    return PredictionErrors(errors, [g for _, g in evaluated], "px" if mode == "pixel" else "mm", names, evaluation)


def evaluate_predictions(
    pred: str,
    gt: str,
    section: str = "validation",
    spacing_mode: str = "auto",
    reference: Any = None,
    distance_mm: float | None = None,
    out_dir: str | None = None,
    radii: Any = DEFAULT_RADII,
    outlier_radius: float = 10.0,
    missing: str = "fail",
    quiet: bool = False,
) -> dict[str, Any]:
    """Compare predictions with ground truth and return the summary dict (also printed, and written to ``out_dir``).

    Args:
        pred: prediction file (JSON, long CSV or wide CSV).
        gt: ground truth: datalist JSON or wide CSV.
        section: datalist section to evaluate against (ignored for a CSV).
        spacing_mode: how pixels become mm: ``"datalist"`` (per-image ``spacing`` of the ground truth),
            ``"image"`` (the spacing the prediction file records, read from the image by inference),
            ``"reference_distance"`` (landmarks ``reference`` are ``distance_mm`` apart in every image),
            ``"pixel"`` (errors in pixels) or ``"auto"``: pixels for a ``pixel`` datalist, else the datalist's
            spacing when every image has one, else the reference distance for a ``reference_distance``
            datalist, else the prediction file's spacing when every image has one, else pixels.
        reference: the two reference landmark indices ``i,j`` (default: the datalist's ``reference``).
        distance_mm: their physical distance (default: the datalist's, else 50).
        out_dir: folder for summary.json, per_landmark.csv and errors.csv.
        radii: SDR/PCK radii, in mm (or px when errors are in pixels).
        outlier_radius: errors above it are outliers.
        missing: ground-truth images without a prediction: ``"fail"`` counts their points as failed
            detections, ``"skip"`` leaves them out. Either way they are listed in the summary.
        quiet: do not print.
    """
    result = prediction_errors(pred, gt, section, spacing_mode, reference, distance_mm, missing)
    summary = summarize_errors(result.errors, _floats(radii), float(outlier_radius), result.landmark_names, result.unit)
    summary["evaluation"] = result.evaluation
    if not quiet:
        unmatched_gt = result.evaluation["unmatched_ground_truth"]
        unmatched_pred = result.evaluation["unmatched_predictions"]
        print(format_summary(summary))
        print(f"spacing: {result.evaluation['spacing_mode']}; matched images: {result.evaluation['n_matched']}")
        if unmatched_gt:
            action = "counted as failed" if missing == "fail" else "skipped"
            print(f"{len(unmatched_gt)} ground-truth image(s) without prediction ({action}): {unmatched_gt[:10]}")
        if unmatched_pred:
            print(f"{len(unmatched_pred)} prediction(s) without ground truth (ignored): {unmatched_pred[:10]}")
    if out_dir is not None:
        _write_reports(Path(out_dir), summary, result.errors, result.images)
        if not quiet:
            print(f"wrote {Path(out_dir) / 'summary.json'}, per_landmark.csv, errors.csv")
    return summary


def _write_reports(out_dir: Path, summary: dict[str, Any], errors: np.ndarray, images: list[str]) -> None:
    with atomic_write(out_dir / "summary.json") as f:
        json.dump(_jsonable(summary), f, indent=1, allow_nan=False)
        f.write("\n")
    radii = list(summary["sdr"])
    unit = summary["unit"]
    fields = ["index", "name", "n", "n_missing_gt", "n_failed", "n_outliers", "mre", "std", "median", "max"]
    with atomic_write(out_dir / "per_landmark.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields + [f"sdr@{r}{unit}" for r in radii])
        for e in summary["per_landmark"]:
            writer.writerow([_cell(e[k]) for k in fields] + [_cell(e["sdr"][r]) for r in radii])
    names = [e["name"] for e in summary["per_landmark"]]
    with atomic_write(out_dir / "errors.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "index", "name", f"error_{unit}"])
        for image, row in zip(images, errors):
            for k, err in enumerate(row):
                writer.writerow([image, k, names[k], _cell(float(err))])


def _cell(value: Any) -> Any:
    """CSV cell: NaN is empty, +inf is 'inf', floats rounded to 6 decimals."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return "inf" if math.isinf(value) else round(value, 6)
    return value


if __name__ == "__main__":
    fire.Fire(evaluate_predictions, serialize=lambda result: None)
