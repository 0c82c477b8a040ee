"""Conformal regions at evaluation and inference: each predicted landmark gets a radius and a review flag, and an
evaluation's ``summary.json`` gets the empirical coverage of those radii."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

from monai_ext.uncertainty.conformal import ConformalRegions, load_calibration, region_coverage
from monai_ext.utils import atomic_write

__all__ = ["ConformalRegiond", "RegionCoverageWriter", "select_regions"]

_logger = logging.getLogger(__name__)


def _find(calibration: list[ConformalRegions], method: str, coverage: float) -> ConformalRegions | None:
    return next((r for r in calibration if r.method == method and abs(r.coverage - float(coverage)) < 1e-6), None)


def select_regions(calibration: list[ConformalRegions], method: str, coverage: float) -> ConformalRegions:
    """The calibrated region of ``method`` at ``coverage`` (within 1e-6); a clear error lists what there is."""
    found = _find(calibration, method, coverage)
    if found is not None:
        return found
    have = ", ".join(f"{r.method}@{r.coverage:g}" for r in calibration) or "none"
    raise ValueError(f"no calibrated {method!r} region at coverage {coverage:g} (calibrated: {have}); run scripts/calibrate_regions.py")


class ConformalRegiond(MapTransform):
    """Add each landmark's conformal region radius and review flag to a prediction.

    After :class:`~monai_ext.transforms.LandmarksToOriginald` (and :class:`~monai_ext.uncertainty.HeatmapSpreadd`
    for ``"adaptive"``). Writes, ``(K,)`` float32 / bool on the CPU:

    * ``<output_key>_mm``: the radius in mm (``NaN`` without a spacing when calibrated in pixels);
    * ``<output_key>``: the radius in pixels of the original file (mm divided by the geometric mean of the spacing);
    * ``review_key``: ``True`` where the radius, in the calibration's unit, exceeds
      ``review_threshold`` (default: the calibrated *fixed* radius at the same coverage, i.e. a landmark is flagged
      when the model is less sure of it than of a typical one; without it, nothing is flagged).

    Args:
        calibration: the calibration file (``scripts/calibrate_regions.py`` writes ``conformal.json`` next to the
            model); a missing file makes this transform a no-op (logged once), so an uncalibrated model still runs.
        method: ``"adaptive"`` (radius from the heatmap spread), ``"fixed"``, or ``"auto"``: adaptive when the
            calibration has it at ``coverage`` (a heatmap model), else fixed.
        coverage: which calibrated coverage to use (e.g. 0.9).
        review_threshold: radius (calibration unit) above which ``review`` is true; ``None``: see above.
        spread_key: the spread in original pixels (``<spread_key>_mm`` in mm) from ``HeatmapSpreadd``.
        ref_key: the image, whose ``meta["spacing"]`` gives mm.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred_landmarks",
        calibration: str | os.PathLike | None = None,
        method: str = "auto",
        coverage: float = 0.9,
        review_threshold: float | None = None,
        spread_key: str = "pred_spread",
        ref_key: str = "image",
        output_key: str = "pred_region",
        review_key: str = "pred_review",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.spread_key, self.ref_key, self.output_key, self.review_key = spread_key, ref_key, output_key, review_key
        self.regions: ConformalRegions | None = None
        self.threshold = review_threshold
        if calibration is None or not Path(calibration).is_file():
            _logger.info(f"no conformal calibration at {calibration}: predictions carry no regions (scripts/calibrate_regions.py makes one)")
            return
        found = load_calibration(calibration)
        fixed = _find(found, "fixed", coverage)
        self.regions = (_find(found, "adaptive", coverage) or fixed) if method == "auto" else select_regions(found, method, coverage)
        if self.regions is None:
            select_regions(found, "fixed", coverage)  # raises, listing what the file has
        if self.threshold is None and self.regions.method != "fixed" and fixed is not None:
            self.threshold = float(np.max(fixed.quantile))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if self.regions is None:
            return d
        for key in self.key_iterator(d):
            k = convert_to_tensor(d[key], track_meta=False).shape[0]
            spacing = d[self.ref_key].meta.get("spacing") if hasattr(d[self.ref_key], "meta") else None
            if spacing is not None and d[self.ref_key].meta.get("spacing_source") == "none":
                spacing = None
            scale = float(np.sqrt(np.prod(np.asarray(spacing, dtype=np.float64)))) if spacing is not None else math.nan
            if self.regions.method == "adaptive":
                suffix = "_mm" if self.regions.unit == "mm" else ""
                if f"{self.spread_key}{suffix}" not in d:
                    raise ValueError(
                        f"adaptive conformal regions need '{self.spread_key}{suffix}' (HeatmapSpreadd) in the prediction; "
                        "this model's postprocessing has none: use the fixed regions (region_method fixed)."
                    )
                spread = np.asarray(convert_to_tensor(d[f"{self.spread_key}{suffix}"], track_meta=False).cpu(), np.float64)
                radius = self.regions.radii(spread[None])[0]
            else:
                radius = self.regions.radii(shape=(1, k))[0]
            if self.regions.unit == "mm":
                radius_mm, radius_px = radius, radius / scale
            else:
                radius_px, radius_mm = radius, radius * scale
            d[f"{self.output_key}_mm"] = torch.as_tensor(radius_mm, dtype=torch.float32)
            d[self.output_key] = torch.as_tensor(radius_px, dtype=torch.float32)
            flag = radius > self.threshold if self.threshold is not None else np.zeros(k, dtype=bool)
            d[self.review_key] = torch.as_tensor(np.nan_to_num(flag, nan=0).astype(bool))
        return d


