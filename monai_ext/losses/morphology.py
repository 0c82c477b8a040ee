"""Morphology-aware loss (Kim et al., "Morphology-Aware Interactive Keypoint Estimation", MICCAI 2022).

Following the official code (github.com/seharanul17/interactive_keypoint_estimation, ``misc/loss.py`` and
``misc/heatmap_maker.py``), the predicted coordinates ``p`` must reproduce the ground-truth shape ``g``, both divided by
the heatmap size per axis (coordinates in [0, 1]):

* distance term, on landmark pairs ``(i, j)``: ``| ||p_j - p_i|| - ||g_j - g_i|| |`` (L1);
* angle term, on landmark triplets ``(x, y, z)`` with vertex ``y``: ``1 - cos(delta_p - delta_g)``, ``delta`` the
  angle from ``x - y`` to ``z - y`` (``CosineEmbeddingLoss`` with target 1 on ``(cos delta, sin delta)``). Without
  triplets, the older pair-direction term ``1 - cos(p_j - p_i, g_j - g_i)`` is used instead.

Each term is averaged over the pairs (triplets) whose ground-truth landmarks all exist (``NaN`` = missing) and over the
batch. The predicted coordinates come from the heatmaps through a differentiable decoder (:func:`heatmap_coordinates`;
official: the argmax refined by ``softmax(10 * patch)`` in a 15 x 15 patch), so the terms shape the heatmaps.
:class:`MorphologyAwareHeatmapLoss` adds them, weighted by ``lambda_distance`` and ``lambda_direction`` (official: 0.01
each), to the heatmap BCE. The official spine pairs and triplets are loaded with :func:`load_morphology`.
"""

from __future__ import annotations

from collections.abc import Sequence

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_ext.decoding import decode_heatmaps, soft_argmax

__all__ = [
    "vertebra_pairs",
    "group_pairs",
    "group_triplets",
    "load_morphology",
    "aasce_morphology",
    "heatmap_coordinates",
    "MorphologyAwareLoss",
    "MorphologyAwareHeatmapLoss",
]

COORDINATE_METHODS = ("local_softmax", "local_soft_argmax", "soft_argmax")


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



