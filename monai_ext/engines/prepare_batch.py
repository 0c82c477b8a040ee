"""Batch preparation for MONAI workflows: heatmap targets travel with their visibility mask."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.engines import PrepareBatch
from monai.utils import CommonKeys, convert_to_tensor

from monai_ext.heatmaps import gaussian_heatmaps

if TYPE_CHECKING:
    from monai_ext.transforms.batch_affine import BatchRandAffine

__all__ = ["PrepareLandmarkBatch", "batch_heatmaps", "to_channels_last", "to_device"]


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory layout: ``(B, C, W, H)`` → ``torch.channels_last``, ``(B, C, *3 dims)`` →
    ``torch.channels_last_3d``; other shapes unchanged. Values and shape are unchanged, only the strides."""
    if x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def batch_heatmaps(
    landmarks: torch.Tensor,
    spatial_shape: Sequence[int],
    sigma: float | Sequence[float] = 2.0,
    amplitude: float = 1.0,
    normalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets of :class:`~monai_ext.transforms.GenerateLandmarkHeatmapd` (``sigma_unit="px"``) for a whole
    batch at once, on the landmarks' device: the same float32 arithmetic of
    :func:`~monai_ext.heatmaps.gaussian_heatmaps`.

    Args:
        landmarks: ``(B, K, D)`` points in the image's pixels (spatial dims order), NaN where missing.
        spatial_shape: ``D`` sizes of the image (and heatmaps).
        sigma: in pixels, one value or ``K`` (one per landmark).
        amplitude, normalize: as for :class:`~monai_ext.transforms.GenerateLandmarkHeatmap`.

    Returns:
        ``(heatmap (B, K, *spatial_shape) float32, mask (B, K) float32)``; a missing landmark gives a zero
        channel and mask 0.
    """
    pts = convert_to_tensor(landmarks, track_meta=False).to(torch.float32)
    if pts.ndim != 3:
        raise ValueError(f"batch_heatmaps: landmarks must be (B, K, D), got shape {tuple(pts.shape)}.")
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=pts.device)
    heatmap = gaussian_heatmaps(pts, tuple(spatial_shape), sigma=sig, amplitude=amplitude, normalize=normalize)
    return heatmap, torch.isfinite(pts).all(-1).to(torch.float32)


def to_device(x: Any, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any) -> Any:
    """``x.to(device, non_blocking, **kwargs)`` for a tensor; anything else (None, lists of names) unchanged."""
    return x.to(device=device, non_blocking=non_blocking, **kwargs) if isinstance(x, torch.Tensor) else x


class PrepareLandmarkBatch(PrepareBatch):
    """``(image, (heatmap, mask))`` for training, ``(image, landmarks)`` for evaluation.

    MONAI's ``SupervisedTrainer`` calls ``loss(pred, target)``: passing the ``(B, K)`` visibility mask
    inside the target lets :class:`~monai_ext.losses.heatmap.HeatmapMSELoss` ignore missing landmarks.
    When the batch has no heatmaps (validation, inference) the target is the ``(B, K, 2)`` landmarks
    (or ``None`` when there are none).

    Args:
        image_key, heatmap_key, mask_key, landmark_key: keys of the batch.
        heatmap_sigma: when given (pixels, one value or one per landmark), the heatmap targets are built here,
            from the batch's landmarks, on the training device (:func:`batch_heatmaps`) — the same targets as a
            per-sample :class:`~monai_ext.transforms.GenerateLandmarkHeatmapd`, which the pipeline then leaves
            out. Ignored for a batch that already has ``heatmap_key``; a batch without landmarks is an error.
            Use a separate instance without it for evaluators.
        heatmap_amplitude, heatmap_normalize: as for ``GenerateLandmarkHeatmapd``.
        channels_last: give the image to the network in channels-last memory layout (:func:`to_channels_last`),
            to pair with a network converted by ``network.to(memory_format=torch.channels_last)``.
        augment: a :class:`~monai_ext.transforms.batch_affine.BatchRandAffine` applied to the image and landmarks
            on the device, before the heatmaps are built from the moved landmarks (training only: give the
            evaluators an instance without it). The batch must carry landmarks and no precomputed heatmaps
            (those would not follow the warp); without ``heatmap_sigma`` the target is the moved landmarks.
    """

    def __init__(
        self,
        image_key: str = CommonKeys.IMAGE,
        heatmap_key: str = "heatmap",
        mask_key: str = "landmark_mask",
        landmark_key: str = "landmarks",
        heatmap_sigma: float | Sequence[float] | None = None,
        heatmap_amplitude: float = 1.0,
        heatmap_normalize: bool = False,
        channels_last: bool = False,
        augment: BatchRandAffine | None = None,
    ):
        self.image_key = image_key
        self.heatmap_key = heatmap_key
        self.mask_key = mask_key
        self.landmark_key = landmark_key
        self.heatmap_sigma = heatmap_sigma
        self.heatmap_amplitude = float(heatmap_amplitude)
        self.heatmap_normalize = bool(heatmap_normalize)
        self.channels_last = bool(channels_last)
        self.augment = augment

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, Any]:
        move = functools.partial(to_device, device=device, non_blocking=non_blocking, **kwargs)

        image = move(batchdata[self.image_key])
        landmarks = batchdata.get(self.landmark_key)
        if self.augment is not None:
            if self.heatmap_key in batchdata:
                raise ValueError(
                    f"PrepareLandmarkBatch: the batch has precomputed '{self.heatmap_key}', which would not follow the "
                    "on-device augmentation; build the heatmaps here instead (heatmap_sigma / heatmaps_on_device)."
                )
            if landmarks is None:
                raise KeyError(f"PrepareLandmarkBatch: no '{self.landmark_key}' in the batch for the augmentation to move.")
            image, landmarks = self.augment(image, move(landmarks))
        if self.channels_last:
            image = to_channels_last(image)
        if self.heatmap_key in batchdata:
            return image, (move(batchdata[self.heatmap_key]), move(batchdata[self.mask_key]))
        if self.heatmap_sigma is not None:
            if landmarks is None:
                raise KeyError(f"PrepareLandmarkBatch: no '{self.landmark_key}' in the batch to build heatmaps from.")
            heatmap, mask = batch_heatmaps(
                move(landmarks), image.shape[2:], self.heatmap_sigma, self.heatmap_amplitude, self.heatmap_normalize
            )
            return image, (heatmap, mask)
        return image, move(landmarks)
