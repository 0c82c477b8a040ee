"""Smoke test on the real radiographs of ../shared/data (skipped when absent).

Datalists of both shared sets build and validate; a few images load; through ``FitToShaped`` the landmarks
land on the same anatomy: mapped back they equal the CSV points, and the resampled image's intensity at a
resampled landmark equals the original image's intensity at the CSV point (a transposed or mirrored
axis anywhere in the chain breaks this by tens of grey levels).
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates, uniform_filter

from monai_ext.data.datalist import load_datalist, validate_datalist
from monai_ext.data.readers import LoadRadiographd
from monai_ext.transforms.array import points_to_original
from monai_ext.transforms.dictionary import FitToShaped

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (SHARED / "hand_xray").is_dir() or not (SHARED / "spine_aasce").is_dir(),
                       reason=f"real data not found at {SHARED}"),
]

_spec = importlib.util.spec_from_file_location("prepare_datalist", REPO / "scripts" / "prepare_datalist.py")
prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)

N_IMAGES = 2  # per dataset and split: the test stays fast


def _csv_points(dataset: str) -> dict[str, np.ndarray]:
    """Resolved image path -> (K, 2) points, straight from the shared CSV (independent of the script)."""
    with open(SHARED / dataset / "landmarks.csv", newline="") as f:
        rows = list(csv.reader(f))
    k = sum(1 for c in rows[0] if c.startswith("x"))
    return {
        str((SHARED / dataset / r[0]).resolve()): np.asarray(r[1 : 1 + 2 * k], dtype=np.float64).reshape(k, 2)
        for r in rows[1:]
    }


@pytest.fixture(scope="module")
def datalists(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("realdata")
    return {ds: Path(prep.shared(ds, data_root=str(SHARED), out=str(out / ds / "datalist.json"))) for ds in prep.SHARED}


def test_hand_datalist(datalists):
    path = datalists["hand_xray"]
    doc = validate_datalist(path, landmark_names=[f"L{i}" for i in range(37)])
    assert len(doc["training"]) == 79 and len(doc["validation"]) == 11 and len(doc["test"]) == 22
    assert doc["split_sizes"] == {"training": 79, "validation": 11, "test": 22} and doc["split_seed"] == 0
    assert doc["spacing_mode"] == "reference_distance"
    assert doc["reference"] == {"landmarks": [1, 5], "distance_mm": 50.0}
    assert doc["flip_pairs"] == []
    gt = _csv_points("hand_xray")
    items = [it for s in ("training", "validation", "test") for it in load_datalist(path, s)]
    assert sorted(it["image"] for it in items) == sorted(gt)  # every image once, pointing into ../shared/data
    spacing = np.array([it["spacing"] for it in items])
    for it, s in zip(items, spacing):
        np.testing.assert_allclose(it["landmarks"], gt[it["image"]])
        g = gt[it["image"]]
        np.testing.assert_allclose(s, [50.0 / np.linalg.norm(g[1] - g[5])] * 2)
    # the 50 mm wrist width gives about 0.13 mm/pixel (0.10-0.20) on this subset of the atlas
    assert 0.12 < spacing.mean() < 0.15
    assert spacing.min() > 0.08 and spacing.max() < 0.25
    # the split is the same every time (seed 0)
    again = prep.shared("hand_xray", data_root=str(SHARED), out=str(path.parent / "again.json"))
    assert validate_datalist(again)["validation"] == doc["validation"]
    assert validate_datalist(again)["test"] == doc["test"]
    # Payer et al.'s 3-fold protocol: the test sections hold every image exactly once
    folds = prep.shared("hand_xray", data_root=str(SHARED), out=str(path.parent / "cv.json"), folds=3)
    tests = [load_datalist(f, "test") for f in folds]
    assert sorted(len(t) for t in tests) == [37, 37, 38]
    assert sorted(it["image"] for t in tests for it in t) == sorted(gt)


def test_spine_datalist(datalists):
    path = datalists["spine_aasce"]
    doc = validate_datalist(path, landmark_names=list(prep.SPINE_LANDMARKS))
    assert [len(doc[s]) for s in ("training", "validation", "test")] == [337, 48, 96]
    assert doc["spacing_mode"] == "pixel"
    gt = _csv_points("spine_aasce")
    items = [it for s in ("training", "validation", "test") for it in load_datalist(path, s)]
    assert sorted(it["image"] for it in items) == sorted(gt)
    assert all(len(it["cobb"]) == 3 and "spacing" not in it for it in items)
    # the names match the anatomy: per vertebra, the "L" corners are left of the "R" corners and "T" above "B"
    pts = np.stack([gt[it["image"]] for it in items]).reshape(len(items), 17, 4, 2)
    assert (pts[:, :, 0, 0] < pts[:, :, 1, 0]).mean() > 0.99  # TL.x < TR.x
    assert (pts[:, :, 2, 0] < pts[:, :, 3, 0]).mean() > 0.99  # BL.x < BR.x
    assert (pts[:, :, 0, 1] < pts[:, :, 2, 1]).mean() > 0.99  # TL.y < BL.y
    # and the flip pairs swap exactly those left/right corners
    for i, j in doc["flip_pairs"]:
        assert doc["landmarks"][i].endswith(("TL", "BL")) and doc["landmarks"][j] == doc["landmarks"][i][:-1] + "R"


def _bilinear(arr: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of a (W, H) array at (K, 2) (x, y) points (axis 0 = x, as the images are)."""
    return map_coordinates(arr.astype(np.float64), [points[:, 0], points[:, 1]], order=1, mode="nearest")