def group_triplets(groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """Consecutive landmark triplets within each group, ``[[g[a], g[a + 1], g[a + 2]], ...]``: the angle at each
    inner point of a chain (e.g. at the PIP and DIP of a digit: MCP-PIP-DIP, PIP-DIP-tip). A group of ``n`` points
    gives ``n - 2`` triplets (none below 3)."""
    triplets = []
    for group in groups:
        g = [int(i) for i in group]
        if len(set(g)) != len(g):
            raise ValueError(f"group_triplets: a group repeats a landmark: {g}")
        triplets += [[g[a], g[a + 1], g[a + 2]] for a in range(len(g) - 2)]
    return triplets


def _index_lists(value, size: int, name: str, source: str, num_landmarks: int | None) -> list[list[int]]:
    """``value`` checked as a non-empty list of ``size`` distinct non-negative integer landmark indices per entry."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"load_morphology: {source}: {name!r} must be a non-empty list of {size}-index lists.")
    out = []
    for entry in value:
        if (
            not isinstance(entry, list)
            or len(entry) != size
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in entry)
        ):
            raise ValueError(f"load_morphology: {source}: {name!r} entry {entry!r} is not {size} integer indices.")
        if min(entry) < 0 or len(set(entry)) != size:
            raise ValueError(f"load_morphology: {source}: {name!r} entry {entry} needs {size} different indices >= 0.")
        if num_landmarks is not None and max(entry) >= num_landmarks:
            raise ValueError(
                f"load_morphology: {source}: {name!r} entry {entry} is out of range for {num_landmarks} landmarks."
            )
        out.append(list(entry))
    return out


def load_morphology(path: str | Path) -> tuple[list[list[int]], list[list[int]]]:
    """``(pairs, triplets)`` of the morphology-aware loss from a JSON file.

    The file is ``{"landmarks": K, "pairs": [[i, j], ...], "triplets": [[x, y, z], ...], ...}`` (``landmarks``
    optional: the bound of the indices), e.g. ``monai_ext/losses/aasce_morphology.json`` (the official spine pairs and
    triplets of Kim et al., 68 landmarks: :func:`aasce_morphology`), or the official ``[pairs, triplets]`` list. Raises
    ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing, malformed or holds invalid indices.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_morphology: morphology file {str(path)!r} not found.")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"load_morphology: {str(path)!r} is not valid JSON: {e}") from e
    if isinstance(data, list) and len(data) == 2:
        data = {"pairs": data[0], "triplets": data[1]}
    if not isinstance(data, dict) or "pairs" not in data or "triplets" not in data:
        raise ValueError(f"load_morphology: {str(path)!r} must hold an object with 'pairs' and 'triplets'.")
    k = data.get("landmarks")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(f"load_morphology: {str(path)!r}: 'landmarks' must be a positive integer, got {k!r}.")
    pairs = _index_lists(data["pairs"], 2, "pairs", repr(str(path)), k)
    triplets = _index_lists(data["triplets"], 3, "triplets", repr(str(path)), k)
    return pairs, triplets


AASCE_MORPHOLOGY = Path(__file__).with_name("aasce_morphology.json")


def aasce_morphology() -> tuple[list[list[int]], list[list[int]]]:
    """The official pairs (70) and triplets (70) of Kim et al. for the AASCE spine (68 landmarks: 4 corners per
    vertebra, top-left, top-right, bottom-left, bottom-right, T1..L5), shipped with the package
    (``morph_pairs/dataset16/dataset16.json`` of the official code)."""
    return load_morphology(AASCE_MORPHOLOGY)


def heatmap_coordinates(
    heatmaps: torch.Tensor, method: str = "local_soft_argmax", window: int = 9, beta: float | None = None
) -> torch.Tensor:
    """Differentiable coordinates ``(B, K, D)`` (heatmap pixels, spatial-dim order) of heatmaps ``(B, K, *S)``.

    ``"local_softmax"`` (Kim et al.; pass the sigmoid heatmaps): the integer argmax (no gradient) plus the expected
    offset under ``softmax(beta * patch)`` (``beta`` ``None``: 10) in a ``window``-wide patch around it, zero-padded
    outside the heatmap. ``"local_soft_argmax"``: the argmax refined by the centroid of the floor-subtracted heatmap in
    the patch (:func:`monai_ext.decoding.decode_heatmaps`). Both are differentiable through the patch values only.
    ``"soft_argmax"``: the global expectation under ``softmax(beta * heatmaps)`` (``beta`` ``None``: 1; pass logits).
    """
    if method in ("local_softmax", "local_soft_argmax"):
        return decode_heatmaps(heatmaps, method=method, window=window, beta=beta)[0]
    if method == "soft_argmax":
        return soft_argmax(heatmaps, 1.0 if beta is None else float(beta))
    raise ValueError(f"heatmap_coordinates: method must be one of {COORDINATE_METHODS}, got {method!r}.")


def _index_tensor(entries: Sequence[Sequence[int]], size: int, name: str) -> torch.Tensor:
    """``(N, size)`` long tensor of landmark index tuples, each of ``size`` different non-negative indices."""
    rows = [[int(i) for i in e] for e in entries]
    if not rows:
        raise ValueError(f"MorphologyAwareLoss: no landmark {name} given.")
    if any(len(r) != size or len(set(r)) != size or min(r) < 0 for r in rows):
        raise ValueError(f"MorphologyAwareLoss: {name} must be {size} different, non-negative landmark indices.")
    return torch.as_tensor(rows, dtype=torch.long).reshape(-1, size)


def _angle_vectors(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """``(cos delta, sin delta)`` ``(..., 2)`` of the angle ``delta`` from arm ``a1 = x - y`` to arm ``a2 = z - y``
    (vertex ``y``), each arm's direction ``atan2(a[..., 0], a[..., 1] + 1e-8)`` as in the official ``get_angle``."""
    delta = torch.atan2(a2[..., 0], a2[..., 1] + 1e-8) - torch.atan2(a1[..., 0], a1[..., 1] + 1e-8)
    return torch.stack((torch.cos(delta), torch.sin(delta)), dim=-1)


class MorphologyAwareLoss(nn.Module):
    """Inter-landmark distance (L1) and angle (1 - cosine) losses between predicted and true landmarks.

    Args:
        pairs: ``[[i, j], ...]`` landmark pairs of the distance term (e.g. :func:`load_morphology`,
            :func:`vertebra_pairs`).
        triplets: ``[[x, y, z], ...]`` landmark triplets (vertex ``y``) of the three-point angle term (official, 2D
            only); ``None``: the direction term is ``1 - cos(p_j - p_i, g_j - g_i)`` on ``pairs`` (backward compatible).
        normalize: divide the coordinates by ``spatial_shape`` per axis when ``forward`` gets it (official).
        eps: ground-truth vectors (arms of an angle) shorter than this (coordinate units) give no direction (angle)
            term; a predicted arm shorter than this gives no gradient to its angle.

    ``forward(pred, target, spatial_shape=None)`` with ``(B, K, D)`` coordinates (pixels, ``NaN`` in ``target`` =
    missing) and the ``D`` sizes of the image the coordinates live in returns ``(distance_loss, direction_loss)`` of
    scalars; a pair or triplet with a missing ground-truth landmark is masked, and a batch without any valid one gives
    zeros (still connected to ``pred`` for autograd).
    """

    def __init__(
        self,
        pairs: Sequence[Sequence[int]],
        triplets: Sequence[Sequence[int]] | None = None,
        normalize: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.register_buffer("pairs", _index_tensor(pairs, 2, "pairs"), persistent=False)
        self.triplets: torch.Tensor | None
        if triplets is None:
            self.triplets = None
        else:
            self.register_buffer("triplets", _index_tensor(triplets, 3, "triplets"), persistent=False)
        self.normalize = bool(normalize)
        self.eps = float(eps)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        spatial_shape: Sequence[int] | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if pred.ndim != 3 or pred.shape != target.shape:
            raise ValueError(
                f"MorphologyAwareLoss: pred and target must both be (B, K, D), got {tuple(pred.shape)} and {tuple(target.shape)}."
            )
        k, d = pred.shape[1:]
        for name, idx in (("pair", self.pairs), ("triplet", self.triplets)):
            if idx is not None and int(idx.max()) >= k:
                raise ValueError(f"MorphologyAwareLoss: {name} index {int(idx.max())} out of range for {k} landmarks.")
        if self.triplets is not None and d != 2:
            raise ValueError(f"MorphologyAwareLoss: the three-point angle term needs 2D coordinates, got D={d}.")
        target = target.to(pred.dtype)
        if self.normalize and spatial_shape is not None:
            size = torch.as_tensor(spatial_shape, dtype=pred.dtype, device=pred.device).reshape(-1)
            if size.numel() != d or bool((size <= 0).any()):
                raise ValueError(f"MorphologyAwareLoss: spatial_shape must be {d} positive sizes, got {spatial_shape}.")
            pred, target = pred / size, target / size
        valid = torch.isfinite(target).all(-1)  # (B, K)
        safe_t = torch.where(valid.unsqueeze(-1), target, torch.zeros_like(target))
        zero = pred.sum() * 0.0

        def masked_mean(values: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
            return torch.where(ok, values, torch.zeros_like(values)).sum() / ok.sum().clamp_min(1).to(pred.dtype)

        i, j = self.pairs[:, 0].to(pred.device), self.pairs[:, 1].to(pred.device)
        pair_ok = valid[:, i] & valid[:, j]  # (B, P)
        vp = pred[:, j] - pred[:, i]  # (B, P, D)
        vt = safe_t[:, j] - safe_t[:, i]
        dt = vt.norm(dim=-1)
        distance = masked_mean((vp.norm(dim=-1) - dt).abs(), pair_ok)
        if self.triplets is None:
            dir_ok = pair_ok & (dt > self.eps)
            cos = F.cosine_similarity(vp, vt, dim=-1, eps=self.eps)
            return distance + zero, masked_mean(1.0 - cos, dir_ok) + zero
        x, y, z = (self.triplets[:, c].to(pred.device) for c in range(3))
        arms_t = (safe_t[:, x] - safe_t[:, y], safe_t[:, z] - safe_t[:, y])  # (B, T, 2) each
        ok = valid[:, x] & valid[:, y] & valid[:, z]
        ok = ok & (arms_t[0].norm(dim=-1) > self.eps) & (arms_t[1].norm(dim=-1) > self.eps)
        # a (near-)zero predicted arm has no direction and an exploding atan2 gradient: held constant (no gradient)
        unit = torch.tensor([0.0, 1.0], dtype=pred.dtype, device=pred.device)
        arms_p = [pred[:, x] - pred[:, y], pred[:, z] - pred[:, y]]
        arms_p = [torch.where(a.norm(dim=-1, keepdim=True) > self.eps, a, unit) for a in arms_p]
        angle_p = _angle_vectors(*arms_p)  # (B, T, 2)
        with torch.no_grad():
            angle_t = _angle_vectors(*arms_t)
        angle = masked_mean(1.0 - (angle_p * angle_t).sum(-1), ok)
        return distance + zero, angle + zero


class MorphologyAwareHeatmapLoss(nn.Module):
    """Heatmap BCE (with logits) plus the morphology-aware terms on coordinates decoded from the predicted heatmaps.

    ``loss = BCE(logits, heatmaps)`` (mean over the pixels of visible landmarks) ``+ lambda_distance * L_dist +
    lambda_direction * L_dir`` (:class:`MorphologyAwareLoss` on coordinates from :func:`heatmap_coordinates`, divided
    by the heatmap size per axis when ``normalize_coordinates``, else in heatmap pixels).

    Args:
        pairs: landmark pairs of the distance term (``None`` or empty: BCE only).
        triplets: landmark triplets (vertex in the middle) of the three-point angle term (official); ``None``: the
            direction term is the pair-direction ``1 - cos`` on ``pairs``.
        lambda_distance, lambda_direction: weights of the distance and the direction (angle) terms (official: 0.01).
        coordinate_method: ``"local_softmax"`` (default, official: argmax of the sigmoid heatmap refined by
            ``softmax(coordinate_beta * patch)`` in a ``coordinate_window`` patch), ``"local_soft_argmax"`` (centroid
            of the floor-subtracted sigmoid heatmap in the patch) or ``"soft_argmax"`` (global soft-argmax of
            ``coordinate_beta * logits``: smooth, bounded gradients even while the heatmaps are still flat).
        coordinate_window: odd patch width in heatmap pixels (official: 15).
        coordinate_beta: softmax inverse temperature; ``None``: 10 for ``"local_softmax"`` (official), 1 for
            ``"soft_argmax"``.
        pos_weight: BCE weight of the target mass (``1 + (pos_weight - 1) * target`` per pixel); 1 = plain BCE.
        normalize_coordinates: divide coordinates by the heatmap size per axis before the terms (official).

    With normalised coordinates the terms apply from the first step, as in the official code: one synthetic batch,
    quick network, 150 Adam steps reach a median error of 2.7 px with them against 4.2 px with the BCE alone
    (in heatmap pixels the same terms were 256-512x heavier and kept peaks from forming).

    ``forward(logits, target)`` takes ``target = (heatmaps (B, K, *S), mask (B, K), landmarks (B, K, 2))`` as built
    by :class:`~monai_ext.engines.interactive.PrepareInteractiveBatch` (landmarks in heatmap pixels), or a dict with
    keys ``heatmap``, ``mask``, ``landmarks``. The last computed terms (``bce``, ``distance``, ``direction``) are kept
    in :attr:`last_terms` for logging.
    """

    def __init__(
        self,
        pairs: Sequence[Sequence[int]] | None = None,
        triplets: Sequence[Sequence[int]] | None = None,
        lambda_distance: float = 0.01,
        lambda_direction: float = 0.01,
        coordinate_method: str = "local_softmax",
        coordinate_window: int = 15,
        coordinate_beta: float | None = None,
        pos_weight: float = 1.0,
        normalize_coordinates: bool = True,
    ) -> None:
        super().__init__()
        if coordinate_method not in COORDINATE_METHODS:
            raise ValueError(f"MorphologyAwareHeatmapLoss: coordinate_method must be one of {COORDINATE_METHODS}.")
        self.morphology = MorphologyAwareLoss(pairs, triplets, normalize=normalize_coordinates) if pairs else None
        self.lambda_distance = float(lambda_distance)
        self.lambda_direction = float(lambda_direction)
        self.coordinate_method = coordinate_method
        self.coordinate_window = int(coordinate_window)
        self.coordinate_beta = None if coordinate_beta is None else float(coordinate_beta)
        self.pos_weight = float(pos_weight)
        self.normalize_coordinates = bool(normalize_coordinates)
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
            source = logits if self.coordinate_method == "soft_argmax" else torch.sigmoid(logits)
            coords = heatmap_coordinates(source, self.coordinate_method, self.coordinate_window, self.coordinate_beta)
            gt = landmarks.to(device=logits.device, dtype=logits.dtype)
            gt = torch.where((mask > 0).to(logits.device).unsqueeze(-1), gt, torch.full_like(gt, float("nan")))
            dist, direction = self.morphology(coords, gt, spatial_shape=tuple(logits.shape[2:]))
            total = total + self.lambda_distance * dist + self.lambda_direction * direction
            self.last_terms.update(distance=float(dist.detach()), direction=float(direction.detach()))
        return total
