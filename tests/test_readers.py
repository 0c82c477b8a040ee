"""Radiograph readers: spacing tags, photometric handling, orientation of every format, bad files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from monai.transforms import LoadImage
from PIL import Image

from monai_ext.data.readers import LoadRadiograph, LoadRadiographd, RadiographReader, read_radiograph
from monai_ext.data.synthetic import write_dicom, write_nifti
from monai_ext.errors import LandmarkDataError

H, W = 24, 40  # rows, columns: non-square so a transposition changes the shape
MARK = (29, 6)  # (x, y) of the bright marker
MARK2 = (5, 17)  # (x, y) of a dimmer second marker: catches flips that keep the first marker


def _raster(dtype=np.float64, top: float = 1.0) -> np.ndarray:
    """Asymmetric (H, W) raster: a left-to-right ramp, a bright marker at MARK and a dimmer one at MARK2."""
    r = np.tile(np.linspace(0.0, 0.3, W), (H, 1))
    r[MARK[1], MARK[0]] = 1.0
    r[MARK2[1], MARK2[0]] = 0.65
    return (r * top).astype(dtype)


def _edit_dicom(path: Path, edit) -> Path:
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, write_like_original=False)
    return path


def _stored(raster: np.ndarray, bits: int = 12) -> np.ndarray:
    """The stored DICOM values write_dicom produces for a [0, 1] raster."""
    return np.rint(np.clip(raster, 0, 1) * (2**bits - 1))


# ------------------------------------------------------------------------------------------------
# DICOM spacing tags
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["PixelSpacing", "ImagerPixelSpacing"])
def test_dicom_spacing_tag_recorded(tmp_path, tag):
    path = write_dicom(tmp_path / "a.dcm", _raster(), (0.2, 0.2), spacing_tag=tag)
    img = LoadRadiograph(require_spacing=True)(path)
    assert img.meta["spacing_source"] == tag
    np.testing.assert_allclose(img.meta["spacing"], [0.2, 0.2])
    np.testing.assert_allclose(img.affine.numpy(), np.diag([0.2, 0.2, 1.0, 1.0]))


def test_dicom_pixel_spacing_wins_over_imager_pixel_spacing(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", _raster(), (0.1, 0.1), spacing_tag="PixelSpacing")
    _edit_dicom(path, lambda ds: setattr(ds, "ImagerPixelSpacing", ["0.3", "0.3"]))
    assert pydicom.dcmread(path).ImagerPixelSpacing == [0.3, 0.3]
    img = LoadRadiograph()(path)
    assert img.meta["spacing_source"] == "PixelSpacing"
    np.testing.assert_allclose(img.meta["spacing"], [0.1, 0.1])


@pytest.mark.parametrize("tag", ["PixelSpacing", "ImagerPixelSpacing"])
def test_dicom_anisotropic_spacing_row_column_order(tmp_path, tag):
    # DICOM stores [row spacing, column spacing] = [sy, sx]
    path = write_dicom(tmp_path / "a.dcm", _raster(), None)
    _edit_dicom(path, lambda ds: setattr(ds, tag, ["0.3", "0.2"]))
    img = LoadRadiograph()(path)
    np.testing.assert_allclose(img.meta["spacing"], [0.2, 0.3])  # (sx, sy)
    np.testing.assert_allclose(img.affine.numpy()[:2, :2], np.diag([0.2, 0.3]))
    assert tuple(img.shape) == (1, W, H)
    # and write_dicom's (sx, sy) comes back as (sx, sy)
    path2 = write_dicom(tmp_path / "b.dcm", _raster(), (0.25, 0.4), spacing_tag=tag)
    np.testing.assert_allclose(LoadRadiograph()(path2).meta["spacing"], [0.25, 0.4])


def test_dicom_without_spacing(tmp_path):
    path = write_dicom(tmp_path / "nospacing.dcm", _raster(), None)
    with pytest.raises(LandmarkDataError, match="nospacing.dcm.*no pixel spacing"):
        LoadRadiograph(require_spacing=True)(path)
    img = LoadRadiograph(require_spacing=False)(path)
    assert img.meta["spacing_source"] == "none"
    np.testing.assert_allclose(img.meta["spacing"], [1.0, 1.0])
    # a datalist spacing satisfies require_spacing and overrides the (absent or present) file spacing
    img = LoadRadiograph(require_spacing=True)(path, spacing=[0.5, 0.25])
    assert img.meta["spacing_source"] == "datalist"
    np.testing.assert_allclose(img.affine.numpy()[:2, :2], np.diag([0.5, 0.25]))


def test_datalist_spacing_overrides_file_spacing(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", _raster(), (0.1, 0.1))
    d = LoadRadiographd()({"image": str(path), "spacing": np.array([0.7, 0.8])})
    assert d["image"].meta["spacing_source"] == "datalist"
    assert d["spacing"].dtype == torch.float64
    np.testing.assert_allclose(d["spacing"].numpy(), [0.7, 0.8])
    d = LoadRadiographd()({"image": str(path)})
    assert d["image"].meta["spacing_source"] == "PixelSpacing"
    np.testing.assert_allclose(d["spacing"].numpy(), [0.1, 0.1])


@pytest.mark.parametrize("bad", [[0.0, 1.0], [-1.0, 1.0], [float("nan"), 1.0], [1.0, 2.0, 3.0]])
def test_invalid_datalist_spacing_names_file(tmp_path, bad):
    path = write_dicom(tmp_path / "a.dcm", _raster(), (0.1, 0.1))
    with pytest.raises(LandmarkDataError, match="a.dcm.*invalid spacing"):
        LoadRadiograph()(path, spacing=bad)


def test_invalid_dicom_spacing_is_ignored_with_warning(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", _raster(), None)
    def edit(ds):
        ds.PixelSpacing = ["0", "0.2"]
        ds.ImagerPixelSpacing = ["0.3", "0.3"]

    _edit_dicom(path, edit)
    with pytest.warns(UserWarning, match="invalid PixelSpacing"):
        img = LoadRadiograph()(path)
    assert img.meta["spacing_source"] == "ImagerPixelSpacing"


# ------------------------------------------------------------------------------------------------
# DICOM pixel values
# ------------------------------------------------------------------------------------------------


def test_dicom_monochrome1_is_inverted_bone_bright(tmp_path):
    raster = _raster()
    m2 = LoadRadiograph()(write_dicom(tmp_path / "m2.dcm", raster, (0.1, 0.1), photometric="MONOCHROME2"))
    m1_path = write_dicom(tmp_path / "m1.dcm", raster, (0.1, 0.1), photometric="MONOCHROME1")
    # the file really stores the inverted values...
    stored = pydicom.dcmread(m1_path).pixel_array
    assert stored[MARK[1], MARK[0]] == 0
    # ...and the reader shows them as MONOCHROME2 would: the bright marker (bone) is the maximum
    m1 = LoadRadiograph()(m1_path)
    assert m1.meta["photometric"] == "MONOCHROME1"
    np.testing.assert_array_equal(m1.numpy(), m2.numpy())
    assert np.unravel_index(int(m1[0].argmax()), (W, H)) == MARK


def test_dicom_rescale_slope_intercept_applied(tmp_path):
    raster = _raster()
    path = write_dicom(tmp_path / "a.dcm", raster, (0.1, 0.1), rescale_slope=0.5, rescale_intercept=-100.0)
    img = LoadRadiograph()(path)
    np.testing.assert_allclose(img[0].numpy(), (_stored(raster) * 0.5 - 100.0).T)


def test_dicom_monochrome1_with_rescale(tmp_path):
    raster = _raster()
    lut = {"rescale_slope": 2.0, "rescale_intercept": 10.0}
    a = LoadRadiograph()(write_dicom(tmp_path / "a.dcm", raster, (0.1, 0.1), **lut))
    b = LoadRadiograph()(write_dicom(tmp_path / "b.dcm", raster, (0.1, 0.1), photometric="MONOCHROME1", **lut))
    np.testing.assert_allclose(a.numpy(), b.numpy())


def test_dicom_16_bit_values(tmp_path):
    raster = _raster()
    img = LoadRadiograph()(write_dicom(tmp_path / "a.dcm", raster, (0.1, 0.1), bits_stored=16))
    assert img.dtype == torch.float32
    assert float(img.max()) == 65535.0
    np.testing.assert_array_equal(img[0].numpy(), _stored(raster, 16).T)


# ------------------------------------------------------------------------------------------------
# other formats and the orientation of every format
# ------------------------------------------------------------------------------------------------


def _write(fmt: str, path_stem: Path, raster01: np.ndarray) -> tuple[Path, np.ndarray, float]:
    """Write ``raster01`` (H, W in [0, 1]) in ``fmt``; returns the path, the expected (H, W) values and a tolerance."""
    if fmt == "dicom":
        return write_dicom(path_stem.with_suffix(".dcm"), raster01, (0.1, 0.1)), _stored(raster01), 0.0
    if fmt == "dicom_nosuffix":
        return write_dicom(path_stem.parent / (path_stem.name + "_dcm"), raster01, (0.1, 0.1)), _stored(raster01), 0.0
    if fmt == "nifti":
        return write_nifti(path_stem.with_suffix(".nii.gz"), raster01, (0.1, 0.1)), raster01.astype(np.float32), 0.0
    u8 = np.rint(raster01 * 255).astype(np.uint8)
    if fmt in ("png", "tif", "bmp"):
        path = path_stem.with_suffix(f".{fmt}")
        Image.fromarray(u8).save(path)
        return path, u8.astype(np.float64), 0.0
    if fmt == "png16":
        u16 = np.rint(raster01 * 65535).astype(np.uint16)
        path = path_stem.with_suffix(".png")
        Image.fromarray(u16).save(path)
        assert Image.open(path).mode.startswith("I")
        return path, u16.astype(np.float64), 0.0
    if fmt == "rgb_png":
        rgb = np.stack([u8, u8, u8], -1)
        path = path_stem.with_suffix(".png")
        Image.fromarray(rgb).save(path)
        return path, u8.astype(np.float64), 0.51
    if fmt == "jpeg":
        path = path_stem.with_suffix(".jpg")
        Image.fromarray(u8).save(path, quality=100)
        return path, u8.astype(np.float64), 40.0
    raise ValueError(fmt)


FORMATS = ["dicom", "dicom_nosuffix", "nifti", "png", "png16", "rgb_png", "jpeg", "tif", "bmp"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_orientation_pixel_xy_is_raster_yx(tmp_path, fmt):
    """The crucial convention: LoadRadiograph's array[0, x, y] is the raster's [y, x] (row y, column x)."""
    raster = _raster()
    path, expected, tol = _write(fmt, tmp_path / "img", raster)
    img = LoadRadiograph()(path)
    assert isinstance(img, MetaTensor)
    assert tuple(img.shape) == (1, W, H)
    arr = img[0].numpy()
    np.testing.assert_allclose(arr, expected.T, atol=tol)
    x, y = MARK
    np.testing.assert_allclose(arr[x, y], expected[y, x], atol=tol)
    assert np.unravel_index(int(arr.argmax()), arr.shape) == MARK
    x2, y2 = MARK2
    assert arr[x2, y2] > arr[x2 + 1, y2] + 0.2 * arr[x, y]  # the dimmer marker too
    np.testing.assert_array_equal(img.meta["original_spatial_shape"], [W, H])


@pytest.mark.parametrize("fmt", ["png", "jpeg", "nifti"])
def test_orientation_matches_monai_loadimage(tmp_path, fmt):
    """Our reader and MONAI's own LoadImage give the same (W, H) array for the formats MONAI reads natively."""
    path, _, _ = _write(fmt, tmp_path / "img", _raster())
    ours = LoadRadiograph()(path)
    theirs = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    assert tuple(theirs.shape) == tuple(ours.shape)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-4)


