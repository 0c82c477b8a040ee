"""Morphology-aware loss (Kim et al., "Morphology-Aware Interactive Keypoint Estimation", MICCAI 2022).

For configured landmark pairs ``(i, j)`` (on a spine: the corners of one vertebra and of neighbouring vertebrae),
the predicted coordinates ``p`` must reproduce the ground-truth shape ``g``:

* distance term: ``| ||p_j - p_i|| - ||g_j - g_i|| |`` (L1, in heatmap pixels);
* direction term: ``1 - cos(p_j - p_i, g_j - g_i)``.

Each term is averaged over the pairs whose two ground-truth landmarks exist (``NaN`` = missing) and over the batch.
The predicted coordinates come from the heatmaps through a differentiable soft-argmax
(:func:`heatmap_coordinates`), so the terms shape the heatmaps. :class:`MorphologyAwareHeatmapLoss` adds them,
weighted by ``lambda_distance`` and ``lambda_direction`` (the paper: 0.01 each), to the heatmap BCE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_ext.decoding import decode_heatmaps, soft_argmax

__all__ = ["vertebra_pairs", "group_pairs", "heatmap_coordinates", "MorphologyAwareLoss", "MorphologyAwareHeatmapLoss"]

COORDINATE_METHODS = ("local_soft_argmax", "soft_argmax")


def vertebra_pairs(num_landmarks: int, corners_per_vertebra: int = 4, neighbours: int = 1) -> list[list[int]]:
    """Landmark pairs of a spine annotated with ``corners_per_vertebra`` corners per vertebra, top to bottom.

    Every pair of corners of the same vertebra, and every pair (corner of vertebra ``v``, corner of vertebra ``w``)
    with ``0 < w - v <= neighbours``. For 17 vertebrae x 4 corners and ``neighbours=1``: 17 x 6 + 16 x 16 = 358 pairs.
    """
    if corners_per_vertebra < 2 or num_landmarks % corners_per_vertebra:
        raise ValueError(
            f"vertebra_pairs: {num_landmarks} landmarks are not a whole number of vertebrae of {corners_per_vertebra} corners."
        )
    n_vert = num_landmarks // corners_per_vertebra
    c = corners_per_vertebra
    pairs = []
    for v in range(n_vert):
        pairs += [[v * c + a, v * c + b] for a in range(c) for b in range(a + 1, c)]
        for w in range(v + 1, min(n_vert, v + neighbours + 1)):
            pairs += [[v * c + a, w * c + b] for a in range(c) for b in range(c)]
    return pairs


def group_pairs(groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """Every pair of landmarks within each group (e.g. the MCP, PIP, DIP and tip of one digit of a hand), in
    group order: ``[[g[a], g[b]] for a < b]`` per group. Groups of 4 give 6 pairs each."""
    pairs = []
    for group in groups:
        g = [int(i) for i in group]
        if len(set(g)) != len(g):
            raise ValueError(f"group_pairs: a group repeats a landmark: {g}")
        pairs += [[g[a], g[b]] for a in range(len(g)) for b in range(a + 1, len(g))]
    return pairs


def heatmap_coordinates(
    heatmaps: torch.Tensor, method: str = "local_soft_argmax", window: int = 9, beta: float = 1.0
) -> torch.Tensor:
    """Differentiable coordinates ``(B, K, 2)`` (heatmap pixels, spatial-dim order) of heatmaps ``(B, K, W, H)``.

    ``"local_soft_argmax"``: the integer argmax (no gradient) refined by the centroid of the heatmap in a
    ``window``-wide patch around it (:func:`monai_ext.decoding.decode_heatmaps`): differentiable through the patch
    values, insensitive to the background far from the peak. ``"soft_argmax"``: the global expectation under
    ``softmax(beta * heatmaps)`` (pass logits).
    """
    if method == "local_soft_argmax":
        return decode_heatmaps(heatmaps, method="local_soft_argmax", window=window)[0]
    if method == "soft_argmax":
        return soft_argmax(heatmaps, beta)
    raise ValueError(f"heatmap_coordinates: method must be one of {COORDINATE_METHODS}, got {method!r}.")


def _pairs_tensor(pairs: Sequence[Sequence[int]]) -> torch.Tensor:
    t = torch.as_tensor([[int(i), int(j)] for i, j in pairs], dtype=torch.long).reshape(-1, 2)
    if t.numel() == 0:
        raise ValueError("MorphologyAwareLoss: no landmark pairs given.")
    if bool((t[:, 0] == t[:, 1]).any()) or bool((t < 0).any()):
        raise ValueError("MorphologyAwareLoss: pairs must be two different, non-negative landmark indices.")
    return t


class MorphologyAwareLoss(nn.Module):
    """Inter-landmark distance (L1) and direction (1 - cosine) losses between predicted and true landmarks.

    Args:
        pairs: ``[[i, j], ...]`` landmark index pairs (e.g. :func:`vertebra_pairs`).
        eps: vectors shorter than this (pixels) give no direction term.

    ``forward(pred, target)`` with ``(B, K, D)`` coordinates (``NaN`` in ``target`` = missing) returns the pair
    ``(distance_loss, direction_loss)`` of scalars; a pair with a missing ground-truth landmark is masked, and a
    batch without any valid pair gives zeros (still connected to ``pred`` for autograd).
    """

    def __init__(self, pairs: Sequence[Sequence[int]], eps: float = 1e-6) -> None:
        super().__init__()
        self.register_buffer("pairs", _pairs_tensor(pairs), persistent=False)
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if pred.ndim != 3 or pred.shape != target.shape:
            raise ValueError(
                f"MorphologyAwareLoss: pred and target must both be (B, K, D), got {tuple(pred.shape)} and {tuple(target.shape)}."
            )
        k = pred.shape[1]
        if int(self.pairs.max()) >= k:
            raise ValueError(f"MorphologyAwareLoss: pair index {int(self.pairs.max())} out of range for {k} landmarks.")
        target = target.to(pred.dtype)
        i, j = self.pairs[:, 0].to(pred.device), self.pairs[:, 1].to(pred.device)
        valid = torch.isfinite(target).all(-1)  # (B, K)
        pair_ok = valid[:, i] & valid[:, j]  # (B, P)
        safe_t = torch.where(valid.unsqueeze(-1), target, torch.zeros_like(target))
        vp = pred[:, j] - pred[:, i]  # (B, P, D)
        vt = safe_t[:, j] - safe_t[:, i]
        dp = vp.norm(dim=-1)
        dt = vt.norm(dim=-1)
        n_pairs = pair_ok.sum().clamp_min(1).to(pred.dtype)
        distance = torch.where(pair_ok, (dp - dt).abs(), torch.zeros_like(dp)).sum() / n_pairs
        dir_ok = pair_ok & (dt > self.eps)
        cos = F.cosine_similarity(vp, vt, dim=-1, eps=self.eps)
        direction = torch.where(dir_ok, 1.0 - cos, torch.zeros_like(cos)).sum() / dir_ok.sum().clamp_min(1).to(pred.dtype)
        zero = pred.sum() * 0.0
        return distance + zero, direction + zero


class MorphologyAwareHeatmapLoss(nn.Module):
    """Heatmap BCE (with logits) plus the morphology-aware terms on soft-argmax coordinates.

    ``loss = BCE(logits, heatmaps)`` (mean over the pixels of visible landmarks) ``+ lambda_distance * L_dist +
    lambda_direction * L_dir`` (:class:`MorphologyAwareLoss` on coordinates from :func:`heatmap_coordinates`, in
    heatmap pixels).

    Args:
        pairs: landmark pairs of the morphology terms (``None`` or empty: BCE only).
        lambda_distance, lambda_direction: weights of the two terms (Kim et al.: 0.01 each).
        coordinate_method: ``"soft_argmax"`` (default; global soft-argmax of ``coordinate_beta * logits``: smooth,
            bounded gradients even while the heatmaps are still flat) or ``"local_soft_argmax"`` (centroid of the
            sigmoid heatmap in a ``coordinate_window`` patch around the argmax: the decoder's estimate, but its
            gradient grows without bound on a flat heatmap).
        pos_weight: BCE weight of the target mass (``1 + (pos_weight - 1) * target`` per pixel); 1 = plain BCE.

    The morphology terms pull on coordinates; on heatmaps without peaks (from-scratch training) they keep peaks from
    forming, so they are usually switched on after a warm-up (:class:`~monai_ext.handlers.interactive.MorphologyWarmup`
    scales ``lambda_*``).

    ``forward(logits, target)`` takes ``target = (heatmaps (B, K, *S), mask (B, K), landmarks (B, K, 2))`` as built
    by :class:`~monai_ext.engines.interactive.PrepareInteractiveBatch` (landmarks in heatmap pixels), or a dict with
    keys ``heatmap``, ``mask``, ``landmarks``. The last computed terms are kept in :attr:`last_terms` for logging.
    """

    def __init__(
        self,
        pairs: Sequence[Sequence[int]] | None = None,
        lambda_distance: float = 0.01,
        lambda_direction: float = 0.01,
        coordinate_method: str = "soft_argmax",
        coordinate_window: int = 9,
        coordinate_beta: float = 1.0,
        pos_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if coordinate_method not in COORDINATE_METHODS:
            raise ValueError(f"MorphologyAwareHeatmapLoss: coordinate_method must be one of {COORDINATE_METHODS}.")
        self.morphology = MorphologyAwareLoss(pairs) if pairs else None
        self.lambda_distance = float(lambda_distance)
        self.lambda_direction = float(lambda_direction)
        self.coordinate_method = coordinate_method
        self.coordinate_window = int(coordinate_window)
        self.coordinate_beta = float(coordinate_beta)
        self.pos_weight = float(pos_weight)
        self.last_terms: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, target) -> torch.Tensor:
        if isinstance(target, dict):
            heatmaps, mask, landmarks = target["heatmap"], target["mask"], target.get("landmarks")
        else:
            heatmaps, mask, landmarks = target
        if logits.shape != heatmaps.shape:
            raise ValueError(
                f"MorphologyAwareHeatmapLoss: logits {tuple(logits.shape)} and heatmaps {tuple(heatmaps.shape)} differ."
            )
        b, k = logits.shape[:2]
        vis = (mask > 0).to(logits.device).view(b, k, *([1] * (logits.ndim - 2)))
        heatmaps = heatmaps.to(logits.dtype)
        weight = 1.0 + (self.pos_weight - 1.0) * heatmaps if self.pos_weight != 1.0 else None
        per_pixel = F.binary_cross_entropy_with_logits(logits, heatmaps, weight=weight, reduction="none")
        n_pix = vis.sum().clamp_min(1) * per_pixel[0, 0].numel()
        bce = torch.where(vis, per_pixel, torch.zeros_like(per_pixel)).sum() / n_pix
        total = bce
        self.last_terms = {"bce": float(bce.detach())}
        if self.morphology is not None and landmarks is not None and (self.lambda_distance or self.lambda_direction):
            source = torch.sigmoid(logits) if self.coordinate_method == "local_soft_argmax" else logits
            coords = heatmap_coordinates(source, self.coordinate_method, self.coordinate_window, self.coordinate_beta)
            gt = landmarks.to(device=logits.device, dtype=logits.dtype)
            gt = torch.where((mask > 0).to(logits.device).unsqueeze(-1), gt, torch.full_like(gt, float("nan")))
            dist, direction = self.morphology(coords, gt)
            total = total + self.lambda_distance * dist + self.lambda_direction * direction
            self.last_terms.update(distance=float(dist.detach()), direction=float(direction.detach()))
        return total
