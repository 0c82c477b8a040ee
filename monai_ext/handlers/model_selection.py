"""Restart best-checkpoint selection at a training event (e.g. the start of Adversarial PoseNet's adversarial phase)."""

from __future__ import annotations

import logging
from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointSaver

__all__ = ["RestartModelSelection"]


class RestartModelSelection:
    """Trainer handler: when ``event`` fires, forget the best validation result so far.

    The evaluator's ``best_metric`` / ``best_metric_epoch`` go back to MONAI's initial "none yet" (-1) and the
    best-metric ``CheckpointSaver`` forgets its saved checkpoint, so the next validation writes ``model.pt`` whatever
    its score. The model a run reports is then chosen among the epochs after ``event`` only: an adversarial run's
    model is one trained with its adversarial terms, never a checkpoint of its supervised warm-up.

    Args:
        evaluator: the validation engine (its ``state.best_metric`` is reset).
        saver: its best-metric ``CheckpointSaver`` (``save_key_metric=True``); ``None``: only the evaluator is reset.
        event: the trainer event, e.g. ``monai_ext.engines.AdversarialPoseEvents.ADVERSARIAL_STARTED``.
    """

    def __init__(self, evaluator: Engine, saver: CheckpointSaver | None, event: Any) -> None:
        self.evaluator = evaluator
        self.saver = saver
        self.event = event
        self._logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine) -> None:
        self.evaluator.state.best_metric = -1
        self.evaluator.state.best_metric_epoch = -1
        checkpoint = getattr(self.saver, "_key_metric_checkpoint", None)  # MONAI keeps ignite's Checkpoint private
        if checkpoint is not None:
            checkpoint.reset()
        self._logger.info(f"epoch {engine.state.epoch}: best-checkpoint selection restarts here ({self.event}).")
