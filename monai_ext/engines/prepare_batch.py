"""Batch preparation for MONAI workflows: heatmap targets travel with their visibility mask."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines import PrepareBatch
from monai.utils import CommonKeys


class PrepareLandmarkBatch(PrepareBatch):
    """``(image, (heatmap, mask))`` for training, ``(image, landmarks)`` for evaluation.

    MONAI's ``SupervisedTrainer`` calls ``loss(pred, target)``: passing the ``(B, K)`` visibility mask
    inside the target lets :class:`~monai_ext.losses.heatmap.HeatmapMSELoss` ignore missing landmarks.
    When the batch has no heatmaps (validation, inference) the target is the ``(B, K, 2)`` landmarks
    (or ``None`` when there are none).
    """

    def __init__(
        self,
        image_key: str = CommonKeys.IMAGE,
        heatmap_key: str = "heatmap",
        mask_key: str = "landmark_mask",
        landmark_key: str = "landmarks",
    ):
        self.image_key = image_key
        self.heatmap_key = heatmap_key
        self.mask_key = mask_key
        self.landmark_key = landmark_key

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, Any]:
        def move(x: Any) -> Any:
            return x.to(device=device, non_blocking=non_blocking, **kwargs) if isinstance(x, torch.Tensor) else x

        image = move(batchdata[self.image_key])
        if self.heatmap_key in batchdata:
            return image, (move(batchdata[self.heatmap_key]), move(batchdata[self.mask_key]))
        return image, move(batchdata.get(self.landmark_key))
