"""Ignite/MONAI handlers of the landmark workflows."""

from monai_ext.handlers.nan_guard import StopOnNonFiniteLoss, loss_from_output
from monai_ext.handlers.time_budget import TimeBudget
from monai_ext.handlers.training_overlays import TrainingOverlayWriter
from monai_ext.handlers.writers import LandmarkMetricsWriter, LandmarkPredictionWriter
