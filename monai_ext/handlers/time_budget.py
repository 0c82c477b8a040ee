"""Train for a wall-clock budget: whole epochs while they fit, with the learning rate decayed by the share of the
budget used (a time-indexed linear schedule), so that a fixed budget ends at the end of the schedule."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events
from torch.optim import Optimizer

__all__ = ["TimeBudget"]


class TimeBudget:
    """Ignite handler: train for ``minutes`` of wall-clock time (the trainer's validation runs included).

    * **Stopping**: after each epoch the run ends when the next epoch would not fit: the mean epoch duration from
      one epoch start to the next (validation included; the first epoch's training time until a second epoch has
      started) times the epochs run plus one, beyond the budget. The run then ends as a completed one
      (``state.max_epochs`` becomes the current epoch), not through ``terminate()``: only whole epochs run and the
      epoch-level handlers (validation, best-metric and resume checkpoints) see the last one. The budget can be
      overrun by the variation of an epoch's duration. ``max_epochs`` still ends the run if it comes first: set it
      high.
    * **Learning rate** (when ``optimizer`` is given): before every iteration each parameter group gets
      ``lr = lr0 * (1 - (1 - end_factor) * min(t / T, 1))``, ``t`` the seconds used, ``T`` the budget, ``lr0`` the
      group's learning rate when training started. This replaces an epoch-indexed ``LinearLR(start_factor=1,
      end_factor)`` whose length would have to be guessed from the speed of the machine; do not use both.
    * **Resuming**: ``state_dict()`` holds the seconds used and ``lr0``; in the checkpoint, a resumed run continues
      the budget and the schedule where the interrupted one stopped.

    Args:
        minutes: the budget (> 0).
        optimizer: the optimizer whose learning rate follows the schedule; ``None`` only stops.
        end_factor: the learning-rate factor reached at the end of the budget (1.0: constant).
        clock: time source in seconds (tests).
    """

    def __init__(
        self,
        minutes: float,
        optimizer: Optimizer | None = None,
        end_factor: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not float(minutes) > 0:
            raise ValueError(f"TimeBudget: minutes must be positive, got {minutes}.")
        if not 0.0 <= float(end_factor):
            raise ValueError(f"TimeBudget: end_factor must be >= 0, got {end_factor}.")
        self.budget_s = 60.0 * float(minutes)
        self.optimizer = optimizer
        self.end_factor = float(end_factor)
        self.clock = clock
        self.used_s = 0.0  # seconds used before the current run (a resumed run)
        self.base_lrs: list[float] | None = None
        self._start: float | None = None
        self._epoch_starts: list[float] = []
        self._logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def elapsed(self) -> float:
        """Seconds of the budget used so far (earlier runs of a resumed training included)."""
        return self.used_s + (0.0 if self._start is None else self.clock() - self._start)

    def lr_factor(self) -> float:
        """The learning-rate factor for the time used so far."""
        progress = min(self.elapsed() / self.budget_s, 1.0)
        return 1.0 - (1.0 - self.end_factor) * progress

    def _started(self, engine: Engine) -> None:
        self._start = self.clock()
        self._epoch_starts = []
        if self.optimizer is not None and self.base_lrs is None:
            self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in self.optimizer.param_groups]

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_starts.append(self.clock())

    def _iteration_started(self, engine: Engine) -> None:
        if self.optimizer is None or self.base_lrs is None:
            return
        factor = self.lr_factor()
        for group, lr0 in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr0 * factor

    def _epoch_completed(self, engine: Engine) -> None:
        if self._start is None or not self._epoch_starts:
            return
        # this epoch's remaining EPOCH_COMPLETED handlers (validation) may still run: judge by whole cycles
        first, n = self._epoch_starts[0], len(self._epoch_starts)
        cycle_s = (self._epoch_starts[-1] - first) / (n - 1) if n > 1 else self.clock() - first
        next_end_s = self.used_s + (first - self._start) + (n + 1) * cycle_s
        if next_end_s > self.budget_s:
            self._logger.info(
                f"TimeBudget: {self.elapsed() / 60:.2f} of {self.budget_s / 60:.2f} minutes used after epoch "
                f"{engine.state.epoch}; another epoch (~{cycle_s:.1f} s) would not fit: stopping."
            )
            # end like a completed run (not terminate(): the run is not failing, its last checkpoint is saved)
            engine.state.max_epochs = engine.state.epoch

    def _completed(self, engine: Engine) -> None:
        if self._start is not None:
            self.used_s += self.clock() - self._start
            self._start = None

    def state_dict(self) -> dict[str, Any]:
        return {"used_s": self.elapsed(), "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.used_s = float(state["used_s"])
        self.base_lrs = None if state.get("base_lrs") is None else [float(v) for v in state["base_lrs"]]
        if self._start is not None:  # loaded while running (a resume handler at STARTED): restart the clock
            self._start = self.clock()
