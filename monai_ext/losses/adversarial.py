"""Adversarial PoseNet losses (Chen et al., "Adversarial PoseNet", ICCV 2017): discriminator targets and masked BCE.

The discriminators ``P(heatmaps, image)`` and ``C(heatmaps)`` output one logit per landmark ``(B, K)``. Real
(ground-truth) heatmaps are labelled 1; generated heatmaps get per-landmark targets that depend on the quality of the
prediction (Chen et al., Sec. 3):

* pose discriminator: ``p_fake[b, k] = 1`` when the argmax of generated heatmap ``k`` lies within ``threshold`` input
  pixels of the ground-truth landmark, else 0 (:func:`pose_fake_targets`);
* confidence discriminator: ``c_fake[b, k] = 1`` when the peak value (the confidence) of generated heatmap ``k`` is
  within ``peak_tolerance`` (relative) of the ground-truth heatmap's peak, else 0 (:func:`confidence_fake_targets`).
  ``C`` does not see the image, so judging the *location* is left to ``P``; an optional ``threshold`` adds the
  location test to ``c_fake`` as well.

Every target and loss takes a visibility mask ``(B, K)`` (0 for a missing landmark): masked landmarks get target 0
and are excluded from :class:`MaskedBCEWithLogits`. Coordinates follow :mod:`monai_ext` (spatial dim 0 is x, pixel
centres at integers); heatmap index ``h`` of a network with output stride ``s`` is input pixel ``(h + 0.5) * s - 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_ext.decoding import decode_heatmaps

__all__ = ["heatmap_peaks", "pose_fake_targets", "confidence_fake_targets", "MaskedBCEWithLogits"]


def _stride_tensor(output_stride: float | Sequence[float], ndim: int, ref: torch.Tensor) -> torch.Tensor:
    stride = torch.as_tensor(output_stride, dtype=torch.float32, device=ref.device).flatten()
    if stride.numel() == 1:
        stride = stride.repeat(ndim)
    if stride.numel() != ndim or bool((stride <= 0).any()):
        raise ValueError(f"output_stride must be one positive value or {ndim} of them, got {output_stride}.")
    return stride


def heatmap_peaks(
    heatmaps: torch.Tensor, output_stride: float | Sequence[float] = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer argmax of each channel, in input pixels, and the peak value.

    Args:
        heatmaps: ``(B, K, *S)``, 2 or 3 spatial dims.
        output_stride: input pixels per heatmap pixel (one value or one per spatial dim).

    Returns:
        ``(points (B, K, D) float32 in input pixels, peak values (B, K))``; heatmap index ``h`` maps to
        ``(h + 0.5) * output_stride - 0.5``.
    """
    coords, peak = decode_heatmaps(heatmaps.detach().float(), method="argmax")
    stride = _stride_tensor(output_stride, coords.shape[-1], coords)
    return (coords + 0.5) * stride - 0.5, peak


def _visibility(target: torch.Tensor, mask: torch.Tensor | None, is_points: bool) -> torch.Tensor:
    """``(B, K)`` bool: given mask > 0, and target present (finite points / non-empty heatmap channel)."""
    present = torch.isfinite(target).all(-1) if is_points else target.detach().flatten(2).amax(2) > 0
    if mask is None:
        return present
    if mask.shape != present.shape:
        raise ValueError(f"mask must be (B, K) = {tuple(present.shape)}, got {tuple(mask.shape)}.")
    return present & (mask.to(present.device) > 0)


def _target_points(
    pred_heatmaps: torch.Tensor, target: torch.Tensor, output_stride: float | Sequence[float], name: str
) -> tuple[torch.Tensor, bool]:
    """Ground-truth points in input pixels, from points ``(B, K, D)`` or heatmaps shaped like the prediction."""
    b, k = pred_heatmaps.shape[:2]
    d = pred_heatmaps.ndim - 2
    if target.shape == (b, k, d):
        return target.detach().to(device=pred_heatmaps.device, dtype=torch.float32), True
    if target.shape == pred_heatmaps.shape:
        return heatmap_peaks(target, output_stride)[0], False
    raise ValueError(
        f"{name}: target must be points (B, K, D) = ({b}, {k}, {d}) in input pixels or heatmaps shaped like the "
        f"prediction {tuple(pred_heatmaps.shape)}, got {tuple(target.shape)}."
    )


