"""Batch-level mixup (Zhang et al. 2018) as KNEEL uses it for landmark regression.

Images are mixed, ``x = lam * x_i + (1 - lam) * x_perm(i)``; the landmark targets are *not* mixed
(an average of two skeletons is not a skeleton): the loss is mixed instead,
``lam * L(pred, y_i) + (1 - lam) * L(pred, y_perm(i))`` (:func:`mixup_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from monai_ext.utils import as_flag

__all__ = ["Mixup", "mixup_loss", "two_pass_mixup_loss"]


class Mixup:
    """Mix a batch with a random permutation of itself, ``lam ~ Beta(alpha, alpha)``.

    Args:
        alpha: Beta distribution parameter (KNEEL: 0.75).
        prob: probability of mixing a batch (otherwise ``lam = 1`` and the identity permutation).
        seed: for reproducible draws.

    ``two_pass`` (KNEEL's official training, deep-pipeline ``core.py``): the network sees the clean batch *and* the
    mixed one, ``lam L(f(x), y) + (1 - lam) L(f(x~), y_perm)`` (:func:`two_pass_mixup_loss`); default: one pass on the
    mixed batch, ``lam L(f(x~), y) + (1 - lam) L(f(x~), y_perm)`` (:func:`mixup_loss`).

    ``__call__(images (B, C, *S))`` returns ``(mixed images, perm (B,), lam)``. ``state_dict()`` /
    ``load_state_dict()`` carry the generator's state, so a resumed training (a checkpoint entry) draws what the
    uninterrupted one would have.
    """

    def __init__(self, alpha: float = 0.75, prob: float = 1.0, seed: int | None = None, two_pass: bool = False):
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = alpha
        self.prob = prob
        self.two_pass = as_flag(two_pass, "Mixup two_pass")
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict:
        """The random generator's state (``numpy.random.Generator.bit_generator.state``)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        b = images.shape[0]
        if b < 2 or self.rng.random() >= self.prob:
            return images, torch.arange(b, device=images.device), 1.0
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = torch.as_tensor(self.rng.permutation(b), device=images.device)
        return lam * images + (1.0 - lam) * images[perm], perm, lam


def _permute(target: Any, perm: torch.Tensor) -> Any:
    """``target`` (a tensor or nested tuples of tensors) permuted along the batch."""
    return tuple(_permute(t, perm) for t in target) if isinstance(target, (tuple, list)) else target[perm]


def mixup_loss(loss_fn: Callable[..., torch.Tensor], pred: Any, target: Any, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * loss(pred, target) + (1 - lam) * loss(pred, target[perm])``; ``target`` may be a tensor or a
    tuple of tensors (e.g. ``(heatmaps, mask)`` or ``(landmarks, mask)``), each permuted along the batch."""
    if lam == 1.0:
        return loss_fn(pred, target)
    return lam * loss_fn(pred, target) + (1.0 - lam) * loss_fn(pred, _permute(target, perm))


def two_pass_mixup_loss(loss_fn: Callable[..., torch.Tensor], pred: Any, target: Any, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """KNEEL's official mixup loss on the predictions ``pred (2B, ...)`` of ``cat([clean batch, mixed batch])``:
    ``lam * loss(pred[:B], target) + (1 - lam) * loss(pred[B:], target[perm])``."""
    b = perm.shape[0]
    if pred.shape[0] != 2 * b:
        raise ValueError(f"two_pass_mixup_loss: expected predictions of 2 x {b} inputs, got {tuple(pred.shape)}.")
    return lam * loss_fn(pred[:b], target) + (1.0 - lam) * loss_fn(pred[b:], _permute(target, perm))
