"""Crash-safe training: the latest training state in one file, written atomically, and resuming from it.

MONAI's ``CheckpointSaver`` writes in place (``DiskSaver(atomic=False)``): a crash while saving leaves a
truncated file. :class:`LatestCheckpointSaver` writes a temporary file and renames it onto the checkpoint,
so the file on disk is always a complete state. Both handlers can put the engine they are attached to in the
checkpoint (``engine_key``), which a bundle config cannot reference from the engine's own handler list.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sized
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from monai_ext.utils import atomic_path

__all__ = ["LatestCheckpointSaver", "ResumeCheckpointLoader", "checkpoint_dict", "final_model_saver"]


def engine_objects(engine: Engine, given: Mapping[str, Any]) -> dict[str, Any]:
    """The objects an engine owns beyond a bundle's ``checkpoint_objects`` (its ``checkpoint_objects()`` method when it
    has one, e.g. the discriminators, their optimisers and grad scalers of
    :class:`~monai_ext.engines.AdversarialPoseTrainer`), so one checkpoint wiring serves every trainer."""
    method = getattr(engine, "checkpoint_objects", None)
    if method is None:
        return {}
    objects = dict(method())
    clash = sorted(set(objects) & set(given))
    if clash:
        raise ValueError(f"{type(engine).__name__}.checkpoint_objects() repeats {clash} of the bundle's checkpoint_objects")
    return objects


def _unwrap(obj: Any) -> Any:
    """The module inside ``DataParallel``/``DistributedDataParallel``: its state dict has no ``module.`` prefix, so the
    checkpoint loads into a plain network (resume on one device, export) as ignite's ``Checkpoint`` does."""
    return obj.module if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else obj


class LatestCheckpointSaver:
    """Save ``{key: obj.state_dict()}`` of ``save_dict`` (and of the engine under ``engine_key``) to
    ``save_dir/filename`` every ``epoch_interval`` epochs and every ``iteration_interval`` iterations,
    replacing the previous file atomically (temporary file + rename).

    Nothing is saved once the engine is terminating (e.g. :class:`~monai_ext.handlers.StopOnNonFiniteLoss`
    after a NaN loss, whose optimizer step already spoiled the weights): the file keeps the last good state.
    Attach it after the handlers that may terminate the engine. Only rank 0 writes in distributed runs.

    Args:
        save_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict()``: ``{"model": net, "optimizer": opt, "lr_scheduler": s, ...}``.
        filename: the checkpoint file name.
        epoch_interval: save every N epochs (0: never at epoch ends).
        iteration_interval: save every N iterations (0: never within epochs).
        engine_key: key of the attached engine's state (epoch, iteration) in the checkpoint; None leaves it out.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint.pt",
        epoch_interval: int = 1,
        iteration_interval: int = 0,
        engine_key: str | None = "trainer",
    ):
        if engine_key is not None and engine_key in save_dict:
            raise ValueError(f"save_dict already has the engine key {engine_key!r}")
        if epoch_interval < 0 or iteration_interval < 0:
            raise ValueError(f"intervals must be >= 0, got epoch {epoch_interval}, iteration {iteration_interval}")
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.epoch_interval = int(epoch_interval)
        self.iteration_interval = int(iteration_interval)
        self.engine_key = engine_key
        self.logger = logging.getLogger(__name__)
        self._last_saved: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        if self.epoch_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.epoch_interval), self)
        if self.iteration_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.iteration_interval), self)

    def _reset(self, engine: Engine) -> None:
        self._last_saved = None

    def __call__(self, engine: Engine) -> None:
        if engine.should_terminate:
            self.logger.warning(f"not saving {self.path} at iteration {engine.state.iteration}: the run is terminating")
            return
        if self._last_saved == engine.state.iteration or idist.get_rank() != 0:
            return
        objects = {**self.save_dict, **engine_objects(engine, self.save_dict)}
        if self.engine_key is not None:
            objects[self.engine_key] = engine
        state = {key: _unwrap(obj).state_dict() for key, obj in objects.items()}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        self._last_saved = engine.state.iteration
        self.logger.info(f"saved {self.path} (epoch {engine.state.epoch}, iteration {engine.state.iteration})")


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that also restores the engine it is attached to (under ``engine_key``),
    so that training continues from the saved epoch and iteration. Fails at attach time, naming the file,
    when there is no checkpoint to resume from.

    Args:
        load_path: the checkpoint written by :class:`LatestCheckpointSaver`.
        load_dict: the same objects as the saver's ``save_dict``.
        engine_key: key of the engine's state in the checkpoint; None when ``load_dict`` holds it already.
        kwargs: further arguments of ``CheckpointLoader`` (``map_location``, ``strict``, ...).
    """

    def __init__(
        self, load_path: str | os.PathLike, load_dict: Mapping[str, Any], engine_key: str | None = "trainer", **kwargs: Any
    ):
        if engine_key is not None and engine_key in load_dict:
            raise ValueError(f"load_dict already has the engine key {engine_key!r}")
        super().__init__(load_path=str(load_path), load_dict=dict(load_dict), **kwargs)
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        if not os.path.isfile(self.load_path):
            raise FileNotFoundError(f"{self.load_path}: no checkpoint to resume from (train without resume first)")
        self.load_dict.update(engine_objects(engine, self.load_dict))
        if self.engine_key is not None:
            self.load_dict[self.engine_key] = engine
        super().attach(engine)


def checkpoint_dict(objects: Mapping[str, Any], per_process: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The ``save_dict`` / ``load_dict`` of a training checkpoint: ``objects`` (model, optimizer, scheduler, ...) plus
    the ``extra`` entries that are not ``None`` (optional parts, such as a time budget that is switched off), plus the
    ``per_process`` ones (random streams of one process, e.g. an on-device augmentation) in a single-process run
    only: in a distributed run only rank 0 writes the file, and every rank resuming from rank 0's stream would draw
    the same augmentations, so each rank restarts its own stream from its seed instead."""
    from monai_ext.utils import distributed_launch

    extra = dict(extra)
    if not distributed_launch():
        extra.update(per_process or {})
    extra = {k: v for k, v in extra.items() if v is not None}
    clash = sorted(set(objects) & set(extra))
    if clash:
        raise ValueError(f"checkpoint_dict: {clash} given twice")
    return {**{k: v for k, v in objects.items() if v is not None}, **extra}


def final_model_saver(save_dir: str, save_dict: Mapping[str, Any], validation: Sized, filename: str = "model.pt"):
    """The trainer's saver of the final weights as ``filename`` when there is no ``validation`` item to choose a
    checkpoint on (a fold or datalist with an empty validation section: the last weights are the model, as Payer's
    protocol uses them); ``None`` otherwise (the evaluator's best-metric saver writes ``filename``)."""
    from monai.handlers import CheckpointSaver

    if len(validation) > 0:
        return None
    return CheckpointSaver(save_dir, dict(save_dict), save_final=True, final_filename=filename)
