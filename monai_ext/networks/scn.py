"""SpatialConfiguration-Net (Payer et al., "Integrating spatial configuration into heatmap regression based CNNs for
landmark localization", Medical Image Analysis 54, 2019).

The network factorises each landmark heatmap into a *local appearance* estimate ``H_LA`` (accurate but ambiguous: a
U-Net-like component at full resolution) and a *spatial configuration* estimate ``H_SC`` (coarse but unambiguous: a
few large-kernel convolutions on ``H_LA`` at 1/``spatial_downsample`` resolution that let every landmark see every
other one).  The output is their element-wise product ``H = H_LA * H_SC``, one channel per landmark, at the input
resolution (heatmap index ``i`` is input pixel ``i``: no output stride, see :mod:`monai_ext` for the axis order).
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.layers.factories import Conv, Pool
from monai_ext.networks.base import record_arguments

__all__ = ["SpatialConfigurationNet", "UPSAMPLE_MODES"]

UPSAMPLE_MODES = ("linear", "nearest", "cubic")


def _interp_mode(mode: str, spatial_dims: int) -> Tuple[str, Optional[bool]]:
    """Map ``"linear" | "nearest" | "cubic"`` to a ``F.interpolate`` mode and ``align_corners``.

    ``"cubic"`` is bicubic in 2D; PyTorch has no tricubic interpolation, so it is trilinear in 3D.
    Interpolating modes use ``align_corners=False``: the pixel centres of a 2x (or 8x) average-pooled map sit at the
    centres of the pooled cells, which is exactly the half-pixel convention of ``align_corners=False``.
    """
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}.")
    if mode == "nearest":
        return "nearest", None
    if mode == "cubic" and spatial_dims == 2:
        return "bicubic", False
    return ("bilinear" if spatial_dims == 2 else "trilinear"), False


class _LocalLevel(nn.Module):
    """One level of the local appearance component: ``conv0 -> dropout -> conv1 -> conv2``.

    Returns ``(conv1, conv2)``: ``conv1`` is average-pooled to feed the level below, ``conv2`` is the level's
    (additive) skip branch.  Every convolution is followed by LeakyReLU.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, filters: int, kernel_size: int, dropout: float, negative_slope: float
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        pad = kernel_size // 2
        self.conv0 = conv(in_channels, filters, kernel_size, padding=pad)
        self.conv1 = conv(filters, filters, kernel_size, padding=pad)
        self.conv2 = conv(filters, filters, kernel_size, padding=pad)
        self.act = nn.LeakyReLU(negative_slope)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.dropout(self.act(self.conv0(x)))
        h = self.act(self.conv1(h))
        return h, self.act(self.conv2(h))


