"""Overlay pictures: an original radiograph with predicted (and ground-truth) landmarks and their numbers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from monai_ext.data.readers import read_radiograph
from monai_ext.utils import atomic_path

__all__ = ["to_display", "draw_landmarks", "save_overlay"]


def to_display(array_wh: np.ndarray) -> Image.Image:
    """``(W, H)`` radiograph → 8-bit RGB picture (rows = y), 0.5–99.5 percentile window."""
    lo, hi = np.percentile(array_wh, (0.5, 99.5))
    grey = np.clip((array_wh - lo) / max(hi - lo, 1e-6), 0, 1)
    return Image.fromarray((grey.T * 255).astype(np.uint8)).convert("RGB")


def draw_landmarks(picture: Image.Image, pred: np.ndarray | None, gt: np.ndarray | None = None) -> Image.Image:
    """Draw ground truth (green) and predictions (red, numbered), linked by a yellow error line.

    Points are ``(x, y)`` pixels of the picture; NaN points are skipped."""
    draw = ImageDraw.Draw(picture)
    r = max(2, round(min(picture.size) / 150))
    if gt is not None:
        for x, y in np.asarray(gt, dtype=float).reshape(-1, 2):
            if np.isfinite([x, y]).all():
                draw.ellipse([x - r, y - r, x + r, y + r], outline=(0, 255, 0), width=max(1, r // 2))
    if pred is not None:
        pred = np.asarray(pred, dtype=float).reshape(-1, 2)
        for k, (x, y) in enumerate(pred):
            if not np.isfinite([x, y]).all():
                continue
            if gt is not None and np.isfinite(np.asarray(gt, dtype=float).reshape(-1, 2)[k]).all():
                gx, gy = np.asarray(gt, dtype=float).reshape(-1, 2)[k]
                draw.line([gx, gy, x, y], fill=(255, 255, 0), width=1)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 0, 0))
            draw.text((x + r + 1, y - r - 1), str(k), fill=(255, 64, 64))
    return picture


def save_overlay(image_path: str | os.PathLike, pred: np.ndarray | None, out_path: str | os.PathLike, gt: np.ndarray | None = None) -> Path:
    """Read the original image, draw the landmarks (original pixels) and save a PNG atomically."""
    array, _ = read_radiograph(image_path)
    picture = draw_landmarks(to_display(array), pred, gt)
    with atomic_path(out_path) as tmp:
        picture.save(tmp, format="PNG")
    return Path(out_path)