def test_rgb_png_converted_to_grey(tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: luminance 0.299 * 200
    rgb[MARK[1], MARK[0]] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    arr = LoadRadiograph()(tmp_path / "rgb.png")[0].numpy()
    assert arr.shape == (W, H)
    np.testing.assert_allclose(arr[0, 0], 0.299 * 200, atol=0.01)
    np.testing.assert_allclose(arr[MARK], 255.0, atol=0.01)


def test_nifti_spacing(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", _raster(), (0.3, 0.2))
    img = LoadRadiograph(require_spacing=True)(path)
    assert img.meta["spacing_source"] == "nifti"
    np.testing.assert_allclose(img.meta["spacing"], [0.3, 0.2])


def test_png_has_no_spacing(tmp_path):
    path, _, _ = _write("png", tmp_path / "a", _raster())
    with pytest.raises(LandmarkDataError, match="a.png"):
        LoadRadiograph(require_spacing=True)(path)
    assert LoadRadiograph()(path).meta["spacing_source"] == "none"


def test_radiograph_reader_with_monai_loadimage(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", _raster(), (0.2, 0.3))
    img = LoadImage(reader=RadiographReader(), image_only=True, ensure_channel_first=True)(str(path))
    assert tuple(img.shape) == (1, W, H)
    np.testing.assert_allclose(img.affine.numpy()[:2, :2], np.diag([0.2, 0.3]))
    np.testing.assert_array_equal(img[0].numpy(), _stored(_raster()).T)


# ------------------------------------------------------------------------------------------------
# bad files: LandmarkDataError naming the file
# ------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(LandmarkDataError, match="nothere.png.*does not exist"):
        LoadRadiograph()(tmp_path / "nothere.png")


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "nopixels.dcm", _raster(), (0.1, 0.1))
    _edit_dicom(path, lambda ds: delattr(ds, "PixelData"))
    with pytest.raises(LandmarkDataError, match="nopixels.dcm.*no pixel data"):
        LoadRadiograph()(path)


def test_non_image_bytes_with_dcm_suffix(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is a text file, not a radiograph\n" * 10)
    with pytest.raises(LandmarkDataError, match="notes.dcm"):
        LoadRadiograph()(path)


def test_unknown_suffix_non_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(LandmarkDataError, match="notes.txt"):
        read_radiograph(path)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "dicom"])
def test_truncated_file(tmp_path, fmt):
    rng = np.random.default_rng(0)
    path, _, _ = _write(fmt, tmp_path / "trunc", rng.random((64, 64)))  # noise: compresses badly, long payload
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LandmarkDataError, match=path.name):
        LoadRadiograph()(path)


