"""Clip the gradient norm between ``backward()`` and ``optimizer.step()`` of a MONAI trainer (MONAI's
``SupervisedTrainer`` has no clipping option; it fires ``IterationEvents.BACKWARD_COMPLETED`` at that point)."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["GradientNormClipping"]


class GradientNormClipping:
    """Ignite handler: ``torch.nn.utils.clip_grad_norm_`` over every parameter the trainer's optimizer updates (one
    global norm, as TensorFlow's ``clip_by_global_norm``), after the backward pass. Under AMP the gradients are
    unscaled first (``GradScaler.unscale_``), so ``max_norm`` is in the loss's own units.

    Args:
        max_norm: the largest global gradient norm.
        norm_type: the norm's order.
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        if not float(max_norm) > 0:
            raise ValueError(f"GradientNormClipping: max_norm must be positive, got {max_norm}.")
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self._last_norm: torch.Tensor | None = None

    @property
    def last_norm(self) -> float | None:
        """The global gradient norm before the last clipping (read on demand: no device sync per iteration)."""
        return None if self._last_norm is None else float(self._last_norm)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        optimizer = engine.optimizer
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._last_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type).detach()
