"""Discriminators of Adversarial PoseNet (Chen et al., "Adversarial PoseNet", ICCV 2017).

* :class:`PoseDiscriminator` ``P(heatmaps, image)`` tells, per landmark, whether the heatmaps form a plausible pose
  for that image.
* :class:`ConfidenceDiscriminator` ``C(heatmaps)`` tells, per landmark, whether the heatmaps look like confident
  (ground-truth-like) predictions.

Both are convolutional encoders (stride-2 conv blocks, width doubling per stage) followed by global average pooling
and a linear layer to ``K`` outputs, so they accept any heatmap size. They return probabilities ``(B, K)`` in
``[0, 1]``, or the logits with ``return_logits=True`` (for ``BCEWithLogitsLoss``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Norm
from monai_ext.networks.base import record_arguments

__all__ = ["HeatmapEncoder", "PoseDiscriminator", "ConfidenceDiscriminator"]


class HeatmapEncoder(nn.Module):
    """Conv encoder ``(B, in_channels, *S) -> (B, out_channels)`` logits.

    A 3x3 stride-1 input conv (no normalisation, as usual for GAN discriminators), then ``depth`` stages of
    3x3 stride-2 conv-norm-LeakyReLU(0.2) with widths ``num_features * 2**i`` (capped at ``max_features``), global
    average pooling and a linear layer.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_features: int = 64,
        depth: int = 4,
        max_features: int = 512,
        norm: str | tuple | None = Norm.BATCH,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if depth < 1 or num_features < 1:
            raise ValueError(f"depth and num_features must be >= 1, got depth={depth}, num_features={num_features}.")
        act = (Act.LEAKYRELU, {"negative_slope": 0.2})
        layers: list[nn.Module] = [
            Convolution(spatial_dims, in_channels, num_features, kernel_size=3, act=act, norm=None)
        ]
        width = num_features
        for i in range(depth):
            nxt = min(num_features * 2 ** (i + 1), max(max_features, num_features))
            layers.append(
                Convolution(spatial_dims, width, nxt, strides=2, kernel_size=3, adn_ordering="NA", act=act, norm=norm)
            )
            width = nxt
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.features(x)
        return self.fc(feat.flatten(2).mean(dim=2))


@record_arguments
class PoseDiscriminator(nn.Module):
    """Pose discriminator ``P``: image + heatmaps -> per-landmark plausibility ``(B, K)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: heatmap channels (``K``, or ``2K`` with visibility heatmaps).
        out_channels: number of landmarks ``K``.
        image_channels: image channels.
        num_features, depth, max_features, norm: see :class:`HeatmapEncoder`.

    Forward: ``heatmaps`` ``(B, in_channels, *S)``, ``image`` ``(B, image_channels, *S_img)``. When ``S_img != S`` the
    image is resized to the heatmap grid by area averaging (exact block averaging when ``S_img`` is an integer
    multiple of ``S``, which keeps pixel centres aligned with the heatmap convention). Returns ``(B, K)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        image_channels: int = 1,
        num_features: int = 64,
        depth: int = 4,
        max_features: int = 512,
        norm: str | tuple | None = Norm.BATCH,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.image_channels = image_channels
        self.encoder = HeatmapEncoder(
            spatial_dims, in_channels + image_channels, out_channels, num_features, depth, max_features, norm
        )

    def forward(self, heatmaps: torch.Tensor, image: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        if heatmaps.ndim != self.spatial_dims + 2 or image.ndim != heatmaps.ndim:
            raise ValueError(
                f"PoseDiscriminator: expected heatmaps and image with {self.spatial_dims} spatial dims, got shapes "
                f"{tuple(heatmaps.shape)} and {tuple(image.shape)}."
            )
        if image.shape[0] != heatmaps.shape[0] or image.shape[1] != self.image_channels:
            raise ValueError(
                f"PoseDiscriminator: image shape {tuple(image.shape)} does not match batch {heatmaps.shape[0]} "
                f"and image_channels={self.image_channels}."
            )
        if image.shape[2:] != heatmaps.shape[2:]:
            image = F.interpolate(image, size=heatmaps.shape[2:], mode="area")
        logits = self.encoder(torch.cat([heatmaps, image.to(heatmaps.dtype)], dim=1))
        return logits if return_logits else torch.sigmoid(logits)


@record_arguments
class ConfidenceDiscriminator(nn.Module):
    """Confidence discriminator ``C``: heatmaps -> per-landmark confidence ``(B, K)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: heatmap channels (``K``, or ``2K`` with visibility heatmaps).
        out_channels: number of landmarks ``K``.
        num_features, depth, max_features, norm: see :class:`HeatmapEncoder`.

    Forward: ``heatmaps`` ``(B, in_channels, *S)`` -> ``(B, K)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        num_features: int = 64,
        depth: int = 4,
        max_features: int = 512,
        norm: str | tuple | None = Norm.BATCH,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.encoder = HeatmapEncoder(spatial_dims, in_channels, out_channels, num_features, depth, max_features, norm)

    def forward(self, heatmaps: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        if heatmaps.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"ConfidenceDiscriminator: expected heatmaps with {self.spatial_dims} spatial dims, "
                f"got shape {tuple(heatmaps.shape)}."
            )
        logits = self.encoder(heatmaps)
        return logits if return_logits else torch.sigmoid(logits)