@record_arguments
class SpatialConfigurationNet(nn.Module):
    """SpatialConfiguration-Net: ``H = H_LA * H_SC``.

    Local appearance component (``num_levels`` levels, ``local_filters`` channels on every level): each level applies
    three ``local_kernel_size`` convolutions, with dropout after the first; the output of the second is 2x average
    pooled to generate the level below, the third is the level's skip branch.  Going up, the coarser result is
    upsampled by 2 (``upsample_mode``) and *added* to the skip branch (U-Net-like but additive, as in Payer's public
    implementation).  A final linear ``heatmap_kernel_size`` convolution with ``K = out_channels`` outputs gives
    ``H_LA``.

    Spatial configuration component: ``H_LA`` is average-pooled by ``spatial_downsample``, passed through three
    ``spatial_kernel_size`` convolutions with ``spatial_filters`` channels and a fourth with ``K`` outputs and
    ``tanh``, and upsampled back to the input size (``spatial_upsample_mode``, bicubic by default; trilinear in 3D)
    to give ``H_SC`` in ``(-1, 1)``.

    Initialisation: biases 0; hidden convolutions Kaiming-normal (fan-in, LeakyReLU gain); the two heatmap output
    convolutions (local ``H_LA`` and spatial ``H_SC`` before tanh) normal with std ``local_init_std`` /
    ``spatial_init_std`` (1e-4 each, the small-normal heatmap-layer initialiser of Payer's TensorFlow code), so the
    network starts from an almost-zero output ``H`` (both factors are small); it trains well with Adam.

    Defaults are the configuration of the MedIA 2019 paper for hand radiographs (64 filters, 5x5 local kernels, 15x15
    spatial kernels at 1/8 resolution).  Payer's public variant is ``local_filters=128, spatial_filters=128,
    spatial_downsample=16, spatial_kernel_size=11``.  The first level convolves the image directly (no extra input
    convolution) and ``H_LA`` uses the local kernel size unless ``heatmap_kernel_size`` is given.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: number of landmarks ``K``.
        num_levels: levels of the local appearance component (``num_levels - 1`` poolings).
        local_filters: channels of every local appearance convolution.
        local_kernel_size: kernel size of the local appearance convolutions (odd).
        spatial_filters: channels of the three hidden spatial configuration convolutions.
        spatial_kernel_size: kernel size of the spatial configuration convolutions (odd).
        spatial_downsample: average-pooling factor in front of the spatial configuration component.
        dropout: dropout probability after the first convolution of every level.
        upsample_mode: ``"linear"`` (default), ``"nearest"`` or ``"cubic"``; local component, factor 2.
        spatial_upsample_mode: same choices; ``H_SC`` back to the input size (default ``"cubic"``).
        heatmap_kernel_size: kernel of the ``H_LA`` output convolution (odd); ``None`` uses ``local_kernel_size``.
        negative_slope: LeakyReLU slope after every hidden convolution.
        local_init_std: std of the normal initialisation of the ``H_LA`` output convolution.
        spatial_init_std: std of the normal initialisation of the last spatial configuration convolution.
        stem_kernel_size: kernel of an input convolution (``in_channels`` -> ``local_filters``, LeakyReLU) in front
            of the first level, as Payer's MIA-era network (``conv0``, 3×3); ``None``: no input convolution.

    Input ``(B, in_channels, *S)`` with every ``S_i`` divisible by ``2 ** (num_levels - 1)`` and by
    ``spatial_downsample``; output ``(B, K, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_levels: int = 4,
        local_filters: int = 64,
        local_kernel_size: int = 5,
        spatial_filters: int = 64,
        spatial_kernel_size: int = 15,
        spatial_downsample: int = 8,
        dropout: float = 0.5,
        upsample_mode: str = "linear",
        spatial_upsample_mode: str = "cubic",
        heatmap_kernel_size: Optional[int] = None,
        negative_slope: float = 0.1,
        local_init_std: float = 1e-4,
        spatial_init_std: float = 1e-4,
        stem_kernel_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"SpatialConfigurationNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("num_levels", num_levels),
                            ("local_filters", local_filters), ("spatial_filters", spatial_filters),
                            ("spatial_downsample", spatial_downsample)):
            if int(value) < 1:
                raise ValueError(f"SpatialConfigurationNet: {name} must be >= 1, got {value}.")
        heatmap_kernel_size = local_kernel_size if heatmap_kernel_size is None else heatmap_kernel_size
        kernels = [("local_kernel_size", local_kernel_size), ("spatial_kernel_size", spatial_kernel_size),
                   ("heatmap_kernel_size", heatmap_kernel_size)]
        if stem_kernel_size is not None:
            kernels.append(("stem_kernel_size", stem_kernel_size))
        for name, value in kernels:
            if value < 1 or value % 2 == 0:
                raise ValueError(f"SpatialConfigurationNet: {name} must be a positive odd number ('same' padding), "
                                 f"got {value}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SpatialConfigurationNet: dropout must be in [0, 1), got {dropout}.")

        self.spatial_dims = spatial_dims
        self.num_levels = num_levels
        self.spatial_downsample = spatial_downsample
        self.size_multiple = _lcm(2 ** (num_levels - 1), spatial_downsample)
        self.upsample_mode, self.upsample_align_corners = _interp_mode(upsample_mode, spatial_dims)
        self.spatial_upsample_mode, self.spatial_align_corners = _interp_mode(spatial_upsample_mode, spatial_dims)

        conv = Conv[Conv.CONV, spatial_dims]
        pool = Pool[Pool.AVG, spatial_dims]
        if stem_kernel_size is None:
            self.stem: nn.Module = nn.Identity()
        else:
            self.stem = nn.Sequential(
                conv(in_channels, local_filters, stem_kernel_size, padding=stem_kernel_size // 2),
                nn.LeakyReLU(negative_slope),
            )
        level0_in = in_channels if stem_kernel_size is None else local_filters
        self.levels = nn.ModuleList(
            _LocalLevel(spatial_dims, level0_in if i == 0 else local_filters, local_filters, local_kernel_size,
                        dropout, negative_slope)
            for i in range(num_levels)
        )
        self.pool = pool(kernel_size=2, stride=2)
        self.local_heatmaps = conv(local_filters, out_channels, heatmap_kernel_size, padding=heatmap_kernel_size // 2)

        self.spatial_pool = pool(kernel_size=spatial_downsample, stride=spatial_downsample)
        pad = spatial_kernel_size // 2
        self.spatial_convs = nn.Sequential(
            conv(out_channels, spatial_filters, spatial_kernel_size, padding=pad),
            nn.LeakyReLU(negative_slope),
            conv(spatial_filters, spatial_filters, spatial_kernel_size, padding=pad),
            nn.LeakyReLU(negative_slope),
            conv(spatial_filters, spatial_filters, spatial_kernel_size, padding=pad),
            nn.LeakyReLU(negative_slope),
        )
        self.spatial_heatmaps = conv(spatial_filters, out_channels, spatial_kernel_size, padding=pad)

        self._init_weights(negative_slope, local_init_std, spatial_init_std)

    def _init_weights(self, negative_slope: float, local_init_std: float, spatial_init_std: float) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.local_heatmaps.weight, 0.0, local_init_std)
        nn.init.normal_(self.spatial_heatmaps.weight, 0.0, spatial_init_std)

    def check_input_size(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, C, *S)`` with every ``S_i`` a multiple of ``size_multiple``."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                "SpatialConfigurationNet: expected a (B, C, *spatial) input with " + str(self.spatial_dims)
                + " spatial dims, got shape " + str(list(x.shape)) + "."
            )
        for s in x.shape[2:]:
            if s % self.size_multiple != 0:
                raise ValueError(
                    "SpatialConfigurationNet: every spatial size must be a multiple of " + str(self.size_multiple)
                    + " (2**(num_levels-1) and spatial_downsample), got spatial shape " + str(list(x.shape[2:]))
                    + "; pad or resize the image."
                )

    def forward_components(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(H, H_LA, H_SC)``, each ``(B, K, *S)``."""
        if not torch.jit.is_tracing():  # a traced graph keeps no Python checks; they would only emit TracerWarnings
            self.check_input_size(x)
        skips: List[torch.Tensor] = []
        node = self.stem(x)
        for i, level in enumerate(self.levels):
            down, skip = level(node)
            skips.append(skip)
            if i < self.num_levels - 1:
                node = self.pool(down)
        node = skips[-1]
        for i in range(self.num_levels - 2, -1, -1):
            skip = skips[i]
            node = _resize(node, skip.shape[2:], self.upsample_mode, self.upsample_align_corners) + skip
        local = self.local_heatmaps(node)

        coarse = torch.tanh(self.spatial_heatmaps(self.spatial_convs(self.spatial_pool(local))))
        spatial = _resize(coarse, x.shape[2:], self.spatial_upsample_mode, self.spatial_align_corners)
        return local * spatial, local, spatial

    def forward(
        self, x: torch.Tensor, return_components: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``x`` ``(B, in_channels, *S)`` -> heatmaps ``(B, K, *S)``; with ``return_components`` the tuple
        ``(H, H_LA, H_SC)`` (:meth:`forward_components`)."""
        out, local, spatial = self.forward_components(x)
        if return_components:
            return out, local, spatial
        return out


def _resize(x: torch.Tensor, size: List[int], mode: str, align_corners: Optional[bool]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)


def _lcm(a: int, b: int) -> int:
    g, r = a, b
    while r:
        g, r = r, g % r
    return a * b // g
