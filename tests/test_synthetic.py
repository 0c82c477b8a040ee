import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy.ndimage import maximum_filter, uniform_filter

from monai_ext.data import synthetic
from monai_ext.data.synthetic import (
    DX_SOP_CLASS_UID,
    PHANTOMS,
    ensure_dataset,
    generate_dataset,
    make_phantom,
    write_dicom,
    write_nifti,
)
from monai_ext.errors import LandmarkDataError

KINDS = sorted(PHANTOMS)
COUNTS = {"limbs": 6, "knees": 16, "spine": 68, "hand": 37}
REPO = Path(__file__).resolve().parents[1]


def _on_bone_fraction(image: np.ndarray, points: np.ndarray) -> float:
    """Fraction of points whose 5x5 neighbourhood reaches the bright (top quartile) intensities."""
    local = maximum_filter(uniform_filter(image.astype(np.float64), 3), size=5)
    threshold = np.percentile(image, 75)
    h, w = image.shape
    hits = []
    for x, y in points:
        col, row = int(round(x)), int(round(y))
        hits.append(0 <= col < w and 0 <= row < h and local[row, col] > threshold)
    return float(np.mean(hits))


def _read_dicom_display(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Decode a written DICOM back to the ``[0, 1]`` raster it displays and its (sx, sy)."""
    ds = pydicom.dcmread(path)
    top = 2 ** int(ds.BitsStored) - 1
    stored = ds.pixel_array.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        stored = top - stored
    tag = "PixelSpacing" if "PixelSpacing" in ds else "ImagerPixelSpacing"
    row_spacing, col_spacing = (float(v) for v in ds.data_element(tag).value)
    return stored / top, (col_spacing, row_spacing)


def _cobb_deg(landmarks: np.ndarray) -> float:
    """Largest difference between endplate tilts (deg) of an AASCE-ordered (68, 2) spine."""
    corners = landmarks.reshape(17, 4, 2)
    tilts = [math.degrees(math.atan2(*(v[1] - v[0])[::-1])) for v in corners]
    tilts += [math.degrees(math.atan2(*(v[3] - v[2])[::-1])) for v in corners]
    return max(tilts) - min(tilts)


@pytest.mark.parametrize("kind", KINDS)
def test_spec_names_and_flip_pairs(kind):
    spec = PHANTOMS[kind]
    assert len(spec.landmarks) == COUNTS[kind]
    assert len(set(spec.landmarks)) == len(spec.landmarks)
    flat = [i for pair in spec.flip_pairs for i in pair]
    assert len(flat) == len(set(flat))
    assert all(0 <= i < len(spec.landmarks) for i in flat)
    for i, j in spec.flip_pairs:
        a, b = spec.landmarks[i], spec.landmarks[j]
        if kind == "spine":
            assert a[:-2] == b[:-2] and {a[-2:], b[-2:]} in ({"TL", "TR"}, {"BL", "BR"})
        else:
            assert a.endswith("_R") and b == a[:-2] + "_L"


def test_spine_and_limb_names_in_documented_order():
    assert PHANTOMS["spine"].landmarks[:5] == ("T1_TL", "T1_TR", "T1_BL", "T1_BR", "T2_TL")
    assert PHANTOMS["spine"].landmarks[-1] == "L5_BR"
    assert PHANTOMS["limbs"].landmarks == (
        "femoral_head_R", "knee_R", "ankle_R", "femoral_head_L", "knee_L", "ankle_L",
    )
    assert PHANTOMS["hand"].flip_pairs == ()
    assert len(PHANTOMS["knees"].flip_pairs) == 8


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_seed(kind):
    a, b, c = make_phantom(kind, 3), make_phantom(kind, 3), make_phantom(kind, 4)
    assert a.image.dtype == np.float32 and a.landmarks.dtype == np.float64
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert a.spacing == b.spacing
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)
    assert not np.allclose(a.landmarks, c.landmarks)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_landmarks_inside_and_on_anatomy(kind, seed):
    ph = make_phantom(kind, seed)
    h, w = ph.image.shape
    assert 150 <= max(h, w) <= 450
    assert 0.0 <= ph.image.min() and ph.image.max() <= 1.0
    sx, sy = ph.spacing
    assert abs(sy / sx - 1.0) <= 0.0501
    assert ph.landmarks.shape == (COUNTS[kind], 2) and np.isfinite(ph.landmarks).all()
    assert (ph.landmarks >= 0).all()
    assert (ph.landmarks[:, 0] <= w - 1).all() and (ph.landmarks[:, 1] <= h - 1).all()
    # bright bone sits under every landmark, but not under the transposed coordinates
    assert _on_bone_fraction(ph.image, ph.landmarks) == 1.0
    assert _on_bone_fraction(ph.image, ph.landmarks[:, ::-1]) < 0.75


def test_some_images_are_anisotropic_and_spacings_vary():
    spacings = [make_phantom("hand", s).spacing for s in range(15)]
    assert any(sx != sy for sx, sy in spacings)
    assert len({sx for sx, _ in spacings}) > 10


def test_anatomical_layout():
    limbs = make_phantom("limbs", 0).landmarks
    assert limbs[0, 0] < limbs[3, 0]  # patient's right on the image left
    assert limbs[0, 1] < limbs[1, 1] < limbs[2, 1] and limbs[3, 1] < limbs[4, 1] < limbs[5, 1]
    knees = make_phantom("knees", 0).landmarks.reshape(2, 8, 2)
    for knee, lateral in zip(knees, (-1, 1)):
        assert lateral * (knee[0, 0] - knee[3, 0]) > 0  # lateral margin is on the outer side
        edge = knee[7] - knee[4]
        up = np.array([edge[1], -edge[0]]) * (-1 if edge[1] < -edge[0] else 1) / np.hypot(*edge)
        up = up if up[1] < 0 else -up
        assert ((knee[[0, 1, 2, 3, 5, 6]] - knee[4]) @ up > 0).all()  # femur and spines above the plateau edges
    hand = make_phantom("hand", 0).landmarks
    tips = hand[[0, 4, 9, 14, 19]]
    assert tips[0, 0] > tips[1:, 0].max()  # left hand PA: thumb on the image right
    assert (hand[[3, 8, 13, 18, 23], 1] > tips[:, 1]).all()  # metacarpal bases below the tips


def test_spine_vertebrae_ordered_and_scoliotic():
    ph = make_phantom("spine", 0)
    v = ph.landmarks.reshape(17, 4, 2)
    assert (v[:, 0, 0] < v[:, 1, 0]).all() and (v[:, 2, 0] < v[:, 3, 0]).all()  # left corners left
    assert (v[:, [0, 1], 1].max(1) < v[:, [2, 3], 1].min(1)).all()  # top corners above bottom corners
    assert (v[1:, :2, 1] > v[:-1, 2:, 1]).all()  # each vertebra below the previous one, per side
    # vertebral bodies are brighter than the discs between them
    smooth = uniform_filter(ph.image.astype(np.float64), 3)
    body = v.mean(1)
    disc = (v[:-1, 2:].mean(1) + v[1:, :2].mean(1)) / 2
    value = lambda p: smooth[int(round(p[1])), int(round(p[0]))]  # noqa: E731
    assert np.mean([value(body[i]) > value(disc[i]) for i in range(16)]) >= 0.9
    cobbs = [_cobb_deg(make_phantom("spine", s).landmarks) for s in range(10)]
    assert np.median(cobbs) > 10.0 and max(cobbs) < 80.0


def test_missing_fraction_marks_rows_nan_without_changing_the_rest():
    full = make_phantom("spine", 5)
    part = make_phantom("spine", 5, missing_fraction=0.3)
    missing = np.isnan(part.landmarks)
    assert (missing[:, 0] == missing[:, 1]).all()
    assert 5 <= missing[:, 0].sum() <= 40
    np.testing.assert_array_equal(part.landmarks[~missing[:, 0]], full.landmarks[~missing[:, 0]])
    np.testing.assert_array_equal(part.image, full.image)
    with pytest.raises(ValueError, match="missing_fraction"):
        make_phantom("spine", 5, missing_fraction=1.5)
    with pytest.raises(ValueError, match="unknown phantom kind"):
        make_phantom("skull", 0)


def test_write_dicom_anisotropic_spacing_order_and_header(tmp_path):
    raster = np.linspace(0.0, 1.0, 35).reshape(5, 7)  # H=5 rows, W=7 columns
    path = write_dicom(tmp_path / "a.dcm", raster, (0.5, 0.52))
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == DX_SOP_CLASS_UID == ds.SOPClassUID
    assert ds.Modality == "DX"
    assert (ds.Rows, ds.Columns) == (5, 7)
    assert [float(v) for v in ds.PixelSpacing] == [0.52, 0.5]  # [row spacing sy, column spacing sx]
    assert "ImagerPixelSpacing" not in ds
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert ds.SamplesPerPixel == 1 and ds.PhotometricInterpretation == "MONOCHROME2"
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
    assert ds.pixel_array.dtype == np.uint16
    np.testing.assert_array_equal(ds.pixel_array, np.rint(raster * 4095).astype(np.uint16))
    # deterministic UIDs, no temporary file left
    again = pydicom.dcmread(write_dicom(tmp_path / "a.dcm", raster, (0.5, 0.52)))
    assert again.SOPInstanceUID == ds.SOPInstanceUID
    assert pydicom.dcmread(write_dicom(tmp_path / "b.dcm", raster, (0.5, 0.52))).SOPInstanceUID != ds.SOPInstanceUID
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm", "b.dcm"]


def test_write_dicom_options(tmp_path):
    raster = np.linspace(0.0, 1.0, 12).reshape(3, 4)
    ds = pydicom.dcmread(write_dicom(
        tmp_path / "m1.dcm", raster, (0.2, 0.21), spacing_tag="ImagerPixelSpacing", photometric="MONOCHROME1",
        bits_stored=16, rescale_slope=0.5, rescale_intercept=-100.0,
    ))
    assert "PixelSpacing" not in ds and [float(v) for v in ds.ImagerPixelSpacing] == [0.21, 0.2]
    assert ds.PhotometricInterpretation == "MONOCHROME1" and (ds.BitsStored, ds.HighBit) == (16, 15)
    np.testing.assert_array_equal(ds.pixel_array, 65535 - np.rint(raster * 65535).astype(np.uint16))
    assert ds.pixel_array[0, 0] == 65535  # black pixel stored as the maximum: inverted
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.5, -100.0)
    none = pydicom.dcmread(write_dicom(tmp_path / "none.dcm", raster, None))
    assert "PixelSpacing" not in none and "ImagerPixelSpacing" not in none
    with pytest.raises(ValueError, match="spacing_tag"):
        write_dicom(tmp_path / "bad.dcm", raster, (1, 1), spacing_tag="Spacing")
    with pytest.raises(ValueError, match="2D"):
        write_dicom(tmp_path / "bad.dcm", raster[None], (1, 1))
    assert not (tmp_path / "bad.dcm").exists()


def test_write_nifti_reads_back_as_width_height(tmp_path):
    from monai.transforms import LoadImage

    raster = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    path = write_nifti(tmp_path / "a.nii.gz", raster, (0.5, 0.52))
    img = nib.load(path)
    assert img.shape == (7, 5)
    np.testing.assert_allclose(np.diag(img.affine), [0.5, 0.52, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(img.dataobj), raster.T)
    loaded = LoadImage(image_only=True)(str(path))
    assert tuple(loaded.shape) == (7, 5)
    for x, y in [(0, 0), (6, 0), (2, 3), (6, 4)]:
        assert float(loaded[x, y]) == raster[y, x]
    np.testing.assert_allclose(np.diag(np.asarray(loaded.affine))[:2], [0.5, 0.52], rtol=1e-6)
    with pytest.raises(ValueError, match=".nii"):
        write_nifti(tmp_path / "a.png", raster, (1, 1))


def test_generate_dataset_dicom(tmp_path):
    out = tmp_path / "spine"
    path = generate_dataset("spine", out, n_train=4, n_val=1, n_test=1, seed=7, missing_fraction=0.2)
    assert path == out / "datalist.json"
    assert [p.name for p in tmp_path.iterdir()] == ["spine"]  # no temporary folder left
    data = json.loads(path.read_text())
    assert data["name"] == "synthetic_spine" and data["spacing_mode"] == "image"
    assert data["landmarks"] == list(PHANTOMS["spine"].landmarks)
    assert data["flip_pairs"] == [list(p) for p in PHANTOMS["spine"].flip_pairs]
    rows = data["training"] + data["validation"] + data["test"]
    assert [len(data[s]) for s in ("training", "validation", "test")] == [4, 1, 1]
    assert sum(p is None for row in rows for p in row["landmarks"]) > 0  # missing written as null
    tags, photometrics = set(), set()
    for row in rows:
        assert len(row["landmarks"]) == 68
        ds = pydicom.dcmread(out / row["image"])
        tags |= {t for t in ("PixelSpacing", "ImagerPixelSpacing") if t in ds}
        photometrics.add(ds.PhotometricInterpretation)
        image, spacing = _read_dicom_display(out / row["image"])
        assert spacing == tuple(row["spacing"])
        present = np.array([p for p in row["landmarks"] if p is not None])
        assert _on_bone_fraction(image, present) == 1.0  # orientation survives the DICOM round trip
    assert tags == {"PixelSpacing", "ImagerPixelSpacing"} and photometrics == {"MONOCHROME1", "MONOCHROME2"}
    # same seed, same dataset
    again = generate_dataset("spine", tmp_path / "again", n_train=4, n_val=1, n_test=1, seed=7, missing_fraction=0.2)
    assert json.loads(again.read_text())["training"] == data["training"]
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset("spine", out, n_train=1, n_val=0, n_test=0)
    replaced = generate_dataset("spine", out, n_train=1, n_val=0, n_test=0, overwrite=True)
    assert len(json.loads(replaced.read_text())["training"]) == 1
    assert len(list((out / "images").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "spine"]


def test_generate_dataset_nifti_matches_phantoms(tmp_path):
    path = generate_dataset("hand", tmp_path / "hand", n_train=2, n_val=1, n_test=0, image_format="nifti")
    data = json.loads(path.read_text())
    assert data["test"] == []
    for row in data["training"] + data["validation"]:
        assert row["image"].endswith(".nii.gz")
        img = nib.load(path.parent / row["image"])
        np.testing.assert_allclose(img.header.get_zooms(), row["spacing"], rtol=1e-6)
        raster = np.asarray(img.dataobj).T
        assert _on_bone_fraction(raster, np.array(row["landmarks"])) == 1.0


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_writer(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write_dicom(*args, **kwargs)

    monkeypatch.setattr(synthetic, "write_dicom", failing_writer)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset("knees", tmp_path / "knees", n_train=4, n_val=1, n_test=1)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_ensure_dataset_reuses_and_survives_a_race(tmp_path, monkeypatch):
    out = tmp_path / "limbs"
    first = ensure_dataset("limbs", out, n_train=2, n_val=1, n_test=1)
    stamp = os.stat(first).st_mtime_ns
    assert ensure_dataset("limbs", out, n_train=5) == first
    assert os.stat(first).st_mtime_ns == stamp
    with pytest.raises(LandmarkDataError, match="synthetic_limbs"):
        ensure_dataset("knees", out)

    # another process publishes the same dataset while this one is still generating
    raced = tmp_path / "raced"
    real_writer = synthetic.write_dicom

    def racing_writer(*args, **kwargs):
        if not raced.exists():
            monkeypatch.setattr(synthetic, "write_dicom", real_writer)
            generate_dataset("limbs", raced, n_train=1, n_val=0, n_test=0, seed=99)
            monkeypatch.setattr(synthetic, "write_dicom", racing_writer)
        return real_writer(*args, **kwargs)

    monkeypatch.setattr(synthetic, "write_dicom", racing_writer)
    result = ensure_dataset("limbs", raced, n_train=2, n_val=1, n_test=1)
    assert result == raced / "datalist.json"
    assert len(json.loads(result.read_text())["training"]) == 1  # the winner's dataset is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["limbs", "raced"]


def test_cli_prints_datalist_path(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_synthetic.py"), "--kind", "knees", "--out_dir", str(out),
         "--n_train", "1", "--n_val", "1", "--n_test", "0", "--image_format", "nifti"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    assert proc.stdout.strip() == str(out / "datalist.json")
    assert len(json.loads((out / "datalist.json").read_text())["validation"]) == 1
