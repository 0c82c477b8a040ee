"""Array transforms of the landmark path (see :mod:`monai_ext` for the coordinate convention).

Landmarks are ``(K, 2)`` tensors of ``(x, y)`` pixel coordinates of the image they accompany.
Geometry follows the image's affine (pixel → mm): after any MONAI spatial transform that updates
the affine (``Resize``, ``SpatialPad``, ``Spacing``, ``Flip``, ``RandAffine``, ``Zoom``, ``Rotate90``...),
a landmark ``p`` moves to ``inv(A_new) @ A_old @ p`` (:func:`move_points`): this is exact because
MONAI's affine bookkeeping is exact for those transforms (tested to < 0.01 px).

MONAI's ``TransformPointsImageToWorldd``/``TransformPointsWorldToImaged`` are not used: in MONAI 1.6.1
they compose the affine the points tracked from the previous call, so an image → world → image chain
around a flip/resize lands on the wrong pixel. :func:`move_points` applies MONAI's
``apply_affine_to_points`` on plain tensors instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Flip, RandomizableTransform, Resize, SpatialPad, Transform
from monai.transforms.utils import apply_affine_to_points
from monai.utils import convert_to_dst_type, convert_to_tensor

from monai_ext.heatmaps import gaussian_heatmaps

__all__ = [
    "move_points",
    "points_to_original",
    "points_to_mm",
    "outside_to_nan",
    "FitToShape",
    "LandmarkFlip",
    "RandLandmarkElastic",
    "LandmarksOutsideToNaN",
    "GenerateLandmarkHeatmap",
    "MatchHistogram",
]


def _affine(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float64)


def move_points(points: torch.Tensor | np.ndarray, old_affine, new_affine) -> torch.Tensor:
    """Map ``(..., K, 2)`` pixel points of an image with affine ``old_affine`` to the pixels of the same
    physical points in an image with affine ``new_affine`` (both pixel → mm, 3x3 or 4x4). NaN stays NaN.
    The result is a float64 CPU tensor whatever the inputs' device."""
    pts = convert_to_tensor(points, track_meta=False, dtype=torch.float64, device="cpu")  # points live on the CPU
    shape = pts.shape
    flat = pts.reshape(1, -1, shape[-1])
    old, new = _affine(old_affine).cpu(), _affine(new_affine).cpu()
    if old.shape != new.shape:
        raise ValueError(f"affines differ in size: {tuple(old.shape)} vs {tuple(new.shape)}")
    out = apply_affine_to_points(flat, torch.linalg.inv(new) @ old)
    return out.reshape(shape)


def points_to_original(points: torch.Tensor | np.ndarray, image: MetaTensor) -> torch.Tensor:
    """Points in the pixels of a preprocessed ``image`` → pixels of the file it was loaded from.

    The one place where predictions go back to the original image: it uses the image's current affine and
    ``meta["original_affine"]`` (set by :class:`~monai_ext.data.readers.LoadRadiograph`).
    """
    return move_points(points, image.affine, image.meta["original_affine"])