CASES = [
    ("hand_xray", (256, 256)),
    ("spine_aasce", (256, 256)),
    ("spine_aasce", (256, 512)),  # (W, H): tall like the spine, little padding
    ("spine_aasce", (512, 256)),  # wide: the spine fills the height, x is mostly padding
]


@pytest.mark.parametrize("dataset, size", CASES)
def test_fit_to_shape_keeps_landmarks_on_anatomy(datalists, dataset, size):
    gt_csv = _csv_points(dataset)
    for section in ("training", "validation"):
        for item in load_datalist(datalists[dataset], section)[:N_IMAGES]:
            d = LoadRadiographd(require_spacing=dataset == "hand_xray")(item)
            original = d["image"][0].numpy()
            assert d["image"].meta["spacing_source"] == ("datalist" if dataset == "hand_xray" else "none")
            gt = gt_csv[item["image"]]
            assert gt[:, 0].max() < original.shape[0] and gt[:, 1].max() < original.shape[1]  # x within W, y within H

            out = FitToShaped(spatial_size=size)(dict(d, landmarks=torch.as_tensor(gt)))
            img = out["image"]
            assert tuple(img.shape) == (1, *size)
            pts = out["landmarks"].numpy().astype(np.float64)
            assert np.all((pts >= -0.5) & (pts <= np.asarray(size) - 0.5))  # inside the image's pixels

            # round trip back to the file's pixels
            back = points_to_original(out["landmarks"], img).numpy()
            np.testing.assert_allclose(back, gt, atol=0.05)

            # same anatomy: "area" resampling averages ~f x f original pixels, so compare with the original
            # smoothed by an f x f box, bilinearly sampled at the CSV points
            f = max(original.shape[0] / size[0], original.shape[1] / size[1])
            smooth = uniform_filter(original.astype(np.float64), size=max(1, int(round(f))))
            expected = _bilinear(smooth, gt)
            got = _bilinear(img[0].numpy(), pts)
            diff = np.abs(got - expected)
            assert diff.mean() < 4.0 and diff.max() < 20.0, (item["image"], diff.mean(), diff.max())
            # the comparison can fail: the same points with x and y swapped, or x mirrored, do not match
            swapped = _bilinear(img[0].numpy(), pts[:, ::-1])
            mirrored = _bilinear(img[0].numpy(), np.stack([size[0] - 1 - pts[:, 0], pts[:, 1]], 1))
            assert np.abs(swapped - expected).mean() > 4 * max(diff.mean(), 1.0)
            assert np.abs(mirrored - expected).mean() > 4 * max(diff.mean(), 1.0)
