"""Landmark heatmaps: isotropic Gaussian heatmaps generated from landmark coordinates (training targets, user-click
hint maps, learnable-sigma targets). Decoding heatmaps back to coordinates is :mod:`monai_ext.decoding`.

Shapes follow :mod:`monai_ext`: heatmaps ``(B, K, *S)`` with spatial dim 0 = x, landmarks ``(B, K, D)`` in the same
index order (pixel centres at integers), ``NaN`` for a missing landmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["gaussian_heatmaps"]


def gaussian_heatmaps(
    points: torch.Tensor,
    spatial_shape: Sequence[int],
    sigma: float | torch.Tensor,
    amplitude: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """Isotropic Gaussian heatmaps, one channel per landmark, differentiable w.r.t. ``points`` and ``sigma``.

    ``g_k(x) = amplitude * exp(-||x - p_k||^2 / (2 sigma_k^2))``, evaluated at the integer pixel centres ``x`` and not
    truncated; with ``normalize=True`` it is further divided by ``(2 pi)^(D/2) sigma_k^D`` so that it integrates to
    ``amplitude`` (Payer et al. 2019, Eq. 1, ``amplitude`` = their ``gamma``).  ``normalize=False, amplitude=1`` is the
    peak-1 heatmap of ``monai.transforms.GenerateHeatmap(normalize=True)`` (up to MONAI's per-pixel erf integration and
    its rounding of the centre to the nearest pixel); both take the point coordinates in spatial dims order.

    Args:
        points: ``(B, K, D)`` float coordinates in spatial dims order; a point with any ``NaN`` gives a zero channel.
        spatial_shape: ``D`` sizes of the heatmaps.
        sigma: a float, or a tensor ``(K,)`` (per landmark) or ``(B, K)``; in pixels.
        amplitude: peak value (``normalize=False``) or integral (``normalize=True``).
        normalize: use the unit-integral Gaussian.

    Returns:
        ``(B, K, *spatial_shape)`` tensor with the dtype and device of ``points``.
    """
    if points.ndim != 3:
        raise ValueError(f"gaussian_heatmaps: points must be (B, K, D), got shape {tuple(points.shape)}.")
    spatial_shape = tuple(int(s) for s in spatial_shape)
    b, k, d = points.shape
    if d != len(spatial_shape):
        raise ValueError(
            f"gaussian_heatmaps: points have {d} coordinates but spatial_shape {spatial_shape} has "
            f"{len(spatial_shape)} dims."
        )
    if not points.is_floating_point():
        points = points.float()
    if isinstance(sigma, torch.Tensor):
        sig = sigma.to(dtype=points.dtype, device=points.device)
        if sig.ndim == 0:
            sig = sig.expand(b, k)
        elif sig.shape == (k,):
            sig = sig.unsqueeze(0).expand(b, k)
        elif sig.shape != (b, k):
            raise ValueError(
                f"gaussian_heatmaps: sigma must be a float, (K,) = ({k},) or (B, K) = ({b}, {k}), got shape "
                f"{tuple(sig.shape)}."
            )
    else:
        if float(sigma) <= 0:
            raise ValueError(f"gaussian_heatmaps: sigma must be positive, got {sigma}.")
        sig = torch.full((b, k), float(sigma), dtype=points.dtype, device=points.device)

    valid = torch.isfinite(points).all(dim=-1)  # (B, K)
    safe = torch.where(valid.unsqueeze(-1), points, torch.zeros_like(points))  # no NaN in the graph: clean gradients
    inv_two_var = 1.0 / (2.0 * sig * sig)  # (B, K)
    # separable evaluation: prod_d exp(-(x_d - p_d)^2 / (2 sigma^2)), one (B, K, S_d) factor per dim
    heat = torch.ones((b, k), dtype=points.dtype, device=points.device)
    for dim, size in enumerate(spatial_shape):
        grid = torch.arange(size, dtype=points.dtype, device=points.device)
        factor = torch.exp(-((grid.view(1, 1, -1) - safe[..., dim : dim + 1]) ** 2) * inv_two_var.unsqueeze(-1))
        heat = heat.unsqueeze(-1) * factor.view(b, k, *([1] * dim), size)
    scale = torch.full_like(sig, float(amplitude))
    if normalize:
        scale = scale / ((2.0 * math.pi) ** (d / 2.0) * sig.abs() ** d)
    scale = torch.where(valid, scale, torch.zeros_like(scale))
    return heat * scale.view(b, k, *([1] * d))
