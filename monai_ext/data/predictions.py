"""Prediction files written by inference and read by evaluation, and ground-truth readers.

JSON (``write_predictions_json``)::

    {"landmark_names": [...], "unit": "mm" | "px",
     "predictions": [{"image": path, "spacing": [sx, sy] | null, "spacing_source": str,
                      "landmarks": [{"index", "name", "x", "y", "x_mm", "y_mm", "confidence"}, ...],
                      "error": null | message}]}

CSV long format (``write_predictions_csv``): columns ``image,index,name,x,y,x_mm,y_mm,confidence,error``,
one row per landmark; a failed image is one row with only ``image`` and ``error`` filled.

Points are ``(x, y)`` pixels of the original image (see :mod:`monai_ext`); ``x_mm = x * sx`` and
``y_mm = y * sy`` are millimetres from the centre of the top-left pixel. A missing point is null in JSON
and an empty cell in CSV. :func:`read_predictions` also reads the "wide" CSV of ``../shared/data``
(``image,x0,y0,...,x{K-1},y{K-1}``, further columns ignored). Image paths are kept as written; relative
ones are relative to the file's folder (as in datalists), see :func:`match_images`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from monai_ext.data.datalist import SECTIONS, load_datalist, validate_datalist
from monai_ext.errors import DatalistValidationError, LandmarkDataError
from monai_ext.utils import atomic_write

__all__ = [
    "CSV_COLUMNS",
    "GroundTruth",
    "Predictions",
    "make_prediction_record",
    "match_images",
    "merge_prediction_records",
    "read_ground_truth",
    "read_prediction_file",
    "read_predictions",
    "write_predictions_csv",
    "write_predictions_json",
]

CSV_COLUMNS = ("image", "index", "name", "x", "y", "x_mm", "y_mm", "confidence", "error")
_WIDE_COLUMN = re.compile(r"^([xy])(\d+)$")


class Predictions(NamedTuple):
    """Content of a prediction file; dicts are keyed by the image path as written in the file."""

    landmarks: dict[str, np.ndarray]  # (K, 2) pixels, NaN where missing; all NaN for a failed image
    spacing: dict[str, np.ndarray]  # (2,) mm/pixel, only for images that have one
    errors: dict[str, str]  # failure message of each failed image
    landmark_names: list[str] | None
    unit: str | None


class GroundTruth(NamedTuple):
    """Ground-truth points of a datalist section (keyed by absolute image path, as
    :func:`~monai_ext.data.datalist.load_datalist` gives) or of a wide CSV (keyed by the path as written)."""

    landmarks: dict[str, np.ndarray]  # (K, 2) pixels, NaN where missing
    spacing: dict[str, np.ndarray]  # (2,) mm/pixel, only for rows that have one
    landmark_names: list[str] | None
    spacing_mode: str | None  # the datalist's spacing_mode (None for a CSV)
    reference: dict | None = None  # the datalist's {"landmarks": [i, j], "distance_mm": d}, if any


def _number(value: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def make_prediction_record(
    image: str | os.PathLike,
    landmarks: Any = None,
    confidence: Any = None,
    spacing: Any = None,
    spacing_source: str = "",
    landmark_names: Sequence[str] | None = None,
    error: str | None = None,
    per_landmark: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One image's entry of the prediction file.

    Args:
        image: the image path.
        landmarks: ``(K, 2)`` points ``(x, y)`` in original pixels, NaN where missing; None for a failed image.
        confidence: ``(K,)`` per-landmark confidence (e.g. the heatmap peak value), optional.
        spacing: ``(sx, sy)`` mm/pixel, or None when unknown; fills ``x_mm``/``y_mm``.
        spacing_source: where the spacing came from (e.g. ``"dicom:PixelSpacing"``, ``"datalist"``).
        landmark_names: K names (default ``"landmark_<k>"``).
        error: the failure message of an image that could not be processed (then ``landmarks`` is ignored).
        per_landmark: further per-landmark fields, name -> ``(K,)`` values (numbers or booleans), e.g. the
            conformal region ``region_mm`` and ``review`` (:mod:`monai_ext.uncertainty`); NaN becomes null.
    """
    sp = None if spacing is None else [float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1)]
    if sp is not None and (len(sp) != 2 or not all(math.isfinite(s) and s > 0 for s in sp)):
        raise ValueError(f"{image}: spacing must be two positive mm/pixel values, got {spacing}.")
    record: dict[str, Any] = {"image": str(image), "spacing": sp, "spacing_source": str(spacing_source)}
    if error is not None or landmarks is None:
        record.update(landmarks=[], error=str(error) if error is not None else "no landmarks predicted")
        return record
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{image}: landmarks must be (K, 2) points, got shape {points.shape}.")
    conf = None if confidence is None else np.asarray(confidence, dtype=np.float64).reshape(-1)
    if conf is not None and conf.shape[0] != points.shape[0]:
        raise ValueError(f"{image}: got {conf.shape[0]} confidences for {points.shape[0]} landmarks.")
    if landmark_names is not None and len(landmark_names) != points.shape[0]:
        raise ValueError(f"{image}: got {len(landmark_names)} landmark names for {points.shape[0]} landmarks.")
    extra = {str(name): np.asarray(v).reshape(-1) for name, v in (per_landmark or {}).items() if v is not None}
    for name, v in extra.items():
        if v.shape[0] != points.shape[0]:
            raise ValueError(f"{image}: got {v.shape[0]} values of {name!r} for {points.shape[0]} landmarks.")
    entries = []
    for k, (x, y) in enumerate(points):
        missing = not (math.isfinite(x) and math.isfinite(y))
        entries.append(
            {
                "index": k,
                "name": str(landmark_names[k]) if landmark_names is not None else f"landmark_{k}",
                "x": None if missing else float(x),
                "y": None if missing else float(y),
                "x_mm": None if missing or sp is None else float(x) * sp[0],
                "y_mm": None if missing or sp is None else float(y) * sp[1],
                "confidence": None if conf is None else _number(conf[k]),
                **{name: bool(v[k]) if v.dtype == bool else _number(v[k]) for name, v in extra.items()},
            }
        )
    record.update(landmarks=entries, error=None)
    return record


