"""KNEEL (Tiulpin et al., "KNEEL: Knee Anatomical Landmark Localization Using Hourglass Networks", ICCV Workshops
2019) workflow pieces: mixup training, the two-stage batch, stage-2 initialisation from stage 1.

* :class:`MixupTrainer` — MONAI ``SupervisedTrainer`` with batch-level mixup
  (:class:`~monai_ext.transforms.mix.Mixup`): images are mixed, the loss is mixed
  (:func:`~monai_ext.transforms.mix.mixup_loss`); everything else (AMP, gradient accumulation, events) is MONAI's.
* :class:`PrepareTwoStageBatch` — the batch of :class:`~monai_ext.inferers.two_stage.TwoStageInferer`, KNEEL's
  end-to-end inference inside a standard ``SupervisedEvaluator`` (stage-1 ROI centres, stage-2 landmarks in every
  ROI of the *original* image).
* :func:`init_from_checkpoint` — stage-2 weights initialised from the stage-1 checkpoint: every tensor whose name and
  shape match is copied (MONAI ``copy_model_state``); the output layer (``G`` ROI centres vs ``K2`` landmarks)
  keeps its fresh initialisation.

KNEEL's per-group report is :class:`~monai_ext.handlers.groups.LandmarkGroupSummaryWriter`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from monai.data import MetaTensor, decollate_batch
from monai.engines import PrepareBatch, SupervisedTrainer
from monai.networks.utils import copy_model_state
from monai.utils import CommonKeys

from monai_ext.bundle import ModelConfig
from monai_ext.transforms.mix import Mixup, mixup_loss, two_pass_mixup_loss

__all__ = [
    "MixupTrainer",
    "MixedTarget",
    "PrepareTwoStageBatch",
    "init_from_checkpoint",
    "require_checkpoints",
    "trained_network",
]

logger = logging.getLogger(__name__)


class MixedTarget(NamedTuple):
    """The target of a mixed batch: the unmixed targets, the permutation and the mixing weight; ``two_pass``: the
    inputs are ``cat([clean, mixed])`` (KNEEL's official mixup)."""

    target: Any
    perm: torch.Tensor
    lam: float
    two_pass: bool = False


class _MixupPrepareBatch:
    """Prepare the batch with ``prepare_batch``, then mix its images; the target becomes a :class:`MixedTarget`."""

    def __init__(self, prepare_batch: Callable, mixup: Mixup) -> None:
        self.prepare_batch = prepare_batch
        self.mixup = mixup

    def __call__(self, batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> tuple:
        batch = self.prepare_batch(batchdata, device, non_blocking, **kwargs)
        inputs, targets = batch[0], batch[1]
        mixed, perm, lam = self.mixup(inputs)
        if self.mixup.two_pass and lam != 1.0:
            return (torch.cat([inputs, mixed]), MixedTarget(targets, perm, lam, True), *batch[2:])
        return (mixed, MixedTarget(targets, perm, lam), *batch[2:])


class _MixupLoss(nn.Module):
    """``loss(pred, MixedTarget)`` = :func:`~monai_ext.transforms.mix.mixup_loss`; plain targets pass through."""

    def __init__(self, loss_function: Callable) -> None:
        super().__init__()
        self.loss_function = loss_function

    def forward(self, pred: Any, target: Any) -> torch.Tensor:
        if isinstance(target, MixedTarget):
            combine = two_pass_mixup_loss if target.two_pass else mixup_loss
            return combine(self.loss_function, pred, target.target, target.perm, target.lam)
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
    """Batch for :class:`~monai_ext.inferers.two_stage.TwoStageInferer`: ``(stage-1 image, landmarks, (),
    {"originals", "affines"})``.

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


def transferred(
    network: nn.Module, path: str | os.PathLike, enabled: Any = True, map_location: Any = "cpu",
    values: Mapping[str, Any] | None = None,
) -> nn.Module:
    """``network`` initialised from the checkpoint at ``path`` (:func:`init_from_checkpoint`) when ``enabled`` — the
    stage-2 model starting from the stage-1 weights — else unchanged; returned for use as a bundle's ``network``.
    ``values`` (e.g. the landmark header and ROI groups of the stage-2 run) must equal the stage-1 model's record
    (:meth:`monai_ext.bundle.ModelConfig.check`): a stage 2 trained on other landmarks or groups would not fit it."""
    from monai_ext.utils import as_flag

    if as_flag(enabled, "init_from_stage1"):
        if values:
            ModelConfig.load(path).check(values, advice="train stage 2 with stage 1's datalist and configs, or retrain stage 1")
        init_from_checkpoint(network, path, map_location)
    return network


def trained_network(path: str | os.PathLike, device: Any = "cpu") -> nn.Module:
    """The trained model at ``path`` (``models/model.pt``: weights and their :class:`~monai_ext.bundle.ModelConfig`)
    rebuilt from its record, weights loaded (strict), on ``device``, in eval mode — e.g. stage 1 while stage 2
    validates end to end. A missing file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained stage-1 model; train stage 1 first (configs/train.json).")
    network = ModelConfig.load(path).network()
    state = torch.load(path, map_location="cpu", weights_only=True)
    network.load_state_dict(state["model"] if isinstance(state, Mapping) and "model" in state else state)
    return network.to(device).eval()
