"""KNEEL (Tiulpin et al., "KNEEL: Knee Anatomical Landmark Localization Using Hourglass Networks", ICCV Workshops
2019) workflow pieces: mixup training, the two-stage inferer, stage-2 initialisation from stage 1, per-group reports.

* :class:`MixupTrainer` — MONAI ``SupervisedTrainer`` with batch-level mixup
  (:class:`~monai_ext.transforms.mix.Mixup`): images are mixed, the loss is mixed
  (:func:`~monai_ext.transforms.mix.mixup_loss`); everything else (AMP, gradient accumulation, events) is MONAI's.
* :class:`TwoStageInferer` + :class:`PrepareTwoStageBatch` — end-to-end inference inside a standard
  ``SupervisedEvaluator``: the evaluator's network (stage 1, the "low-cost" model) predicts the ROI centres on the
  whole image; the inferer crops each ROI from the *original* image (:class:`~monai_ext.transforms.roi.RoiResample`,
  mirrored ROIs included), runs the stage-2 ("high-cost") model and maps its points back. It returns ``(B, K, 2)``
  points in the stage-1 input's pixels, exactly like a single-stage network, so the usual post-processing
  (``LandmarksToOriginald``), metrics and writers apply unchanged.
* :func:`init_from_checkpoint` — stage-2 weights initialised from the stage-1 checkpoint: every tensor whose name and
  shape match is copied (MONAI ``copy_model_state``); the output layer (``G`` ROI centres vs ``K2`` landmarks)
  keeps its fresh initialisation.
* :class:`LandmarkGroupSummaryWriter` — KNEEL's report: recall within radii and MRE per landmark group.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.engines import PrepareBatch, SupervisedTrainer
from monai.inferers import Inferer
from monai.networks.utils import copy_model_state, eval_mode
from monai.utils import CommonKeys

from monai_ext.metrics.distances import format_summary, summarize_errors
from monai_ext.transforms.array import move_points
from monai_ext.transforms.mix import Mixup, mixup_loss
from monai_ext.transforms.roi import LandmarkGroups, RoiResample
from monai_ext.utils import atomic_write

__all__ = [
    "MixupTrainer",
    "MixedTarget",
    "TwoStageInferer",
    "PrepareTwoStageBatch",
    "init_from_checkpoint",
    "require_checkpoints",
    "LandmarkGroupSummaryWriter",
]

logger = logging.getLogger(__name__)


class MixedTarget(NamedTuple):
    """The target of a mixed batch: the unmixed targets, the permutation and the mixing weight."""

    target: Any
    perm: torch.Tensor
    lam: float


class _MixupPrepareBatch:
    """Prepare the batch with ``prepare_batch``, then mix its images; the target becomes a :class:`MixedTarget`."""

    def __init__(self, prepare_batch: Callable, mixup: Mixup) -> None:
        self.prepare_batch = prepare_batch
        self.mixup = mixup

    def __call__(self, batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> tuple:
        batch = self.prepare_batch(batchdata, device, non_blocking, **kwargs)
        inputs, targets = batch[0], batch[1]
        mixed, perm, lam = self.mixup(inputs)
        return (mixed, MixedTarget(targets, perm, lam), *batch[2:])


class _MixupLoss(nn.Module):
    """``loss(pred, MixedTarget)`` = :func:`~monai_ext.transforms.mix.mixup_loss`; plain targets pass through."""

    def __init__(self, loss_function: Callable) -> None:
        super().__init__()
        self.loss_function = loss_function

    def forward(self, pred: Any, target: Any) -> torch.Tensor:
        if isinstance(target, MixedTarget):
            return mixup_loss(self.loss_function, pred, target.target, target.perm, target.lam)
        return self.loss_function(pred, target)


class MixupTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` with batch-level mixup (Zhang et al. 2018), as KNEEL trains (alpha 0.75).

    Each iteration: the batch is prepared as usual, its images are mixed with a permutation of themselves
    (``x = lam x_i + (1 - lam) x_perm(i)``), and the loss is ``lam L(pred, y_i) + (1 - lam) L(pred, y_perm(i))``:
    landmark targets are never averaged. Implemented by wrapping ``prepare_batch`` and ``loss_function``, so
    MONAI's iteration (AMP, gradient accumulation, events) runs unchanged. ``engine.state.output["label"]`` is a
    :class:`MixedTarget` on mixed iterations.

    Args:
        mixup: the :class:`~monai_ext.transforms.mix.Mixup` (alpha, probability, seed); ``None`` trains without.
        args, kwargs: those of ``SupervisedTrainer``.
    """

    def __init__(self, *args: Any, mixup: Mixup | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mixup = mixup
        if mixup is not None:
            self.prepare_batch = _MixupPrepareBatch(self.prepare_batch, mixup)
            self.loss_function = _MixupLoss(self.loss_function)


class PrepareTwoStageBatch(PrepareBatch):
    """Batch for :class:`TwoStageInferer`: ``(stage-1 image, landmarks, (), {"originals", "affines"})``.

    ``originals`` are the per-image original images (``original_key``, kept by ``CopyItemsd`` before the stage-1
    resampling; the intensity-scaled full-resolution image) as a list of ``MetaTensor``; ``affines`` the
    ``(B, 4, 4)`` affines of the stage-1 images. Originals of different sizes collate only as a list
    (``collate_failed_items`` with ``list_keys=["image_original"]``); they are taken out of a mutable batch
    dict, since only the inferer needs them and the engine's decollation of the batch cannot split a list.
    """

    def __init__(self, image_key: str = CommonKeys.IMAGE, original_key: str = "image_original", landmark_key: str = "landmarks"):
        self.image_key = image_key
        self.original_key = original_key
        self.landmark_key = landmark_key

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple:
        image = batchdata[self.image_key]
        if self.original_key not in batchdata:
            raise KeyError(
                f"PrepareTwoStageBatch: no '{self.original_key}' in the batch: copy the loaded image there "
                "(CopyItemsd) before the stage-1 resampling."
            )
        originals = batchdata.pop(self.original_key) if isinstance(batchdata, MutableMapping) else batchdata[self.original_key]
        originals = list(originals) if isinstance(originals, (list, tuple)) else decollate_batch(originals)
        if not isinstance(image, MetaTensor):
            raise TypeError("PrepareTwoStageBatch: the stage-1 image must be a MetaTensor (its affine maps points back).")
        affines = image.affine
        affines = affines[None].expand(image.shape[0], -1, -1) if affines.ndim == 2 else affines
        target = batchdata.get(self.landmark_key)
        if isinstance(target, torch.Tensor):
            target = target.to(device=device, non_blocking=non_blocking)
        return image.to(device=device, non_blocking=non_blocking), target, (), {"originals": originals, "affines": affines}


class TwoStageInferer(Inferer):
    """KNEEL's end-to-end inference: low-cost ROI centres -> high-cost landmarks in every ROI.

    ``__call__(inputs, network, originals, affines)``:

    1. ``network(inputs)`` -> ``(B, G, D)`` ROI centres in the stage-1 input's pixels (``affines`` ``(B, 4, 4)``);
    2. each centre is moved to the pixels of the original image (``originals[b]``, a ``MetaTensor`` whose affine is
       the file's) and a ``spacing`` x ``spatial_size`` ROI is resampled there (mirrored for ``groups.flip[g]``);
    3. ``roi_network`` predicts the ``group_size`` landmarks of every ROI (in ROI pixels), they are moved back to the
       original image and scattered into the full landmark order (the mirror permutation undone,
       :meth:`~monai_ext.transforms.roi.LandmarkGroups.scatter`);
    4. with ``refine_steps > 0`` each ROI is re-centred on the mean of its predicted landmarks and predicted again;
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
    ) -> None:
        super().__init__()
        if refine_steps < 0:
            raise ValueError(f"TwoStageInferer: refine_steps must be >= 0, got {refine_steps}.")
        self.roi_network = roi_network
        self.groups = groups
        self.cropper = RoiResample(spacing, spatial_size, anti_aliasing=anti_aliasing)
        self.refine_steps = int(refine_steps)
        self.crop_transform = crop_transform

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
                centres = torch.stack([p.mean(0) for p in per_roi])
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


def require_checkpoints(*paths: str | os.PathLike) -> None:
    """Raise ``FileNotFoundError`` naming every missing checkpoint (before a two-stage run loads them)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing checkpoint(s) {missing}: the two-stage pipeline needs both models; train stage 1 "
            "(configs/train.json), then stage 2 (configs/train.json + configs/stage2.json)."
        )


