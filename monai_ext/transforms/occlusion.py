"""Synthetic occlusions for robustness studies: a bright prosthesis-like blob over a joint, or a cropped field of view.

Both act on an image ``(C, W, H)`` and its landmarks ``(K, 2)`` given in the SAME pixels (the convention of
:mod:`monai_ext`). Apply them after loading and before intensity normalisation and before any resampling that the
landmarks do not follow: the evaluation pipelines fit the image to the network size but keep the ground truth in
original pixels, so the occlusion goes right before ``FitToShaped`` there (:func:`insert_occlusion`); sizes in mm
then refer to the original spacing and a cropped fraction to the true field of view (not the padding).

The ground truth is kept: the model is still asked for the occluded point (the question of the occlusion study).
``occluded`` ``(K,)`` bool records which landmarks were covered, so that metrics can be reported on the occluded
and the visible landmarks separately (:class:`OcclusionSubset`).

* ``"blob"`` (:class:`BlobOcclusion`): an ellipse of uniform bright intensity (the image's ``intensity_percentile``,
  like metal) with a raised-cosine rim, centred on a landmark; occluded = landmarks inside the ellipse.
* ``"crop"`` (:class:`BorderCrop`): the band of ``fraction`` of the image along one side (``"left"`` = small x,
  ``"right"``, ``"top"`` = small y, ``"bottom"``) set to the background (the image minimum); occluded = landmarks
  on a removed pixel.
* ``"none"``: the image is unchanged and no landmark is occluded (the reference condition).
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple

from monai_ext.errors import LandmarkDataError

__all__ = [
    "OCCLUSION_MODES",
    "SIDES",
    "blob_weights",
    "BlobOcclusion",
    "BorderCrop",
    "RandLandmarkOcclusion",
    "RandLandmarkOcclusiond",
    "OcclusionSubset",
    "insert_occlusion",
]

OCCLUSION_MODES = ("none", "blob", "crop")
SIDES = ("left", "right", "top", "bottom")


def _spacing(img: Any, spacing: Sequence[float] | None) -> np.ndarray:
    """``(sx, sy)`` mm/pixel: ``spacing`` when given, else the norms of the MetaTensor affine's columns."""
    if spacing is not None:
        return np.asarray(spacing, dtype=np.float64).reshape(-1)[:2]
    if isinstance(img, MetaTensor):
        affine = np.asarray(img.affine, dtype=np.float64)
        return np.linalg.norm(affine[:2, :2], axis=0)
    raise ValueError("a size in mm needs the pixel spacing: give a MetaTensor with its affine, or 'spacing'.")


def _points(landmarks: Any) -> np.ndarray:
    if landmarks is None:
        return np.zeros((0, 2), dtype=np.float64)
    return convert_to_tensor(landmarks, track_meta=False, dtype=torch.float64).reshape(-1, 2).cpu().numpy()


def blob_weights(
    spatial_shape: Sequence[int], centre: Sequence[float], semi_axes: Sequence[float], edge: float
) -> np.ndarray:
    """Blob opacity ``(W, H)`` in [0, 1]: 1 inside the axis-aligned ellipse (``centre`` ``(x, y)``, ``semi_axes``
    ``(ax, ay)``, pixels), falling to 0 with a raised cosine over ``edge`` (relative to the semi-axes) outside it."""
    w, h = (int(s) for s in spatial_shape)
    (cx, cy), (ax, ay) = (float(c) for c in centre), (float(a) for a in semi_axes)
    if ax <= 0 or ay <= 0 or edge < 0:
        raise ValueError(f"blob semi-axes must be positive and edge >= 0, got {(ax, ay)} and {edge}.")
    x = (np.arange(w, dtype=np.float64)[:, None] - cx) / ax
    y = (np.arange(h, dtype=np.float64)[None, :] - cy) / ay
    rho = np.sqrt(x**2 + y**2)
    if edge == 0:
        return (rho <= 1.0).astype(np.float32)
    rim = 0.5 * (1.0 + np.cos(np.pi * np.clip((rho - 1.0) / edge, 0.0, 1.0)))
    return rim.astype(np.float32)


