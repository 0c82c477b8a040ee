"""Training inferer of interactive keypoint networks: RITM-style iterative training with simulated clicks (the
interactive workflow is in :mod:`monai_ext.engines.interactive`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer

from monai_ext.decoding import decode_heatmaps
from monai_ext.engines.interactive import interactive_inputs, select_worst_landmark

__all__ = ["IterativeHintInferer"]


class IterativeHintInferer(Inferer):
    """Iterative training of an interactive keypoint network (Kim et al. 2022, official ``RITM_SE_HRNet32.forward``,
    after RITM, Sofiiuk et al. 2021).

    The network input is ``cat([image, click maps (K), previous prediction (K)])``. Per batch, ``r`` is drawn
    uniformly from ``0..max_rounds``; ``r`` rounds run without gradient (network in eval mode), each predicting from
    the current clicks and previous prediction and then adding, per sample, the landmark with the largest
    hard-argmax error among those not clicked yet as a new click at its ground truth; the trained forward pass then
    gets the clicks so far and the last round's sigmoid heatmaps (all channels; zeros when ``r = 0``).

    Call: ``inferer(inputs, network, hints=(B, K, 2), landmarks=(B, K, 2))`` (network pixels, ``NaN`` = no click /
    missing), as :class:`~monai_ext.engines.interactive.PrepareInteractiveBatch` with ``iterative=True`` passes them;
    without ``hints``/``landmarks`` it is a plain forward pass.

    Args:
        num_landmarks: ``K``.
        hint_sigma: Gaussian sigma (pixels) of the click maps.
        max_rounds: the most rounds without gradient (official: ``max_iter = 3`` -> ``randint(0, 3)``, 0..2).
        seed: seed of the round-count generator.
    """

    def __init__(self, num_landmarks: int, hint_sigma: float, max_rounds: int = 2, seed: int = 0) -> None:
        super().__init__()
        if int(max_rounds) < 0:
            raise ValueError(f"IterativeHintInferer: max_rounds must be >= 0, got {max_rounds}.")
        self.num_landmarks = int(num_landmarks)
        self.hint_sigma = float(hint_sigma)
        self.max_rounds = int(max_rounds)
        self.rng = np.random.default_rng(seed)

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., torch.Tensor],
        *args: Any,
        hints: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if hints is None or landmarks is None:
            return network(inputs, *args, **kwargs)
        k = self.num_landmarks
        image = inputs[:, : inputs.shape[1] - 2 * k]
        hints = hints.to(device=inputs.device, dtype=torch.float32).clone()
        gt = landmarks.to(device=inputs.device, dtype=torch.float32)
        previous = torch.zeros((inputs.shape[0], k, *inputs.shape[2:]), dtype=inputs.dtype, device=inputs.device)
        rounds = int(self.rng.integers(0, self.max_rounds + 1))
        if rounds:
            module = network if isinstance(network, torch.nn.Module) else None
            was_training = module.training if module is not None else False
            if module is not None:
                module.eval()
            rows = torch.arange(inputs.shape[0], device=inputs.device)
            with torch.no_grad():
                for _ in range(rounds):
                    x = interactive_inputs(image, hints, k, self.hint_sigma, previous)
                    previous = torch.sigmoid(network(x, *args, **kwargs).float()).to(inputs.dtype)
                    points = decode_heatmaps(previous.float(), method="argmax")[0]
                    errors = torch.linalg.vector_norm(points - gt, dim=-1)  # NaN where the landmark is missing
                    worst = select_worst_landmark(errors, torch.isfinite(hints).all(-1))
                    ok = worst >= 0
                    hints[rows[ok], worst[ok]] = gt[rows[ok], worst[ok]]
            if module is not None:
                module.train(was_training)
        return network(interactive_inputs(image, hints, k, self.hint_sigma, previous), *args, **kwargs)