def pose_fake_targets(
    pred_heatmaps: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    threshold: float = 4.0,
    output_stride: float | Sequence[float] = 1.0,
) -> torch.Tensor:
    """Pose discriminator targets for generated heatmaps (Chen et al.'s ``p_fake``).

    ``p_fake[b, k] = 1`` if ``|| argmax(pred[b, k]) - gt[b, k] || <= threshold`` (input pixels), else 0; 0 for a
    masked or missing landmark.

    Args:
        pred_heatmaps: generated heatmaps ``(B, K, *S)`` at ``1 / output_stride`` of the input resolution.
        target: ground-truth points ``(B, K, D)`` in input pixels (``NaN`` = missing), or ground-truth heatmaps
            ``(B, K, *S)`` at the prediction's resolution (argmax decoded; an all-zero channel = missing).
        mask: visibility ``(B, K)``; ``None`` = derived from ``target``.
        threshold: distance in input pixels.
        output_stride: input pixels per heatmap pixel.

    Returns:
        ``(B, K)`` float tensor of 0/1 on the prediction's device, no gradient.
    """
    if threshold < 0:
        raise ValueError(f"pose_fake_targets: threshold must be >= 0, got {threshold}.")
    gt, is_points = _target_points(pred_heatmaps, target, output_stride, "pose_fake_targets")
    pred, _ = heatmap_peaks(pred_heatmaps, output_stride)
    visible = _visibility(target, mask, is_points).to(pred.device)
    dist = torch.linalg.norm(pred - torch.nan_to_num(gt), dim=-1)
    return ((dist <= threshold) & visible).float()


def confidence_fake_targets(
    pred_heatmaps: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    peak_tolerance: float = 0.5,
    threshold: float | None = None,
    output_stride: float | Sequence[float] = 1.0,
    target_peak: float | None = None,
) -> torch.Tensor:
    """Confidence discriminator targets for generated heatmaps (Chen et al.'s ``c_fake``).

    ``c_fake[b, k] = 1`` if ``|max(pred[b, k]) - max(gt[b, k])| <= peak_tolerance * max(gt[b, k])`` (the generated
    heatmap is as confident as the ground truth) and, when ``threshold`` is given, the argmax is also within
    ``threshold`` input pixels of the ground truth; 0 otherwise and for masked or missing landmarks.

    Args:
        pred_heatmaps: generated heatmaps ``(B, K, *S)``.
        target: ground-truth heatmaps ``(B, K, *S)`` at the prediction's resolution, or points ``(B, K, D)`` in
            input pixels together with ``target_peak``.
        mask: visibility ``(B, K)``; ``None`` = derived from ``target``.
        peak_tolerance: relative tolerance on the peak value.
        threshold: optional location test, input pixels.
        output_stride: input pixels per heatmap pixel (used by the location test).
        target_peak: the ground-truth peak value when ``target`` is points (e.g. 1 for peak-1 Gaussians).

    Returns:
        ``(B, K)`` float tensor of 0/1, no gradient.
    """
    if peak_tolerance < 0:
        raise ValueError(f"confidence_fake_targets: peak_tolerance must be >= 0, got {peak_tolerance}.")
    gt, is_points = _target_points(pred_heatmaps, target, output_stride, "confidence_fake_targets")
    pred, pred_peak = heatmap_peaks(pred_heatmaps, output_stride)
    if is_points:
        if target_peak is None:
            raise ValueError("confidence_fake_targets: target_peak is required when target is points.")
        gt_peak = torch.full_like(pred_peak, float(target_peak))
    else:
        gt_peak = target.detach().float().flatten(2).amax(2).to(pred_peak.device)
    ok = ((pred_peak - gt_peak).abs() <= peak_tolerance * gt_peak.abs()) & _visibility(target, mask, is_points).to(
        pred.device
    )
    if threshold is not None:
        ok = ok & (torch.linalg.norm(pred - torch.nan_to_num(gt), dim=-1) <= threshold)
    return ok.float()


class MaskedBCEWithLogits(nn.Module):
    """Binary cross-entropy on logits ``(B, K)``, averaged over the visible landmarks.

    ``loss = sum(m * BCE(logits, target)) / max(sum(m), 1)`` computed in float32; with no visible landmark the loss
    is 0 (and still part of the graph, so ``backward`` works).
    """

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor | float, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            logits: ``(B, K)``.
            target: ``(B, K)`` in [0, 1], or a float for every landmark (1.0 = real).
            mask: visibility ``(B, K)``; ``None`` = all visible.
        """
        logits = logits.float()
        if isinstance(target, torch.Tensor):
            if target.shape != logits.shape:
                raise ValueError(
                    f"MaskedBCEWithLogits: target shape {tuple(target.shape)} != logits shape {tuple(logits.shape)}."
                )
            target = target.to(device=logits.device, dtype=logits.dtype)
        else:
            target = torch.full_like(logits, float(target))
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if mask is None:
            return bce.mean()
        if mask.shape != logits.shape:
            raise ValueError(f"MaskedBCEWithLogits: mask must be {tuple(logits.shape)}, got {tuple(mask.shape)}.")
        m = (mask.to(logits.device) > 0).to(logits.dtype)
        return (bce * m).sum() / m.sum().clamp_min(1.0)
