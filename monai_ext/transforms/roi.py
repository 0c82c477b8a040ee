"""Regions of interest of a two-stage landmark pipeline (KNEEL, Tiulpin et al. 2019): landmark groups, their
centres, and fixed-physical-size resampling grids that map back to the original image exactly.

* :class:`LandmarkGroups` — which landmarks each ROI holds (knees: right knee = landmarks 0-7, left = 8-15), which
  ROIs are mirrored to look like the first one, and the permutation that puts a mirrored ROI's landmarks in the
  first group's order (through the datalist's ``flip_pairs``); :meth:`~LandmarkGroups.scatter` undoes it.
* :func:`roi_affine` / :class:`RoiResample` — a grid of ``spatial_size`` pixels at ``spacing`` mm centred on a point,
  axes parallel to the image's (one optionally reversed), sampled with MONAI ``SpatialResample``. The output
  ``MetaTensor``'s affine is that grid, so :func:`~monai_ext.transforms.array.move_points` and
  :func:`~monai_ext.transforms.array.points_to_original` map points between ROI and image exactly (the mirror is
  part of the affine). When the grid is coarser than the image, the image is first Gaussian-smoothed
  (``sigma = (factor - 1) / 2`` source pixels, as ``skimage.transform.resize``) to avoid aliasing.
* Stage 1: :class:`ResampleToSpacingd` (whole image at a fixed spacing on a fixed grid centred on the image) and
  :class:`LandmarkGroupCentresd` (the ``K`` landmarks become ``G`` ROI centres).
* Stage 2: :class:`RoiCropsd` / :class:`RandRoiCropsd` expand one image into one sample per ROI (a list of dicts,
  as MONAI's ``RandCropByPosNegLabeld``), around the ground-truth group centre (plus random jitter).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import GaussianSmooth, MapTransform, Randomizable, SpatialCrop, SpatialResample, Transform
from monai.utils import convert_to_tensor, ensure_tuple, ensure_tuple_rep

from monai_ext.transforms.array import move_points

__all__ = [
    "LandmarkGroups",
    "roi_affine",
    "RoiResample",
    "ResampleToSpacingd",
    "LandmarkGroupCentresd",
    "RoiCropsd",
    "RandRoiCropsd",
]


class LandmarkGroups:
    """Landmark groups, one per ROI, and the mirroring that makes every ROI look like the first one.

    The high-cost model predicts ``group_size`` landmarks in the order of the first (reference) group. For ROI ``g``
    the slot ``j`` holds landmark :meth:`indices` ``(g)[j]`` of the full set:

    * not mirrored: ``groups[g][j]`` (the groups are aligned position by position);
    * mirrored (``flip[g]``): the left/right partner (``flip_pairs``) of ``groups[0][j]`` — after the mirror, the
      left knee's ``femur_lat_margin_L`` is where a right knee has its ``femur_lat_margin_R``.

    With ``slots="landmarks"`` the high-cost model has one output per landmark of the full set (``group_size = K``,
    slot ``j`` is landmark ``j``, or its flip partner in a mirrored ROI) and ROI ``g`` is supervised and read only
    on its own group's landmarks (:meth:`gather` leaves the others NaN). Groups may then differ in size and need
    not look alike: e.g. one ROI per landmark (singleton groups) on a hand, where fingers and carpal bones would
    otherwise share slots with contradictory meanings.

    Args:
        groups: ``G`` lists of landmark indices (all of the same length with ``slots="group"``); the first group is
            the reference.
        flip: ``G`` booleans, which ROIs are mirrored (the first one cannot be); default none.
        flip_pairs: ``[[i, j], ...]`` left/right landmark pairs (the datalist's); needed when an ROI is mirrored.
        num_landmarks: ``K``; default the largest index + 1.
        names: ``G`` group names (default ``"group_<g>"``).
        slots: ``"group"`` (KNEEL's knees: the model predicts the reference group's landmarks in every ROI) or
            ``"landmarks"`` (one output per landmark, see above).
    """

    def __init__(
        self,
        groups: Sequence[Sequence[int]],
        flip: Sequence[bool] | None = None,
        flip_pairs: Sequence[Sequence[int]] = (),
        num_landmarks: int | None = None,
        names: Sequence[str] | None = None,
        slots: str = "group",
    ) -> None:
        self.groups = [[int(i) for i in g] for g in groups]
        if not self.groups or any(len(g) == 0 for g in self.groups):
            raise ValueError(f"LandmarkGroups: need at least one non-empty group, got {groups!r}.")
        if slots not in ("group", "landmarks"):
            raise ValueError(f"LandmarkGroups: slots must be 'group' or 'landmarks', got {slots!r}.")
        self.slots = slots
        if slots == "group" and len({len(g) for g in self.groups}) != 1:
            raise ValueError(f"LandmarkGroups: all groups must have the same size, got sizes {[len(g) for g in self.groups]}.")
        self.flip = [bool(f) for f in flip] if flip is not None else [False] * len(self.groups)
        if len(self.flip) != len(self.groups):
            raise ValueError(f"LandmarkGroups: {len(self.flip)} flip flags for {len(self.groups)} groups.")
        if self.flip[0]:
            raise ValueError("LandmarkGroups: the first group is the reference orientation and cannot be flipped.")
        self.num_landmarks = int(num_landmarks) if num_landmarks is not None else 1 + max(max(g) for g in self.groups)
        if any(not 0 <= i < self.num_landmarks for g in self.groups for i in g):
            raise ValueError(f"LandmarkGroups: landmark indices must be in [0, {self.num_landmarks}), got {self.groups}.")
        self.names = [str(n) for n in names] if names is not None else [f"group_{g}" for g in range(len(self.groups))]
        if len(self.names) != len(self.groups):
            raise ValueError(f"LandmarkGroups: {len(self.names)} names for {len(self.groups)} groups.")
        partner = {}
        for i, j in flip_pairs:
            partner[int(i)], partner[int(j)] = int(j), int(i)
        self._indices: list[list[int]] = []
        if slots == "landmarks":
            for g, group in enumerate(self.groups):
                if self.flip[g]:
                    missing = [i for i in group if i not in partner]
                    if missing:
                        raise ValueError(f"LandmarkGroups: group {g} is flipped but landmarks {missing} have no flip pair.")
                    self._indices.append([partner.get(j, j) for j in range(self.num_landmarks)])
                else:
                    self._indices.append(list(range(self.num_landmarks)))
            self._owned = [[self._indices[g].index(i) for i in group] for g, group in enumerate(self.groups)]
            return
        for g, group in enumerate(self.groups):
            if not self.flip[g]:
                self._indices.append(list(group))
                continue
            missing = [i for i in self.groups[0] if i not in partner]
            if missing:
                raise ValueError(f"LandmarkGroups: group {g} is flipped but landmarks {missing} of the first group have no flip pair.")
            mirrored = [partner[i] for i in self.groups[0]]
            if sorted(mirrored) != sorted(group):
                raise ValueError(
                    f"LandmarkGroups: group {g} is flipped but the flip partners of the first group {mirrored} "
                    f"are not its landmarks {group}."
                )
            self._indices.append(mirrored)
        self._owned = [list(range(len(self.groups[0])))] * len(self.groups)

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def group_size(self) -> int:
        """Outputs of the high-cost model: the group size, or ``K`` with ``slots="landmarks"``."""
        return self.num_landmarks if self.slots == "landmarks" else len(self.groups[0])

    def indices(self, g: int) -> list[int]:
        """Full-set landmark index of each slot of ROI ``g`` (length :attr:`group_size`)."""
        return list(self._indices[g])

    def owned(self, g: int) -> list[int]:
        """The slots ROI ``g`` is supervised on and read from (all of them with ``slots="group"``; its own group's
        landmarks with ``slots="landmarks"``)."""
        return list(self._owned[g])

    def slot_names(self, landmark_names: Sequence[str]) -> list[str]:
        """Names of the high-cost model's outputs: the reference group's landmark names (all with
        ``slots="landmarks"``)."""
        if self.slots == "landmarks":
            return [str(n) for n in landmark_names[: self.num_landmarks]]
        return [str(landmark_names[i]) for i in self.groups[0]]

    def centres(self, landmarks: torch.Tensor | np.ndarray) -> torch.Tensor:
        """ROI centres ``(..., G, D)`` of ``(..., K, D)`` landmarks: the mean of each group's present landmarks,
        NaN when the whole group is missing."""
        pts = convert_to_tensor(landmarks, track_meta=False, dtype=torch.float64)
        out = []
        for group in self.groups:
            sub = pts[..., group, :]
            present = torch.isfinite(sub).all(-1, keepdim=True)
            total = torch.where(present, sub, torch.zeros_like(sub)).sum(-2)
            count = present.sum(-2).to(pts.dtype)
            out.append(torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan"))))
        return torch.stack(out, -2)

    def gather(self, landmarks: torch.Tensor | np.ndarray, g: int) -> torch.Tensor:
        """``(..., K, D)`` landmarks -> ``(..., group_size, D)``: ROI ``g``'s landmarks in slot order."""
        pts = convert_to_tensor(landmarks, track_meta=False)
        out = pts[..., self._indices[g], :]
        if self.slots == "landmarks":
            keep = torch.zeros(self.num_landmarks, dtype=torch.bool, device=out.device)
            keep[self._owned[g]] = True
            out = torch.where(keep[:, None], out, torch.full_like(out, float("nan")))
        return out

    def scatter(self, per_roi: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Undo :meth:`gather`: ``G`` tensors ``(group_size, D)`` (slot order) -> ``(K, D)`` in the full order
        (each ROI's :meth:`owned` slots only); landmarks in no group are NaN."""
        parts = [convert_to_tensor(p, track_meta=False) for p in per_roi]
        if len(parts) != self.num_groups:
            raise ValueError(f"LandmarkGroups.scatter: got {len(parts)} ROIs, expected {self.num_groups}.")
        out = torch.full((self.num_landmarks, parts[0].shape[-1]), float("nan"), dtype=parts[0].dtype, device=parts[0].device)
        for g, p in enumerate(parts):
            slots = self._owned[g]
            out[[self._indices[g][j] for j in slots]] = p[slots]
        return out


def _affine(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float64)


def roi_affine(
    affine: torch.Tensor | np.ndarray,
    centre: Sequence[float] | torch.Tensor,
    spacing: Sequence[float],
    spatial_size: Sequence[int],
    flip_axis: int | None = None,
) -> torch.Tensor:
    """Affine (pixel -> mm) of an ROI grid on an image whose affine is ``affine``.

    The grid has ``spatial_size`` pixels of ``spacing`` mm, axes parallel to the image's (axis ``flip_axis``
    reversed when given: a mirror image), and its centre (``(spatial_size - 1) / 2``) on the image pixel ``centre``.
    """
    a = _affine(affine)
    c = torch.as_tensor(np.asarray(centre, dtype=np.float64).reshape(-1), dtype=torch.float64)
    nd = c.shape[0]
    lin = a[:nd, :nd]
    directions = lin / torch.linalg.norm(lin, dim=0, keepdim=True)
    scale = torch.as_tensor([float(s) for s in spacing], dtype=torch.float64)
    if flip_axis is not None:
        scale[flip_axis] = -scale[flip_axis]
    out = a.clone()
    out[:nd, :nd] = directions * scale[None, :]
    half = (torch.as_tensor([float(s) for s in spatial_size], dtype=torch.float64) - 1.0) / 2.0
    out[:nd, -1] = lin @ c + a[:nd, -1] - out[:nd, :nd] @ half
    return out


class RoiResample(Transform):
    """Resample an image onto an ROI grid (:func:`roi_affine`); the output affine is the grid's, so points move
    between the two exactly (:func:`~monai_ext.transforms.array.move_points`).

    Args:
        spacing: output pixel spacing (mm, in the units of the image affine), one value or one per axis.
        spatial_size: output size in pixels; the physical size is ``spacing * spatial_size``.
        flip_axis: the axis reversed when ``flip=True`` (0 = x: left/right).
        mode, padding_mode: MONAI ``SpatialResample`` interpolation and padding (zeros: the darkest value after a
            ``[0, 1]`` intensity scaling, as air on a radiograph).
        anti_aliasing: Gaussian-smooth the image first where the grid is coarser than the image.

    ``__call__(img (C, *S) MetaTensor, centre=None (image pixels; default the image centre), flip=False)``
    returns the ROI ``(C, *spatial_size)`` float32 MetaTensor (meta, e.g. ``original_affine``, kept).
    """

    def __init__(
        self,
        spacing: float | Sequence[float],
        spatial_size: Sequence[int],
        flip_axis: int = 0,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        anti_aliasing: bool = True,
    ) -> None:
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.spacing = tuple(float(s) for s in ensure_tuple_rep(spacing, len(self.spatial_size)))
        if any(s <= 0 for s in self.spacing) or any(s < 1 for s in self.spatial_size):
            raise ValueError(f"RoiResample: spacing and spatial_size must be positive, got {spacing} and {spatial_size}.")
        self.flip_axis = flip_axis
        self.anti_aliasing = anti_aliasing
        self.resampler = SpatialResample(mode=mode, padding_mode=padding_mode, dtype=torch.float32)

    def grid(self, img: MetaTensor, centre: Sequence[float] | torch.Tensor | None = None, flip: bool = False) -> torch.Tensor:
        """The ROI's affine on ``img`` (see :func:`roi_affine`)."""
        if centre is None:
            centre = [(s - 1) / 2.0 for s in img.shape[1:]]
        c = torch.as_tensor(np.asarray(centre, dtype=np.float64).reshape(-1))
        if not bool(torch.isfinite(c).all()):
            raise ValueError(f"RoiResample: the ROI centre must be finite, got {c.tolist()}.")
        return roi_affine(img.affine, c, self.spacing, self.spatial_size, self.flip_axis if flip else None)

    def _smoothed_window(self, img: MetaTensor, dst: torch.Tensor) -> MetaTensor:
        """The part of ``img`` the grid samples from (plus a margin), smoothed against aliasing; ``img`` when the
        grid is not coarser than the image or lies outside it."""
        nd = len(self.spatial_size)
        src = _affine(img.affine)
        src_spacing = torch.linalg.norm(src[:nd, :nd], dim=0)
        sigma = ((torch.as_tensor(self.spacing, dtype=torch.float64) / src_spacing - 1.0) / 2.0).clamp_min(0.0)
        if float(sigma.max()) < 0.25:
            return img
        corners = torch.cartesian_prod(*[torch.tensor([-0.5, s - 0.5], dtype=torch.float64) for s in self.spatial_size])
        src_pts = move_points(corners.reshape(-1, nd), dst, src)
        margin = int(math.ceil(4.0 * float(sigma.max()))) + 1
        shape = torch.as_tensor(img.shape[1:], dtype=torch.float64)
        lo = torch.clamp(torch.floor(src_pts.min(0).values) - margin, min=0)
        hi = torch.minimum(torch.ceil(src_pts.max(0).values) + 1 + margin, shape)
        if bool((hi <= lo).any()):
            return img
        window = SpatialCrop(roi_start=lo.long().tolist(), roi_end=hi.long().tolist())(img)
        return GaussianSmooth(sigma=sigma.clamp_min(0.01).tolist())(window)

    def __call__(self, img: torch.Tensor, centre: Sequence[float] | torch.Tensor | None = None, flip: bool = False) -> MetaTensor:
        if not isinstance(img, MetaTensor):
            img = MetaTensor(img)
        dst = self.grid(img, centre, flip)
        src = self._smoothed_window(img, dst) if self.anti_aliasing else img
        return self.resampler(src, dst_affine=dst, spatial_size=self.spatial_size)


class ResampleToSpacingd(MapTransform):
    """Whole-image stage input: resample ``keys`` images to ``spacing`` mm on a ``spatial_size`` grid centred on
    the image (symmetric padding, or cropping when the image is larger); ``landmark_keys`` points follow.

    KNEEL's low-cost stage works on the whole radiograph at about 1 mm; with a fixed spacing the ROIs have a fixed
    size in pixels. See :class:`RoiResample` for the arguments.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        spacing: float | Sequence[float] = 1.0,
        spatial_size: Sequence[int] = (256, 256),
        landmark_keys: KeysCollection = "landmarks",
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        anti_aliasing: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resampler = RoiResample(spacing, spatial_size, mode=mode, padding_mode=padding_mode, anti_aliasing=anti_aliasing)
        self.landmark_keys = ensure_tuple(landmark_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key] if isinstance(d[key], MetaTensor) else MetaTensor(d[key])
            d[key] = self.resampler(img)
            for lk in self.landmark_keys:
                if lk in d and d[lk] is not None:
                    d[lk] = move_points(d[lk], img.affine, d[key].affine).to(torch.float32)
        return d


class LandmarkGroupCentresd(MapTransform):
    """Replace ``keys`` landmarks ``(K, D)`` by the ``G`` ROI centres ``(G, D)`` (:meth:`LandmarkGroups.centres`),
    or write them to ``output_keys``: the low-cost stage's targets."""

    def __init__(
        self,
        keys: KeysCollection = "landmarks",
        groups: LandmarkGroups | Sequence[Sequence[int]] | None = None,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if groups is None:
            raise ValueError("LandmarkGroupCentresd needs the landmark groups.")
        self.groups = groups if isinstance(groups, LandmarkGroups) else LandmarkGroups(groups)
        self.output_keys = ensure_tuple(output_keys) if output_keys is not None else self.keys
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"LandmarkGroupCentresd: {len(self.output_keys)} output keys for {len(self.keys)} keys.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self.groups.centres(d[key]).to(torch.float32)
        return d


class RoiCropsd(MapTransform):
    """Expand one image into one sample per ROI (a list of ``G`` dicts; MONAI's ``Compose`` applies the following
    transforms to each and ``list_data_collate`` flattens them into the batch).

    ROI ``g`` is centred on the mean of its ground-truth landmarks (:meth:`LandmarkGroups.centres` of
    ``landmark_key``) or on ``centre_key`` ``(G, D)`` points when given; it is resampled by :class:`RoiResample`
    (mirrored when ``groups.flip[g]``), its landmarks are :meth:`LandmarkGroups.gather` ed and moved into its pixels,
    and ``roi_key`` records ``g``. ROIs whose centre is missing (the whole group unannotated) are skipped; an image
    with none gives a single ROI at its centre with all landmarks missing (no loss, no metric).

    Args:
        keys: the image key.
        groups: the :class:`LandmarkGroups`.
        spacing, spatial_size, mode, padding_mode, anti_aliasing: as :class:`RoiResample`.
        landmark_key: ``(K, D)`` points of the image (original pixels when loaded from a datalist).
        centre_key: optional ``(G, D)`` ROI centres in the image's pixels (e.g. a stage-1 prediction).
        roi_key: where the ROI index goes.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        groups: LandmarkGroups | None = None,
        spacing: float | Sequence[float] = 1.0,
        spatial_size: Sequence[int] = (128, 128),
        landmark_key: str = "landmarks",
        centre_key: str | None = None,
        roi_key: str = "roi",
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        anti_aliasing: bool = True,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"RoiCropsd crops one image key, got {self.keys}.")
        if groups is None:
            raise ValueError("RoiCropsd needs the LandmarkGroups.")
        self.groups = groups
        self.resampler = RoiResample(spacing, spatial_size, mode=mode, padding_mode=padding_mode, anti_aliasing=anti_aliasing)
        self.landmark_key = landmark_key
        self.centre_key = centre_key
        self.roi_key = roi_key

    def offset(self, img: MetaTensor) -> torch.Tensor:
        """Shift of the ROI centre in the image's pixels (none here; random in :class:`RandRoiCropsd`)."""
        return torch.zeros(img.ndim - 1, dtype=torch.float64)

    def select(self, rois: list[int]) -> list[int]:
        """The ROIs cropped from an image (all here; a random subset in :class:`RandRoiCropsd`)."""
        return rois

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict]:
        d = dict(data)
        key = self.keys[0]
        img = d[key] if isinstance(d[key], MetaTensor) else MetaTensor(d[key])
        nd = img.ndim - 1
        points = d.get(self.landmark_key)
        if points is not None:
            points = convert_to_tensor(points, track_meta=False, dtype=torch.float64)
        if self.centre_key is not None:
            centres = convert_to_tensor(d[self.centre_key], track_meta=False, dtype=torch.float64).reshape(-1, nd)
        elif points is not None:
            centres = self.groups.centres(points)
        else:
            raise KeyError(f"RoiCropsd: neither '{self.landmark_key}' nor a centre key in the data to centre the ROIs on.")
        rois = self.select([g for g in range(self.groups.num_groups) if bool(torch.isfinite(centres[g]).all())])
        out = []
        for g in rois or [0]:
            centre = centres[g] if rois else torch.as_tensor([(s - 1) / 2.0 for s in img.shape[1:]], dtype=torch.float64)
            crop = self.resampler(img, centre + self.offset(img), flip=self.groups.flip[g])
            item = dict(d)
            item[key] = crop
            item[self.roi_key] = g
            if points is not None:
                moved = move_points(self.groups.gather(points, g), img.affine, crop.affine)
                if not rois:
                    moved = torch.full_like(moved, float("nan"))
                item[self.landmark_key] = moved.to(torch.float32)
            out.append(item)
        return out


class RandRoiCropsd(Randomizable, RoiCropsd):
    """:class:`RoiCropsd` with each ROI centre shifted by a uniform random offset in ``[-jitter_mm, jitter_mm]``
    per axis (mm, converted with the image's spacing): the high-cost stage then learns to cope with an imprecise
    low-cost stage. With ``num_rois``, each call keeps that many ROIs drawn at random without replacement (many
    small groups, e.g. one ROI per landmark: a batch then mixes ROIs of several images, and an epoch visits every
    image without cropping all of its ROIs)."""

    def __init__(
        self, *args: Any, jitter_mm: float | Sequence[float] = 0.0, num_rois: int | None = None, **kwargs: Any
    ) -> None:
        RoiCropsd.__init__(self, *args, **kwargs)
        if num_rois is not None and int(num_rois) < 1:
            raise ValueError(f"RandRoiCropsd: num_rois must be >= 1 (or None for all), got {num_rois}.")
        self.jitter_mm = jitter_mm
        self.num_rois = None if num_rois is None else int(num_rois)

    def randomize(self, data: Any = None) -> None:
        pass  # offsets are drawn per ROI in offset()

    def select(self, rois: list[int]) -> list[int]:
        if self.num_rois is None or len(rois) <= self.num_rois:
            return rois
        return sorted(int(g) for g in self.R.choice(rois, self.num_rois, replace=False))

    def deterministic(self) -> RoiCropsd:
        """The same ROI crops without the jitter (the validation counterpart of this training transform)."""
        crop = RoiCropsd.__new__(RoiCropsd)
        crop.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("R", "jitter_mm", "num_rois")})
        return crop

    def offset(self, img: MetaTensor) -> torch.Tensor:
        nd = img.ndim - 1
        jitter = np.asarray(ensure_tuple_rep(self.jitter_mm, nd), dtype=np.float64)
        spacing = torch.linalg.norm(_affine(img.affine)[:nd, :nd], dim=0).numpy()
        return torch.as_tensor(self.R.uniform(-jitter, jitter) / spacing, dtype=torch.float64)
