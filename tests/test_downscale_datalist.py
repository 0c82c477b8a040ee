"""scripts/downscale_datalist.py: a smaller copy whose landmarks still sit on the same anatomy and whose errors
stay in the original units (mm via scaled spacing; pixel datasets in original pixels)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_ext.data.datalist import load_datalist
from monai_ext.data.synthetic import write_dicom

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("downscale_datalist", REPO / "scripts" / "downscale_datalist.py")
downscale_datalist = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(downscale_datalist)

POINTS = [[30.0, 50.0], [171.0, 97.0], None]  # (x, y) in a 200 x 300 (width x height) image; one missing


def _blobs(width: int, height: int, points) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width))
    for p in points:
        if p is not None:
            img += np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 4.0**2))
    return img


def _peak(img: np.ndarray, near) -> tuple[float, float]:
    """Intensity-weighted centre (x, y) of the blob around ``near`` (10 px window)."""
    x0, y0 = int(round(near[0])), int(round(near[1]))
    rows = slice(max(y0 - 10, 0), min(y0 + 11, img.shape[0]))
    cols = slice(max(x0 - 10, 0), min(x0 + 11, img.shape[1]))
    win = img[rows, cols].astype(float)
    win = np.clip(win - win.min(), 0, None)
    yy, xx = np.mgrid[rows, cols]
    return float((win * xx).sum() / win.sum()), float((win * yy).sum() / win.sum())


def _datalist(folder: Path, mode: str) -> Path:
    (folder / "images").mkdir(parents=True)
    img = _blobs(200, 300, POINTS)
    Image.fromarray((255 * img / img.max()).astype(np.uint8)).save(folder / "images" / "a.png")
    write_dicom(folder / "images" / "b.dcm", img, (0.2, 0.2))
    entry = {"image": "images/a.png", "landmarks": POINTS}
    if mode != "pixel":
        entry["spacing"] = [0.1, 0.1]
    doc = {"name": "blobs", "landmarks": ["a", "b", "c"], "spacing_mode": mode,
           "training": [entry], "validation": [{"image": "images/b.dcm", "landmarks": POINTS}]}
    (folder / "datalist.json").write_text(json.dumps(doc))
    return folder / "datalist.json"


def test_landmarks_follow_the_image_and_spacing_keeps_mm(tmp_path: Path):
    src = _datalist(tmp_path / "src", "datalist")
    out = downscale_datalist.downscale(str(src), str(tmp_path / "small"), max_size=100, format="png")
    doc = json.loads(Path(out).read_text())
    items = {s: load_datalist(out, s)[0] for s in ("training", "validation")}
    for section, spacing in (("training", 0.1), ("validation", 0.2)):  # datalist spacing; DICOM file spacing
        entry, item = doc[section][0], items[section]
        img = np.asarray(Image.open(item["image"]))
        assert img.shape == (100, 67)  # rows, cols: longest side 100, aspect kept
        scale = np.array([67 / 200, 100 / 300])
        np.testing.assert_allclose(entry["spacing"], spacing / scale)
        assert entry["landmarks"][2] is None and np.isnan(item["landmarks"][2]).all()
        for k in (0, 1):
            moved = (np.asarray(POINTS[k]) + 0.5) * scale - 0.5
            np.testing.assert_allclose(entry["landmarks"][k], moved, atol=1e-9)
            assert np.hypot(*np.subtract(_peak(img, moved), moved)) < 0.3  # the blob is where the landmark is
        # physical distance between the landmarks unchanged (mm via spacing)
        mm = [np.asarray(entry["landmarks"][k]) * entry["spacing"] for k in (0, 1)]
        original = np.hypot(*np.subtract(POINTS[0], POINTS[1]) * spacing)
        assert np.hypot(*(mm[0] - mm[1])) == pytest.approx(original, rel=0.01)


def test_pixel_datasets_keep_original_pixels_and_kept_sections_are_copied(tmp_path: Path):
    src = _datalist(tmp_path / "src", "pixel")
    out = downscale_datalist.downscale(str(src), str(tmp_path / "small"), max_size=150, keep="validation")
    doc = json.loads(Path(out).read_text())
    assert doc["spacing_mode"] == "pixel" and "original pixels" in doc["description"]
    np.testing.assert_allclose(doc["training"][0]["spacing"], [200 / 100, 300 / 150])  # original px per px
    assert Path(doc["training"][0]["image"]).suffix == ".jpg"
    kept = doc["validation"][0]
    assert kept["landmarks"] == POINTS and "spacing" not in kept
    assert (Path(out).parent / kept["image"]).read_bytes() == (src.parent / "images" / "b.dcm").read_bytes()


def test_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path: Path):
    src = _datalist(tmp_path / "src", "datalist")
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        downscale_datalist.downscale(str(src), str(tmp_path / "exists"))
    (src.parent / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(RuntimeError, match="a.png: cannot be read"):
        downscale_datalist.downscale(str(src), str(tmp_path / "broken"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "src"]
