"""Training inferer of interactive keypoint networks with previous-prediction channels (RITM-style iterative
training; the interactive workflow is in :mod:`monai_ext.engines.interactive`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer

__all__ = ["IterativeHintInferer"]


class IterativeHintInferer(Inferer):
    """Training inferer for networks with previous-prediction channels (the last ``num_landmarks`` input channels).

    With probability ``prob`` per batch, the network first predicts without gradient from the same image and hints
    (previous channels zero), and its sigmoid heatmaps become the previous prediction of the trained forward pass
    (RITM's iterative training, one step); otherwise the channels stay zero (the first round of an interaction).
    """

    def __init__(self, num_landmarks: int, prob: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.num_landmarks = int(num_landmarks)
        self.prob = float(prob)
        self.rng = np.random.default_rng(seed)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.rng.random() < self.prob:
            with torch.no_grad():
                previous = torch.sigmoid(network(inputs, *args, **kwargs)).detach()
            inputs = torch.cat([inputs[:, : -self.num_landmarks], previous.to(inputs.dtype)], dim=1)
        return network(inputs, *args, **kwargs)
