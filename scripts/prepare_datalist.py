"""Build a landmark datalist (see :mod:`monai_ext.data.datalist`) from the shared datasets or your own files.

Examples::

    # the real datasets of ../shared/data (images are referenced, never copied)
    python scripts/prepare_datalist.py shared --dataset hand_xray      # -> data/hand_xray/datalist.json
    python scripts/prepare_datalist.py shared --dataset spine_aasce    # -> data/spine_aasce/datalist.json
    # K-fold cross-validation: K datalists whose test sections partition the images (Payer et al.: 3 folds)
    python scripts/prepare_datalist.py shared --dataset hand_xray --folds 3  # -> data/hand_xray/datalist_fold0.json ...
    # a folder of DICOMs and a CSV (image,x0,y0,x1,y1,...) or JSON ({image: [[x, y], ...]}) of points
    python scripts/prepare_datalist.py dicom_folder --folder my/dicoms --points my/points.csv \\
        --out data/mine/datalist.json
    # a folder of images to run inference on (a "test" section, no landmarks)
    python scripts/prepare_datalist.py images_folder --folder my/images --out data/infer/datalist.json

Every command that splits writes three disjoint, seeded sections: ``training``, ``validation`` (checkpoint
selection) and ``test`` (the figures: never seen while training or selecting), with ``split_seed`` and
``split_sizes`` recorded; ``--folds K`` writes K datalists instead (``fold``, ``folds`` recorded) whose ``test``
sections together hold every image exactly once. Image paths in the datalist are relative to the datalist's
folder. Points are ``(x, y)`` pixels of the original image (x = column, y = row, pixel centres at integers); a
missing point is an empty cell (both coordinates) in CSV and ``null`` in JSON. Every bad input row is reported at
once, with its line, file and reason (:class:`~monai_ext.errors.DatalistValidationError`); the datalist is
validated with :func:`~monai_ext.data.datalist.validate_datalist` before it replaces ``out``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from monai_ext.data.datalist import validate_datalist, write_datalist  # noqa: E402
from monai_ext.data.readers import DICOM_SUFFIXES, NIFTI_SUFFIXES, PIL_SUFFIXES  # noqa: E402
from monai_ext.errors import DatalistValidationError, LandmarkDataError  # noqa: E402
from monai_ext.metrics.distances import reference_distance_spacing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

VERTEBRAE = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))
SPINE_CORNERS = ("TL", "TR", "BL", "BR")  # AASCE order: top-left, top-right, bottom-left, bottom-right
SPINE_LANDMARKS = tuple(f"{v}_{c}" for v in VERTEBRAE for c in SPINE_CORNERS)
SPINE_FLIP_PAIRS = tuple((4 * v + a, 4 * v + b) for v in range(len(VERTEBRAE)) for a, b in ((0, 1), (2, 3)))
COBB_COLUMNS = ("cobb_main", "cobb_upper", "cobb_lower")
HAND_LANDMARKS = tuple(f"L{i}" for i in range(37))  # Payer et al. 2019 numbering; the data gives no names
HAND_REFERENCE = {"landmarks": [1, 5], "distance_mm": 50.0}

#: per shared dataset: landmark names, flip pairs, extra CSV columns, description.
SHARED = {
    "hand_xray": {
        "landmarks": HAND_LANDMARKS,
        # a flipped left hand is a right hand with the same labels: flipping permutes no landmark
        "flip_pairs": (),
        "extra_columns": (),
        "description": "Digital Hand Atlas subset (37 landmarks, Payer et al. 2019); spacing from the 50 mm "
        "wrist width between landmarks 1 and 5.",
    },
    "spine_aasce": {
        "landmarks": SPINE_LANDMARKS,
        "flip_pairs": SPINE_FLIP_PAIRS,
        "extra_columns": COBB_COLUMNS,
        "description": "AASCE 2019 training part: 4 corners of T1..L5 (68 landmarks), Cobb angles in 'cobb' "
        "[main, upper, lower] degrees; no pixel spacing (errors in pixels).",
    },
}

IMAGE_SUFFIXES = DICOM_SUFFIXES + NIFTI_SUFFIXES + PIL_SUFFIXES
#: default validation / test fractions of all images (rounded): 11 / 22 of hand_xray's 112, 48 / 96 of spine_aasce's 481
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2


# ----------------------------------------------------------------------------------------------
# point files
# ----------------------------------------------------------------------------------------------


def _resolve(image: str, folder: Path) -> Path:
    return Path(image) if os.path.isabs(image) else folder / image


def _point(x: Any, y: Any) -> tuple[float, float] | str:
    """Parse one ``(x, y)``; empty/None/NaN for both → missing (NaN). Returns the reason when bad."""

    def value(v: Any) -> float | None:
        if v is None or (isinstance(v, str) and v.strip() == ""):
            return math.nan
        if isinstance(v, bool):
            return None
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    fx, fy = value(x), value(y)
    if fx is None or fy is None:
        return f"non-numeric coordinate ({x!r}, {y!r})"
    if math.isinf(fx) or math.isinf(fy):
        return f"infinite coordinate ({x!r}, {y!r})"
    if math.isnan(fx) != math.isnan(fy):
        return f"only one coordinate given ({x!r}, {y!r}); a missing point leaves both empty"
    return (fx, fy)


def _check_image(image: str, folder: Path, seen: dict[str, str], where: str, problems: list[str]) -> None:
    path = _resolve(image, folder)
    if not image:
        problems.append(f"{where}: empty image path")
        return
    if not path.is_file():
        problems.append(f"{where} {image}: image file does not exist ({path})")
    key = str(path.resolve())
    if key in seen:
        problems.append(f"{where} {image}: image listed twice (also {seen[key]})")
    else:
        seen[key] = where


def read_points_csv(
    path: str | os.PathLike,
    folder: str | os.PathLike,
    num_landmarks: int | None = None,
    extra_columns: Sequence[str] = (),
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Read a wide CSV ``image,x0,y0,...,x{K-1},y{K-1}[,extra...]`` (header optional).

    ``image`` is relative to ``folder`` (or absolute). ``extra_columns`` (e.g. Cobb angles) are read as
    numbers by name and need a header. Without a header every row is ``image`` then ``2K`` coordinates.

    Returns:
        rows ``{"image": str, "landmarks": float64 (K, 2) (NaN = missing), "extra": [float, ...]}``.

    Raises:
        DatalistValidationError: listing every bad line (wrong coordinate count, non-numeric value,
            duplicated or missing image).
    """
    path, folder = Path(path), Path(folder)
    if not path.is_file():
        raise LandmarkDataError(f"{path}: points file does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheet CSVs start with a BOM
        lines = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    if not lines:
        raise LandmarkDataError(f"{path}: empty points file")
    header = [c.strip() for c in lines[0][1]]
    has_header = header[0].lower() == "image"
    if has_header:
        lines = lines[1:]
        missing = [c for c in extra_columns if c not in header]
        if missing:
            raise LandmarkDataError(f"{path}: header has no column(s) {missing} (header: {header[:4]}...)")
        extra_idx = [header.index(c) for c in extra_columns]
        coord_idx = [i for i in range(1, len(header)) if i not in extra_idx]
        if len(coord_idx) % 2:
            raise LandmarkDataError(f"{path}: odd number of coordinate columns ({len(coord_idx)}) in the header")
        if num_landmarks is not None and len(coord_idx) != 2 * num_landmarks:
            raise LandmarkDataError(
                f"{path}: header has {len(coord_idx) // 2} points (x, y column pairs), expected {num_landmarks}"
            )
        width = len(header)
    else:
        if extra_columns:
            raise LandmarkDataError(f"{path}: no header line (image,x0,y0,...), needed for {list(extra_columns)}")
        extra_idx = []
        if num_landmarks is None:  # the most common row length decides
            lengths = [len(row) for _, row in lines]
            width = max(set(lengths), key=lengths.count)
            if (width - 1) % 2:
                raise LandmarkDataError(f"{path}: rows have {width - 1} coordinate values, not x, y pairs")
        else:
            width = 1 + 2 * num_landmarks
        coord_idx = list(range(1, width))
    n_coords = len(coord_idx)

    problems: list[str] = []
    seen: dict[str, str] = {}
    rows = []
    for line, row in lines:
        image = row[0].strip()
        where = f"line {line}"
        if len(row) != width:
            problems.append(
                f"{where} {image}: {len(row) - 1 - len(extra_idx)} coordinate values, expected {n_coords} "
                f"({n_coords // 2} points)"
            )
            continue
        if check_files:
            _check_image(image, folder, seen, where, problems)
        points, bad = [], []
        for k in range(n_coords // 2):
            p = _point(row[coord_idx[2 * k]], row[coord_idx[2 * k + 1]])
            (bad.append(f"point {k}: {p}") if isinstance(p, str) else points.append(p))
        extra = []
        for name, i in zip(extra_columns, extra_idx):
            try:
                extra.append(float(row[i]))
            except ValueError:
                bad.append(f"{name}: non-numeric value {row[i]!r}")
        if bad:
            problems.append(f"{where} {image}: " + "; ".join(bad))
            continue
        rows.append({"image": image, "landmarks": np.asarray(points, dtype=np.float64).reshape(-1, 2), "extra": extra})
    if problems:
        raise DatalistValidationError(str(path), problems)
    if not rows:
        raise LandmarkDataError(f"{path}: no data rows")
    return rows


def read_points_json(
    path: str | os.PathLike, folder: str | os.PathLike, num_landmarks: int | None = None, check_files: bool = True
) -> list[dict[str, Any]]:
    """Read ``{"image": [[x, y] | null, ...], ...}`` (images relative to ``folder``); same rows and errors
    as :func:`read_points_csv`. Without ``num_landmarks`` the most common point count is expected."""
    path, folder = Path(path), Path(folder)
    if not path.is_file():
        raise LandmarkDataError(f"{path}: points file does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LandmarkDataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    if not isinstance(data, dict) or not data:
        raise LandmarkDataError(f"{path}: expected a non-empty object {{image: [[x, y], ...]}}")
    if num_landmarks is None:
        counts = [len(v) for v in data.values() if isinstance(v, list)]
        num_landmarks = max(set(counts), key=counts.count) if counts else 0
    problems: list[str] = []
    seen: dict[str, str] = {}
    rows = []
    for image, pts in data.items():
        where = "entry"
        if not isinstance(pts, list):
            problems.append(f"{where} {image}: expected a list of [x, y] points, got {type(pts).__name__}")
            continue
        if len(pts) != num_landmarks:
            problems.append(f"{where} {image}: {len(pts)} points, expected {num_landmarks}")
            continue
        if check_files:
            _check_image(image, folder, seen, where, problems)
        points, bad = [], []
        for k, p in enumerate(pts):
            if p is None:
                points.append((math.nan, math.nan))
                continue
            if not isinstance(p, list) or len(p) != 2:
                bad.append(f"point {k}: not [x, y]: {p!r}")
                continue
            q = _point(*p)
            (bad.append(f"point {k}: {q}") if isinstance(q, str) else points.append(q))
        if bad:
            problems.append(f"{where} {image}: " + "; ".join(bad))
            continue
        rows.append({"image": image, "landmarks": np.asarray(points, dtype=np.float64).reshape(-1, 2), "extra": []})
    if problems:
        raise DatalistValidationError(str(path), problems)
    return rows


def read_points(path: str | os.PathLike, folder: str | os.PathLike, num_landmarks: int | None = None) -> list[dict]:
    """:func:`read_points_json` for ``.json`` files, else :func:`read_points_csv`."""
    if str(path).lower().endswith(".json"):
        return read_points_json(path, folder, num_landmarks)
    return read_points_csv(path, folder, num_landmarks)


# ----------------------------------------------------------------------------------------------
# splitting and writing
# ----------------------------------------------------------------------------------------------


def split_indices(n: int, n_val: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)`` into sorted training and validation indices (``n_val`` of them)."""
    train, val, _ = split_sections(n, n_val, 0, seed)
    return train, val


def split_sections(n: int, n_val: int, n_test: int = 0, seed: int = 0) -> tuple[list[int], list[int], list[int]]:
    """Seeded split of ``range(n)`` into sorted, disjoint training, validation and test indices.

    The test images are drawn first, so the test section depends only on ``(n, n_test, seed)``: changing the
    validation size never moves an image into or out of the test section. With ``n_test=0`` the validation is
    that of :func:`split_indices`.
    """
    if not 0 <= n_test <= n:
        raise ValueError(f"n_test must be in 0..{n}, got {n_test}")
    if not 0 <= n_val <= n - n_test:
        raise ValueError(f"n_val must be in 0..{n - n_test} (n={n}, n_test={n_test}), got {n_val}")
    perm = np.random.default_rng(seed).permutation(n).tolist()
    test, val = set(perm[:n_test]), set(perm[n_test : n_test + n_val])
    return [i for i in range(n) if i not in test and i not in val], sorted(val), sorted(test)


def fold_indices(n: int, folds: int, seed: int = 0) -> list[list[int]]:
    """``folds`` disjoint, seeded, near-equal parts of ``range(n)`` (sizes differ by at most one), each sorted;
    together they hold every index exactly once."""
    if isinstance(folds, bool) or int(folds) != folds or not 2 <= folds <= n:
        raise ValueError(f"folds must be an integer in 2..{n} (the number of images), got {folds!r}")
    perm = np.random.default_rng(seed).permutation(n)
    return [sorted(part.tolist()) for part in np.array_split(perm, int(folds))]


def fold_sections(
    n: int, folds: int, n_val: int, seed: int = 0
) -> list[tuple[list[int], list[int], list[int]]]:
    """Sorted ``(training, validation, test)`` indices of each of ``folds`` folds of ``range(n)``.

    The test parts are :func:`fold_indices`; the other images of fold ``k`` are split into ``n_val`` validation
    images (seeded by ``(seed, k)``) and training.
    """
    parts = fold_indices(n, folds, seed)
    largest = max(len(p) for p in parts)
    if not 0 <= n_val <= n - largest - 1:
        raise ValueError(
            f"n_val must be in 0..{n - largest - 1}: {n} images in {folds} folds leave {n - largest} images outside "
            f"the largest test part, and at least one must train; got {n_val}"
        )
    sections = []
    for k, test in enumerate(parts):
        held_out = set(test)
        rest = [i for i in range(n) if i not in held_out]
        picked = np.random.default_rng([seed, k]).permutation(len(rest))[:n_val]
        val = sorted(rest[j] for j in picked.tolist())
        chosen = set(val)
        sections.append(([i for i in rest if i not in chosen], val, test))
    return sections


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"--{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _size(n: int, fraction: float | None, count: int | None, name: str) -> int:
    """Images in a section: ``count`` (``--n_<name>``), else ``fraction`` (``--<name>_fraction``) of all ``n``
    images rounded (at least 1 when the fraction is positive, at most ``n - 1``), else 0."""
    if count is not None and fraction is not None:
        raise ValueError(f"give --n_{name} or --{name}_fraction, not both")
    if count is not None:
        return _count(count, f"n_{name}")
    if fraction is None:
        return 0
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"--{name}_fraction must be a number in [0, 1), got {fraction!r}")
    k = int(round(float(fraction) * n))
    return min(max(k, 1 if fraction > 0 and n > 1 else 0), max(n - 1, 0))


def _relpath(image: Path, out: Path) -> str:
    return Path(os.path.relpath(image.resolve(), out.parent.resolve())).as_posix()


def _publish(datalist: dict[str, Any], out: Path, landmark_names: Sequence[str] | None) -> Path:
    """Write next to ``out``, validate, then rename onto ``out`` (an invalid datalist never replaces it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".json", dir=out.parent)
    os.close(fd)
    try:
        write_datalist(tmp, datalist)
        validate_datalist(tmp, landmark_names)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return out


def _entries(rows: Sequence[dict], folder: Path, out: Path) -> list[dict[str, Any]]:
    return [{"image": _relpath(_resolve(r["image"], folder), out), "landmarks": r["landmarks"]} for r in rows]


def fold_path(out: str | os.PathLike, fold: int) -> Path:
    """The datalist of fold ``fold`` next to ``out``: ``data/x/datalist.json`` -> ``data/x/datalist_fold0.json``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_fold{fold}{out.suffix or '.json'}")


def _warn_no_validation(where: str) -> None:
    print(
        f"warning: {where}: empty 'validation' section. The bundles then keep their last weights as models/model.pt "
        "(no checkpoint selection); scripts/cross_validate.py still requires validation images in every fold.",
        file=sys.stderr,
    )


def _write_splits(
    header: dict[str, Any],
    entries: Sequence[dict[str, Any]],
    out: Path,
    names: Sequence[str] | None,
    n_val: int,
    n_test: int,
    folds: int | None,
    seed: int,
) -> str | list[str]:
    """Split ``entries`` and publish the datalist ``out`` (``header`` + ``split_seed``, ``split_sizes`` and the
    ``training``, ``validation`` and, unless ``n_test`` is 0, ``test`` sections), or with ``folds`` the K datalists
    :func:`fold_path` (``fold``, ``folds`` recorded; ``n_test`` unused). Returns the path or the K paths."""
    n = len(entries)
    if folds is None:
        if n_val + n_test > n - 1:
            raise ValueError(
                f"{n} images: {n_test} test + {n_val} validation leave {n - n_test - n_val} for training (at least 1 "
                "needed); lower --n_test/--test_fraction or --n_val/--val_fraction"
            )
        splits = [split_sections(n, n_val, n_test, seed)]
        targets = [out]
    else:
        splits = fold_sections(n, folds, n_val, seed)
        targets = [fold_path(out, k) for k in range(len(splits))]
    if n_val == 0:
        _warn_no_validation(str(out))
    written = []
    for k, (train, val, test) in enumerate(splits):
        doc: dict[str, Any] = {
            **header,
            "split_seed": seed,
            "split_sizes": {"training": len(train), "validation": len(val), "test": len(test)},
        }
        if folds is not None:
            doc.update(fold=k, folds=int(folds))
        doc.update(training=[entries[i] for i in train], validation=[entries[i] for i in val])
        if test:
            doc["test"] = [entries[i] for i in test]
        written.append(str(_publish(doc, targets[k], names)))
    return written[0] if folds is None else written


def _parse_names(landmarks: Sequence[str] | str | None) -> list[str] | None:
    """Names from a list or a comma-separated string (fire passes either); None stays None."""
    if landmarks is None:
        return None
    if isinstance(landmarks, str):
        return [n.strip() for n in landmarks.split(",") if n.strip()]
    return [str(n) for n in landmarks]


def _check_split_arguments(
    val_fraction: float | None, n_val: int | None, test_fraction: float | None, n_test: int | None, folds: int | None
) -> None:
    """Argument errors that need no data (raised before any file is read)."""
    if folds is not None:
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
            raise ValueError(f"--folds must be an integer >= 2 (Payer et al.'s hand protocol: 3), got {folds!r}")
        if n_test is not None or test_fraction is not None:
            raise ValueError("--folds sets the test sections (each fold's part of the images): "
                             "do not give --n_test / --test_fraction with it")
    _size(1, val_fraction, n_val, "val")  # type/range checks only
    _size(1, test_fraction, n_test, "test")


def _sizes(
    n: int,
    val_fraction: float | None,
    n_val: int | None,
    test_fraction: float | None,
    n_test: int | None,
    folds: int | None,
) -> tuple[int, int]:
    """``(n_val, n_test)`` for ``n`` images: the counts, else the fractions of ``n``, else :data:`VAL_FRACTION` /
    :data:`TEST_FRACTION` of ``n``; ``n_test`` is 0 with ``folds`` (which set the test parts)."""
    _check_split_arguments(val_fraction, n_val, test_fraction, n_test, folds)
    if folds is not None and folds > n:
        raise ValueError(f"--folds {folds}: more folds than images ({n})")
    if val_fraction is None and n_val is None:
        val_fraction = VAL_FRACTION
    if test_fraction is None and n_test is None:
        test_fraction = TEST_FRACTION
    n_test = 0 if folds is not None else _size(n, test_fraction, n_test, "test")
    return _size(n, val_fraction, n_val, "val"), n_test


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------


def shared(
    dataset: str = "hand_xray",
    data_root: str | None = None,
    out: str | None = None,
    val_fraction: float | None = None,
    n_val: int | None = None,
    seed: int = 0,
    test_fraction: float | None = None,
    n_test: int | None = None,
    folds: int | None = None,
) -> str | list[str]:
    """Datalist of a shared dataset (``hand_xray`` or ``spine_aasce``) with a seeded training/validation/test split.

    Args:
        dataset: folder name under ``data_root``.
        data_root: the shared data folder (default: ``../shared/data`` next to the repository).
        out: datalist path (default ``data/<dataset>/datalist.json`` in the repository, git-ignored).
        val_fraction / n_val: validation size, a fraction of all images or a count (default 10 %: 11 images of
            hand_xray, 48 of spine_aasce; 0: no validation images, see the warning it prints).
        seed: split seed (the same seed gives every bundle the same split).
        test_fraction / n_test: test size (default 20 %: 22 images of hand_xray, 96 of spine_aasce; 0: no test
            section).
        folds: K >= 2: write K datalists ``<out stem>_fold{k}.json`` instead, whose test sections are K disjoint
            near-equal seeded parts of all images (the rest of each fold: validation of the size above, training).

    hand_xray: names ``L0..L36``, ``spacing_mode`` ``reference_distance`` with each entry's spacing
    ``[s, s]``, ``s = 50 / |g1 - g5|`` mm/pixel. spine_aasce: names ``T1_TL..L5_BR``, flip pairs swap the
    left and right corners of each vertebra, ``spacing_mode`` ``pixel``, ``cobb`` ``[main, upper, lower]``.

    Returns:
        the datalist path, or the K paths with ``folds``.
    """
    if dataset not in SHARED:
        raise ValueError(f"dataset must be one of {sorted(SHARED)}, got {dataset!r}")
    spec = SHARED[dataset]
    _check_split_arguments(val_fraction, n_val, test_fraction, n_test, folds)
    folder = Path(data_root) / dataset if data_root is not None else SHARED_DATA / dataset
    csv_path = folder / "landmarks.csv"
    if not csv_path.is_file():
        raise LandmarkDataError(f"{csv_path}: shared dataset not found (expected ../shared/data/{dataset}/)")
    out_path = Path(out) if out is not None else REPO / "data" / dataset / "datalist.json"
    names = list(spec["landmarks"])
    rows = read_points_csv(csv_path, folder, len(names), spec["extra_columns"])
    entries = _entries(rows, folder, out_path)
    problems = []
    for row, entry in zip(rows, entries):
        if dataset == "hand_xray":
            i, j = HAND_REFERENCE["landmarks"]
            try:
                s = reference_distance_spacing(row["landmarks"], i, j, HAND_REFERENCE["distance_mm"], row["image"])
                entry["spacing"] = [s, s]
            except LandmarkDataError as e:
                problems.append(str(e))
        if spec["extra_columns"]:
            entry["cobb"] = [float(v) for v in row["extra"]]
    if problems:
        raise DatalistValidationError(str(csv_path), problems)
    sizes = _sizes(len(entries), val_fraction, n_val, test_fraction, n_test, folds)
    datalist: dict[str, Any] = {
        "name": dataset,
        "description": spec["description"],
        "landmarks": names,
        "flip_pairs": [list(p) for p in spec["flip_pairs"]],
        "spacing_mode": "reference_distance" if dataset == "hand_xray" else "pixel",
    }
    if dataset == "hand_xray":
        datalist["reference"] = dict(HAND_REFERENCE)
    return _write_splits(datalist, entries, out_path, names, *sizes, folds, seed)


def _dicom_spacing_problem(path: Path) -> str | None:
    """Why ``path`` is not a DICOM with a pixel spacing (header only, pixels not read), or None."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # any parse failure of a corrupt header
        return f"not a readable DICOM file ({type(e).__name__}: {e})"
    if not any(tag in ds for tag in ("PixelSpacing", "ImagerPixelSpacing")):
        return (
            "no PixelSpacing (0028,0030) or ImagerPixelSpacing (0018,1164); "
            "use require_spacing=False for pixel units"
        )
    return None


def dicom_folder(
    folder: str,
    points: str,
    out: str,
    landmarks: Sequence[str] | str | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    flip_pairs: Sequence[Sequence[int]] = (),
    require_spacing: bool = True,
    n_val: int | None = None,
    test_fraction: float | None = None,
    n_test: int | None = None,
    folds: int | None = None,
) -> str | list[str]:
    """Datalist of a folder of DICOMs annotated in ``points``, spacing from the DICOM tags (``"image"``).

    Args:
        folder: image folder; the image paths in ``points`` are relative to it.
        points: CSV ``image,x0,y0,...`` (header optional, empty cells = missing point) or JSON
            ``{image: [[x, y] | null, ...]}``.
        out: datalist path.
        landmarks: landmark names (list or comma-separated); default ``L0..L{K-1}``.
        val_fraction / n_val: validation size, a fraction of all images or a count (default 10 %, at least one
            image; 0: none, see the warning it prints). Seeded by ``seed``.
        flip_pairs: left/right landmark index pairs, if any.
        require_spacing: every image must be a DICOM with a pixel spacing tag (checked from the headers,
            all offending files reported at once); without it, images lacking one are measured in pixels.
        test_fraction / n_test: test size (default 20 %, at least one image; 0: no test section).
        folds: K >= 2: K datalists ``<out stem>_fold{k}.json`` instead (see :func:`shared`).

    Returns:
        the datalist path, or the K paths with ``folds``.
    """
    folder_path, out_path = Path(folder), Path(out)
    _check_split_arguments(val_fraction, n_val, test_fraction, n_test, folds)
    if not folder_path.is_dir():
        raise LandmarkDataError(f"{folder_path}: image folder does not exist")
    names = _parse_names(landmarks)
    rows = read_points(points, folder_path, None if names is None else len(names))
    names = names or [f"L{i}" for i in range(rows[0]["landmarks"].shape[0])]
    if require_spacing:
        problems = [
            f"{r['image']}: {why}" for r in rows if (why := _dicom_spacing_problem(_resolve(r["image"], folder_path)))
        ]
        if problems:
            raise DatalistValidationError(str(points), problems)
    entries = _entries(rows, folder_path, out_path)
    sizes = _sizes(len(entries), val_fraction, n_val, test_fraction, n_test, folds)
    datalist = {
        "name": folder_path.resolve().name,
        "landmarks": names,
        "flip_pairs": [[int(i), int(j)] for i, j in flip_pairs],
        "spacing_mode": "image",
    }
    return _write_splits(datalist, entries, out_path, names, *sizes, folds, seed)


def _is_dicom(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        head = f.read(132)
        return len(head) == 132 and head[128:] == b"DICM"
    return False


def images_folder(folder: str, out: str, pattern: str = "*") -> str:
    """Datalist with a ``test`` section listing every image in ``folder`` matching ``pattern`` (inference only).

    Images are DICOM, NIfTI, PNG, JPEG, TIFF or BMP by suffix, or DICOM files without a suffix
    (recognised by their ``DICM`` preamble); ``pattern`` may recurse (``"**/*"``). Other files are skipped.

    Returns:
        the datalist path.
    """
    folder_path, out_path = Path(folder), Path(out)
    if not folder_path.is_dir():
        raise LandmarkDataError(f"{folder_path}: image folder does not exist")
    found = []
    for p in sorted(folder_path.glob(pattern)):
        if not p.is_file() or p.name.startswith("."):
            continue
        name = p.name.lower()
        suffix = ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()
        if suffix in IMAGE_SUFFIXES or (suffix == "" and _is_dicom(p)):
            found.append(p)
    if not found:
        raise LandmarkDataError(f"{folder_path}: no images matching {pattern!r} (suffixes {', '.join(IMAGE_SUFFIXES)})")
    datalist = {
        "name": folder_path.resolve().name,
        "spacing_mode": "image",
        "test": [{"image": _relpath(p, out_path)} for p in found],
    }
    return str(_publish(datalist, out_path, None))


COMMANDS = {"shared": shared, "dicom_folder": dicom_folder, "images_folder": images_folder}


def main(argv: Sequence[str] | None = None) -> Any:
    """Command line entry point: ``argv`` (default ``sys.argv[1:]``) names a command and its flags."""
    return fire.Fire(COMMANDS, command=None if argv is None else list(argv), name="prepare_datalist")


if __name__ == "__main__":
    main()
