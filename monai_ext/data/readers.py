"""Readers for 2D radiographs: DICOM (pydicom), NIfTI (nibabel), PNG/JPEG/TIFF/BMP (Pillow).

Every reader returns the image as a float32 array of shape ``(W, H)`` (MONAI's reader convention:
axis 0 is x = column, axis 1 is y = row) and the pixel spacing ``(sx, sy)`` in mm per pixel when the
file stores one:

* DICOM: ``PixelSpacing (0028,0030)``, else ``ImagerPixelSpacing (0018,1164)`` — both stored by DICOM
  as ``[row spacing, column spacing]`` = ``[sy, sx]``; the tag used is recorded as ``spacing_source``.
  The modality LUT (RescaleSlope/RescaleIntercept) is applied; MONOCHROME1 is inverted within the
  stored bit range so that bone is bright, as in MONOCHROME2.
* NIfTI: the array is stored with axis 0 = x; the spacing is the length of the affine's first two columns.
* PNG/JPEG/TIFF/BMP: no spacing (it comes from the datalist); colour images are converted to grey.
  With ``decode_size`` a JPEG is decoded at a reduced DCT scale (1/2, 1/4, 1/8; Pillow's ``draft``) that keeps
  at least that many pixels per axis: reduced pixel ``i`` averages the file's pixels ``s*i .. s*i+s-1``, so its
  centre is the file's ``s*i + (s-1)/2`` and :class:`LoadRadiograph` gives it that affine (inference on a
  network input much smaller than the file: faster, predictions still in the file's pixels).

Anything wrong raises :class:`~monai_ext.errors.LandmarkDataError` with the file name and the reason.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import ImageReader, MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple

from monai_ext.errors import LandmarkDataError

__all__ = [
    "DICOM_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PIL_SUFFIXES",
    "RadiographReader",
    "read_radiograph",
    "spacing_affine",
    "LoadRadiograph",
    "LoadRadiographd",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _suffix(path: str | os.PathLike) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def spacing_affine(spacing: Sequence[float]) -> torch.Tensor:
    """4x4 affine (MONAI's default size) mapping pixel ``(x, y)`` to mm for a spacing ``(sx, sy)``."""
    sx, sy = (float(s) for s in spacing)
    return torch.diag(torch.tensor([sx, sy, 1.0, 1.0], dtype=torch.float64))


def _valid_spacing(values: Any) -> bool:
    try:
        arr = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return arr.shape == (2,) and bool(np.all(np.isfinite(arr))) and bool(np.all(arr > 0))


def _to_grey(arr: np.ndarray, path: str) -> np.ndarray:
    """(rows, cols[, channels]) → (rows, cols): RGB(A) averaged with luminance weights."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        return arr[..., 0]
    raise LandmarkDataError(f"{path}: expected a 2D grey or RGB image, got an array of shape {arr.shape}")


def _read_dicom(path: str) -> tuple[np.ndarray, dict]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixel_data_handlers.util import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise LandmarkDataError(f"{path}: not a DICOM file (no DICOM preamble/file meta header)") from e
    except Exception as e:  # truncated or garbled files raise many kinds of errors
        raise LandmarkDataError(f"{path}: unreadable DICOM ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        raise LandmarkDataError(f"{path}: DICOM has no pixel data (7FE0,0010)")
    try:
        raw = ds.pixel_array
    except Exception as e:
        raise LandmarkDataError(f"{path}: cannot decode DICOM pixel data ({type(e).__name__}: {e})") from e
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise LandmarkDataError(f"{path}: multi-frame DICOM ({frames} frames) is not a 2D radiograph")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        if photometric != "RGB":
            from pydicom.pixel_data_handlers.util import convert_color_space

            raw = convert_color_space(raw, photometric, "RGB")
        arr = _to_grey(np.asarray(raw), path)
    else:
        arr = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
        if arr.ndim != 2:
            raise LandmarkDataError(f"{path}: expected a 2D DICOM image, got pixel data of shape {arr.shape}")
        if photometric == "MONOCHROME1":
            # invert within the range the stored bits can hold, mapped through the modality LUT
            bits = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 16))
            signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
            lo_raw, hi_raw = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
            intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
            lo, hi = sorted((lo_raw * slope + intercept, hi_raw * slope + intercept))
            arr = (hi + lo) - arr
    spacing, source = None, None
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, tag, None)
        if value is not None and _valid_spacing(value):
            row_spacing, col_spacing = (float(v) for v in value)
            spacing, source = (col_spacing, row_spacing), tag
            break
        if value is not None:
            warnings.warn(f"{path}: ignoring invalid {tag} {list(value)!r}", stacklevel=2)
    meta = {"format": "DICOM", "photometric": photometric, "modality": str(getattr(ds, "Modality", ""))}
    return arr.T, {"spacing": spacing, "spacing_source": source, **meta}


def _read_nifti(path: str) -> tuple[np.ndarray, dict]:
    import nibabel as nib

    try:
        img = nib.load(path)
        arr = np.asarray(img.dataobj)
    except Exception as e:
        raise LandmarkDataError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from e
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise LandmarkDataError(f"{path}: expected a 2D NIfTI image, got shape {arr.shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    spacing = (float(np.linalg.norm(affine[:3, 0])), float(np.linalg.norm(affine[:3, 1])))
    ok = _valid_spacing(spacing)
    return arr.astype(np.float32), {
        "spacing": spacing if ok else None,
        "spacing_source": "nifti" if ok else None,
        "format": "NIfTI",
    }


def _read_pil(path: str, decode_size: Sequence[int] | None = None) -> tuple[np.ndarray, dict]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            full = img.size  # (W, H)
            if decode_size is not None and img.format == "JPEG":
                img.draft(None, tuple(int(v) for v in decode_size))  # DCT scaling, before anything is decoded
            img.load()  # decodes now: truncated files fail here, not later
            scale = full[0] / img.size[0]
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                arr = np.asarray(img)
            else:
                arr = np.asarray(img.convert("RGB" if mode not in ("LA", "La") else "LA"))
    except Exception as e:
        raise LandmarkDataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e
    arr = _to_grey(arr, path)
    meta = {"spacing": None, "spacing_source": None, "format": Path(path).suffix[1:].upper(),
            "decode_scale": int(round(scale)), "file_shape": full}
    # transpose in the file's own dtype (8-bit: a quarter of the bytes); read_radiograph converts to float32
    return np.ascontiguousarray(arr.T), meta


def read_radiograph(
    path: str | os.PathLike, min_size: int = 16, decode_size: Sequence[int] | None = None
) -> tuple[np.ndarray, dict]:
    """Read one 2D radiograph.

    Args:
        path: the file.
        min_size: smallest accepted size in pixels along each axis (of the file).
        decode_size: ``(W, H)``: decode a JPEG at the smallest DCT scale (1/2, 1/4 or 1/8) that keeps at least
            these many pixels along each axis; other formats are read whole.

    Returns:
        ``array`` float32 ``(W, H)`` (axis 0 = x) and ``meta`` with ``spacing`` ``(sx, sy)`` mm/pixel of the
        file or ``None``, ``spacing_source`` (tag name, ``"nifti"`` or ``None``), ``format``, ``decode_scale``
        (``s``: the array has ``ceil(file size / s)`` pixels, 1 = full size) and ``file_shape`` (W, H).

    Raises:
        LandmarkDataError: missing/unreadable file, no pixel data, not 2D, NaN/inf pixels, a blank (constant)
            image, smaller than ``min_size`` pixels along an axis. The message starts with the file name.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise LandmarkDataError(f"{path}: image file does not exist")
    suffix = _suffix(path)
    if suffix in DICOM_SUFFIXES:
        arr, meta = _read_dicom(path)
    elif suffix in NIFTI_SUFFIXES:
        arr, meta = _read_nifti(path)
    elif suffix in PIL_SUFFIXES:
        arr, meta = _read_pil(path, decode_size)
    else:  # no telling suffix: DICOM files often have none
        try:
            arr, meta = _read_dicom(path)
        except LandmarkDataError:
            arr, meta = _read_pil(path, decode_size)
    if arr.ndim != 2:
        raise LandmarkDataError(f"{path}: expected a 2D image, got shape {arr.shape}")
    meta.setdefault("decode_scale", 1)
    meta.setdefault("file_shape", tuple(int(v) for v in arr.shape))
    if min(meta["file_shape"]) < min_size:
        w, h = meta["file_shape"]
        raise LandmarkDataError(f"{path}: image is {w}x{h} pixels, smaller than the minimum {min_size} per axis")
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():  # integer pixels are always finite
        bad = int((~np.isfinite(arr)).sum())
        raise LandmarkDataError(f"{path}: {bad} pixel value(s) are NaN or infinite")
    if arr.min() == arr.max():
        raise LandmarkDataError(f"{path}: blank image (every pixel is {float(arr.flat[0]):g})")
    return np.ascontiguousarray(arr, dtype=np.float32), meta


class RadiographReader(ImageReader):
    """MONAI :class:`~monai.data.ImageReader` for 2D radiographs (usable with ``LoadImage(reader=...)``).

    ``get_data`` returns the ``(W, H)`` array and a meta dict whose ``affine`` holds the pixel spacing
    (1 mm when the file has none, flagged by ``spacing_source`` = ``None``).
    """

    def __init__(self, min_size: int = 16):
        super().__init__()
        self.min_size = min_size

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return all(_suffix(f) in DICOM_SUFFIXES + NIFTI_SUFFIXES + PIL_SUFFIXES for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs):
        names = ensure_tuple(data)
        out = [(str(n), *read_radiograph(n, self.min_size)) for n in names]
        return out if len(out) > 1 else out[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        if isinstance(img, list):
            raise ValueError("RadiographReader reads one 2D image at a time")
        name, arr, meta = img
        affine = spacing_affine(meta["spacing"] or (1.0, 1.0)).numpy()
        header = {
            **meta,
            "filename_or_obj": name,
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(arr.shape),
            "original_channel_dim": "no_channel",
        }
        return arr, header


class LoadRadiograph(Transform):
    """Load a radiograph as a channel-first ``MetaTensor`` ``(1, W, H)`` whose affine carries the spacing.

    Args:
        require_spacing: raise if neither the file nor ``spacing`` gives a pixel spacing; otherwise such
            images get 1 mm/pixel and ``spacing_source`` ``"none"`` (results are then in pixels).
        min_size: smallest accepted size in pixels along each axis.
        decode_size: ``(W, H)``, e.g. the network input size: decode JPEGs at the smallest DCT scale ``1/s``
            (s = 2, 4, 8) that keeps at least that many pixels per axis (:func:`read_radiograph`). The image then
            has ``ceil(file size / s)`` pixels and the affine ``x_mm = sx * (s * i + (s - 1) / 2)``, while
            ``original_affine``, ``original_spatial_shape`` and ``spacing`` stay the file's. For inference: the
            landmarks of a datalist item are in the file's pixels and are not moved here.

    ``meta`` holds ``spacing`` ``(sx, sy)`` mm/pixel, ``spacing_source`` (``"PixelSpacing"``,
    ``"ImagerPixelSpacing"``, ``"nifti"``, ``"datalist"`` or ``"none"``), ``original_affine`` and
    ``original_spatial_shape`` (used to map predictions back to the file's pixels) and ``decode_scale``.
    """

    def __init__(self, require_spacing: bool = False, min_size: int = 16, decode_size: Sequence[int] | None = None):
        self.require_spacing = require_spacing
        self.decode_size = None if decode_size is None else tuple(int(v) for v in decode_size)
        if self.decode_size is not None and (len(self.decode_size) != 2 or min(self.decode_size) < 1):
            raise ValueError(f"LoadRadiograph: decode_size must be two positive pixel counts (W, H), got {decode_size!r}")
        self.reader = RadiographReader(min_size=min_size)

    def __call__(self, filename: str | os.PathLike, spacing: Sequence[float] | None = None) -> MetaTensor:
        name = str(filename)
        arr, meta = self.reader.get_data((name, *read_radiograph(name, self.reader.min_size, self.decode_size)))
        if spacing is not None:
            spacing = [float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1)]
            if not _valid_spacing(spacing):
                raise LandmarkDataError(f"{filename}: invalid spacing {spacing!r} (need two positive numbers, mm/pixel)")
            source = "datalist"
        elif meta["spacing"] is not None:
            spacing, source = meta["spacing"], meta["spacing_source"]
        elif self.require_spacing:
            raise LandmarkDataError(
                f"{filename}: no pixel spacing in the file (neither PixelSpacing (0028,0030) nor "
                "ImagerPixelSpacing (0018,1164)) and none given: add 'spacing' [sx, sy] to its datalist entry, "
                "or allow pixel units (require_spacing=False)"
            )
        else:
            spacing, source = (1.0, 1.0), "none"
        original = spacing_affine(spacing)
        scale = int(meta.get("decode_scale", 1))
        affine = original.clone()
        if scale > 1:  # reduced decode: pixel i is the mean of the file's pixels s*i .. s*i+s-1
            affine[:2, :2] *= scale
            affine[:2, 3] = original.diagonal()[:2] * (scale - 1) / 2.0
        meta.pop("affine", None)  # given to MetaTensor below (avoids MONAI's "meta contains an affine" warning)
        meta.update(
            original_affine=original,
            spacing=np.asarray(spacing, dtype=np.float64),
            spacing_source=source,
            original_spatial_shape=np.asarray(meta.pop("file_shape")),
        )
        return MetaTensor(torch.from_numpy(arr)[None], affine=affine, meta=meta)


class LoadRadiographd(MapTransform):
    """Dictionary version of :class:`LoadRadiograph`.

    The pixel spacing is taken from ``data[spacing_key]`` when present (datalist), else from the file;
    the resolved spacing is written back to ``data[spacing_key]`` as a float64 tensor ``(2,)`` so every
    item of a batch carries it.
    """

    def __init__(
        self,
        keys: str | Sequence[str] = "image",
        spacing_key: str = "spacing",
        require_spacing: bool = False,
        min_size: int = 16,
        decode_size: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.spacing_key = spacing_key
        self.loader = LoadRadiograph(require_spacing=require_spacing, min_size=min_size, decode_size=decode_size)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            given = d.get(self.spacing_key)
            img = self.loader(d[key], spacing=None if given is None else given)
            d[key] = img
            d[self.spacing_key] = torch.as_tensor(img.meta["spacing"], dtype=torch.float64)
        return d


def set_decode_size(transforms: Sequence[Any], decode_size: Sequence[int] | None) -> list[Any]:
    """``transforms`` (a preprocessing list) with ``decode_size`` set on its :class:`LoadRadiographd` loaders: inference
    may decode JPEGs at a reduced DCT scale (:class:`LoadRadiograph`) without a second copy of the bundle's chain."""
    for t in transforms:
        if isinstance(t, LoadRadiographd):
            t.loader = LoadRadiograph(t.loader.require_spacing, t.loader.reader.min_size, decode_size)
    return list(transforms)