class BlobOcclusion(Transform):
    """Paint a bright, smooth-edged ellipse (a prosthesis-like blob) centred on a point of the image.

    Args:
        size: semi-axes ``(ax, ay)`` (a number: a circle) in ``size_unit``.
        size_unit: ``"mm"`` (via the pixel spacing) or ``"fraction"`` of the image size along each axis.
        edge: width of the raised-cosine rim outside the ellipse, relative to the semi-axes.
        intensity_percentile: the blob's intensity is this percentile of the image (bright, like metal).
        intensity: an absolute intensity instead (overrides ``intensity_percentile``).
    """

    def __init__(
        self,
        size: float | Sequence[float] = (35.0, 45.0),
        size_unit: str = "mm",
        edge: float = 0.25,
        intensity_percentile: float = 99.9,
        intensity: float | None = None,
    ):
        if size_unit not in ("mm", "fraction"):
            raise ValueError(f"size_unit must be 'mm' or 'fraction', got {size_unit!r}.")
        size = np.broadcast_to(np.asarray(size, dtype=np.float64).reshape(-1), (2,)).copy()
        if (size <= 0).any():
            raise ValueError(f"blob size must be positive, got {size.tolist()}.")
        if edge < 0 or not 0 <= intensity_percentile <= 100:
            raise ValueError(
                f"need edge >= 0 and 0 <= intensity_percentile <= 100, got {edge}, {intensity_percentile}."
            )
        self.size = size
        self.size_unit = size_unit
        self.edge = float(edge)
        self.intensity_percentile = float(intensity_percentile)
        self.intensity = intensity

    def semi_axes(self, img: Any, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Semi-axes ``(ax, ay)`` in pixels of ``img``."""
        if self.size_unit == "fraction":
            return self.size * np.asarray(img.shape[1:3], dtype=np.float64)
        return self.size / _spacing(img, spacing)

    def __call__(
        self, img: Any, centre: Sequence[float], landmarks: Any = None, spacing: Sequence[float] | None = None
    ) -> tuple[Any, torch.Tensor]:
        """The painted image (a copy, same type) and ``occluded`` ``(K,)`` bool (landmarks inside the ellipse)."""
        axes = self.semi_axes(img, spacing)
        arr = convert_to_tensor(img, track_meta=False).detach().cpu().numpy().astype(np.float32)
        weight = blob_weights(arr.shape[1:3], centre, axes, self.edge)
        if self.intensity is not None:
            value = float(self.intensity)
        else:
            value = float(np.percentile(arr, self.intensity_percentile))
        out = arr * (1.0 - weight) + value * weight
        pts = _points(landmarks)
        rho = np.hypot((pts[:, 0] - float(centre[0])) / axes[0], (pts[:, 1] - float(centre[1])) / axes[1])
        occluded = torch.as_tensor(np.nan_to_num(rho, nan=np.inf) <= 1.0)
        return convert_to_dst_type(out, img)[0], occluded


class BorderCrop(Transform):
    """Cut the field of view: set the band of ``fraction`` of the image along one side to the background.

    Args:
        fraction: part of the image size (along the side's axis) that is removed, in [0, 1).
        side: ``"left"`` (small x), ``"right"``, ``"top"`` (small y) or ``"bottom"``.
        background: the value of the removed band; None: the image minimum.
    """

    def __init__(self, fraction: float = 0.2, side: str = "top", background: float | None = None):
        self.fraction = fraction
        self.side = side
        self.background = background
        self.band(side, fraction, (1, 1))  # validates

    @staticmethod
    def band(side: str, fraction: float, spatial_shape: Sequence[int]) -> tuple[int, int, int]:
        """``(axis, start, stop)``: the removed pixels are ``start <= index < stop`` along spatial ``axis``."""
        if side not in SIDES:
            raise ValueError(f"crop side must be one of {SIDES}, got {side!r}.")
        if not 0.0 <= float(fraction) < 1.0:
            raise ValueError(f"crop fraction must be in [0, 1), got {fraction}.")
        axis = 0 if side in ("left", "right") else 1
        size = int(spatial_shape[axis])
        n = int(round(float(fraction) * size))
        return (axis, 0, n) if side in ("left", "top") else (axis, size - n, size)

    def __call__(
        self, img: Any, landmarks: Any = None, side: str | None = None, fraction: float | None = None
    ) -> tuple[Any, torch.Tensor]:
        """Returns the cut image (a copy, same type) and ``occluded`` ``(K,)`` bool: landmarks on a removed pixel."""
        side = self.side if side is None else side
        fraction = self.fraction if fraction is None else fraction
        arr = convert_to_tensor(img, track_meta=False).detach().cpu().numpy().astype(np.float32)
        axis, start, stop = self.band(side, fraction, arr.shape[1:3])
        value = float(arr.min()) if self.background is None else float(self.background)
        out = arr.copy()
        index = [slice(None)] * arr.ndim
        index[axis + 1] = slice(start, stop)
        out[tuple(index)] = value
        coord = np.nan_to_num(_points(landmarks)[:, axis], nan=-np.inf)
        occluded = torch.as_tensor((np.rint(coord) >= start) & (np.rint(coord) < stop) & (start < stop))
        return convert_to_dst_type(out, img)[0], occluded


class RandLandmarkOcclusion(RandomizableTransform):
    """Occlude an image with a random blob over a landmark or a random crop of its field of view (see the module).

    Drawn per call: for ``"blob"`` the landmark under the blob, uniformly among the visible ones of
    ``landmark_index`` (an index or candidates; None: all); for ``"crop"`` the side among ``sides`` and the
    fraction (uniform in ``fraction`` when it is a ``(low, high)`` range).

    Args:
        mode: ``"blob"``, ``"crop"`` or ``"none"``.
        prob: probability of occluding (1 for evaluation).
        landmark_index, size, size_unit, edge, intensity_percentile, intensity: the blob (:class:`BlobOcclusion`).
        fraction, sides, background: the crop (:class:`BorderCrop`).
    """

    def __init__(
        self,
        mode: str = "blob",
        prob: float = 1.0,
        landmark_index: int | Sequence[int] | None = None,
        size: float | Sequence[float] = (35.0, 45.0),
        size_unit: str = "mm",
        edge: float = 0.25,
        intensity_percentile: float = 99.9,
        intensity: float | None = None,
        fraction: float | Sequence[float] = 0.2,
        sides: str | Sequence[str] = SIDES,
        background: float | None = None,
    ):
        RandomizableTransform.__init__(self, prob)
        if mode not in OCCLUSION_MODES:
            raise ValueError(f"occlusion mode must be one of {OCCLUSION_MODES}, got {mode!r}.")
        self.mode = mode
        self.landmark_index = None if landmark_index is None else [int(i) for i in ensure_tuple(landmark_index)]
        self.blob = BlobOcclusion(size, size_unit, edge, intensity_percentile, intensity)
        low, high = (float(fraction), float(fraction)) if np.ndim(fraction) == 0 else (float(f) for f in fraction)
        self.sides = [str(s) for s in ensure_tuple(sides)]
        if not self.sides or low > high:
            raise ValueError(
                f"need at least one crop side and a fraction range low <= high, got {self.sides}, {fraction}."
            )
        self.fraction_range = (low, high)
        self.crop = BorderCrop(high, self.sides[0], background)
        for side in self.sides:
            BorderCrop.band(side, low, (1, 1))
        self._target: int | None = None
        self._side = self.sides[0]
        self._fraction = low

    def randomize(self, landmarks: Any = None) -> None:
        """Draw whether to occlude, the blob's landmark (None when no candidate is visible), the crop side and size."""
        super().randomize(None)
        pts = _points(landmarks)
        candidates = range(len(pts)) if self.landmark_index is None else self.landmark_index
        visible = [i for i in candidates if -len(pts) <= i < len(pts) and np.isfinite(pts[i]).all()]
        self._target = int(self.R.choice(visible)) if visible else None
        self._side = str(self.sides[self.R.randint(len(self.sides))])
        self._fraction = float(self.R.uniform(*self.fraction_range))

    @property
    def drawn(self) -> dict[str, Any]:
        """The last draw: ``{"applied", "landmark", "side", "fraction"}``."""
        return {"applied": self._do_transform, "landmark": self._target, "side": self._side, "fraction": self._fraction}

    def __call__(
        self, img: Any, landmarks: Any = None, spacing: Sequence[float] | None = None, randomize: bool = True
    ) -> tuple[Any, torch.Tensor]:
        """Returns the occluded image (a copy) and ``occluded`` ``(K,)`` bool (all False when nothing was occluded)."""
        if randomize:
            self.randomize(landmarks)
        none = torch.zeros(len(_points(landmarks)), dtype=torch.bool)
        if self.mode == "none" or not self._do_transform:
            return img, none
        if self.mode == "crop":
            return self.crop(img, landmarks, self._side, self._fraction)
        if self._target is None:
            return img, none
        return self.blob(img, _points(landmarks)[self._target], landmarks, spacing)


def _item_seed(seed: int, name: str) -> int:
    """A 32-bit seed from the base ``seed`` and an image's file name (stable across processes, unlike ``hash``)."""
    return zlib.crc32(f"{int(seed)}:{name}".encode()) & 0xFFFFFFFF


class RandLandmarkOcclusiond(Randomizable, MapTransform):
    """Dictionary version of :class:`RandLandmarkOcclusion`: one draw for all ``keys`` images; writes
    ``occluded_key`` ``(K,)`` bool and keeps the landmarks unchanged.

    Determinism: with ``per_image`` (default) each image's draw comes from a generator seeded with the base ``seed``
    and the image's file name (without its folder; ``filename_or_obj`` of the first image's meta), so an image gets
    the same occlusion in every run, for every model, whatever the data loader's workers and order. Images without a
    file name (and every image when ``per_image`` is False) draw from the transform's own generator (``seed``,
    ``set_random_state``).

    Args:
        keys: the image(s) to occlude.
        landmark_key: the landmarks ``(K, 2)`` in the same pixels (required for ``"blob"``; ``"crop"`` without
            landmarks writes no ``occluded_key``).
        occluded_key: where to write the flags.
        seed: the base seed.
        per_image: seed each image's draw from its file name (see above).
        kwargs: the occlusion (:class:`RandLandmarkOcclusion`: ``mode``, ``prob``, ``size``, ``fraction``, ...).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        landmark_key: str = "landmarks",
        occluded_key: str = "occluded",
        seed: int = 0,
        per_image: bool = True,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.occluder = RandLandmarkOcclusion(**kwargs)
        self.landmark_key = landmark_key
        self.occluded_key = occluded_key
        self.seed = int(seed)
        self.per_image = per_image
        self.set_random_state(self.seed)

    @property
    def mode(self) -> str:
        return self.occluder.mode

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.occluder.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.occluder.randomize(data)

    def deterministic(self) -> RandLandmarkOcclusiond:
        """This transform itself: with ``per_image`` every image gets the same occlusion at every call, so an
        evaluation keeps it (:func:`~monai_ext.transforms.evaluation_transforms`)."""
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        landmarks = d.get(self.landmark_key)
        name = getattr(d[keys[0]], "meta", {}).get("filename_or_obj")
        if landmarks is None and self.mode == "blob":
            raise LandmarkDataError(f"{name or '?'}: a blob occlusion needs the landmarks ('{self.landmark_key}').")
        if self.per_image and name:
            self.occluder.set_random_state(seed=_item_seed(self.seed, Path(str(name)).name))
        self.randomize(landmarks)
        occluded = None
        for key in keys:
            d[key], occluded = self.occluder(d[key], landmarks, randomize=False)
        if landmarks is not None:
            d[self.occluded_key] = occluded
        return d


class OcclusionSubset:
    """Output transform of the landmark metrics restricted to the ``"occluded"`` or the ``"visible"`` landmarks:
    :func:`~monai_ext.metrics.ignite.landmark_output_transform` with the ground truth of the other landmarks set
    missing (NaN), so that they are left out of the statistics.

    Use as ``output_transform`` of :class:`~monai_ext.metrics.ignite.PCK` / ``MeanRadialError``; the engine output
    (or batch) must carry ``occluded_key`` per image (written by :class:`RandLandmarkOcclusiond`).
    """

    def __init__(self, subset: str = "occluded", occluded_key: str = "occluded", **kwargs: Any):
        if subset not in ("occluded", "visible"):
            raise ValueError(f"subset must be 'occluded' or 'visible', got {subset!r}.")
        self.subset = subset
        self.occluded_key = occluded_key
        self.kwargs = kwargs

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        from monai_ext.metrics.ignite import landmark_output_transform  # keeps ignite out of the transforms' imports

        pred, gt, spacing = landmark_output_transform(output, **self.kwargs)
        items = [output] if isinstance(output, Mapping) else list(output)
        if any(self.occluded_key not in item for item in items):
            raise KeyError(
                f"OcclusionSubset: no {self.occluded_key!r} in the engine output; add RandLandmarkOcclusiond to the "
                "preprocessing."
            )
        flags = [convert_to_tensor(item[self.occluded_key], track_meta=False).to(torch.bool) for item in items]
        occluded = (flags[0] if isinstance(output, Mapping) else torch.stack(flags)).reshape(gt.shape[:-1])
        keep = occluded if self.subset == "occluded" else ~occluded
        gt = torch.where(keep.to(gt.device)[..., None], gt, torch.full_like(gt, float("nan")))
        return pred, gt, spacing


def insert_occlusion(transforms: Sequence[Any], occlusion: Any, before: str = "FitToShaped") -> list[Any]:
    """``transforms`` with ``occlusion`` inserted before the first transform of class name ``before`` (by default
    the fitting step, where the image and its ground truth are still in the same original pixels)."""
    out = list(transforms)
    for i, t in enumerate(out):
        if type(t).__name__ == before:
            return out[:i] + [occlusion] + out[i:]
    names = [type(t).__name__ for t in out]
    raise ValueError(f"insert_occlusion: no {before} in the preprocessing {names}; the occlusion must precede it.")