def init_from_checkpoint(
    network: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu", key: str = "model"
) -> tuple[list[str], list[str]]:
    """Initialise ``network`` from the checkpoint at ``path`` wherever names and shapes match (transfer learning
    from the stage-1 to the stage-2 model; ``strict=False`` semantics that also skip shape mismatches).

    The checkpoint is a state dict or a dict holding one under ``key`` (what ``CheckpointSaver`` writes).
    Returns ``(copied, kept)``: the parameter/buffer names copied and those keeping their initialisation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no stage-1 checkpoint to initialise the stage-2 model from; train stage 1 first "
            "(run training with configs/train.json) or set init_from_stage1 to false."
        )
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
        state = state[key]
    target = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    _, copied, kept = copy_model_state(target, dict(state), inplace=True)
    logger.info(f"initialised {len(copied)} tensors from {path}; kept the initialisation of {kept}")
    return list(copied), list(kept)


def transferred(network: nn.Module, path: str | os.PathLike, enabled: Any = True, map_location: Any = "cpu") -> nn.Module:
    """``network`` initialised from the checkpoint at ``path`` (:func:`init_from_checkpoint`) when ``enabled`` — the
    stage-2 model starting from the stage-1 weights — else unchanged; returned for use as a bundle's ``network``."""
    from monai_ext.utils import as_flag

    if as_flag(enabled, "init_from_stage1"):
        init_from_checkpoint(network, path, map_location)
    return network


