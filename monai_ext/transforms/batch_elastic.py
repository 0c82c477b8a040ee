"""Random affine + elastic deformation of a whole batch on its own device, in one resampling, landmarks moved along.

:class:`BatchRandAffineElastic` extends :class:`~monai_ext.transforms.batch_affine.BatchRandAffine` with the smooth
random displacement field of the per-sample :class:`~monai_ext.transforms.RandLandmarkElastic` (Gaussian offsets on
a coarse control grid, interpolated bicubically), so that the CPU workers of an on-device training pipeline have no
resampling left to do. Conventions are those of :mod:`monai_ext`: spatial dim 0 is x, pixel centres at integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor

from monai_ext.transforms.array import grid_sample_padded
from monai_ext.transforms.batch_affine import BatchRandAffine

__all__ = ["BatchRandAffineElastic", "evaluation_transforms", "per_sample_augmentation", "targets_on_device"]


def _to_grid(points: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Pixel points ``(..., 2)`` (x, y) → ``grid_sample`` coordinates (``align_corners=False``, reversed order)."""
    size = torch.as_tensor(list(spatial_shape), dtype=points.dtype, device=points.device)
    return ((2 * points + 1) / size - 1).flip(-1)


def sample_field(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of per-sample displacement fields ``(B, 2, W, H)`` at pixel points ``(B, K, 2)`` →
    ``(B, K, 2)`` (border values beyond the image)."""
    grid = _to_grid(points.to(field.dtype), field.shape[2:])[:, :, None, :]  # (B, K, 1, 2)
    out = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B, 2, K, 1)
    return out[..., 0].transpose(1, 2)


def _range(value: Any) -> tuple[float, ...]:
    """A MONAI ``RandAffineGrid`` range as floats: ``()`` when not given (``None`` entries are no range)."""
    return tuple(float(r) for r in (value or ()) if r is not None)


class BatchRandAffineElastic(BatchRandAffine):
    """Per-sample random affine (as :class:`BatchRandAffine`) followed by a random elastic deformation, applied to a
    ``(B, C, W, H)`` batch with one ``grid_sample`` where the batch lives.

    Sample ``b`` maps an input pixel ``p`` to ``r = M_b p`` (the affine), then the output pixel ``q`` samples ``r``
    at ``q + u_b(q)``: ``u_b`` is a smooth random field ``(2, W, H)`` in pixels (with probability ``elastic_prob``,
    else zero): ``N(0, elastic_magnitude²)`` offsets on a ``elastic_control_points``² grid spanning the image,
    interpolated bicubically (the field of :class:`~monai_ext.transforms.RandLandmarkElastic`). The image is
    resampled at ``inv(M_b) (q + u_b(q))``; a landmark moves to the ``q`` solving ``q + u_b(q) = M_b p``
    (fixed-point iteration; NaN when it does not converge within ``tolerance`` px or ends outside the image).

    Args:
        elastic_prob: probability of a deformation per sample.
        elastic_control_points: control points per axis (including the borders), >= 2.
        elastic_magnitude: std of the control-point offsets in pixels.
        iterations, tolerance: of the landmark fixed-point iteration.
        Other arguments: :class:`BatchRandAffine`.
    """

    def __init__(
        self,
        rotate_range: float = 0.0,
        scale_range: float | Sequence[float] = 0.0,
        translate_range: float | Sequence[float] = 0.0,
        flip_prob: float = 0.0,
        flip_pairs: Sequence[Sequence[int]] = (),
        prob: float = 1.0,
        isotropic_scale: bool = False,
        elastic_prob: float = 0.5,
        elastic_control_points: int = 5,
        elastic_magnitude: float = 4.0,
        iterations: int = 30,
        tolerance: float = 0.01,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        margin: float = 0.5,
        seed: int | None = 0,
        pad_value: float = 0.0,
    ):
        super().__init__(rotate_range, scale_range, translate_range, flip_prob, flip_pairs, prob, isotropic_scale,
                         mode, padding_mode, margin, seed, pad_value)
        if int(elastic_control_points) < 2:
            raise ValueError(f"BatchRandAffineElastic: elastic_control_points must be >= 2, got {elastic_control_points}.")
        if not 0.0 <= float(elastic_prob) <= 1.0 or float(elastic_magnitude) < 0:
            raise ValueError("BatchRandAffineElastic: elastic_prob must be in [0, 1] and elastic_magnitude >= 0, "
                             f"got {elastic_prob} and {elastic_magnitude}.")
        self.elastic_prob = float(elastic_prob)
        self.elastic_control_points = int(elastic_control_points)
        self.elastic_magnitude = float(elastic_magnitude)
        self.iterations = int(iterations)
        self.tolerance = float(tolerance)
        self._field: torch.Tensor | None = None


    @classmethod
    def from_augmentation(cls, transforms: Sequence, seed: int | None = 0, **kwargs) -> BatchRandAffineElastic:
        """The batch version of a per-sample augmentation list (a bundle's ``augmentation``): rotation, scaling and
        translation ranges and padding of its ``RandAffined`` (bare or inside
        :class:`~monai_ext.transforms.ApplyWithLandmarksd`, whose ``pad_value`` it takes), probability, control points and magnitude of its
        :class:`~monai_ext.transforms.RandLandmarkElasticd` (none: no deformation). Other transforms (intensity) stay
        per sample. ``kwargs`` override any argument."""
        from monai.transforms import RandAffined

        from monai_ext.transforms.dictionary import ApplyWithLandmarksd, RandLandmarkElasticd

        args: dict = {"elastic_prob": 0.0, "seed": seed}
        for t in transforms:
            inner = t.transform if isinstance(t, ApplyWithLandmarksd) else t
            if isinstance(inner, RandAffined) and "rotate_range" not in args:
                grid = inner.rand_affine.rand_affine_grid
                args.update(rotate_range=_range(grid.rotate_range)[0] if _range(grid.rotate_range) else 0.0,
                            scale_range=_range(grid.scale_range) or 0.0,
                            translate_range=_range(grid.translate_range) or 0.0,
                            prob=float(inner.prob), padding_mode=str(inner.padding_mode[0]),
                            pad_value=float(getattr(t, "pad_value", 0.0)))
            elif isinstance(inner, RandLandmarkElasticd):
                args.update(elastic_prob=float(inner.prob), elastic_control_points=int(inner.elastic.num_control_points),
                            elastic_magnitude=float(inner.elastic.magnitude))
                if float(inner.elastic.pad_value) != float(args.get("pad_value", inner.elastic.pad_value)):
                    raise ValueError(f"BatchRandAffineElastic.from_augmentation: the affine pads with {args['pad_value']}, "
                                     f"the elastic deformation with {inner.elastic.pad_value}; one warp pads with one value.")
                args.setdefault("pad_value", float(inner.elastic.pad_value))
        args.update(kwargs)
        return cls(**args)
    def randomize(self, batch_size: int, spatial_shape: Sequence[int], device: torch.device | str = "cpu") -> None:
        """Draw the affine (:meth:`BatchRandAffine.randomize`), then the displacement fields ``(B, 2, W, H)``
        float32 (zero for the samples without a deformation)."""
        super().randomize(batch_size, spatial_shape, device)
        device = torch.device(device)
        gen = self.generator(device)
        apply = torch.rand(batch_size, generator=gen, device=device) < self.elastic_prob
        n = self.elastic_control_points
        coarse = torch.randn(batch_size, 2, n, n, generator=gen, device=device) * self.elastic_magnitude
        coarse = coarse * apply[:, None, None, None]
        self._field = F.interpolate(coarse, size=tuple(int(s) for s in spatial_shape), mode="bicubic", align_corners=True)

    @property
    def field(self) -> torch.Tensor | None:
        """The last drawn displacement fields ``(B, 2, W, H)`` in pixels (output pixel ``q`` → ``q + u(q)``)."""
        return self._field

    def move_points(self, points: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        """Solve ``q + u(q) = r`` for affine-moved points ``r`` ``(B, K, 2)`` (float64; NaN stays NaN, NaN where
        the iteration does not converge)."""
        target = points.to(torch.float64)
        valid = torch.isfinite(target).all(-1, keepdim=True)
        start = torch.where(valid, target, torch.zeros_like(target))
        est = start.clone()
        for _ in range(self.iterations):
            est = start - sample_field(field, est).to(torch.float64)
        residual = (est + sample_field(field, est).to(torch.float64) - start).norm(dim=-1, keepdim=True)
        return est.masked_fill(~valid | (residual > self.tolerance), float("nan"))

    def apply(
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor | None,
        matrix: torch.Tensor,
        flipped: torch.Tensor | None = None,
        field: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Warp ``images`` ``(B, C, W, H)`` by the forward ``matrix`` ``(B, 3, 3)`` and then the displacement
        ``field`` ``(B, 2, W, H)`` (``None``: the affine only), moving ``landmarks`` ``(B, K, 2)`` along."""
        if field is None:
            return super().apply(images, landmarks, matrix, flipped)
        img = self.as_batch(images)
        spatial = tuple(img.shape[2:])
        if tuple(field.shape) != (img.shape[0], 2, *spatial):
            raise ValueError(f"BatchRandAffineElastic: field must be (B, 2, W, H) = {(img.shape[0], 2, *spatial)}, "
                             f"got {tuple(field.shape)}.")
        field = field.to(device=img.device, dtype=torch.float32)
        mat = matrix.to(device=img.device, dtype=torch.float32)
        axes = [torch.arange(s, dtype=torch.float32, device=img.device) for s in spatial]
        q = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (W, H, 2) output pixels
        r = q[None] + field.permute(0, 2, 3, 1)  # (B, W, H, 2): where each output pixel samples the affine output
        inv = torch.linalg.inv(mat)
        src = torch.einsum("bij,bwhj->bwhi", inv[:, :2, :2], r) + inv[:, None, None, :2, 2]
        warped = grid_sample_padded(img, _to_grid(src, spatial).to(img.dtype), self.mode, self.padding_mode,
                                    self.pad_value)
        if landmarks is None:
            return warped, None
        pts = convert_to_tensor(landmarks, track_meta=False)
        moved = self.move_points(self.move_landmarks(pts, matrix.to(img.device), flipped, spatial), field)
        size = torch.tensor(spatial, dtype=torch.float64, device=img.device)
        outside = ((moved < -self.margin) | (moved > size - 1 + self.margin)).any(-1, keepdim=True)
        moved = moved.masked_fill(outside, float("nan"))
        return warped, moved.to(pts.dtype if pts.is_floating_point() else torch.float32)

    def apply_drawn(self, images: torch.Tensor, landmarks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`apply` with the last drawn matrices, flips and fields."""
        return self.apply(images, landmarks, self._matrix, self._flipped, self._field)


def _spatial(transform: object) -> bool:
    from monai.transforms import RandAffined

    from monai_ext.transforms.dictionary import ApplyWithLandmarksd, RandLandmarkElasticd

    inner = transform.transform if isinstance(transform, ApplyWithLandmarksd) else transform
    return isinstance(inner, (RandAffined, RandLandmarkElasticd))


def per_sample_augmentation(augmentation: Sequence, augment_on_device: object = False) -> list:
    """The part of ``augmentation`` the data loader runs per sample: all of it, or, when the batch transform
    (:meth:`BatchRandAffineElastic.from_augmentation`) runs the random affine and elastic on the device
    (``augment_on_device``), the rest (intensity, flips)."""
    from monai_ext.utils import as_flag

    if not as_flag(augment_on_device, "augment_on_device"):
        return list(augmentation)
    return [t for t in augmentation if not _spatial(t)]


def targets_on_device(heatmaps_on_device: object = False, augment_on_device: object = False) -> bool:
    """Whether the training heatmaps are built on the device from the batch's landmarks (``heatmaps_on_device``, or
    forced by ``augment_on_device``: heatmaps must follow the on-device warp) instead of per sample."""
    from monai_ext.utils import as_flag

    return as_flag(heatmaps_on_device, "heatmaps_on_device") or as_flag(augment_on_device, "augment_on_device")


def evaluation_transforms(transforms: Sequence) -> list:
    """The deterministic part of a training chain (a bundle's ``load_transforms + augmentation``): what validation,
    evaluation and inference run, so that they see the training's preprocessing by construction. Random transforms
    are left out, except those with a ``deterministic()`` counterpart, which is used instead (a random ROI crop
    becomes the crop at the ground-truth centre: :class:`~monai_ext.transforms.RandRoiCropsd`)."""
    from monai.transforms import Randomizable

    out = []
    for t in transforms:
        if isinstance(t, Randomizable):
            if callable(getattr(t, "deterministic", None)):
                out.append(t.deterministic())
            continue
        out.append(t)
    return out
