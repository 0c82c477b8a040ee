"""Landmarks in MONAI Label: the result JSON of an inference, landmark label images (a small disc per landmark)
and reading landmarks back from a label (disc image or JSON) for training.

Coordinates follow :mod:`monai_ext`: ``(x, y)`` = (column, row) in the ORIGINAL image's pixels, pixel centres at
integers; label arrays are ``(W, H)`` (axis 0 = x) like MONAI's images. Missing landmarks are NaN (JSON null).
Nothing here imports monailabel.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.data.predictions import make_prediction_record
from monai_ext.data.readers import read_radiograph
from monai_ext.errors import LandmarkDataError
from monai_ext.utils import atomic_path

__all__ = ["clicks_by_index", "disc_label", "landmark_result", "points_from_disc_label", "points_from_json",
           "read_landmark_label", "write_label"]

COORDINATES = "x = column, y = row, in the original image's pixels; pixel centres at integers (top-left = (0, 0))"


def landmark_result(
    points: Any,
    confidence: Any,
    names: Sequence[str],
    spacing: Any,
    spacing_source: str,
    image_size: Sequence[int],
    per_landmark: Any = None,
) -> dict[str, Any]:
    """The result JSON of one inference.

    Args:
        points: ``(K, 2)`` predicted ``(x, y)`` in original pixels (NaN where missing).
        confidence: ``(K,)`` heatmap peak values, or None.
        names: K landmark names.
        spacing: ``(sx, sy)`` mm/pixel, or None when the image has none (``spacing_source`` ``"none"``).
        spacing_source: where the spacing came from (``"PixelSpacing"``, ``"nifti"``, ...).
        image_size: ``(W, H)`` of the original image in pixels.
        per_landmark: further per-landmark fields, name -> ``(K,)`` (a calibrated model's ``region``, ``region_mm``
            and ``review``), added to each landmark's entry.

    Returns:
        ``{"landmarks": [{"index", "name", "x", "y", "x_mm", "y_mm", "confidence"}], "spacing", "spacing_source",
        "unit", "image_size", "coordinates"}`` (``x_mm``/``y_mm`` null without spacing).
    """
    if spacing_source == "none":
        spacing = None
    record = make_prediction_record("", landmarks=points, confidence=confidence, spacing=spacing,
                                    spacing_source=spacing_source, landmark_names=list(names), per_landmark=per_landmark)
    return {
        "landmarks": record["landmarks"],
        "spacing": record["spacing"],
        "spacing_source": record["spacing_source"],
        "unit": "mm" if record["spacing"] is not None else "px",
        "image_size": [int(s) for s in image_size],
        "coordinates": COORDINATES,
    }


def clicks_by_index(clicks: Any, names: Sequence[str], source: str = "") -> Any:
    """The clicks of a request with each landmark given by index: ``[{"landmark": k or name, "x", "y"}, ...]`` ->
    ``[{"landmark": k, "x", "y"}, ...]`` (``k`` = position in ``names``). A JSON string is decoded first.

    Only the names are resolved here; everything else (keys, numbers, index range, inside the image) is checked by
    the bundle's :class:`~monai_ext.transforms.ClicksToHintsd`, so anything that is not a list of objects is passed
    on unchanged. Raises :class:`LandmarkDataError` naming ``source`` for a name that is not a landmark.
    """
    where = f"{source}: " if source else ""
    if isinstance(clicks, str):
        try:
            clicks = json.loads(clicks) if clicks.strip() else None
        except json.JSONDecodeError as e:
            raise LandmarkDataError(f"{where}clicks are not valid JSON ({e.msg})") from e
    if not isinstance(clicks, list):
        return clicks
    index = {str(n): k for k, n in enumerate(names)}
    out = []
    for n, click in enumerate(clicks):
        landmark = click.get("landmark") if isinstance(click, Mapping) else None
        if not isinstance(landmark, str):
            out.append(click)
            continue
        if landmark in index:
            landmark = index[landmark]
        else:
            try:
                landmark = int(landmark)
            except ValueError:
                raise LandmarkDataError(
                    f"{where}click {n}: {landmark!r} is neither a landmark index (0..{len(names) - 1}) nor one of "
                    f"the landmark names {list(names)}"
                ) from None
        out.append({**click, "landmark": landmark})
    return out


def disc_label(points: Any, image_size: Sequence[int], radius: Any = 3.0) -> np.ndarray:
    """A label image ``(W, H)`` with a disc of ``radius`` pixels around each landmark (one radius, or ``(K,)``: e.g.
    each landmark's conformal region): value ``k + 1`` for landmark ``k``, 0 elsewhere (a later landmark wins where
    discs overlap). Missing landmarks draw nothing. uint8 up to 255 landmarks, else uint16."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    radii = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(pts),))
    if not np.all(radii > 0):
        raise ValueError(f"disc radius must be positive, got {radius}.")
    w, h = (int(s) for s in image_size)
    label = np.zeros((w, h), dtype=np.uint8 if len(pts) < 256 else np.uint16)
    xs, ys = np.arange(w)[:, None], np.arange(h)[None, :]
    for k, (x, y) in enumerate(pts):
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(radii[k])):
            continue
        radius = float(radii[k])
        r = int(math.ceil(radius))
        x0, x1 = max(int(math.floor(x)) - r, 0), min(int(math.ceil(x)) + r + 1, w)
        y0, y1 = max(int(math.floor(y)) - r, 0), min(int(math.ceil(y)) + r + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        inside = (xs[x0:x1] - x) ** 2 + (ys[:, y0:y1] - y) ** 2 <= radius**2
        label[x0:x1, y0:y1][inside] = k + 1
    return label


def points_from_disc_label(label: np.ndarray, num_landmarks: int) -> np.ndarray:
    """``(K, 2)`` landmarks from a disc label ``(W, H)``: the centroid of the pixels of value ``k + 1``; NaN for
    landmarks without pixels. Values above ``num_landmarks`` are an error."""
    arr = np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f"a landmark label must be 2D (W, H), got shape {arr.shape}.")
    values = np.rint(arr).astype(np.int64)
    if values.min() < 0 or values.max() > num_landmarks:
        raise ValueError(f"label values must lie in [0, {num_landmarks}], got [{values.min()}, {values.max()}].")
    points = np.full((num_landmarks, 2), np.nan)
    for k in range(num_landmarks):
        xs, ys = np.nonzero(values == k + 1)
        if xs.size:
            points[k] = xs.mean(), ys.mean()
    return points