class LandmarkGroupSummaryWriter:
    """Write KNEEL's per-group report: for each landmark group, MRE and recall (%) within ``radii`` from the per-image
    errors of a landmark metric (``engine.state.metric_details[metric_name]``, ``(N, K)`` in ``unit``; stored by
    :class:`~monai_ext.metrics.ignite.LandmarkMetric` with ``save_details=True``).

    Writes ``<output_dir>/groups.json`` (``{group name: summary of summarize_errors}``) when the run completes and
    logs each group's summary.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        metric_name: str,
        groups: LandmarkGroups,
        landmark_names: Sequence[str] | None = None,
        radii: Sequence[float] = (1, 1.5, 2, 2.5, 3, 3.5, 4, 5),
        unit: str = "mm",
        outlier_radius: float = 10.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metric_name = metric_name
        self.groups = groups
        self.landmark_names = list(landmark_names) if landmark_names is not None else None
        self.radii = [float(r) for r in radii]
        self.unit = unit
        self.outlier_radius = float(outlier_radius)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def summaries(self, errors: torch.Tensor) -> dict[str, dict]:
        """``{group name: summary}`` of ``(N, K)`` errors."""
        errs = torch.as_tensor(errors).detach().cpu().double().numpy()
        out = {}
        for name, group in zip(self.groups.names, self.groups.groups):
            names = [self.landmark_names[i] for i in group] if self.landmark_names is not None else None
            out[name] = summarize_errors(errs[:, group], self.radii, self.outlier_radius, names, self.unit)
        return out

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
        if details is None:
            raise KeyError(f"no per-image errors for metric {self.metric_name!r}: is it a LandmarkMetric with save_details?")
        summaries = self.summaries(details)
        with atomic_write(self.output_dir / "groups.json") as f:
            json.dump(summaries, f, indent=1, default=float)
        for name, summary in summaries.items():
            logger.info(f"landmark group {name}:\n{format_summary(summary)}")
