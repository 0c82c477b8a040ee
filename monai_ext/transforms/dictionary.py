"""Dictionary versions of :mod:`monai_ext.transforms.array`.

The data dict holds ``image`` (``MetaTensor (1, W, H)``) and ``landmarks`` (``(K, 2)`` pixel points of
*that* image). Every transform that moves the image moves the landmarks with it, so ``landmarks`` always
indexes the current ``image``; a dict without landmarks (inference) passes through the same transforms.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform
from monai.utils import convert_to_tensor, ensure_tuple

from monai_ext.decoding import decode_heatmaps
from monai_ext.transforms.array import (
    FitToShape,
    GenerateLandmarkHeatmap,
    LandmarkFlip,
    LandmarksOutsideToNaN,
    MatchHistogram,
    RandLandmarkElastic,
    move_points,
    points_to_mm,
    points_to_original,
)

__all__ = [
    "EnsureLandmarksd",
    "ApplyWithLandmarksd",
    "FitToShaped",
    "RandLandmarkFlipd",
    "RandLandmarkElasticd",
    "LandmarksOutsideToNaNd",
    "GenerateLandmarkHeatmapd",
    "MatchHistogramd",
    "DecodeHeatmapd",
    "LandmarksToOriginald",
]


def _move_all(d: dict, landmark_keys: Sequence[Hashable], old_affine, new_affine) -> None:
    for lk in landmark_keys:
        if lk in d and d[lk] is not None:
            d[lk] = move_points(d[lk], old_affine, new_affine).to(torch.float32)


class EnsureLandmarksd(MapTransform):
    """Landmarks as float32 tensors ``(K, 2)`` (NaN = missing); checks the count when ``num_landmarks`` is given."""

    def __init__(self, keys: KeysCollection = "landmarks", num_landmarks: int | None = None, allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.num_landmarks = num_landmarks

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            pts = torch.as_tensor(np.asarray(d[key], dtype=np.float32)).reshape(-1, 2)
            if self.num_landmarks is not None and pts.shape[0] != self.num_landmarks:
                raise ValueError(f"{d.get('image', '?')}: {pts.shape[0]} landmarks, expected {self.num_landmarks}")
            d[key] = pts
        return d


class ApplyWithLandmarksd(Randomizable, MapTransform):
    """Apply any MONAI spatial dictionary transform that updates the affine (``Resized``, ``SpatialPadd``,
    ``Spacingd``, ``RandAffined``, ``RandZoomd``, ``Rotate90d``, ...) to the image, and move the landmarks
    through the change of affine (:func:`~monai_ext.transforms.array.move_points`).

    Args:
        transform: the MONAI dictionary transform, acting on ``image_key`` (its own ``keys``).
        image_key: the image whose affine the landmarks follow.
        landmark_keys: point keys to move (missing ones are skipped).
        pad_value: the value the wrapped transform's ``"zeros"`` padding fills in ``image_key`` (MONAI's resampler
            pads with 0 only): the image is shifted by ``-pad_value`` before and ``+pad_value`` after, so a rotated
            border gets the value the fit gives to the outside of the image (the intensity window's darkest value).
    """

    def __init__(
        self,
        transform: MapTransform,
        image_key: str = "image",
        landmark_keys: KeysCollection = "landmarks",
        pad_value: float = 0.0,
    ):
        MapTransform.__init__(self, ensure_tuple(landmark_keys), allow_missing_keys=True)
        self.transform = transform
        self.image_key = image_key
        self.pad_value = float(pad_value)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        pass  # the wrapped transform draws its own parameters

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        old = d[self.image_key].affine.clone()
        if self.pad_value:
            d[self.image_key] = d[self.image_key] - self.pad_value
        d = dict(self.transform(d))
        if self.pad_value:
            d[self.image_key] = d[self.image_key] + self.pad_value
        _move_all(d, self.keys, old, d[self.image_key].affine)
        return d


class FitToShaped(MapTransform):
    """Dictionary version of :class:`~monai_ext.transforms.array.FitToShape`; landmarks follow."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        spatial_size: Sequence[int] = (256, 256),
        landmark_keys: KeysCollection = "landmarks",
        mode: str = "area",
        anti_aliasing: bool = False,
        pad_value: float | str = 0.0,
        keep_aspect: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.fitter = FitToShape(spatial_size, mode=mode, anti_aliasing=anti_aliasing, pad_value=pad_value, keep_aspect=keep_aspect)
        self.landmark_keys = ensure_tuple(landmark_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            old = d[key].affine.clone()
            d[key] = self.fitter(d[key])
            _move_all(d, self.landmark_keys, old, d[key].affine)
        return d


class RandLandmarkFlipd(RandomizableTransform, MapTransform):
    """Randomly flip the image along ``spatial_axis`` (default 0 = x, left/right) with the landmarks,
    swapping each left/right pair in ``flip_pairs``."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        landmark_keys: KeysCollection = "landmarks",
        flip_pairs: Sequence[Sequence[int]] = (),
        spatial_axis: int = 0,
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.flipper = LandmarkFlip(spatial_axis=spatial_axis, flip_pairs=flip_pairs)
        self.landmark_keys = ensure_tuple(landmark_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            old = d[key].affine.clone()
            d[key] = self.flipper.flipper(d[key])
            for lk in self.landmark_keys:
                if lk in d and d[lk] is not None:
                    pts = move_points(d[lk], old, d[key].affine).to(torch.float32)
                    d[lk] = pts[..., self.flipper.permutation(pts.shape[-2]), :]
        return d


class RandLandmarkElasticd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`~monai_ext.transforms.array.RandLandmarkElastic` (one field for
    all ``keys`` images, landmarks moved through its inverse)."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        landmark_keys: KeysCollection = "landmarks",
        prob: float = 0.5,
        num_control_points: int = 5,
        magnitude: float = 4.0,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        pad_value: float = 0.0,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.elastic = RandLandmarkElastic(
            1.0, num_control_points, magnitude, mode=mode, padding_mode=padding_mode, pad_value=pad_value
        )
        self.landmark_keys = ensure_tuple(landmark_keys)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.elastic.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        first = next(iter(self.key_iterator(d)), None)
        if first is None:
            return d
        self.elastic.randomize(d[first].shape[1:])
        for key in self.key_iterator(d):
            d[key] = self.elastic.warp_image(d[key])
        for lk in self.landmark_keys:
            if lk in d and d[lk] is not None:
                d[lk] = self.elastic.move_points(d[lk])
        return d


class LandmarksOutsideToNaNd(MapTransform):
    """Landmarks outside ``ref_key``'s image become NaN (missing)."""

    def __init__(self, keys: KeysCollection = "landmarks", ref_key: str = "image", margin: float = 0.5, allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.op = LandmarksOutsideToNaN(margin)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key], d[self.ref_key].shape[1:])
        return d


class GenerateLandmarkHeatmapd(MapTransform):
    """Heatmap targets from ``keys`` landmarks on ``ref_key``'s grid, into ``heatmap_key`` ``(K, *spatial)``
    and ``mask_key`` ``(K,)`` (0 for missing landmarks). See :class:`~monai_ext.transforms.array.GenerateLandmarkHeatmap`."""

    def __init__(
        self,
        keys: KeysCollection = "landmarks",
        ref_key: str = "image",
        heatmap_key: str = "heatmap",
        mask_key: str = "landmark_mask",
        sigma: float | Sequence[float] = 2.0,
        sigma_unit: str = "px",
        amplitude: float = 1.0,
        normalize: bool = False,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.heatmap_key = heatmap_key
        self.mask_key = mask_key
        self.op = GenerateLandmarkHeatmap(sigma, sigma_unit=sigma_unit, amplitude=amplitude, normalize=normalize)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            ref = d[self.ref_key]
            d[self.heatmap_key], d[self.mask_key] = self.op(d[key], ref.shape[1:], getattr(ref, "affine", None))
        return d


class MatchHistogramd(MapTransform):
    """Dictionary version of :class:`~monai_ext.transforms.array.MatchHistogram`."""

    def __init__(self, keys: KeysCollection, reference: Any, mask: str | None = "otsu", num_quantiles: int = 256, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.op = MatchHistogram(reference, mask=mask, num_quantiles=num_quantiles)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key])
        return d


class DecodeHeatmapd(MapTransform):
    """Decode predicted heatmaps ``(K, *spatial)`` into points in the pixels of ``ref_key``'s image.

    Heatmaps smaller than the image (e.g. stride-4 hourglass output) are mapped with the pixel-centre
    convention: heatmap index ``h`` ↔ image pixel ``(h + 0.5) * stride - 0.5``.

    Writes ``output_key`` ``(K, 2)`` float32 and ``confidence_key`` ``(K,)`` (peak value), both on the CPU
    (decoding runs where the heatmaps are; mapping points back to the file is CPU work on a few numbers).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        ref_key: str = "image",
        output_key: str = "pred_landmarks",
        confidence_key: str = "pred_confidence",
        method: str = "local_soft_argmax",
        window: int = 5,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.output_key = output_key
        self.confidence_key = confidence_key
        self.method = method
        self.window = window

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            hm = convert_to_tensor(d[key], track_meta=False).float()
            coords, conf = decode_heatmaps(hm[None], method=self.method, window=self.window)
            coords = coords[0].detach().cpu().to(torch.float64)  # decoded on the heatmaps' device; points on the CPU
            ref_shape = torch.as_tensor(d[self.ref_key].shape[1:], dtype=torch.float64)
            stride = ref_shape / torch.as_tensor(hm.shape[1:], dtype=torch.float64)
            d[self.output_key] = ((coords + 0.5) * stride - 0.5).to(torch.float32)
            d[self.confidence_key] = conf[0].detach().cpu().to(torch.float32)
        return d


class LandmarksToOriginald(MapTransform):
    """Map ``keys`` points from the pixels of ``ref_key``'s (preprocessed) image back to the pixels of the
    original file (:func:`~monai_ext.transforms.array.points_to_original`), and write mm coordinates to
    ``<key>_mm`` using the original spacing (``meta["spacing"]``)."""

    def __init__(self, keys: KeysCollection = "pred_landmarks", ref_key: str = "image", mm_suffix: str = "_mm", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.mm_suffix = mm_suffix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        ref = d[self.ref_key]
        for key in self.key_iterator(d):
            pts = points_to_original(d[key], ref)
            d[key] = pts.to(torch.float32)
            if self.mm_suffix:
                d[f"{key}{self.mm_suffix}"] = points_to_mm(pts, ref.meta["spacing"]).to(torch.float32)
        return d
