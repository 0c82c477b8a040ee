"""Landmark errors in px/mm: functions, a MONAI cumulative metric and ignite metrics for bundle configs."""

from monai_ext.metrics.cumulative import LandmarkDistanceMetric
from monai_ext.metrics.distances import radial_errors, reference_distance_spacing, summarize_errors
from monai_ext.metrics.ignite import (
    PCK,
    LandmarkMetric,
    MeanRadialError,
    SuccessfulDetectionRate,
    landmark_metrics,
    landmark_output_transform,
    lower_is_better,
)
from monai_ext.metrics.selection import higher_is_better, key_metric_cmp_fn, key_metric_score, select_metrics
