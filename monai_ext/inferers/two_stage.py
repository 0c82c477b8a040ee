"""KNEEL's two-stage inferer (Tiulpin et al., "KNEEL: Knee Anatomical Landmark Localization Using Hourglass
Networks", ICCV Workshops 2019).

:class:`TwoStageInferer` + :class:`~monai_ext.engines.kneel.PrepareTwoStageBatch` — end-to-end inference inside a
standard ``SupervisedEvaluator``: the evaluator's network (stage 1, the "low-cost" model) predicts the ROI centres on
the whole image; the inferer crops each ROI from the *original* image (:class:`~monai_ext.transforms.roi.RoiResample`,
mirrored ROIs included), runs the stage-2 ("high-cost") model and maps its points back. It returns ``(B, K, 2)``
points in the stage-1 input's pixels, exactly like a single-stage network, so the usual post-processing
(``LandmarksToOriginald``), metrics and writers apply unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.networks.utils import eval_mode

from monai_ext.transforms.array import move_points
from monai_ext.transforms.roi import LandmarkGroups, RoiResample

__all__ = ["TwoStageInferer"]


class TwoStageInferer(Inferer):
    """KNEEL's end-to-end inference: low-cost ROI centres -> high-cost landmarks in every ROI.

    ``__call__(inputs, network, originals, affines)``:

    1. ``network(inputs)`` -> ``(B, G, D)`` ROI centres in the stage-1 input's pixels (``affines`` ``(B, 4, 4)``);
    2. each centre is moved to the pixels of the original image (``originals[b]``, a ``MetaTensor`` whose affine is
       the file's) and a ``spacing`` x ``spatial_size`` ROI is resampled there (mirrored for ``groups.flip[g]``);
    3. ``roi_network`` predicts the ``group_size`` landmarks of every ROI (in ROI pixels), they are moved back to the
       original image and scattered into the full landmark order (the mirror permutation undone,
       :meth:`~monai_ext.transforms.roi.LandmarkGroups.scatter`);
    4. with ``refine_steps > 0`` each ROI is re-centred on the mean of its predicted landmarks (its own group's,
       :meth:`~monai_ext.transforms.roi.LandmarkGroups.owned`) and predicted again;
    5. the ``(B, K, D)`` points are returned in the stage-1 input's pixels (float32), as a single-stage model would.

    Args:
        roi_network: the stage-2 model (image ``(N, C, *spatial_size)`` -> points ``(N, group_size, D)`` in its
            input pixels, e.g. :class:`~monai_ext.networks.KneelHourglass`); run in eval mode without gradients.
        groups: the :class:`~monai_ext.transforms.roi.LandmarkGroups`.
        spacing, spatial_size: the ROI grid (mm per pixel, pixels), as in stage-2 training.
        refine_steps: number of re-centring passes.
        crop_transform: optional callable applied to every ROI ``MetaTensor`` (``(C, *spatial_size)``) before the
            network, e.g. an intensity normalisation the stage-2 training applied after cropping.
        anti_aliasing: see :class:`~monai_ext.transforms.roi.RoiResample`.
        stage1_model: a trained stage-1 model file (``models/model.pt``): the inferer then takes the *original*
            images as its inputs (one ``MetaTensor`` per batch item, the file's affine), resamples each to that
            model's recorded grid (``stage1_spacing``, ``spatial_size``), predicts the ROI centres with it instead of
            the ``network`` it is called with, and returns the landmarks in the inputs' (original) pixels. Loaded at
            the first call, so a config can name a model trained later: stage 2's end-to-end validation, where the
            evaluator's network is the stage-2 model being trained.
    """

    def __init__(
        self,
        roi_network: nn.Module,
        groups: LandmarkGroups,
        spacing: float | Sequence[float],
        spatial_size: Sequence[int],
        refine_steps: int = 0,
        crop_transform: Callable | None = None,
        anti_aliasing: bool = True,
        stage1_model: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if refine_steps < 0:
            raise ValueError(f"TwoStageInferer: refine_steps must be >= 0, got {refine_steps}.")
        self.roi_network = roi_network
        self.groups = groups
        self.cropper = RoiResample(spacing, spatial_size, anti_aliasing=anti_aliasing)
        self.refine_steps = int(refine_steps)
        self.crop_transform = crop_transform
        self.stage1_model = stage1_model
        self._stage1: tuple[nn.Module, RoiResample] | None = None

    def predict_rois(self, image: MetaTensor, centres: torch.Tensor) -> torch.Tensor:
        """Stage 2 on one image: ``(G, D)`` ROI centres in ``image``'s pixels -> ``(K, D)`` landmarks (float64) in
        ``image``'s pixels (NaN for landmarks in no group)."""
        centres = torch.as_tensor(centres, dtype=torch.float64).cpu()
        if centres.shape[0] != self.groups.num_groups:
            raise ValueError(f"TwoStageInferer: {centres.shape[0]} ROI centres for {self.groups.num_groups} groups.")
        device = next(self.roi_network.parameters()).device
        per_roi: list[torch.Tensor] = []
        with eval_mode(self.roi_network):
            for _ in range(self.refine_steps + 1):
                crops = [self.cropper(image, centres[g], flip=self.groups.flip[g]) for g in range(self.groups.num_groups)]
                batch = [self.crop_transform(c) if self.crop_transform is not None else c for c in crops]
                x = torch.stack([torch.as_tensor(b.as_tensor() if isinstance(b, MetaTensor) else b) for b in batch])
                pred = self.roi_network(x.to(device=device, dtype=torch.float32)).detach().to("cpu", torch.float64)
                per_roi = [move_points(pred[g], crops[g].affine, image.affine) for g in range(len(crops))]
                centres = torch.stack([p[self.groups.owned(g)].mean(0) for g, p in enumerate(per_roi)])
        return self.groups.scatter(per_roi)

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable[..., torch.Tensor],
        *args: Any,
        originals: Sequence[MetaTensor] | None = None,
        affines: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.stage1_model is not None:
            return self.from_originals(inputs)
        if originals is None:
            raise ValueError("TwoStageInferer needs the original images: use PrepareTwoStageBatch as prepare_batch.")
        if affines is None:
            if not isinstance(inputs, MetaTensor):
                raise ValueError("TwoStageInferer needs the stage-1 affines (or a MetaTensor input).")
            affines = inputs.affine if inputs.affine.ndim == 3 else inputs.affine[None].expand(inputs.shape[0], -1, -1)
        centres = network(inputs, *args, **kwargs).detach().to("cpu", torch.float64)
        if centres.shape[-2] != self.groups.num_groups:
            raise ValueError(
                f"TwoStageInferer: the stage-1 network predicts {centres.shape[-2]} points, expected one per ROI "
                f"({self.groups.num_groups})."
            )
        out = []
        for b in range(centres.shape[0]):
            original = originals[b]
            c = move_points(centres[b], affines[b].cpu(), original.affine)
            points = self.predict_rois(original, c)
            out.append(move_points(points, original.affine, affines[b].cpu()))
        return torch.stack(out).to(device=inputs.device, dtype=torch.float32)

    def stage1(self, device: torch.device) -> tuple[nn.Module, RoiResample]:
        """The ``stage1_model`` (eval mode, on ``device``) and its input grid, loaded once."""
        if self._stage1 is None:
            from monai_ext.bundle import ModelConfig
            from monai_ext.engines.kneel import trained_network

            record = ModelConfig.load(self.stage1_model)
            grid = RoiResample(record["stage1_spacing"], record["spatial_size"], anti_aliasing=self.cropper.anti_aliasing)
            self._stage1 = (trained_network(self.stage1_model, device), grid)
        return self._stage1

    def from_originals(self, inputs: torch.Tensor) -> torch.Tensor:
        """End to end from original images ``(B, C, *S)`` (a ``MetaTensor``; ``B`` items of one size) with
        ``stage1_model``: ``(B, K, D)`` landmarks in the inputs' pixels (float32)."""
        if not isinstance(inputs, MetaTensor):
            raise ValueError("TwoStageInferer with stage1_model needs the original images as a MetaTensor (their affine).")
        network, grid = self.stage1(inputs.device)
        affines = inputs.affine if inputs.affine.ndim == 3 else inputs.affine[None].expand(inputs.shape[0], -1, -1)
        out = []
        for b in range(inputs.shape[0]):
            original = MetaTensor(inputs[b].as_tensor().detach().cpu(), affine=affines[b].cpu())
            small = grid(original)
            with torch.no_grad():
                centres = network(small.as_tensor()[None].to(inputs.device)).detach().to("cpu", torch.float64)[0]
            out.append(self.predict_rois(original, move_points(centres, small.affine, original.affine)))
        return torch.stack(out).to(device=inputs.device, dtype=torch.float32)
