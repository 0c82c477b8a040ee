"""The one datalist format shared by every bundle (MONAI decathlon-style JSON).

.. code-block:: json

    {"name": "hand_xray", "landmarks": ["l0", "l1", ...], "flip_pairs": [[0, 3], ...],
     "spacing_mode": "image" | "datalist" | "reference_distance" | "pixel",
     "reference": {"landmarks": [1, 5], "distance_mm": 50.0},
     "training": [{"image": "images/0001.jpg", "landmarks": [[x, y], null, ...], "spacing": [sx, sy]}],
     "validation": [...], "test": [...]}

Coordinates are in the original image's pixels, x = column, y = row, pixel centres at integers;
``null`` (or ``[null, null]``) marks a missing landmark, read as ``NaN``. Image paths are relative to
the datalist's folder. ``spacing`` (mm/pixel along x and y) is optional: without it the image file's
spacing is used (DICOM/NIfTI), else the image is measured in pixels. ``spacing_mode`` says where the
spacing came from: ``image`` (file tags), ``datalist`` (given per entry), ``reference_distance``
(derived per image from two landmarks a known distance apart, stored per entry) or ``pixel`` (none:
errors are reported in pixels).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.errors import DatalistValidationError, LandmarkDataError
from monai_ext.utils import atomic_write

__all__ = [
    "evaluation_section",
    "first_image",
    "SECTIONS",
    "SPACING_MODES",
    "read_datalist",
    "load_datalist",
    "validate_datalist",
    "write_datalist",
    "landmarks_to_json",
    "list_images",
]

SECTIONS = ("training", "validation", "test")
SPACING_MODES = ("image", "datalist", "reference_distance", "pixel")


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON as is (no validation); a clear error when the file is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise LandmarkDataError(f"{path}: datalist file does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise LandmarkDataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    if not isinstance(data, dict):
        raise LandmarkDataError(f"{path}: a datalist must be a JSON object, got {type(data).__name__}")
    return data


def _parse_point(value: Any) -> tuple[float, float] | None:
    """A point ``[x, y]``; ``None``/``[None, None]``/NaN → missing. Returns None when malformed."""
    if value is None:
        return (math.nan, math.nan)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    if value[0] is None and value[1] is None:
        return (math.nan, math.nan)
    try:
        x, y = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    if math.isinf(x) or math.isinf(y) or (math.isnan(x) != math.isnan(y)):
        return None
    return (x, y)


def _entry_problems(entry: Any, row: int, section: str, base: Path, n_landmarks: int | None, check_files: bool):
    where = f"{section}[{row}]"
    if not isinstance(entry, dict):
        return [f"{where}: entry must be an object, got {type(entry).__name__}"], None
    problems = []
    image = entry.get("image")
    if not isinstance(image, str) or not image:
        problems.append(f"{where}: missing 'image' path")
        image_path = None
    else:
        image_path = Path(image) if os.path.isabs(image) else base / image
        where = f"{section}[{row}] {image}"
        if check_files and not image_path.is_file():
            problems.append(f"{where}: image file does not exist ({image_path})")
    pts = entry.get("landmarks")
    if pts is not None:
        if not isinstance(pts, (list, tuple)):
            problems.append(f"{where}: 'landmarks' must be a list of [x, y] points")
        else:
            if n_landmarks is not None and len(pts) != n_landmarks:
                problems.append(f"{where}: {len(pts)} landmarks, expected {n_landmarks}")
            for k, p in enumerate(pts):
                if _parse_point(p) is None:
                    problems.append(f"{where}: landmark {k} is not a point [x, y] of two numbers or null: {p!r}")
    spacing = entry.get("spacing")
    if spacing is not None:
        ok = isinstance(spacing, (list, tuple)) and len(spacing) == 2
        try:
            ok = ok and all(float(s) > 0 and math.isfinite(float(s)) for s in spacing)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(f"{where}: 'spacing' must be two positive numbers [sx, sy] in mm/pixel, got {spacing!r}")
    return problems, image_path


def validate_datalist(
    path: str | os.PathLike,
    landmark_names: Sequence[str] | None = None,
    sections: Sequence[str] = SECTIONS,
    check_files: bool = True,
    require_landmarks: bool = True,
) -> dict[str, Any]:
    """Check a whole datalist and raise one :class:`DatalistValidationError` listing every bad row.

    Checks: the landmark names (against ``landmark_names`` when given, e.g. the bundle's), the point
    count and values of every entry, positive spacings, existing image files and images listed twice.

    Returns:
        the parsed datalist.
    """
    path = Path(path)
    data = read_datalist(path)
    base = path.parent
    problems: list[str] = []
    names = data.get("landmarks")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        problems.append("'landmarks' must be a list of landmark names")
        names = None
    if landmark_names is not None:
        if names is None:
            names = list(landmark_names)
        elif list(names) != list(landmark_names):
            problems.append(
                f"landmark names disagree with the bundle: datalist has {len(names)} {names[:6]}..., "
                f"bundle expects {len(landmark_names)} {list(landmark_names)[:6]}..."
            )
    n_landmarks = len(names) if names is not None else None
    mode = data.get("spacing_mode", "image")
    if mode not in SPACING_MODES:
        problems.append(f"'spacing_mode' must be one of {SPACING_MODES}, got {mode!r}")
    for i, j in data.get("flip_pairs", []) or []:
        if n_landmarks is not None and not (0 <= int(i) < n_landmarks and 0 <= int(j) < n_landmarks):
            problems.append(f"flip pair ({i}, {j}) is outside 0..{n_landmarks - 1}")
    seen: dict[str, str] = {}
    for section in sections:
        entries = data.get(section, [])
        if not isinstance(entries, list):
            problems.append(f"'{section}' must be a list of entries")
            continue
        for row, entry in enumerate(entries):
            p, image_path = _entry_problems(entry, row, section, base, n_landmarks, check_files)
            problems.extend(p)
            if require_landmarks and isinstance(entry, dict) and "landmarks" not in entry and section != "test":
                problems.append(f"{section}[{row}] {entry.get('image')}: no 'landmarks' (needed for {section})")
            if image_path is not None:
                key = str(image_path.resolve())
                if key in seen:
                    problems.append(f"{section}[{row}] {entry['image']}: image listed twice (also {seen[key]})")
                else:
                    seen[key] = f"{section}[{row}]"
    if problems:
        raise DatalistValidationError(str(path), problems)
    return data


def load_datalist(
    path: str | os.PathLike,
    section: str = "training",
    landmark_names: Sequence[str] | None = None,
    validate: bool = True,
) -> list[dict[str, Any]]:
    """Entries of one section ready for a MONAI ``Dataset``.

    Each item: ``image`` (absolute path), ``landmarks`` float32 ``(K, 2)`` with NaN for missing ones
    (only when annotated), ``spacing`` float64 ``(2,)`` (only when given), plus any other keys as is.
    The whole file is validated first (every problem reported at once) unless ``validate=False``.
    """
    path = Path(path)
    data = validate_datalist(path, landmark_names) if validate else read_datalist(path)
    if section not in data:
        raise LandmarkDataError(f"{path}: no '{section}' section (has {[s for s in SECTIONS if s in data]})")
    items = []
    for entry in data[section]:
        item = dict(entry)
        image = Path(entry["image"])
        item["image"] = str(image if image.is_absolute() else (path.parent / image).resolve())
        if entry.get("landmarks") is not None:
            item["landmarks"] = np.asarray([_parse_point(p) for p in entry["landmarks"]], dtype=np.float32)
        if entry.get("spacing") is not None:
            item["spacing"] = np.asarray(entry["spacing"], dtype=np.float64)
        else:
            item.pop("spacing", None)
        items.append(item)
    return items


def landmarks_to_json(points: Any) -> list[list[float] | None]:
    """``(K, 2)`` array (or a JSON-style list with ``None`` points) → JSON list with ``null`` for missing (NaN) points."""
    if isinstance(points, (list, tuple)):
        points = [(math.nan, math.nan) if p is None else p for p in points]
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return [None if np.isnan(p).any() else [float(p[0]), float(p[1])] for p in arr]


def write_datalist(path: str | os.PathLike, datalist: dict[str, Any]) -> Path:
    """Write a datalist atomically; numpy landmark arrays/NaN become JSON lists/``null``."""

    def clean(entry: dict) -> dict:
        out = dict(entry)
        if "landmarks" in out and out["landmarks"] is not None:
            out["landmarks"] = landmarks_to_json(out["landmarks"])
        if "spacing" in out and out["spacing"] is not None:
            out["spacing"] = [float(s) for s in np.asarray(out["spacing"]).reshape(-1)]
        return out

    doc = {k: ([clean(e) for e in v] if k in SECTIONS else v) for k, v in datalist.items()}
    with atomic_write(path) as f:
        json.dump(doc, f, indent=1, allow_nan=False)
    return Path(path)


IMAGE_SUFFIXES = (".dcm", ".dicom", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def first_image(path: str | os.PathLike, section: str = "training") -> str | None:
    """The absolute path of the first image of a datalist ``section`` (e.g. a histogram-matching reference), or
    ``None`` when the section is empty or absent."""
    items = read_datalist(path).get(section) or []
    if not items:
        return None
    image = Path(items[0]["image"])
    return str(image if image.is_absolute() else (Path(path).parent / image).resolve())


def evaluation_section(path: str | os.PathLike) -> str:
    """The section a trained model is evaluated on: ``"test"`` when the datalist has test images (the split that
    checkpoint selection, which uses ``"validation"``, never saw), else ``"validation"``."""
    return "test" if read_datalist(path).get("test") else "validation"


def list_images(source: str | os.PathLike | Sequence[str], section: str = "test") -> list[dict[str, Any]]:
    """Inference items ``[{"image": path}, ...]`` from a folder (every image in it, sorted), a list of files,
    one image file, or a datalist JSON (its ``section``, ground truth kept when present)."""
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
    else:
        src = Path(source)
        if src.suffix.lower() == ".json":
            return load_datalist(src, section, validate=False)
        if src.is_dir():
            paths = sorted(p for p in src.iterdir() if p.is_file() and str(p).lower().endswith(IMAGE_SUFFIXES))
            if not paths:
                raise LandmarkDataError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        else:
            paths = [src]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise LandmarkDataError(f"image file(s) do not exist: {missing}")
    return [{"image": str(p.resolve())} for p in paths]