@pytest.mark.parametrize("fmt", ["png", "dicom", "nifti"])
def test_tiny_image(tmp_path, fmt):
    path, _, _ = _write(fmt, tmp_path / "tiny", np.linspace(0.1, 0.9, 64).reshape(8, 8))
    with pytest.raises(LandmarkDataError, match=f"{path.name}.*8x8.*minimum 16"):
        LoadRadiograph()(path)
    assert tuple(LoadRadiograph(min_size=8)(path).shape) == (1, 8, 8)


def test_nifti_with_nan_pixels(tmp_path):
    raster = _raster()
    raster[3, 4] = np.nan
    path = write_nifti(tmp_path / "nan.nii.gz", raster, (0.1, 0.1))
    with pytest.raises(LandmarkDataError, match="nan.nii.gz.*1 pixel value.*NaN"):
        LoadRadiograph()(path)


def test_nifti_3d_rejected(tmp_path):
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 5), np.float32), np.eye(4)), path)
    with pytest.raises(LandmarkDataError, match="vol.nii.gz.*2D"):
        LoadRadiograph()(path)


def test_multiframe_dicom_rejected(tmp_path):
    path = write_dicom(tmp_path / "multi.dcm", _raster(), (0.1, 0.1))

    def two_frames(ds):
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2

    _edit_dicom(path, two_frames)
    with pytest.raises(LandmarkDataError, match="multi.dcm"):
        LoadRadiograph()(path)


