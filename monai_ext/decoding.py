"""Heatmaps to landmark coordinates: argmax, quadratic sub-pixel refinement, local soft-argmax and local softmax
(Kim et al. 2022), global soft-argmax.

Every function takes heatmaps ``(B, K, *spatial)`` (2D or 3D spatial dims) and returns coordinates
``(B, K, ndim)`` in the index order of the spatial dims, pixel centres at integers: for a MONAI
``(C, W, H)`` image a peak at ``heatmaps[b, k, i, j]`` decodes to ``(x, y) = (i, j)``
(see :mod:`monai_ext` for the coordinate convention). Generating heatmaps from coordinates is
:mod:`monai_ext.heatmaps`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.data import MetaTensor

__all__ = ["DECODING_METHODS", "SoftArgmax", "decode_heatmaps", "soft_argmax"]

DECODING_METHODS = ("argmax", "quadratic", "local_soft_argmax", "local_softmax", "soft_argmax")


def _check_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    """Validated floating-point heatmaps as a plain tensor (a MetaTensor's image metadata does not apply to points)."""
    if not isinstance(heatmaps, torch.Tensor):
        raise TypeError(f"heatmaps must be a torch.Tensor (B, K, *spatial), got {type(heatmaps).__name__}.")
    if heatmaps.ndim not in (4, 5):
        raise ValueError(f"heatmaps must be (B, K, *spatial) with 2 or 3 spatial dims, got {tuple(heatmaps.shape)}.")
    if any(s == 0 for s in heatmaps.shape):
        raise ValueError(f"heatmaps must not be empty, got shape {tuple(heatmaps.shape)}.")
    if isinstance(heatmaps, MetaTensor):
        heatmaps = heatmaps.as_tensor()
    return heatmaps if heatmaps.is_floating_point() else heatmaps.float()


def _strides(spatial: tuple[int, ...]) -> list[int]:
    """Row-major strides of a flattened array of shape ``spatial``."""
    strides = [1] * len(spatial)
    for d in range(len(spatial) - 2, -1, -1):
        strides[d] = strides[d + 1] * spatial[d + 1]
    return strides


def _argmax(flat: torch.Tensor, spatial: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer peak of ``flat`` ``(B, K, N)``: (flat index (B, K), integer coords (B, K, ndim), peak value (B, K))."""
    value, index = flat.max(dim=-1)
    coords = torch.stack(torch.unravel_index(index, spatial), dim=-1)
    return index, coords, value


def _quadratic_offsets(
    flat: torch.Tensor, index: torch.Tensor, peak: torch.Tensor, spatial: tuple[int, ...]
) -> torch.Tensor:
    """Per-axis parabola vertex through three samples along each axis, as an offset ``(B, K, ndim)`` from the peak.

    The samples are the peak and its two neighbours; at a border the triple is shifted one pixel inside (a
    one-sided fit). The parabola is fitted to ``log(heatmap)`` when the three samples are positive (exact
    for Gaussian peaks, as in DARK, Zhang et al. 2020) and to the raw values otherwise. A triple that is not
    strictly concave (a flat top of three equal values) gives offset 0, and the offset is clamped to
    [-0.5, 0.5] (it stays inside the argmax pixel). Axes shorter than 3 pixels are not refined.
    """
    offsets = torch.zeros(peak.shape, dtype=flat.dtype, device=flat.device)
    for d, (size, stride) in enumerate(zip(spatial, _strides(spatial))):
        if size < 3:
            continue
        p = peak[..., d]
        centre = p.clamp(1, size - 2)
        mid_index = index + (centre - p) * stride
        samples = torch.stack([flat.gather(-1, (mid_index + s * stride).unsqueeze(-1)).squeeze(-1) for s in (-1, 0, 1)])
        positive = (samples > 0).all(dim=0)
        samples = torch.where(positive, samples.clamp(min=torch.finfo(flat.dtype).tiny).log(), samples)
        left, mid, right = samples
        denom = left - 2 * mid + right
        concave = denom < 0
        safe = torch.where(concave, denom, -torch.ones_like(denom))
        vertex = (centre - p).to(flat.dtype) + 0.5 * (left - right) / safe
        offsets[..., d] = torch.where(concave, vertex, torch.zeros_like(vertex)).clamp(-0.5, 0.5)
    return offsets


def _patch(
    flat: torch.Tensor, peak: torch.Tensor, spatial: tuple[int, ...], window: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``window**ndim`` cube around integer peaks ``(B, K, ndim)`` of flattened heatmaps ``(B, K, N)``: per-axis
    steps ``(window,)``, cube offsets ``(W, ndim)``, the values ``(B, K, W)`` (positions outside the heatmap read its
    nearest border pixel: mask them) and whether each position lies inside the heatmap ``(B, K, W)``."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of pixels, got {window}.")
    half = window // 2
    device = flat.device
    steps = torch.arange(-half, half + 1, device=device)
    grid = torch.stack(torch.meshgrid(*([steps] * len(spatial)), indexing="ij"), dim=-1).reshape(-1, len(spatial))
    sizes = torch.tensor(spatial, device=device)
    positions = peak.unsqueeze(-2) + grid  # (B, K, W, ndim)
    inside = ((positions >= 0) & (positions < sizes)).all(dim=-1)
    positions = torch.minimum(positions.clamp(min=0), sizes - 1)
    values = flat.gather(-1, (positions * torch.tensor(_strides(spatial), device=device)).sum(-1))
    return steps, grid, values, inside


def _local_soft_argmax_offsets(
    flat: torch.Tensor, index: torch.Tensor, peak: torch.Tensor, spatial: tuple[int, ...], window: int
) -> torch.Tensor:
    """Centroid of the heatmap in a ``window**ndim`` cube centred on the integer peak, as an offset ``(B, K, ndim)``.

    The cube stays symmetric around the peak: its half-width shrinks per axis near a border (so an axis whose
    peak lies on the border pixel is not refined). Per axis, the cube is summed over the other axes into a
    profile; the weights are that profile minus its minimum, clipped at 0 (subtracting the floor removes most
    of the pull towards the cube centre that the truncated tails of a peak cause). No positive weight gives 0.
    """
    steps, grid, values, _ = _patch(flat, peak, spatial, window)
    ndim, half = len(spatial), window // 2
    sizes = torch.tensor(spatial, device=flat.device)
    reach = torch.minimum(torch.minimum(peak, sizes - 1 - peak), torch.full_like(peak, half))  # (B, K, ndim)
    inside = (grid.abs() <= reach.unsqueeze(-2)).all(dim=-1)  # (B, K, W)
    values = torch.where(inside, values, torch.zeros_like(values)).reshape(*values.shape[:-1], *([window] * ndim))
    offsets = []
    for d in range(ndim):
        other = [2 + a for a in range(ndim) if a != d]
        profile = values.sum(dim=other) if other else values  # (B, K, window)
        valid = steps.abs() <= reach[..., d : d + 1]
        floor = torch.where(valid, profile, torch.full_like(profile, float("inf"))).amin(dim=-1, keepdim=True)
        weights = torch.where(valid, (profile - floor).clamp(min=0), torch.zeros_like(profile))
        total = weights.sum(-1)
        centroid = (weights * steps.to(flat.dtype)).sum(-1) / total.clamp(min=torch.finfo(flat.dtype).tiny)
        offsets.append(torch.where(total > 0, centroid, torch.zeros_like(centroid)))
    return torch.stack(offsets, dim=-1)


def _local_softmax_offsets(
    flat: torch.Tensor, peak: torch.Tensor, spatial: tuple[int, ...], window: int, beta: float
) -> torch.Tensor:
    """Expected offset ``(B, K, ndim)`` under ``softmax(beta * patch)``, the patch a ``window**ndim`` cube centred on
    the integer peak, zero outside the heatmap (Kim et al. 2022, ``heatmap2subpixel_argmax_coord``).

    The softmax runs over the whole cube, padded pixels included (value 0, weight ``exp(0)``); the offset is
    differentiable w.r.t. the patch values (the integer peak is not).
    """
    _, grid, values, inside = _patch(flat, peak, spatial, window)
    values = torch.where(inside, values, torch.zeros_like(values))
    weights = torch.softmax(beta * values, dim=-1)  # (B, K, W)
    return (weights.unsqueeze(-1) * grid.to(flat.dtype)).sum(-2)


def soft_argmax(heatmaps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Differentiable global soft-argmax: the expected position under ``softmax(beta * heatmap)`` over all pixels.

    As in KNEEL (Tiulpin et al., 2019), ``beta`` is an inverse temperature applied to the raw network output
    before the softmax. It suits networks trained through it; on heatmaps already in [0, 1] every background
    pixel keeps weight ``exp(0)``, which pulls the result towards the image centre unless ``beta`` is large.

    Args:
        heatmaps: ``(B, K, *spatial)``, 2 or 3 spatial dims.
        beta: inverse temperature of the softmax.

    Returns:
        coordinates ``(B, K, ndim)`` in pixels (index order of the spatial dims), differentiable w.r.t. ``heatmaps``.
    """
    heatmaps = _check_heatmaps(heatmaps)
    b, k, *spatial = heatmaps.shape
    probs = torch.softmax(beta * heatmaps.reshape(b, k, -1), dim=-1).reshape(heatmaps.shape)
    coords = []
    for d, size in enumerate(spatial):
        other = [2 + a for a in range(len(spatial)) if a != d]
        marginal = probs.sum(dim=other) if other else probs  # (B, K, size)
        positions = torch.arange(size, dtype=heatmaps.dtype, device=heatmaps.device)
        coords.append((marginal * positions).sum(-1))
    return torch.stack(coords, dim=-1)


class SoftArgmax(nn.Module):
    """Network head: heatmaps ``(B, K, *spatial)`` to coordinates ``(B, K, ndim)`` with :func:`soft_argmax`."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = float(beta)

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        return soft_argmax(heatmaps, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def decode_heatmaps(
    heatmaps: torch.Tensor, method: str = "quadratic", window: int = 5, beta: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode landmark heatmaps into coordinates and confidences.

    Args:
        heatmaps: ``(B, K, *spatial)`` with 2 or 3 spatial dims.
        method: ``"argmax"`` (integer peak), ``"quadratic"`` (argmax refined per axis by a parabola through the
            peak and its two neighbours, fitted to ``log(heatmap)`` where positive; within +-0.5 px),
            ``"local_soft_argmax"`` (argmax refined per axis by the centroid of a ``window``-wide cube around it,
            weights = heatmap profile minus its minimum in the cube, clipped at 0; no softmax, ``beta`` unused),
            ``"local_softmax"`` (Kim et al. 2022: argmax plus the expected offset under ``softmax(beta * patch)``
            over a ``window``-wide cube around it, zero-padded outside the heatmap; differentiable through the
            patch values; meant for heatmaps in [0, 1]) or ``"soft_argmax"`` (global and differentiable,
            :func:`soft_argmax` with ``beta``).
        window: odd cube width in pixels for ``"local_soft_argmax"`` and ``"local_softmax"``. For
            ``"local_soft_argmax"`` with the default 5 the bias on a Gaussian peak stays below 0.09 px whatever its
            sigma (wider windows shrink it further); near a border the cube shrinks to stay symmetric (less
            accurate one pixel in; the border pixel itself is not refined). ``"local_softmax"`` keeps the full cube
            (the background, and zero padding at a border, pull towards the integer peak).
        beta: inverse temperature for ``"soft_argmax"`` (``None``: 1) and ``"local_softmax"`` (``None``: 10, the
            official value).

    Returns:
        ``(coords, confidence)``: coords ``(B, K, ndim)`` in pixels, index order of the spatial dims (``(x, y)``
        for MONAI ``(C, W, H)`` images), pixel centres at integers; confidence ``(B, K)`` is the heatmap value at
        the integer peak.
    """
    heatmaps = _check_heatmaps(heatmaps)
    if method not in DECODING_METHODS:
        raise ValueError(f"unknown decoding method {method!r}, expected one of {DECODING_METHODS}.")
    b, k, *spatial_list = heatmaps.shape
    spatial = tuple(spatial_list)
    flat = heatmaps.reshape(b, k, -1)
    with torch.no_grad():
        index, peak, confidence = _argmax(flat.detach(), spatial)
    if method == "soft_argmax":
        return soft_argmax(heatmaps, 1.0 if beta is None else float(beta)), confidence
    coords = peak.to(heatmaps.dtype)
    if method == "quadratic":
        coords = coords + _quadratic_offsets(flat, index, peak, spatial)
    elif method == "local_soft_argmax":
        coords = coords + _local_soft_argmax_offsets(flat, index, peak, spatial, window)
    elif method == "local_softmax":
        coords = coords + _local_softmax_offsets(flat, peak, spatial, window, 10.0 if beta is None else float(beta))
    return coords, confidence
