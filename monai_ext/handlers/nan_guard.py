"""Stop a run whose loss turns NaN/inf, naming the iteration and the last finite loss."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine, Events



def loss_from_output(output: Any, key: str = "loss") -> Any:
    """The loss in an engine output: a dict (``decollate=False``) or a list of per-item dicts.

    The default of :class:`StopOnNonFiniteLoss`, which guards any engine. For a decollated output this is
    ``monai.handlers.from_engine([key], first=True)`` (use that in configs and tests); it is kept because
    ``from_engine`` gives a 1-tuple for a dict output (``decollate=False`` engines, plain ignite engines) and ``None``
    for an output that is the loss itself, both of which this returns as the loss.
    """
    if isinstance(output, dict):
        return output[key]
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], dict):
        return output[0][key]
    return output


class StopOnNonFiniteLoss:
    """Terminate the engine when the loss is NaN or infinite (ignite's ``TerminateOnNan`` with a message).

    The checkpoint handlers keep the last good weights: the iteration with the bad loss writes nothing.

    Args:
        output_transform: engine output → loss (default :func:`loss_from_output`).
        raise_error: raise ``FloatingPointError`` after terminating instead of only logging.
    """

    def __init__(self, output_transform: Callable[[Any], Any] = loss_from_output, raise_error: bool = False):
        self.output_transform = output_transform
        self.raise_error = raise_error
        self.last_finite: float | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = self.output_transform(engine.state.output)
        loss = float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)
        if math.isfinite(loss):
            self.last_finite = loss
            return
        msg = (
            f"non-finite loss ({loss}) at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
            f"last finite loss: {self.last_finite}. Training stopped; the last saved checkpoint is kept."
        )
        self.logger.error(msg)
        engine.terminate()
        if self.raise_error:
            raise FloatingPointError(msg)