HEADERS = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".jpg": b"\xff\xd8\xff\xe0",
    ".dcm": b"\0" * 128 + b"DICM",
}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suffix=st.sampled_from(sorted(HEADERS)), payload=st.binary(min_size=0, max_size=512))
def test_fuzz_random_bytes_after_valid_header(suffix, payload):
    """Random bytes behind a valid-looking signature raise LandmarkDataError naming the file, nothing else."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz{suffix}"
        path.write_bytes(HEADERS[suffix] + payload)
        with pytest.raises(LandmarkDataError) as info:
            read_radiograph(path)
        assert str(info.value).startswith(str(path))


_VALID: dict[str, bytes] = {}


def _valid_bytes(fmt: str) -> bytes:
    """A small valid file of ``fmt`` (built once)."""
    if fmt not in _VALID:
        with tempfile.TemporaryDirectory() as d:
            path, _, _ = _write(fmt, Path(d) / "v", _raster())
            _VALID[fmt] = path.read_bytes()
    return _VALID[fmt]


_SUFFIX = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(_SUFFIX)),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    keep=st.floats(0.05, 1.0),
)
def test_fuzz_corrupted_valid_files(fmt, flips, keep):
    """A valid file with overwritten bytes and/or cut short either loads as a 2D float32 image or raises
    LandmarkDataError naming the file: never another exception."""
    data = bytearray(_valid_bytes(fmt))
    for where, value in flips:
        data[int(where * len(data))] = value
    data = bytes(data[: max(1, int(keep * len(data)))])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"corrupt{_SUFFIX[fmt]}"
        path.write_bytes(data)
        try:
            arr, meta = read_radiograph(path)
        except LandmarkDataError as e:
            assert str(e).startswith(str(path))
        else:
            assert arr.ndim == 2 and arr.dtype == np.float32 and np.isfinite(arr).all()


def test_blank_image_is_rejected_naming_the_file(tmp_path):
    from PIL import Image

    from monai_ext.data.readers import read_radiograph
    from monai_ext.errors import LandmarkDataError

    path = tmp_path / "blank.png"
    Image.fromarray(np.zeros((40, 30), dtype=np.uint8)).save(path)
    with pytest.raises(LandmarkDataError, match=r"blank\.png: blank image"):
        read_radiograph(path)


def test_atomic_files_get_normal_permissions(tmp_path):
    import os
    import stat

    from monai_ext.utils import atomic_write

    with atomic_write(tmp_path / "x.json") as f:
        f.write("{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode) == 0o666 & ~umask


def _jpeg_with_blob(path: Path, size=(400, 600), centre=(123.0, 401.0), quality=95) -> None:
    """A flat grey JPEG ``size`` = (W, H) with a bright Gaussian blob centred at ``centre`` (x, y) file pixels."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    raster = 50 + 180 * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * 9.0 ** 2))
    Image.fromarray(np.clip(raster, 0, 255).astype(np.uint8), mode="L").save(path, quality=quality)