def _names_and_unit(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], str]:
    ok = [r for r in records if not r.get("error")]
    names = [str(e.get("name", f"landmark_{k}")) for k, e in enumerate(ok[0]["landmarks"])] if ok else []
    unit = "mm" if ok and all(r.get("spacing") is not None for r in ok) else "px"
    return names, unit


def write_predictions_json(
    records: Iterable[Mapping[str, Any]],
    path: str | os.PathLike,
    landmark_names: Sequence[str] | None = None,
    unit: str | None = None,
) -> Path:
    """Write records of :func:`make_prediction_record` as the JSON prediction file, atomically.

    ``landmark_names`` defaults to the names of the first successful record; ``unit`` to ``"mm"`` when every
    successful record has a spacing, else ``"px"``. Returns the path.
    """
    records = list(records)
    names, default_unit = _names_and_unit(records)
    doc = {
        "landmark_names": list(landmark_names) if landmark_names is not None else names,
        "unit": unit or default_unit,
        "predictions": records,
    }
    with atomic_write(path) as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")
    return Path(path)


def write_predictions_csv(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write records of :func:`make_prediction_record` as the long CSV (one row per landmark), atomically."""

    def cell(value: Any) -> Any:
        return "" if value is None else value

    records = list(records)
    extra: list[str] = []  # per-landmark fields beyond the standard columns (make_prediction_record's per_landmark)
    for r in records:
        for e in r.get("landmarks") or []:
            extra += [k for k in e if k not in CSV_COLUMNS and k not in extra]
    columns = [*CSV_COLUMNS[:-1], *extra, CSV_COLUMNS[-1]]
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in records:
            if r.get("error"):
                writer.writerow([r["image"]] + [""] * (len(columns) - 2) + [r["error"]])
                continue
            for e in r["landmarks"]:
                writer.writerow([r["image"]] + [cell(e.get(c)) for c in columns[1:-1]] + [""])
    return Path(path)


def merge_prediction_records(*shards: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records of :func:`make_prediction_record` from several shards (e.g. one per rank of a distributed run) as one
    list sorted by image path, each image once: the first of its records in shard order (a distributed sampler that
    pads its last batch predicts an image twice)."""
    merged: dict[str, dict[str, Any]] = {}
    for shard in shards:
        for record in shard:
            merged.setdefault(str(record["image"]), dict(record))
    return [merged[image] for image in sorted(merged)]


def _float(value: Any, where: str, problems: list[str]) -> float:
    """A float from a CSV cell / JSON value; empty or null is NaN; anything else non-numeric is a problem."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return math.nan
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        problems.append(f"{where}: {value!r} is not a number")
        return math.nan


def _pad(points: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Failed images (0 points) become ``(n, 2)`` NaN."""
    return {k: (v if len(v) else np.full((n, 2), np.nan)) for k, v in points.items()}


def _read_json_predictions(path: Path) -> Predictions:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LandmarkDataError(f"{path}: cannot read the prediction JSON: {e}") from e
    if not isinstance(doc, Mapping) or not isinstance(doc.get("predictions"), list):
        raise LandmarkDataError(f"{path}: not a prediction file (expected an object with a 'predictions' list).")
    names = doc.get("landmark_names")
    problems: list[str] = []
    landmarks: dict[str, np.ndarray] = {}
    spacing: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    for i, rec in enumerate(doc["predictions"]):
        where = f"predictions[{i}]"
        if not isinstance(rec, Mapping) or not isinstance(rec.get("image"), str):
            problems.append(f"{where}: expected an object with an 'image' path")
            continue
        image = rec["image"]
        if image in landmarks:
            problems.append(f"{where}: image {image!r} appears more than once")
            continue
        if rec.get("spacing") is not None:
            sp = rec["spacing"]
            values = [_float(s, f"{where}.spacing", problems) for s in sp] if isinstance(sp, list) else []
            if len(values) != 2 or not all(v > 0 for v in values):
                problems.append(f"{where}: spacing must be [sx, sy] positive mm/pixel, got {sp!r}")
            else:
                spacing[image] = np.array(values)
        if rec.get("error"):
            errors[image] = str(rec["error"])
            landmarks[image] = np.zeros((0, 2))
            continue
        entries = rec.get("landmarks")
        if not isinstance(entries, list):
            problems.append(f"{where}: 'landmarks' must be a list")
            continue
        points = np.full((len(entries), 2), np.nan)
        for j, e in enumerate(entries):
            if isinstance(e, Mapping):
                k = e.get("index", j)
                if not isinstance(k, int) or not 0 <= k < len(entries):
                    problems.append(f"{where}.landmarks[{j}]: bad index {k!r}")
                    continue
                points[k] = [_float(e.get(c), f"{where}.landmarks[{j}].{c}", problems) for c in ("x", "y")]
            elif e is None:
                continue
            elif isinstance(e, list) and len(e) == 2:
                points[j] = [_float(v, f"{where}.landmarks[{j}]", problems) for v in e]
            else:
                problems.append(f"{where}.landmarks[{j}]: expected an object, [x, y] or null, got {e!r}")
        landmarks[image] = points
    if problems:
        raise DatalistValidationError(str(path), problems)
    n = max((len(v) for v in landmarks.values()), default=len(names) if isinstance(names, list) else 0)
    return Predictions(_pad(landmarks, n), spacing, errors, names if isinstance(names, list) else None, doc.get("unit"))


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LandmarkDataError(f"{path}: cannot read the CSV: {e}") from e
    if not header:
        raise LandmarkDataError(f"{path}: empty CSV (no header).")
    return [h.strip() for h in header], rows


def _wide_columns(header: list[str], path: Path) -> list[tuple[int, int]]:
    """Column indices ``[(col_xk, col_yk) for k in range(K)]`` of a wide header ``image,x0,y0,...``."""
    found: dict[tuple[str, int], int] = {}
    for c, name in enumerate(header):
        m = _WIDE_COLUMN.match(name)
        if m:
            found[(m.group(1), int(m.group(2)))] = c
    n = 1 + max((k for _, k in found), default=-1)
    missing = [f"{a}{k}" for k in range(n) for a in "xy" if (a, k) not in found]
    if header[0] != "image" or n == 0 or missing:
        detail = f" (missing columns {missing})" if missing else ""
        raise LandmarkDataError(
            f"{path}: unrecognised CSV header{detail}: expected 'image,x0,y0,...' (wide) or "
            f"'{','.join(CSV_COLUMNS)}' (long)."
        )
    return [(found[("x", k)], found[("y", k)]) for k in range(n)]


def _read_wide_csv(path: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> dict[str, np.ndarray]:
    cols = _wide_columns(header, path)
    problems: list[str] = []
    landmarks: dict[str, np.ndarray] = {}
    for line, row in rows:
        if len(row) != len(header):
            problems.append(f"line {line}: expected {len(header)} columns, got {len(row)}")
            continue
        image = row[0].strip()
        if not image or image in landmarks:
            problems.append(f"line {line}: " + ("empty image path" if not image else f"image {image!r} appears twice"))
            continue
        n_problems = len(problems)
        points = np.array(
            [[_float(row[c], f"line {line}, column {header[c]}", problems) for c in pair] for pair in cols]
        )
        half_missing = [k for k, xy in enumerate(np.isnan(points)) if xy.any() and not xy.all()]
        if half_missing and len(problems) == n_problems:
            problems.append(f"line {line}: landmarks {half_missing} have only one of their two coordinates")
        landmarks[image] = points
    if problems:
        raise DatalistValidationError(str(path), problems)
    return landmarks


def _read_long_csv(path: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> Predictions:
    col = {name: header.index(name) for name in CSV_COLUMNS if name in header}
    problems: list[str] = []
    per_image: dict[str, dict[int, tuple[float, float]]] = {}
    names: dict[int, str] = {}
    errors: dict[str, str] = {}
    for line, row in rows:
        if len(row) != len(header):
            problems.append(f"line {line}: expected {len(header)} columns, got {len(row)}")
            continue
        image = row[col["image"]].strip()
        if not image:
            problems.append(f"line {line}: empty image path")
            continue
        points = per_image.setdefault(image, {})
        error = row[col["error"]].strip() if "error" in col else ""
        if error:
            errors[image] = error
            continue
        try:
            k = int(row[col["index"]])
            if k < 0:
                raise ValueError
        except ValueError:
            problems.append(f"line {line}: index {row[col['index']]!r} is not a non-negative integer")
            continue
        if k in points:
            problems.append(f"line {line}: landmark {k} of {image!r} appears twice")
            continue
        points[k] = (
            _float(row[col["x"]], f"line {line}, column x", problems),
            _float(row[col["y"]], f"line {line}, column y", problems),
        )
        if "name" in col and row[col["name"]].strip():
            names.setdefault(k, row[col["name"]].strip())
    for image in errors:
        if per_image[image]:
            problems.append(f"image {image!r} has both an error row and landmark rows")
    if problems:
        raise DatalistValidationError(str(path), problems)
    n = 1 + max((k for pts in per_image.values() for k in pts), default=-1)
    landmarks = {}
    for image, pts in per_image.items():
        arr = np.full((n, 2), np.nan)
        for k, xy in pts.items():
            arr[k] = xy
        landmarks[image] = arr
    landmark_names = [names.get(k, f"landmark_{k}") for k in range(n)] if names else None
    return Predictions(landmarks, {}, errors, landmark_names, None)


def read_prediction_file(path: str | os.PathLike) -> Predictions:
    """Read a prediction file: our JSON, our long CSV, or a wide CSV (``image,x0,y0,...``).

    Failed images (an ``error``) get all-NaN points. Raises :class:`LandmarkDataError` (a
    :class:`DatalistValidationError` listing every bad row) on malformed input.
    """
    path = Path(path)
    if not path.is_file():
        raise LandmarkDataError(f"{path}: prediction file not found.")
    if path.suffix.lower() == ".json":
        return _read_json_predictions(path)
    header, rows = _read_csv_rows(path)
    if {"image", "index", "x", "y"} <= set(header):
        return _read_long_csv(path, header, rows)
    return Predictions(_read_wide_csv(path, header, rows), {}, {}, None, None)


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``image -> (K, 2)`` predicted pixels (NaN where missing) from any format :func:`read_prediction_file` reads."""
    return read_prediction_file(path).landmarks


def _read_datalist_section(path: Path, section: str) -> GroundTruth:
    data = validate_datalist(path, sections=(section,), check_files=False)
    if not isinstance(data.get(section), list):
        sections = [k for k in SECTIONS if k in data]
        raise LandmarkDataError(f"{path}: no section {section!r} in the datalist (sections: {sections}).")
    entries = load_datalist(path, section, validate=False)
    unannotated = [
        f"{section}[{i}] {e['image']}: no 'landmarks'"
        for i, e in enumerate(entries)
        if "landmarks" not in e
    ]
    if unannotated:
        raise DatalistValidationError(str(path), unannotated)
    landmarks = {e["image"]: np.asarray(e["landmarks"], dtype=np.float64) for e in entries}
    spacing = {e["image"]: np.asarray(e["spacing"], dtype=np.float64) for e in entries if "spacing" in e}
    names = data.get("landmarks")
    reference = data.get("reference") if isinstance(data.get("reference"), Mapping) else None
    names = [str(n) for n in names] if names else None
    return GroundTruth(landmarks, spacing, names, data.get("spacing_mode"), reference)


def read_ground_truth(path: str | os.PathLike, section: str = "validation") -> GroundTruth:
    """Ground truth from a datalist JSON (its ``section``) or a wide CSV (``image,x0,y0,...``).

    The datalist is checked with :func:`~monai_ext.data.datalist.validate_datalist` (image files need not
    exist) and read with :func:`~monai_ext.data.datalist.load_datalist`; every entry of the section must have
    landmarks. Returns :class:`GroundTruth`: ``landmarks`` image -> ``(K, 2)`` pixels (NaN where missing),
    ``spacing`` image -> ``(2,)`` mm/pixel for the entries that give one, the landmark names, the datalist's
    ``spacing_mode`` and ``reference`` (None for a CSV).
    """
    path = Path(path)
    if not path.is_file():
        raise LandmarkDataError(f"{path}: ground-truth file not found.")
    if path.suffix.lower() == ".json":
        return _read_datalist_section(path, section)
    header, rows = _read_csv_rows(path)
    return GroundTruth(_read_wide_csv(path, header, rows), {}, None, None)


def _resolve(image: str, base: Path) -> str:
    p = Path(image).expanduser()
    return str((p if p.is_absolute() else base / p).resolve())


def match_images(
    pred_images: Iterable[str], gt_images: Iterable[str], pred_base: str | os.PathLike, gt_base: str | os.PathLike
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Pair prediction and ground-truth images by path.

    Paths are compared as resolved absolute paths (relative ones against ``pred_base`` / ``gt_base``, the
    folders of the two files); an image left unpaired then matches by file name when that name is unique
    among both the predictions and the ground truth.

    Returns:
        ``(pairs [(pred_image, gt_image)] in ground-truth order, unmatched predictions, unmatched ground truth)``.
    """
    preds, gts = list(pred_images), list(gt_images)
    pred_by_path = {_resolve(p, Path(pred_base)): p for p in preds}
    matched: dict[str, str] = {}
    for g in gts:
        p = pred_by_path.get(_resolve(g, Path(gt_base)))
        if p is not None:
            matched[g] = p
    pred_names = Counter(Path(p).name for p in preds)
    gt_names = Counter(Path(g).name for g in gts)
    used = set(matched.values())
    free_preds = {Path(p).name: p for p in preds if p not in used and pred_names[Path(p).name] == 1}
    for g in gts:
        name = Path(g).name
        if g not in matched and gt_names[name] == 1 and name in free_preds:
            matched[g] = free_preds.pop(name)
    pairs = [(matched[g], g) for g in gts if g in matched]
    used = set(matched.values())
    return pairs, [p for p in preds if p not in used], [g for g in gts if g not in matched]
