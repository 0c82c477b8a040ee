"""Wing loss on landmark coordinates (Feng et al., "Wing Loss for Robust Facial Landmark Localisation with
Convolutional Neural Networks", CVPR 2018), as KNEEL trains its soft-argmax hourglass (width 15, curvature 3).

For a coordinate difference ``x = input - target`` (input pixels)::

    wing(x) = w * ln(1 + |x| / eps)    if |x| < w
              |x| - C                  otherwise,   C = w - w * ln(1 + w / eps)

``C`` joins the two pieces continuously at ``|x| = w``: small errors get a log (large gradient, ``w / eps`` at 0),
large ones an L1 (robust to outliers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.utils import ensure_tuple

__all__ = ["WingLoss", "wing"]

REDUCTIONS = ("mean", "sum", "none")


def wing(diff: torch.Tensor, width: float = 15.0, curvature: float = 3.0) -> torch.Tensor:
    """Element-wise wing function of coordinate differences ``diff`` (any shape, same units as ``width``)."""
    a = diff.abs()
    c = width - width * math.log1p(width / curvature)
    return torch.where(a < width, width * torch.log1p(a / curvature), a - c)


class WingLoss(nn.Module):
    """Wing loss between predicted and target landmark coordinates, ignoring missing landmarks.

    Args:
        width: ``w``, the half-width of the log region (KNEEL: 15 input pixels).
        curvature: ``eps``, the curvature of the log region (KNEEL: 3).
        scale: divide the coordinate differences by this many pixels first (one value or one per axis), e.g. the
            network's input size: KNEEL's official code applies the wing to coordinates normalised to ``[0, 1]`` by
            the crop size, where ``|x| << width`` and the loss is in effect ``(width / eps) |x|`` (an L1). ``None``:
            input pixels.
        reduction: ``"mean"`` over the valid coordinates (every coordinate of every present landmark),
            ``"sum"``, or ``"none"`` (``(B, K, D)``, 0 where missing).

    Forward:
        input: predicted points ``(B, K, D)``.
        target: points ``(B, K, D)`` with NaN for missing landmarks, or a tuple ``(points, mask)``.
        mask: optional ``(B, K)`` visibility (1 present, 0 missing); a landmark counts only when its mask is
            non-zero *and* its target is finite. With no valid landmark in the batch the loss is 0 (with a gradient
            path, so an all-missing batch does not break the backward pass).
    """

    def __init__(
        self,
        width: float = 15.0,
        curvature: float = 3.0,
        reduction: str = "mean",
        scale: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if width <= 0 or curvature <= 0:
            raise ValueError(f"WingLoss: width and curvature must be > 0, got {width} and {curvature}.")
        if reduction not in REDUCTIONS:
            raise ValueError(f"WingLoss: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        self.width = float(width)
        self.curvature = float(curvature)
        self.reduction = reduction
        self.scale = None if scale is None else tuple(float(v) for v in ensure_tuple(scale))
        if self.scale is not None and min(self.scale) <= 0:
            raise ValueError(f"WingLoss: scale must be positive, got {scale}.")

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(target, (tuple, list)):
            if mask is not None or len(target) != 2:
                raise ValueError("WingLoss: give the mask either inside the target tuple (points, mask) or as mask=.")
            target, mask = target
        target = torch.as_tensor(target, device=input.device, dtype=input.dtype)
        if input.shape != target.shape:
            raise ValueError(f"WingLoss: input {tuple(input.shape)} and target {tuple(target.shape)} differ in shape.")
        valid = torch.isfinite(target).all(-1)
        if mask is not None:
            mask = torch.as_tensor(mask, device=input.device)
            if mask.shape != valid.shape:
                raise ValueError(f"WingLoss: mask must be {tuple(valid.shape)}, got {tuple(mask.shape)}.")
            valid = valid & (mask != 0)
        valid = valid[..., None].expand_as(input)
        diff = torch.where(valid, input - torch.nan_to_num(target), torch.zeros_like(input))
        if self.scale is not None:
            if len(self.scale) not in (1, diff.shape[-1]):
                raise ValueError(f"WingLoss: scale needs 1 or {diff.shape[-1]} values, got {self.scale}.")
            diff = diff / torch.as_tensor(self.scale, device=diff.device, dtype=diff.dtype)
        loss = torch.where(valid, wing(diff, self.width, self.curvature), torch.zeros_like(input))
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / valid.sum().clamp_min(1)
