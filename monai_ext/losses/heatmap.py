"""Heatmap regression losses: L2 with visibility masks, and Payer's learnable-sigma L2 loss.

Shapes follow :mod:`monai_ext`: heatmaps ``(B, K, *S)`` with spatial dim 0 = x, landmarks ``(B, K, D)`` in the same
index order (pixel centres at integers), ``NaN`` for a missing landmark.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_ext.heatmaps import gaussian_heatmaps

__all__ = ["HeatmapMSELoss", "LearnableSigmaHeatmapLoss"]

SPATIAL_REDUCTIONS = ("mean", "sum")
REDUCTIONS = ("none", "mean", "sum", "batchmean")


def _check_reduction(reduction: str, spatial_reduction: str, name: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    if spatial_reduction not in SPATIAL_REDUCTIONS:
        raise ValueError(f"{name}: spatial_reduction must be one of {SPATIAL_REDUCTIONS}, got {spatial_reduction!r}.")


class HeatmapMSELoss(nn.Module):
    """L2 heatmap regression loss (Payer et al. 2019, Eq. 2) with landmark visibility and optional weighting.

    For prediction ``h``, target ``g``, visibility ``m[b, k]`` (0 for a missing landmark), landmark weight
    ``w[b, k]`` (``target_weight``) and pixel weight ``f`` (``foreground_weight`` on pixels where the target exceeds
    ``foreground_threshold`` times its channel maximum, 1 elsewhere), the per-channel loss is

        ``l[b, k] = m[b, k] * w[b, k] * R_x( f(x) * (h[b, k, x] - g[b, k, x])^2 )``

    where ``R_x`` is the mean over pixels (``spatial_reduction="mean"``) or the sum (``"sum"``, the sum of squared
    differences of Eq. 2).  ``reduction`` then gives

    * ``"none"``: ``l`` itself, ``(B, K)`` (masked channels are 0);
    * ``"mean"``: ``sum(l) / sum(m)``, the mean over pixels x visible landmarks: with every landmark visible and no
      weighting, exactly ``F.mse_loss(h, g)``;
    * ``"sum"``: ``sum(l)``;
    * ``"batchmean"``: ``sum(l) / B``: with ``spatial_reduction="sum"`` this is Payer's normalisation (his code's
      ``tf.nn.l2_loss / batch_size`` also halves the sum; that constant factor is left out here).

    Masked channels contribute nothing, whatever their prediction or target (``NaN`` targets included).
    ``input`` may be a list/tuple of predictions (intermediate supervision, e.g. stacked hourglasses): the loss is the
    sum over them, each against the same target.
    """

    def __init__(
        self,
        reduction: str = "mean",
        spatial_reduction: str = "mean",
        foreground_weight: float = 1.0,
        foreground_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        _check_reduction(reduction, spatial_reduction, "HeatmapMSELoss")
        if foreground_weight <= 0:
            raise ValueError(f"HeatmapMSELoss: foreground_weight must be positive, got {foreground_weight}.")
        self.reduction = reduction
        self.spatial_reduction = spatial_reduction
        self.foreground_weight = float(foreground_weight)
        self.foreground_threshold = float(foreground_threshold)

    def forward(
        self,
        input: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        target_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            input: predicted heatmaps ``(B, K, *S)``, or a list/tuple of them.
            target: target heatmaps ``(B, K, *S)``, or a ``(heatmaps, mask)`` pair as produced by
                :class:`~monai_ext.engines.prepare_batch.PrepareLandmarkBatch` (so MONAI's ``SupervisedTrainer``,
                which calls ``loss(pred, target)``, masks missing landmarks).
            mask: visibility ``(B, K)`` (bool or 0/1); ``None`` = all visible.
            target_weight: per-landmark weights ``(B, K)`` or ``(K,)``; ``None`` = 1.
        """
        if isinstance(target, (list, tuple)):
            if len(target) != 2 or mask is not None:
                raise ValueError("HeatmapMSELoss: a tuple target must be (heatmaps, mask) with no separate mask.")
            target, mask = target
        if isinstance(input, (list, tuple)):
            if len(input) == 0:
                raise ValueError("HeatmapMSELoss: got an empty list of predictions.")
            losses = [self._single(p, target, mask, target_weight) for p in input]
            return torch.stack(losses).sum(0)
        return self._single(input, target, mask, target_weight)

    def _single(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None,
        target_weight: torch.Tensor | None,
    ) -> torch.Tensor:
        if input.shape != target.shape or input.ndim < 3:
            raise ValueError(
                f"HeatmapMSELoss: input and target must both be (B, K, *spatial), got {tuple(input.shape)} and "
                f"{tuple(target.shape)}."
            )
        b, k = input.shape[:2]
        vis = torch.ones((b, k), dtype=torch.bool, device=input.device)
        if mask is not None:
            if mask.shape != (b, k):
                raise ValueError(f"HeatmapMSELoss: mask must be (B, K) = ({b}, {k}), got {tuple(mask.shape)}.")
            vis = mask.to(device=input.device) > 0
        vis_x = vis.view(b, k, *([1] * (input.ndim - 2)))
        target = torch.where(vis_x, target.to(input.dtype), torch.zeros_like(input))
        diff = torch.where(vis_x, input - target, torch.zeros_like(input))
        sq = diff * diff
        if self.foreground_weight != 1.0:
            peak = target.flatten(2).amax(dim=2).view(vis_x.shape)
            fg = (target > self.foreground_threshold * peak) & (peak > 0)
            sq = sq * torch.where(fg, torch.full_like(sq, self.foreground_weight), torch.ones_like(sq))
        per_channel = sq.flatten(2).sum(2) if self.spatial_reduction == "sum" else sq.flatten(2).mean(2)  # (B, K)
        if target_weight is not None:
            tw = target_weight.to(device=input.device, dtype=input.dtype)
            if tw.shape == (k,):
                tw = tw.unsqueeze(0)
            elif tw.shape != (b, k):
                raise ValueError(
                    f"HeatmapMSELoss: target_weight must be (K,) or (B, K) = ({b}, {k}), got {tuple(tw.shape)}."
                )
            per_channel = per_channel * tw
        if self.reduction == "none":
            return per_channel
        total = per_channel.sum()
        if self.reduction == "sum":
            return total
        if self.reduction == "batchmean":
            return total / b
        return total / vis.sum().clamp_min(1).to(total.dtype)