class RegionCoverageWriter:
    """Evaluation handler: the empirical coverage and size of the conformal regions on the evaluated images, added to
    ``<output_dir>/summary.json`` under ``"regions"`` when the run completes (attach it after
    :class:`~monai_ext.handlers.LandmarkMetricsWriter`, which writes that file). A point counts where both the
    ground truth and the radius are known; missing ones are counted. Errors and radii are in ``unit`` (``"mm"``:
    ``<region_key>_mm`` against mm errors; ``"px"``: original pixels). No regions in the outputs: nothing is added.
    """

    def __init__(self, output_dir: str | os.PathLike, unit: str = "mm", region_key: str = "pred_region", review_key: str = "pred_review",
                 pred_key: str = "pred_landmarks", gt_key: str = "landmarks", info: Mapping[str, Any] | None = None):
        self.output_dir = Path(output_dir)
        self.unit, self.region_key, self.review_key, self.pred_key, self.gt_key = unit, region_key, review_key, pred_key, gt_key
        self.info = dict(info or {})
        self.errors: list[np.ndarray] = []
        self.radii: list[np.ndarray] = []
        self.review: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.errors, self.radii, self.review = [], [], []

    def collect(self, engine: Engine) -> None:
        from monai_ext.metrics.ignite import _merge_batch

        output = engine.state.output
        items = _merge_batch(output, getattr(engine.state, "batch", None))
        items = items if isinstance(items, list) else []
        suffix = "_mm" if self.unit == "mm" else ""
        for item in items:
            if f"{self.region_key}{suffix}" not in item or self.gt_key not in item:
                continue
            pred = np.asarray(convert_to_tensor(item[self.pred_key], track_meta=False).cpu(), np.float64)
            gt = np.asarray(convert_to_tensor(item[self.gt_key], track_meta=False).cpu(), np.float64)
            diff = pred - gt
            if self.unit == "mm":  # the metrics' spacing (mm/pixel per image, from the batch)
                diff = diff * np.asarray(convert_to_tensor(item["spacing"], track_meta=False).cpu(), np.float64).reshape(1, -1)
            self.errors.append(np.linalg.norm(diff, axis=-1))
            self.radii.append(np.asarray(convert_to_tensor(item[f"{self.region_key}{suffix}"], track_meta=False).cpu(), np.float64))
            self.review.append(np.asarray(convert_to_tensor(item[self.review_key], track_meta=False).cpu(), bool))

    def write(self, engine: Engine | None = None) -> None:
        from monai_ext.handlers.sharded import is_main_process

        if not self.errors or not is_main_process():
            return
        errors, radii, review = np.stack(self.errors), np.stack(self.radii), np.stack(self.review)
        stats = region_coverage(errors, radii)
        stats.update(self.info, unit=self.unit, n_review=int(review.sum()),
                     review_error=float(np.nanmean(np.where(review, errors, np.nan))) if review.any() else None,
                     other_error=float(np.nanmean(np.where(~review, errors, np.nan))) if (~review).any() else None)
        path = self.output_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        summary["regions"] = stats
        with atomic_write(path) as f:
            json.dump(summary, f, indent=1, default=float)
