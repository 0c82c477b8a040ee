"""KNEEL hourglass with a soft-argmax head (Tiulpin et al., "KNEEL: Knee Anatomical Landmark Localization Using
Hourglass Networks", ICCV Workshops 2019; reference code MIPT-Oulu/KNEEL).

The network regresses landmark coordinates directly: heatmap scores on the ``1 / output_stride`` grid are turned
into a probability map by a spatial softmax and the coordinate is its expectation. Coordinates are returned in input
pixel units, spatial dims index order (``x`` for dim 0, ``y`` for dim 1), pixel centres at integers, so they compare
directly with landmark targets. Heatmap index ``h`` maps to input coordinate ``(h + 0.5) * stride - 0.5``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Conv, Dropout, Norm

from monai_ext.networks.hourglass import Hourglass, check_spatial_size, make_norm, make_stem

from monai_ext.decoding import soft_argmax
from monai_ext.networks.base import record_arguments

__all__ = ["MultiScaleResidual", "KneelHourglass"]


def _soft_argmax(heatmaps: torch.Tensor, beta: torch.Tensor | float, stride: float) -> torch.Tensor:
    """Differentiable argmax of ``heatmaps`` ``(B, K, *S)`` -> coordinates ``(B, K, len(S))`` in input pixels:
    :func:`monai_ext.decoding.soft_argmax` on the heatmap grid (computed in float32), mapped to the input with
    the pixel-centre convention ``(index + 0.5) * stride - 0.5`` (exact: the mapping is linear)."""
    coords = soft_argmax(heatmaps.float(), beta)
    return ((coords + 0.5) * stride - 0.5).to(heatmaps.dtype)


class MultiScaleResidual(nn.Module):
    """Hierarchical, parallel & multi-scale residual block (Bulat & Tzimiropoulos, ICCV 2017), as used by KNEEL.

    Three pre-activation (BN-ReLU-Conv3x3) convolutions in a chain with widths ``out/2``, ``out/4`` and the rest;
    their outputs (receptive fields 3, 5, 7) are concatenated to ``out_channels`` channels and added to the skip
    (identity, or a 1x1 conv when the width changes). Input ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str | tuple = Norm.BATCH) -> None:
        super().__init__()
        if out_channels < 4:
            raise ValueError(f"MultiScaleResidual needs out_channels >= 4, got {out_channels}.")
        widths = (out_channels // 2, out_channels // 4, out_channels - out_channels // 2 - out_channels // 4)
        conv = Conv[Conv.CONV, spatial_dims]
        branches = []
        c_in = in_channels
        for w in widths:
            branches.append(
                nn.Sequential(make_norm(norm, spatial_dims, c_in), Act[Act.RELU](), conv(c_in, w, 3, padding=1))
            )
            c_in = w
        self.branches = nn.ModuleList(branches)
        self.skip: nn.Module = nn.Identity() if in_channels == out_channels else conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        h = x
        for branch in self.branches:
            h = branch(h)
            outs.append(h)
        return torch.cat(outs, dim=1) + self.skip(x)


@record_arguments
class KneelHourglass(nn.Module):
    """Single hourglass with multi-scale residual blocks and a soft-argmax coordinate head (KNEEL).

    Architecture: Newell stem (7x7 conv, blocks, max-pool; see :func:`monai_ext.networks.hourglass.make_stem`) to
    ``4 * base_width`` channels, one hourglass of ``depth`` halvings, a mixer ``Dropout(p) - block - Dropout(p) -
    1x1 conv-BN-ReLU``, a 1x1 conv to ``K`` heatmap scores and the soft-argmax.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: number of landmarks ``K``.
        base_width: stem width; the hourglass runs at ``4 * base_width`` (24 in KNEEL).
        depth: hourglass recursion depth.
        stem_stride: heatmap downsampling, 4 (KNEEL), 2 or 1; equals :attr:`output_stride`.
        upsample_mode: ``"nearest"``, ``"linear"`` or ``"deconv"``.
        dropout: channel dropout probability in the mixer (``Dropout2d(0.25)`` in KNEEL); inactive in ``eval()``.
        beta: soft-argmax inverse temperature; the softmax is taken over ``beta * scores``.
        learnable_beta: learn ``beta`` (parameterised as ``log beta`` so it stays positive); fixed by default, as KNEEL.
        return_heatmaps: forward also returns the raw heatmap scores.
        norm: normalisation layer, batch norm by default.

    Forward: image ``(B, in_channels, *S)`` (each spatial size a multiple of ``stem_stride * 2**depth``) ->
    coordinates ``(B, K, spatial_dims)`` in input pixels, or ``(coordinates, scores)`` with scores
    ``(B, K, *S / output_stride)`` when ``return_heatmaps``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 24,
        depth: int = 4,
        stem_stride: int = 4,
        upsample_mode: str = "nearest",
        dropout: float = 0.25,
        beta: float = 1.0,
        learnable_beta: bool = False,
        return_heatmaps: bool = False,
        norm: str | tuple = Norm.BATCH,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if base_width < 1 or out_channels < 1:
            raise ValueError(f"base_width and out_channels must be >= 1, got {base_width} and {out_channels}.")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}.")
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.stem_stride = stem_stride
        self.return_heatmaps = return_heatmaps
        width = 4 * base_width

        def block(c_in: int, c_out: int) -> nn.Module:
            return MultiScaleResidual(spatial_dims, c_in, c_out, norm)

        self.stem = make_stem(spatial_dims, in_channels, width, stem_stride, block, norm)
        self.hourglass = Hourglass(spatial_dims, width, depth, block, 1, upsample_mode)
        drop = Dropout[Dropout.DROPOUT, spatial_dims]
        self.mixer = nn.Sequential(
            drop(p=dropout),
            block(width, width),
            drop(p=dropout),
            Convolution(spatial_dims, width, width, kernel_size=1, adn_ordering="NA", act=Act.RELU, norm=norm),
        )
        self.head = Conv[Conv.CONV, spatial_dims](width, out_channels, 1)
        log_beta = torch.tensor(math.log(beta))
        if learnable_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)

    @property
    def output_stride(self) -> int:
        """Input pixels per heatmap pixel along each spatial dim."""
        return self.stem_stride

    @property
    def beta(self) -> torch.Tensor:
        """Current soft-argmax inverse temperature."""
        return self.log_beta.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_spatial_size(x, self.spatial_dims, self.stem_stride * 2**self.depth, type(self).__name__)
        scores = self.head(self.mixer(self.hourglass(self.stem(x))))
        coords = _soft_argmax(scores, self.beta, float(self.stem_stride))
        if self.return_heatmaps:
            return coords, scores
        return coords
