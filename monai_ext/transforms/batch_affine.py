"""Random affine augmentation of a whole batch on its own device, landmarks moved by the same matrices.

The per-sample ``ApplyWithLandmarksd(RandAffined)`` of the training pipelines resamples each image on a CPU
worker; :class:`BatchRandAffine` draws one matrix per sample and warps the ``(B, C, W, H)`` batch with a single
``affine_grid`` + ``grid_sample`` where the batch lives (the GPU during training), so the data loader only has
to load and collate. Conventions are those of :mod:`monai_ext`: spatial dim 0 is x, pixel centres at integers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor
from monai_ext.transforms.array import grid_sample_padded

__all__ = ["BatchRandAffine"]


def _pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    vals = [float(value)] * 2 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(vals) != 2 or any(v < 0 for v in vals):
        raise ValueError(f"BatchRandAffine: {name} must be a non-negative number or (x, y) pair, got {value!r}.")
    return vals[0], vals[1]


def _device_available(device: torch.device) -> bool:
    """Whether ``device`` exists in this process (a CUDA index below the device count, ...)."""
    if device.type == "cpu":
        return True
    backend = getattr(torch, device.type, None)
    if backend is None or not callable(getattr(backend, "is_available", None)) or not backend.is_available():
        return False
    count = getattr(backend, "device_count", None)
    return device.index is None or not callable(count) or device.index < count()


def _pixel_to_grid(spatial_shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(3, 3)`` map from pixel ``(x, y, 1)`` to ``grid_sample`` coordinates ``(g_last, g_second_last, 1)``
    (``align_corners=False``: ``g = (2 p + 1) / size - 1``, the order reversed to the grid's)."""
    w, h = (float(s) for s in spatial_shape)
    return torch.tensor(
        [[0.0, 2.0 / h, 1.0 / h - 1.0], [2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device
    )


class BatchRandAffine:
    """Per-sample random rotation, scaling, translation and left/right flip of a 2D batch, on the batch's device.

    Sample ``b`` is mapped by the forward matrix ``M_b`` (input pixel ``(x, y, 1)`` → output pixel):
    flip ``x → W - 1 - x`` (with probability ``flip_prob``), then scaling by ``(s_x, s_y)`` and rotation by
    ``theta`` about the image centre ``((W - 1) / 2, (H - 1) / 2)``, then translation by ``(t_x, t_y)``. The image
    is resampled at ``inv(M_b) @ q`` for every output pixel ``q`` (bilinear, zeros outside); a landmark ``p``
    moves to ``M_b @ p``, and becomes NaN when it ends beyond ``margin`` px of the outer pixel centres
    (as :class:`~monai_ext.transforms.LandmarksOutsideToNaNd`).

    Args:
        rotate_range: ``theta ~ U(-rotate_range, rotate_range)``, radians.
        scale_range: ``s_i ~ 1 + U(-r_i, r_i)``; one value for both axes or ``(r_x, r_y)``. ``s > 1`` enlarges
            the content. Drawn independently per axis unless ``isotropic_scale``.
        translate_range: ``t_i ~ U(-r_i, r_i)`` pixels; one value or ``(r_x, r_y)``.
        flip_prob: probability of a left/right (x) flip per sample.
        flip_pairs: ``[[i, j], ...]`` landmarks swapped by a flip (as :class:`~monai_ext.transforms.LandmarkFlip`).
        prob: probability of transforming a sample at all (otherwise identity, no flip).
        isotropic_scale: one scale factor for both axes (from ``r_x``).
        mode, padding_mode: ``grid_sample`` interpolation and padding.
        pad_value: the value ``"zeros"`` padding fills (:func:`~monai_ext.transforms.array.grid_sample_padded`).
        margin: pixels beyond the outer pixel centres a landmark may lie before it becomes NaN.
        seed: seed of the ``torch.Generator`` (one per device, see :meth:`set_random_state`); ``None``: random.

    The random streams are checkpointable: :meth:`state_dict` / :meth:`load_state_dict` (what MONAI's
    ``CheckpointSaver`` / ``CheckpointLoader`` call) save and restore the seed and every generator's state.
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
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        margin: float = 0.5,
        seed: int | None = 0,
        pad_value: float = 0.0,
    ):
        self.rotate_range = float(rotate_range)
        self.scale_range = _pair(scale_range, "scale_range")
        self.translate_range = _pair(translate_range, "translate_range")
        self.flip_prob = float(flip_prob)
        self.flip_pairs = [tuple(int(i) for i in p) for p in flip_pairs]
        self.prob = float(prob)
        self.isotropic_scale = bool(isotropic_scale)
        self.mode = mode
        self.padding_mode = padding_mode
        self.pad_value = float(pad_value)
        self.margin = float(margin)
        self._generators: dict[str, torch.Generator] = {}
        self._matrix: torch.Tensor | None = None
        self._flipped: torch.Tensor | None = None
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None = None) -> BatchRandAffine:
        """Restart the random streams from ``seed`` (``None``: a fresh random seed). Each device has its own
        ``torch.Generator`` seeded with it, so the draws are reproducible per device (CPU and CUDA differ)."""
        self.seed = int(torch.Generator().seed() if seed is None else seed) % (2**63)
        self._generators = {}
        return self

    def generator(self, device: torch.device | str) -> torch.Generator:
        """The generator of ``device``, created (and seeded) at its first use."""
        device = torch.device(device)
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def state_dict(self) -> dict[str, Any]:
        """``{"seed": int, "generators": {device string: generator state (uint8 CPU tensor)}}`` of the generators
        created so far; tensors and numbers only, so it loads with ``torch.load(weights_only=True)``."""
        return {"seed": self.seed, "generators": {key: g.get_state() for key, g in self._generators.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: the seed, and each saved generator's state on its device (created as
        needed), so the next draws continue the saved streams. Generators of devices missing here (a CUDA
        checkpoint loaded on CPU) are skipped with a warning; such a device would restart from the seed."""
        if "seed" not in state:
            raise KeyError(f"BatchRandAffine.load_state_dict: no 'seed' in the state (keys {sorted(state)}).")
        self.set_random_state(int(state["seed"]))
        skipped = []
        for key, gen_state in dict(state.get("generators", {})).items():
            device = torch.device(key)
            if not _device_available(device):
                skipped.append(key)
                continue
            self.generator(device).set_state(torch.as_tensor(gen_state).to(device="cpu", dtype=torch.uint8))
        if skipped:
            warnings.warn(f"BatchRandAffine: random state of device(s) {skipped} not restored: not available here.")

    def permutation(self, num_landmarks: int) -> list[int]:
        """Landmark order after a flip: index ``i`` of the flipped sample is landmark ``perm[i]`` of the input."""
        perm = list(range(num_landmarks))
        for i, j in self.flip_pairs:
            perm[i], perm[j] = j, i
        return perm

    def randomize(self, batch_size: int, spatial_shape: Sequence[int], device: torch.device | str = "cpu") -> None:
        """Draw the forward matrices ``(B, 3, 3)`` float64 (input → output pixels) and flips ``(B,)`` bool."""
        device = torch.device(device)
        u = torch.rand(batch_size, 7, generator=self.generator(device), device=device, dtype=torch.float64)
        apply = u[:, 0] < self.prob
        flip = apply & (u[:, 1] < self.flip_prob)
        sym = 2.0 * u[:, 2:] - 1.0  # U(-1, 1): angle, s_x, s_y, t_x, t_y
        theta = sym[:, 0] * self.rotate_range
        scale = 1.0 + sym[:, 1:3] * torch.tensor(self.scale_range, dtype=torch.float64, device=device)
        if self.isotropic_scale:
            scale = scale[:, :1].expand(-1, 2)
        shift = sym[:, 3:5] * torch.tensor(self.translate_range, dtype=torch.float64, device=device)
        theta = torch.where(apply, theta, torch.zeros_like(theta))
        scale = torch.where(apply[:, None], scale, torch.ones_like(scale))
        shift = torch.where(apply[:, None], shift, torch.zeros_like(shift))

        centre = torch.tensor([(s - 1) / 2.0 for s in spatial_shape], dtype=torch.float64, device=device)
        cos, sin = torch.cos(theta), torch.sin(theta)
        linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) * scale[:, None, :]
        mirror = torch.ones(batch_size, 2, dtype=torch.float64, device=device)
        mirror[:, 0] = torch.where(flip, -1.0, 1.0)
        mirror_offset = torch.zeros_like(mirror)
        mirror_offset[:, 0] = torch.where(flip, 2.0 * centre[0], 0.0)  # x -> W - 1 - x
        linear_total = linear * mirror[:, None, :]
        offset = centre + shift - linear @ centre + (linear @ mirror_offset[..., None])[..., 0]
        matrix = torch.zeros(batch_size, 3, 3, dtype=torch.float64, device=device)
        matrix[:, :2, :2] = linear_total
        matrix[:, :2, 2] = offset
        matrix[:, 2, 2] = 1.0
        self._matrix, self._flipped = matrix, flip

    @property
    def matrix(self) -> torch.Tensor | None:
        """The last drawn forward matrices ``(B, 3, 3)`` (input pixel ``(x, y, 1)`` → output pixel)."""
        return self._matrix

    @property
    def flipped(self) -> torch.Tensor | None:
        """The last drawn flips ``(B,)`` bool (landmarks of those samples are permuted by ``flip_pairs``)."""
        return self._flipped

    def apply(
        self, images: torch.Tensor, landmarks: torch.Tensor | None, matrix: torch.Tensor, flipped: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Warp ``images`` ``(B, C, W, H)`` and move ``landmarks`` ``(B, K, 2)`` by the forward ``matrix``
        ``(B, 3, 3)``; ``flipped`` ``(B,)`` selects the samples whose landmarks are permuted by ``flip_pairs``."""
        img = self.as_batch(images)
        spatial = tuple(img.shape[2:])
        mat = matrix.to(device=img.device, dtype=torch.float64)
        to_grid = _pixel_to_grid(spatial, torch.float64, img.device)
        theta = (to_grid @ torch.linalg.inv(mat) @ torch.linalg.inv(to_grid))[:, :2, :]
        grid = F.affine_grid(theta.to(img.dtype), list(img.shape), align_corners=False)
        warped = grid_sample_padded(img, grid, self.mode, self.padding_mode, self.pad_value)
        if landmarks is None:
            return warped, None
        pts = convert_to_tensor(landmarks, track_meta=False)
        moved = self.move_landmarks(pts, mat, flipped, spatial)
        return warped, moved.to(pts.dtype if pts.is_floating_point() else torch.float32)

    @staticmethod
    def as_batch(images: torch.Tensor) -> torch.Tensor:
        """``images`` as a plain floating-point ``(B, C, W, H)`` tensor (a ``ValueError`` for another rank)."""
        img = convert_to_tensor(images, track_meta=False)
        if img.ndim != 4:
            raise ValueError(f"BatchRandAffine: images must be (B, C, W, H), got shape {tuple(img.shape)}.")
        return img if img.is_floating_point() else img.float()

    def move_landmarks(
        self, landmarks: torch.Tensor, matrix: torch.Tensor, flipped: torch.Tensor | None, spatial_shape: Sequence[int]
    ) -> torch.Tensor:
        """``(B, K, 2)`` pixel points moved by the forward ``matrix`` ``(B, 3, 3)`` (float64, on the matrix's
        device), permuted by ``flip_pairs`` where ``flipped``, NaN beyond ``margin`` of an image of ``spatial_shape``."""
        device = matrix.device
        p = convert_to_tensor(landmarks, track_meta=False).to(device=device, dtype=torch.float64)
        if p.ndim != 3 or p.shape[0] != matrix.shape[0] or p.shape[-1] != 2:
            raise ValueError(f"BatchRandAffine: landmarks must be (B={matrix.shape[0]}, K, 2), got shape {tuple(p.shape)}.")
        mat = matrix.to(torch.float64)
        moved = p @ mat[:, :2, :2].transpose(1, 2) + mat[:, None, :2, 2]
        size = torch.tensor([float(s) for s in spatial_shape], dtype=torch.float64, device=device)
        outside = ((moved < -self.margin) | (moved > size - 1 + self.margin)).any(-1, keepdim=True)
        moved = moved.masked_fill(outside, float("nan"))
        if flipped is not None and self.flip_pairs:
            perm = torch.tensor(self.permutation(p.shape[1]), device=device)
            moved = torch.where(flipped.to(device)[:, None, None], moved[:, perm], moved)
        return moved

    def __call__(
        self, images: torch.Tensor, landmarks: torch.Tensor | None = None, randomize: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment ``images`` ``(B, C, W, H)`` float and ``landmarks`` ``(B, K, 2)`` pixels (NaN where missing).

        Returns:
            ``(images (B, C, W, H), landmarks (B, K, 2))`` on the images' device; a landmark pushed outside is NaN.
        """
        if randomize or self._matrix is None:
            self.randomize(images.shape[0], tuple(images.shape[2:]), images.device)
        return self.apply_drawn(images, landmarks)

    def apply_drawn(self, images: torch.Tensor, landmarks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`apply` with the last drawn parameters."""
        return self.apply(images, landmarks, self._matrix, self._flipped)
