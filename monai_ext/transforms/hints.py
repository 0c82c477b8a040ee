"""User clicks ("hints") for interactive keypoint estimation (Kim et al., MICCAI 2022).

A click says "landmark ``k`` is here". The network receives the clicks as ``K`` hint channels: a Gaussian at each
clicked landmark's position in its own channel, zero channels for the landmarks not clicked
(:func:`encode_hints`). Clicked positions travel as ``(K, 2)`` points in the pixels of the current image with
``NaN`` for unclicked landmarks (key ``hint_landmarks``), exactly like ground-truth landmarks.

* Training: :class:`RandClickSimulationd` (after augmentation) picks a random number of random visible landmarks and
  uses their ground-truth positions as clicks.
* Inference: clicks arrive per image as ``[{"landmark": k, "x": px, "y": px}, ...]`` in ORIGINAL image pixels
  (what a viewer shows); :class:`ClicksToHintsd` maps them into the network's pixels with
  :func:`~monai_ext.transforms.array.move_points` (original affine -> current affine) and :class:`AppendHintMapsd`
  appends the hint maps to the image channels, so that ``network(image)`` is the whole call (what MONAI Label's
  bundle tasks make). Training encodes the hints on the device instead
  (:class:`~monai_ext.engines.interactive.PrepareInteractiveBatch`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

from monai_ext.errors import LandmarkDataError
from monai_ext.heatmaps import gaussian_heatmaps
from monai_ext.transforms.array import move_points

__all__ = [
    "encode_hints",
    "click_count_probabilities",
    "kim2022_click_count_probabilities",
    "parse_clicks",
    "attach_clicks",
    "RandClickSimulationd",
    "ClicksToHintsd",
    "ApplyClicksd",
    "AppendHintMapsd",
]


def encode_hints(points: torch.Tensor, spatial_shape: Sequence[int], sigma: float) -> torch.Tensor:
    """Hint maps ``(B, K, *spatial_shape)`` from clicked points ``(B, K, D)`` (pixels; ``NaN`` = not clicked).

    Channel ``k`` holds a peak-1 Gaussian (``sigma`` pixels) centred on the click of landmark ``k``, zero when
    landmark ``k`` was not clicked.
    """
    pts = convert_to_tensor(points, track_meta=False)
    if not pts.is_floating_point():
        pts = pts.float()
    return gaussian_heatmaps(pts, spatial_shape, sigma=float(sigma), amplitude=1.0)


def click_count_probabilities(max_clicks: int = 12, decay: float = 0.7) -> np.ndarray:
    """``P(n clicks) ∝ decay**n`` for ``n = 0..max_clicks``: most samples get few clicks (0 is the most likely)."""
    if max_clicks < 0 or not 0.0 < decay <= 1.0:
        raise ValueError(f"need max_clicks >= 0 and 0 < decay <= 1, got {max_clicks}, {decay}")
    p = decay ** np.arange(max_clicks + 1, dtype=np.float64)
    return p / p.sum()


def kim2022_click_count_probabilities() -> np.ndarray:
    """The click-count distribution of Kim et al.'s training (official code, ``util.py``, ``num_dist: datset16``):
    ``P(n)`` for ``n = 0..12`` is ``1/8, 1/2, 1/4, 1/16, 1/32, ..., 1/4096, 1/4096`` (one click is the most likely,
    one sample in eight has none)."""
    p = np.asarray([1 / 8, 1 / 2, 1 / 4] + [2.0 ** -n for n in range(4, 13)] + [2.0**-12], dtype=np.float64)
    return p / p.sum()


class RandClickSimulationd(RandomizableTransform, MapTransform):
    """Simulated user clicks for training: ``n`` random visible landmarks, at their ground-truth positions.

    ``n`` is drawn from ``probabilities`` (``P(n)`` for ``n = 0, 1, ...``; default
    :func:`click_count_probabilities` ``(max_clicks, decay)``) and capped at the number of visible landmarks.
    Run it after the spatial augmentation so that the clicks are in the pixels of the final image.
    Writes ``hint_key``: ``(K, 2)`` float32, the clicked landmarks' positions and ``NaN`` elsewhere.
    """

    def __init__(
        self,
        keys: KeysCollection = "landmarks",
        hint_key: str = "hint_landmarks",
        max_clicks: int = 12,
        decay: float = 0.7,
        probabilities: Sequence[float] | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) != 1:
            raise ValueError("RandClickSimulationd: give one landmark key.")
        p = np.asarray(probabilities if probabilities is not None else click_count_probabilities(max_clicks, decay), dtype=np.float64)
        if p.ndim != 1 or p.size == 0 or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"RandClickSimulationd: probabilities must be non-negative with a positive sum, got {p}")
        self.probabilities = p / p.sum()
        self.hint_key = hint_key
        self._clicked: np.ndarray = np.zeros(0, dtype=np.int64)

    def randomize(self, visible: np.ndarray) -> None:
        super().randomize(None)
        n = int(self.R.choice(len(self.probabilities), p=self.probabilities)) if self._do_transform else 0
        n = min(n, len(visible))
        self._clicked = self.R.choice(visible, size=n, replace=False) if n else np.zeros(0, dtype=np.int64)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            pts = convert_to_tensor(d[key], track_meta=False, dtype=torch.float32)
            visible = np.flatnonzero(torch.isfinite(pts).all(-1).numpy())
            self.randomize(visible)
            hints = torch.full_like(pts, float("nan"))
            if len(self._clicked):
                idx = torch.as_tensor(self._clicked, dtype=torch.long)
                hints[idx] = pts[idx]
            d[self.hint_key] = hints
        return d


def parse_clicks(
    clicks: Any, num_landmarks: int, source: str = "", image_size: Sequence[int] | None = None
) -> np.ndarray:
    """``[{"landmark": k, "x": px, "y": px}, ...]`` -> ``(K, 2)`` float64 points, ``NaN`` for unclicked landmarks.

    A later click on the same landmark replaces an earlier one. Raises :class:`LandmarkDataError` naming
    ``source`` (the image) for a malformed click, an index out of range, a non-finite coordinate or, given the
    original image's ``image_size`` ``(W, H)``, a click outside it (``[-0.5, W - 0.5] x [-0.5, H - 0.5]``).
    """
    where = f"{source}: " if source else ""
    out = np.full((int(num_landmarks), 2), np.nan, dtype=np.float64)
    if clicks is None:
        return out
    if isinstance(clicks, str):
        try:
            clicks = json.loads(clicks)
        except json.JSONDecodeError as e:
            raise LandmarkDataError(f"{where}clicks are not valid JSON ({e.msg})") from e
    if not isinstance(clicks, (list, tuple)):
        raise LandmarkDataError(f"{where}clicks must be a list of {{'landmark', 'x', 'y'}} objects, got {type(clicks).__name__}")
    for n, click in enumerate(clicks):
        if not isinstance(click, Mapping) or not {"landmark", "x", "y"} <= set(click):
            raise LandmarkDataError(f"{where}click {n} must have 'landmark', 'x' and 'y', got {click!r}")
        try:
            k, x, y = int(click["landmark"]), float(click["x"]), float(click["y"])
        except (TypeError, ValueError) as e:
            raise LandmarkDataError(f"{where}click {n} has a non-numeric value: {click!r}") from e
        if not 0 <= k < num_landmarks:
            raise LandmarkDataError(f"{where}click {n}: landmark {k} is outside 0..{num_landmarks - 1}")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise LandmarkDataError(f"{where}click {n}: coordinates must be finite, got ({x}, {y})")
        if image_size is not None:
            w, h = (int(v) for v in np.asarray(image_size).reshape(-1)[:2])
            if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
                raise LandmarkDataError(
                    f"{where}click {n}: ({x}, {y}) is outside the {w} x {h} image "
                    f"(x in [-0.5, {w - 0.5}], y in [-0.5, {h - 0.5}], original pixels)"
                )
        out[k] = (x, y)
    return out


def attach_clicks(items: Sequence[dict], clicks: Mapping[str, Any] | str | os.PathLike | None, key: str = "clicks") -> list[dict]:
    """Add each image's clicks to inference items ``[{"image": path}, ...]``.

    ``clicks`` maps an image (its path as given, its absolute path or its file name) to a click list; it may be a
    dict, a JSON string or the path of a JSON file. Images without an entry get no clicks. A key that matches no
    image raises :class:`LandmarkDataError` (a typo would silently drop the user's clicks).
    """
    if clicks is None or (isinstance(clicks, (dict, str)) and not clicks):
        return [dict(i) for i in items]
    if isinstance(clicks, (str, os.PathLike)):
        text = str(clicks)
        path = Path(text)
        if not text.lstrip().startswith("{") and path.is_file():
            try:
                clicks = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise LandmarkDataError(f"{path}: clicks file is not valid JSON ({e.msg})") from e
        else:
            try:
                clicks = json.loads(text)
            except json.JSONDecodeError as e:
                raise LandmarkDataError(f"clicks: neither a JSON file nor JSON text ({e.msg}): {text[:80]!r}") from e
    if not isinstance(clicks, Mapping):
        raise LandmarkDataError(f"clicks must map image paths to click lists, got {type(clicks).__name__}")
    out, used = [], set()
    for item in items:
        image = str(item["image"])
        names = (image, str(Path(image).resolve()), Path(image).name)
        match = next((n for n in names if n in clicks), None)
        new = dict(item)
        if match is not None:
            new[key] = clicks[match]
            used.add(match)
        out.append(new)
    unused = sorted(set(clicks) - used)
    if unused:
        raise LandmarkDataError(f"clicks given for image(s) not in the input: {unused}")
    return out


class ClicksToHintsd(MapTransform):
    """Clicks in ORIGINAL image pixels -> ``hint_key`` points ``(K, 2)`` in the pixels of ``ref_key``'s current image.

    Place it after the spatial preprocessing (e.g. ``FitToShaped``): the clicks are parsed with
    :func:`parse_clicks` and carried through ``move_points(meta["original_affine"] -> affine)``, the same mapping
    the landmarks follow. A click outside the original image (``meta["original_spatial_shape"]``, when known) is an
    error. An item without clicks gets all-``NaN`` hints (no click). The click list is removed from the item (it
    would not collate) and kept, parsed, as ``hint_key + "_original"`` ``(K, 2)`` original pixels.
    """

    def __init__(
        self,
        keys: KeysCollection = "clicks",
        num_landmarks: int = 1,
        ref_key: str = "image",
        hint_key: str = "hint_landmarks",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.num_landmarks = int(num_landmarks)
        self.ref_key = ref_key
        self.hint_key = hint_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        img = d[self.ref_key]
        meta = getattr(img, "meta", {})
        source = str(meta.get("filename_or_obj", d.get("image", "")))
        raw = None
        for key in self.key_iterator(d):
            raw = d.pop(key)  # a ragged list of dicts would not collate into a batch
        original = parse_clicks(raw, self.num_landmarks, source, meta.get("original_spatial_shape"))
        d[self.hint_key] = move_points(original, img.meta["original_affine"], img.affine).to(torch.float32)
        d[self.hint_key + "_original"] = torch.as_tensor(original, dtype=torch.float32)
        return d


class ApplyClicksd(MapTransform):
    """Set each clicked landmark's prediction to its click (the user placed it) and its confidence to 1.

    ``keys``: predicted points ``(K, 2)``; ``hint_key``: clicks ``(K, 2)`` in the same pixels (``NaN`` = not
    clicked). Place it before mapping the predictions back to the original image, so that clicks and predictions
    return through the same function.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred_landmarks",
        hint_key: str = "hint_landmarks",
        confidence_key: str | None = "pred_confidence",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.hint_key = hint_key
        self.confidence_key = confidence_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if d.get(self.hint_key) is None:
            return d
        hints = convert_to_tensor(d[self.hint_key], track_meta=False)
        clicked = torch.isfinite(hints).all(-1)
        for key in self.key_iterator(d):
            pred = convert_to_tensor(d[key], track_meta=False)
            d[key] = torch.where(clicked.unsqueeze(-1).to(pred.device), hints.to(pred), pred)
        if self.confidence_key and self.confidence_key in d:
            conf = convert_to_tensor(d[self.confidence_key], track_meta=False)
            d[self.confidence_key] = torch.where(clicked.to(conf.device), torch.ones_like(conf), conf)
        return d


class AppendHintMapsd(MapTransform):
    """Append the hint maps of ``hint_key`` (``(K, 2)`` clicks in the image's pixels, ``NaN`` = no click) to the
    channels of ``keys`` images: ``(C, *S) -> (C + K [+ K], *S)``, with :func:`encode_hints` (``sigma`` pixels) and,
    with ``previous_channels``, ``K`` zero channels for a previous prediction. The MetaTensor keeps its metadata,
    so predictions still map back through its affine. No ``hint_key``: zero hint maps (no click).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        num_landmarks: int = 1,
        sigma: float = 2.0,
        hint_key: str = "hint_landmarks",
        previous_channels: bool = False,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.num_landmarks = int(num_landmarks)
        self.sigma = float(sigma)
        self.hint_key = hint_key
        self.previous_channels = bool(previous_channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        hints = d.get(self.hint_key)
        for key in self.key_iterator(d):
            img = d[key]
            spatial = tuple(img.shape[1:])
            pts = (
                torch.full((self.num_landmarks, 2), float("nan"))
                if hints is None
                else convert_to_tensor(hints, track_meta=False, dtype=torch.float32)
            )
            if pts.shape != (self.num_landmarks, 2):
                raise ValueError(f"AppendHintMapsd: {self.hint_key} must be ({self.num_landmarks}, 2), got {tuple(pts.shape)}")
            parts = [img, encode_hints(pts[None], spatial, self.sigma)[0].to(dtype=img.dtype, device=img.device)]
            if self.previous_channels:
                parts.append(torch.zeros((self.num_landmarks, *spatial), dtype=img.dtype, device=img.device))
            d[key] = torch.cat(parts, dim=0)
        return d
