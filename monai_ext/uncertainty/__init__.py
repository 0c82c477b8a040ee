"""Calibrated per-landmark uncertainty: split-conformal regions (fixed and heatmap-adaptive radii)."""

from monai_ext.uncertainty.conformal import (
    METHODS,
    ConformalRegions,
    angle_quantiles,
    conformal_quantile,
    load_angle_calibration,
    load_calibration,
    region_coverage,
    save_calibration,
)
from monai_ext.uncertainty.spread import HeatmapSpreadd, heatmap_spread
from monai_ext.uncertainty.regions import ConformalRegiond, RegionCoverageWriter, select_regions
