"""The spread of a predicted heatmap around its peak: the per-image scale of adaptive conformal regions."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

from monai_ext.transforms.array import points_to_mm, points_to_original

__all__ = ["heatmap_spread", "HeatmapSpreadd"]


def heatmap_spread(heatmaps: torch.Tensor, peaks: torch.Tensor, radius: int = 7) -> torch.Tensor:
    """Root-mean-square distance of a heatmap's mass from its peak, in heatmap pixels.

    ``spread = sqrt(sum_p w(p) |p - peak|^2 / sum_p w(p))`` over the ``(2 radius + 1)^D`` window centred on the
    rounded peak (clipped at the border), with ``w = max(h, 0)``. A Gaussian blob of standard deviation ``s`` in 2-D
    gives ``s * sqrt(2)`` (when the window holds it). A heatmap without positive mass in the window gives ``NaN``.

    Args:
        heatmaps: ``(B, K, *S)`` with ``D = len(S)`` spatial dims.
        peaks: ``(B, K, D)`` sub-pixel peak positions in heatmap index coordinates (axis order of ``S``).
        radius: the window's half size in heatmap pixels.

    Returns:
        ``(B, K)`` float32 spreads.
    """
    if heatmaps.ndim < 3 or peaks.shape != (*heatmaps.shape[:2], heatmaps.ndim - 2):
        raise ValueError(f"heatmap_spread: heatmaps (B, K, *S) and peaks (B, K, D) expected, got {tuple(heatmaps.shape)} and {tuple(peaks.shape)}")
    spatial = heatmaps.shape[2:]
    dims = len(spatial)
    hm = heatmaps.detach().float().clamp_min(0)
    pk = peaks.detach().to(hm.device, torch.float32)
    offsets = torch.arange(-radius, radius + 1, device=hm.device, dtype=torch.float32)
    grids = torch.meshgrid(*([offsets] * dims), indexing="ij")
    window = torch.stack([g.reshape(-1) for g in grids], -1)  # (W, D)
    centre = torch.nan_to_num(pk).round()
    pos = centre[:, :, None, :] + window[None, None]  # (B, K, W, D)
    size = torch.as_tensor(spatial, device=hm.device, dtype=torch.float32)
    inside = ((pos >= 0) & (pos <= size - 1)).all(-1)
    idx = pos.clamp(min=torch.zeros_like(size), max=size - 1).long()
    flat = torch.zeros_like(idx[..., 0])
    for d in range(dims):
        flat = flat * int(spatial[d]) + idx[..., d]
    w = torch.gather(hm.flatten(2), 2, flat.flatten(2)).reshape(flat.shape) * inside
    d2 = ((pos - pk[:, :, None, :]) ** 2).sum(-1)
    mass = w.sum(-1)
    spread = torch.sqrt((w * d2).sum(-1) / mass)
    spread[(mass <= 0) | ~torch.isfinite(pk).all(-1)] = float("nan")
    return spread


class HeatmapSpreadd(MapTransform):
    """Each landmark's heatmap spread (:func:`heatmap_spread`) in the pixels and mm of the original file.

    Runs where :class:`~monai_ext.transforms.DecodeHeatmapd` left its points (``coords_key``, in the pixels of
    ``ref_key``'s preprocessed image) and before they are mapped back. The spread in heatmap pixels becomes a length
    in the original file by mapping the point and the point moved by the spread along each image axis back
    (:func:`~monai_ext.transforms.array.points_to_original`): the root mean square of the two lengths, so any
    resizing (aspect-preserving or not) and padding are accounted for. Writes ``output_key`` ``(K,)`` (original
    pixels) and ``<output_key>_mm`` (mm, with ``meta["spacing"]``), float32 on the CPU; ``NaN`` where there is no
    spread.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        coords_key: str = "pred_landmarks",
        ref_key: str = "image",
        output_key: str = "pred_spread",
        radius: int = 7,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.coords_key, self.ref_key, self.output_key, self.radius = coords_key, ref_key, output_key, int(radius)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            hm = convert_to_tensor(d[key], track_meta=False).float()
            ref = d[self.ref_key]
            pts = convert_to_tensor(d[self.coords_key], track_meta=False, dtype=torch.float64).cpu()  # (K, D) image px
            stride = torch.as_tensor(ref.shape[1:], dtype=torch.float64) / torch.as_tensor(hm.shape[1:], dtype=torch.float64)
            peaks = (pts + 0.5) / stride - 0.5
            spread = heatmap_spread(hm[None], peaks[None].to(torch.float32), self.radius)[0].cpu().to(torch.float64)
            lengths_px, lengths_mm = [], []
            origin = points_to_original(pts, ref)
            spacing = ref.meta.get("spacing")
            for axis in range(pts.shape[-1]):
                moved = pts.clone()
                moved[:, axis] += spread * stride[axis]
                step = points_to_original(moved, ref) - origin
                lengths_px.append(step.norm(dim=-1))
                if spacing is not None:
                    lengths_mm.append((points_to_mm(step, spacing)).norm(dim=-1))
            rms = lambda ls: torch.sqrt(torch.stack(ls).pow(2).mean(0)).to(torch.float32)  # noqa: E731
            d[self.output_key] = rms(lengths_px)
            d[f"{self.output_key}_mm"] = rms(lengths_mm) if lengths_mm else torch.full_like(d[self.output_key], float("nan"))
        return d