def _blob_centre(img: MetaTensor) -> torch.Tensor:
    """Intensity-weighted centre (x, y) of the blob in the image's pixels (the flat background removed)."""
    a = img[0].double()
    a = torch.clamp(a - 100.0, min=0)  # the blob rises 180 grey levels above 50
    xs, ys = torch.meshgrid(torch.arange(a.shape[0], dtype=torch.float64), torch.arange(a.shape[1], dtype=torch.float64), indexing="ij")
    return torch.stack([(a * xs).sum() / a.sum(), (a * ys).sum() / a.sum()])


def test_reduced_jpeg_decoding_keeps_the_pixel_centre_convention(tmp_path):
    from monai_ext.transforms.array import move_points

    path = tmp_path / "hand.jpg"
    _jpeg_with_blob(path)
    full = LoadRadiograph()(path, spacing=(0.2, 0.1))
    small = LoadRadiograph(decode_size=(64, 64))(path, spacing=(0.2, 0.1))
    # 400 x 600 pixels: 1/4 keeps >= 64 per axis (1/8 would leave 50 columns); ceil(size / 4) pixels
    assert small.meta["decode_scale"] == 4 and tuple(small.shape) == (1, 100, 150)
    assert full.meta["decode_scale"] == 1 and tuple(full.shape) == (1, 400, 600)
    # the file's geometry is kept for mapping back: original affine, shape and spacing
    for key in ("original_affine", "original_spatial_shape", "spacing"):
        np.testing.assert_allclose(np.asarray(small.meta[key]), np.asarray(full.meta[key]))
    # reduced pixel i = mean of the file's pixels 4i..4i+3 (DCT scaling), centre 4i + 1.5: x_mm = 0.2 * (4i + 1.5)
    np.testing.assert_allclose(small.affine[:2, :2].numpy(), np.diag([0.8, 0.4]))
    np.testing.assert_allclose(small.affine[:2, 3].numpy(), [0.3, 0.15])
    blocks = full[0].reshape(100, 4, 150, 4).mean(dim=(1, 3))
    assert float((small[0] - blocks).abs().mean()) < 1.0  # grey levels (0-255)
    # the blob found in the reduced image lands on the file's blob centre
    centre = move_points(_blob_centre(small)[None], small.affine, small.meta["original_affine"])[0]
    np.testing.assert_allclose(centre.numpy(), _blob_centre(full).numpy(), atol=0.25)
    np.testing.assert_allclose(_blob_centre(full).numpy(), [123.0, 401.0], atol=0.25)


def test_reduced_decoding_only_for_jpeg_and_only_when_the_file_is_large_enough(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray((np.arange(400 * 600).reshape(600, 400) % 251).astype(np.uint8)).save(png)
    a, b = LoadRadiograph()(png), LoadRadiograph(decode_size=(64, 64))(png)
    assert b.meta["decode_scale"] == 1 and torch.equal(a, b) and torch.equal(a.affine, b.affine)
    jpg = tmp_path / "b.jpg"
    _jpeg_with_blob(jpg, size=(100, 120), centre=(50.0, 60.0))
    img = LoadRadiographd(keys="image", decode_size=(256, 256))({"image": str(jpg)})["image"]
    assert img.meta["decode_scale"] == 1 and tuple(img.shape) == (1, 100, 120)  # already smaller than asked
    with pytest.raises(ValueError, match="decode_size"):
        LoadRadiograph(decode_size=(64,))
    # the minimum size applies to the file, not to the reduced decode
    assert LoadRadiograph(min_size=90, decode_size=(8, 8))(jpg).meta["decode_scale"] == 8
    with pytest.raises(LandmarkDataError, match="smaller than the minimum 110"):
        LoadRadiograph(min_size=110, decode_size=(8, 8))(jpg)