def points_from_json(doc: Mapping[str, Any], names: Sequence[str]) -> np.ndarray:
    """``(K, 2)`` landmarks (K = ``len(names)``) from a JSON label: a result of :func:`landmark_result`
    (``{"landmarks": [{"name", "x", "y"}, ...]}``, matched by name) or a datalist-style entry
    (``{"landmarks": [[x, y] or null, ...]}`` in the order of ``names``). Absent landmarks are NaN."""
    entries = doc.get("landmarks")
    if not isinstance(entries, list):
        raise ValueError("a JSON landmark label needs a 'landmarks' list.")
    points = np.full((len(names), 2), np.nan)
    if entries and all(isinstance(e, Mapping) for e in entries):
        index = {str(n): k for k, n in enumerate(names)}
        unknown = [e.get("name") for e in entries if str(e.get("name")) not in index]
        if unknown:
            raise ValueError(f"unknown landmark names {unknown} (expected {list(names)}).")
        for e in entries:
            if e.get("x") is not None and e.get("y") is not None:
                points[index[str(e["name"])]] = float(e["x"]), float(e["y"])
        return points
    if len(entries) != len(names):
        raise ValueError(f"got {len(entries)} landmarks, expected {len(names)}.")
    for k, e in enumerate(entries):
        if e is not None:
            if len(e) != 2:
                raise ValueError(f"landmark {k}: expected [x, y] or null, got {e!r}.")
            points[k] = float(e[0]), float(e[1])
    return points


def read_landmark_label(path: str | os.PathLike, names: Sequence[str]) -> np.ndarray:
    """``(K, 2)`` landmarks of a datastore label: a ``.json`` file (:func:`points_from_json`) or a disc label
    image, NIfTI/PNG/... (:func:`points_from_disc_label`).

    Raises:
        LandmarkDataError: unreadable or malformed label; the message names the file.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            return points_from_json(json.loads(path.read_text()), names)
        array, _ = read_radiograph(path, min_size=1)
        return points_from_disc_label(array, len(names))
    except LandmarkDataError:
        raise
    except (OSError, ValueError) as e:
        raise LandmarkDataError(f"{path}: not a landmark label ({e})") from e


def write_label(label: np.ndarray, path: str | os.PathLike, spacing: Sequence[float] | None = None) -> Path:
    """Write a label ``(W, H)`` atomically: NIfTI (``.nii``/``.nii.gz``, affine from ``spacing`` so it overlays
    the image in mm) or an 8/16-bit PNG (stored as rows, ``label.T``)."""
    path = Path(path)
    name = path.name.lower()
    with atomic_path(path) as tmp:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            sx, sy = spacing if spacing is not None else (1.0, 1.0)
            # the temp name must keep the .nii(.gz) suffix for nibabel to pick the format
            target = tmp.with_name(tmp.name + (".nii.gz" if name.endswith(".gz") else ".nii"))
            nib.save(nib.Nifti1Image(np.asarray(label), np.diag([float(sx), float(sy), 1.0, 1.0])), str(target))
            os.replace(target, tmp)
        elif name.endswith(".png"):
            from PIL import Image

            Image.fromarray(np.ascontiguousarray(np.asarray(label).T)).save(tmp, format="PNG")
        else:
            raise ValueError(f"{path}: unsupported label format (use .nii.gz, .nii or .png).")
    return path