def points_to_mm(points: torch.Tensor | np.ndarray, spacing: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Original-image pixel points ``(..., K, 2)`` → mm from the centre of the top-left pixel."""
    pts = convert_to_tensor(points, track_meta=False, dtype=torch.float64)
    spacing = spacing.detach().cpu() if isinstance(spacing, torch.Tensor) else spacing
    return pts * torch.as_tensor(np.asarray(spacing, dtype=np.float64).reshape(-1), dtype=torch.float64, device=pts.device)


def outside_to_nan(points: torch.Tensor, spatial_shape: Sequence[int], margin: float = 0.5) -> torch.Tensor:
    """Mark points outside the image (beyond ``margin`` pixels from the outer pixel centres) missing."""
    pts = convert_to_tensor(points, track_meta=False).clone()
    size = torch.as_tensor(list(spatial_shape), dtype=pts.dtype, device=pts.device)
    outside = ((pts < -margin) | (pts > size - 1 + margin)).any(-1)
    pts[outside] = float("nan")
    return pts


class FitToShape(Transform):
    """Fit an image into ``spatial_size`` keeping its *physical* aspect ratio, then pad.

    The output spacing is ``max_i(extent_i / spatial_size_i)`` mm along every axis (isotropic up to the
    rounding of the resized shape to whole pixels), with ``extent = shape * spacing``; the image is resampled with MONAI ``Resize`` and centred with ``SpatialPad``, both
    updating the affine so landmarks follow exactly (:func:`move_points`).

    Args:
        spatial_size: output ``(W, H)`` in pixels.
        mode: interpolation for ``Resize`` (``"area"`` averages when shrinking; ``"bilinear"`` for
            enlarging); ``anti_aliasing`` as MONAI's ``Resize``.
        pad_value: constant for the padded border, or ``"min"``: the image's minimum (after the intensity
            window that is its darkest value, whatever the stored range, e.g. negative modality-LUT values).
        keep_aspect: ``False`` stretches the image to ``spatial_size`` instead (anisotropic pixels, no padding; e.g.
            Kim et al.'s spine input of 512 x 256); the affine records the stretch, so landmarks still map exactly.
    """

    def __init__(
        self,
        spatial_size: Sequence[int],
        mode: str = "area",
        anti_aliasing: bool = False,
        pad_value: float | str = 0.0,
        keep_aspect: bool = True,
    ):
        if isinstance(pad_value, str) and pad_value != "min":
            raise ValueError(f"FitToShape: pad_value must be a number or 'min', got {pad_value!r}.")
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.mode = mode
        self.anti_aliasing = anti_aliasing
        self.pad_value = pad_value
        self.keep_aspect = bool(keep_aspect)

    def resized_shape(self, img: MetaTensor) -> tuple[int, ...]:
        if not self.keep_aspect:
            return self.spatial_size
        shape = np.asarray(img.shape[1:], dtype=np.float64)
        affine = _affine(img.affine)
        nd = len(shape)
        spacing = torch.linalg.norm(affine[:nd, :nd], dim=0).numpy()
        extent = shape * spacing
        target = np.asarray(self.spatial_size, dtype=np.float64)
        out_spacing = float(np.max(extent / target))
        return tuple(int(min(t, max(1, round(e / out_spacing)))) for e, t in zip(extent, target))

    def __call__(self, img: MetaTensor) -> MetaTensor:
        if not isinstance(img, MetaTensor):
            img = MetaTensor(img)
        shape = self.resized_shape(img)
        kwargs = {"anti_aliasing": self.anti_aliasing} if self.mode != "area" else {}
        out = Resize(shape, mode=self.mode, **kwargs)(img)
        value = float(out.min()) if self.pad_value == "min" else float(self.pad_value)
        return SpatialPad(self.spatial_size, method="symmetric", value=value)(out)


class LandmarkFlip(Transform):
    """Flip an image along ``spatial_axis`` and its landmarks with it, swapping left/right landmarks.

    ``flip_pairs`` ``[[i, j], ...]``: after the flip, the point that was landmark ``i`` is landmark ``j``
    and vice versa (a left knee seen in a mirror looks like a right knee).
    """

    def __init__(self, spatial_axis: int = 0, flip_pairs: Sequence[Sequence[int]] = ()):
        self.flipper = Flip(spatial_axis=spatial_axis)
        self.flip_pairs = [tuple(int(i) for i in p) for p in flip_pairs]

    def permutation(self, num_landmarks: int) -> list[int]:
        perm = list(range(num_landmarks))
        for i, j in self.flip_pairs:
            perm[i], perm[j] = j, i
        return perm

    def __call__(self, img: MetaTensor, landmarks: torch.Tensor) -> tuple[MetaTensor, torch.Tensor]:
        old = img.affine.clone()
        out = self.flipper(img)
        pts = move_points(landmarks, old, out.affine)
        return out, pts[..., self.permutation(pts.shape[-2]), :]


def grid_sample_padded(
    img: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros", pad_value: float = 0.0
) -> torch.Tensor:
    """``F.grid_sample`` (``align_corners=False``) of ``img`` ``(B, C, *spatial)`` whose ``"zeros"`` padding fills
    ``pad_value`` instead of 0 (the value the preprocessing gives to the outside of an image, e.g. the intensity
    window's darkest value), so augmented borders look like the borders of a fitted test image."""
    if padding_mode != "zeros" or float(pad_value) == 0.0:
        return F.grid_sample(img, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    return F.grid_sample(img - pad_value, grid, mode=mode, padding_mode="zeros", align_corners=False) + pad_value


def _smooth_field(rng: np.random.RandomState, spatial_shape: Sequence[int], num_control_points: int, magnitude: float):
    """Random displacement field ``(D, *spatial)`` in pixels: Gaussian control-point offsets on a coarse
    grid (the B-spline control net) interpolated bicubically (trilinearly in 3D) to every pixel."""
    nd = len(spatial_shape)
    coarse = rng.normal(0.0, magnitude, size=(1, nd, *([num_control_points] * nd))).astype(np.float32)
    mode = "bicubic" if nd == 2 else "trilinear"
    field = F.interpolate(torch.from_numpy(coarse), size=tuple(spatial_shape), mode=mode, align_corners=True)
    return field[0]


def _grid_coords(points: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Pixel points ``(N, D)`` (spatial-dim order) → ``grid_sample`` coordinates (reversed order, [-1, 1])."""
    size = torch.as_tensor(list(spatial_shape), dtype=points.dtype)
    norm = (2 * points + 1) / size - 1  # align_corners=False: pixel centres
    return norm.flip(-1)


def _sample(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``field`` ``(C, *spatial)`` at pixel points ``(N, D)`` → ``(N, C)``."""
    nd = points.shape[-1]
    grid = _grid_coords(points.to(field.dtype), field.shape[1:]).reshape(1, -1, *([1] * (nd - 1)), nd)
    out = F.grid_sample(field[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(field.shape[0], -1).T


class RandLandmarkElastic(RandomizableTransform):
    """Random elastic (B-spline-like) deformation of an image that moves its landmarks with it.

    The output pixel ``p`` samples the input at ``p + u(p)``, with ``u`` a smooth random field
    (:func:`_smooth_field`, ``magnitude`` = std of the control-point offsets in pixels). A landmark ``q``
    moves to the ``p`` solving ``p + u(p) = q`` (fixed-point iteration, exact for the small deformations
    used in augmentation); it becomes NaN if the iteration does not converge within ``tolerance`` px.

    Args:
        prob: probability of deforming.
        num_control_points: control points per axis (including the borders).
        magnitude: std of the control-point displacements in pixels.
        mode / padding_mode: ``grid_sample`` interpolation and padding for the image.
        pad_value: the value ``"zeros"`` padding fills (:func:`grid_sample_padded`).
    """

    def __init__(
        self,
        prob: float = 0.5,
        num_control_points: int = 5,
        magnitude: float = 4.0,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        iterations: int = 30,
        tolerance: float = 0.01,
        pad_value: float = 0.0,
    ):
        RandomizableTransform.__init__(self, prob)
        if num_control_points < 2:
            raise ValueError("num_control_points must be at least 2")
        self.num_control_points = num_control_points
        self.magnitude = magnitude
        self.mode = mode
        self.padding_mode = padding_mode
        self.pad_value = float(pad_value)
        self.iterations = iterations
        self.tolerance = tolerance
        self._field: torch.Tensor | None = None

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        super().randomize(None)
        self._field = (
            _smooth_field(self.R, spatial_shape, self.num_control_points, self.magnitude) if self._do_transform else None
        )

    def warp_image(self, img: torch.Tensor) -> torch.Tensor:
        """Resample ``img`` ``(C, *spatial)`` through the current field (drawn by :meth:`randomize`)."""
        if self._field is None:
            return img
        spatial = tuple(img.shape[1:])
        nd = len(spatial)
        axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in spatial], indexing="ij")
        coords = torch.stack(axes, -1) + torch.movedim(self._field, 0, -1)
        grid = _grid_coords(coords.reshape(-1, nd), spatial).reshape(1, *spatial, nd)
        data = convert_to_tensor(img, track_meta=False).float()
        warped = grid_sample_padded(data[None], grid, self.mode, self.padding_mode, self.pad_value)[0]
        return convert_to_dst_type(warped, img)[0]  # keeps the MetaTensor's meta and affine

    def move_points(self, landmarks: torch.Tensor) -> torch.Tensor:
        """Move ``(K, D)`` pixel points with the current field: solve ``p + u(p) = q`` for each ``q``."""
        q = convert_to_tensor(landmarks, track_meta=False)
        if self._field is None:
            return q
        flat = q.to(torch.float64).reshape(-1, q.shape[-1])
        valid = torch.isfinite(flat).all(-1)
        out = flat.clone()
        if valid.any():
            target = flat[valid]
            est = target.clone()
            for _ in range(self.iterations):
                est = target - _sample(self._field, est).to(torch.float64)
            residual = (est + _sample(self._field, est).to(torch.float64) - target).norm(dim=-1)
            est[residual > self.tolerance] = float("nan")
            out[valid] = est
        return out.reshape(q.shape).to(q.dtype if q.is_floating_point() else torch.float32)

    def __call__(self, img: torch.Tensor, landmarks: torch.Tensor, randomize: bool = True):
        """Returns the deformed ``img`` and the moved ``landmarks``."""
        if randomize:
            self.randomize(tuple(img.shape[1:]))
        return self.warp_image(img), self.move_points(landmarks)


class LandmarksOutsideToNaN(Transform):
    """Points pushed out of the image become missing (NaN), never clamped to the border."""

    def __init__(self, margin: float = 0.5):
        self.margin = margin

    def __call__(self, landmarks: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
        return outside_to_nan(landmarks, spatial_shape, self.margin)


class GenerateLandmarkHeatmap(Transform):
    """Sub-pixel Gaussian heatmaps, one channel per landmark, and a visibility mask.

    MONAI's ``GenerateHeatmap`` rounds each centre to the nearest pixel (up to 0.5 px of target error,
    e.g. 0.4 mm for a hand radiograph fitted to 256 px); these heatmaps are evaluated analytically at the
    exact sub-pixel position: ``amplitude * exp(-|p - c|^2 / (2 sigma^2))``.

    Args:
        sigma: standard deviation, in pixels (``sigma_unit="px"``) or mm (``"mm"``: divided by the mean
            pixel spacing of the image's affine).
        amplitude: peak value (Payer used 100 for SCN; 1 for most methods).
        normalize: scale each channel to sum 1 instead (``amplitude`` then ignored).

    Returns:
        ``(heatmap (K, *spatial) float32, mask (K,) float32)``; missing landmarks give a zero channel and mask 0.
    """

    def __init__(self, sigma: float | Sequence[float] = 2.0, sigma_unit: str = "px", amplitude: float = 1.0, normalize: bool = False):
        if sigma_unit not in ("px", "mm"):
            raise ValueError(f"sigma_unit must be 'px' or 'mm', got {sigma_unit!r}")
        self.sigma = sigma
        self.sigma_unit = sigma_unit
        self.amplitude = amplitude
        self.normalize = normalize

    def sigma_pixels(self, affine: torch.Tensor | None, nd: int) -> torch.Tensor:
        sigma = torch.as_tensor(self.sigma, dtype=torch.float32)
        if self.sigma_unit == "mm":
            if affine is None:
                raise ValueError("sigma in mm needs the image affine (pixel spacing)")
            spacing = torch.linalg.norm(_affine(affine)[:nd, :nd], dim=0)
            sigma = sigma / float(torch.exp(torch.log(spacing).mean()))
        return sigma

    def __call__(self, landmarks: torch.Tensor, spatial_shape: Sequence[int], affine: torch.Tensor | None = None):
        pts = convert_to_tensor(landmarks, track_meta=False, dtype=torch.float32)
        nd = pts.shape[-1]
        heatmap = gaussian_heatmaps(
            pts[None], tuple(spatial_shape), sigma=self.sigma_pixels(affine, nd), amplitude=self.amplitude, normalize=self.normalize
        )[0]
        mask = torch.isfinite(pts).all(-1).to(torch.float32)
        return heatmap, mask


class MatchHistogram(Transform):
    """Match the intensity histogram to a reference inside a foreground mask (SCN preprocessing).

    Quantiles of the image inside its Otsu foreground mask (``mask="otsu"``; ``None`` for the whole
    image) are mapped piecewise-linearly onto the reference's quantiles; the mapping is applied to every
    pixel. ``reference`` is an image file (any format :func:`~monai_ext.data.readers.read_radiograph`
    reads), an image array or a 1D array of ``num_quantiles`` reference quantiles (see
    :meth:`reference_quantiles`).
    """

    def __init__(
        self, reference: str | os.PathLike | np.ndarray | torch.Tensor, mask: str | None = "otsu", num_quantiles: int = 256
    ):
        if reference is None:
            raise ValueError("MatchHistogram: no reference image (histogram matching needs one: the first training "
                             "image of the datalist by default, or histogram_reference)")
        self.mask = mask
        self.num_quantiles = num_quantiles
        if isinstance(reference, (str, os.PathLike)):
            from monai_ext.data.readers import read_radiograph  # monai_ext.data imports the transforms

            reference = read_radiograph(reference)[0]
        ref = np.asarray(reference, dtype=np.float64)
        self.reference = ref if ref.ndim == 1 else self.reference_quantiles(ref, mask, num_quantiles)

    @staticmethod
    def _foreground(arr: np.ndarray, mask: str | None) -> np.ndarray:
        if mask is None:
            return arr.reshape(-1)
        from skimage.filters import threshold_otsu

        if arr.max() == arr.min():
            return arr.reshape(-1)
        fg = arr[arr > threshold_otsu(arr)]
        return fg if fg.size else arr.reshape(-1)

    @classmethod
    def reference_quantiles(cls, image: np.ndarray, mask: str | None = "otsu", num_quantiles: int = 256) -> np.ndarray:
        """Quantiles ``(num_quantiles,)`` of ``image``'s foreground, to store as a reference."""
        fg = cls._foreground(np.asarray(image, dtype=np.float64), mask)
        return np.quantile(fg, np.linspace(0.0, 1.0, num_quantiles))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        arr = convert_to_tensor(img, track_meta=False).detach().cpu().numpy().astype(np.float64)
        source = self.reference_quantiles(arr, self.mask, len(self.reference))
        source, idx = np.unique(source, return_index=True)
        mapped = np.interp(arr, source, self.reference[idx]).astype(np.float32)
        return convert_to_dst_type(mapped, img)[0]