class LearnableSigmaHeatmapLoss(nn.Module):
    """Payer et al. 2019 L2 loss with learnable per-landmark heatmap sigmas.

    The module owns ``sigma`` (an ``nn.Parameter`` of shape ``(K,)``; give it to the optimiser together with the
    network), generates the target heatmaps from the landmark coordinates with
    :func:`~monai_ext.heatmaps.gaussian_heatmaps` (so ``sigma`` receives gradients) and returns

        ``HeatmapMSELoss(input, g(landmarks; sigma), mask=isfinite(landmarks)) + alpha * sum_k sigma_k^2``.

    The penalty is added once per call (not per sample).  With ``normalize=True`` (default; Eq. 1 of the paper:
    ``g = gamma / ((2 pi)^(D/2) sigma^D) * exp(...)``) a larger sigma lowers and widens the target and the penalty
    balances the two; with a fixed peak (``normalize=False``) both the data term and the penalty favour ever smaller
    sigmas, so learnable sigmas should only be used with ``normalize=True``.
    The default data term is Payer's sum over pixels averaged over the batch; with ``gamma=1000`` and ``alpha=100`` the
    data-term and penalty gradients w.r.t. sigma are of the same order at sigma = 4 px in 2D for a zero prediction
    (``gamma^2 / (2 pi sigma^3)`` ~ 2500 vs ``2 alpha sigma`` = 800; the balance scales with ``gamma^2``: change
    ``alpha`` with ``amplitude`` or with the reductions).

    Args:
        num_landmarks: ``K``.
        sigma_init: initial sigma in pixels (float, or ``K`` values).
        alpha: weight of the ``sum(sigma^2)`` penalty.
        amplitude: ``gamma``: integral (``normalize=True``) or peak (``normalize=False``) of the target Gaussians.
        normalize: unit-integral Gaussians scaled by ``amplitude``.
        reduction: ``"batchmean"`` (default), ``"mean"`` or ``"sum"`` (see :class:`HeatmapMSELoss`); ``"none"`` is not
            supported because the penalty is not per sample.
        spatial_reduction: ``"sum"`` (default) or ``"mean"``.
        learn_sigma: ``False`` freezes sigma (fixed-sigma baseline with the same target generation).
    """

    def __init__(
        self,
        num_landmarks: int,
        sigma_init: float | Sequence[float] = 4.0,
        alpha: float = 100.0,
        amplitude: float = 1000.0,
        normalize: bool = True,
        reduction: str = "batchmean",
        spatial_reduction: str = "sum",
        learn_sigma: bool = True,
    ) -> None:
        super().__init__()
        if reduction == "none":
            raise ValueError(
                "LearnableSigmaHeatmapLoss: reduction='none' is not supported (the sigma penalty is global)."
            )
        _check_reduction(reduction, spatial_reduction, "LearnableSigmaHeatmapLoss")
        sig = torch.as_tensor(sigma_init, dtype=torch.float32).flatten()
        if sig.numel() == 1:
            sig = sig.repeat(num_landmarks)
        if sig.numel() != num_landmarks or bool((sig <= 0).any()):
            raise ValueError(
                f"LearnableSigmaHeatmapLoss: sigma_init must be one positive value or {num_landmarks} of them, "
                f"got {sigma_init}."
            )
        self.sigma = nn.Parameter(sig, requires_grad=learn_sigma)
        self.alpha = float(alpha)
        self.amplitude = float(amplitude)
        self.normalize = normalize
        self.mse = HeatmapMSELoss(reduction=reduction, spatial_reduction=spatial_reduction)

    def target(self, landmarks: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
        """Target heatmaps ``(B, K, *spatial_shape)`` for landmarks ``(B, K, D)`` with the current sigmas."""
        if landmarks.ndim != 3 or landmarks.shape[1] != self.sigma.numel():
            raise ValueError(
                f"LearnableSigmaHeatmapLoss: landmarks must be (B, {self.sigma.numel()}, D), got "
                f"{tuple(landmarks.shape)}."
            )
        return gaussian_heatmaps(landmarks, spatial_shape, self.sigma, self.amplitude, self.normalize)

    def penalty(self) -> torch.Tensor:
        """``alpha * sum(sigma^2)``."""
        return self.alpha * (self.sigma * self.sigma).sum()

    def forward(self, input: torch.Tensor | Sequence[torch.Tensor], landmarks: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: predicted heatmaps ``(B, K, *S)`` (or a list/tuple of them, summed).
            landmarks: ``(B, K, D)`` coordinates in spatial dims order, ``NaN`` for missing landmarks.
        """
        first = input[0] if isinstance(input, (list, tuple)) else input
        landmarks = landmarks.to(device=first.device, dtype=first.dtype)
        target = self.target(landmarks, first.shape[2:])
        mask = torch.isfinite(landmarks).all(dim=-1)
        return self.mse(input, target, mask=mask) + self.penalty()
