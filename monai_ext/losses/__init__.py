"""Losses: heatmap regression (masked), learnable-sigma heatmaps."""

from monai_ext.losses.heatmap import HeatmapMSELoss, LearnableSigmaHeatmapLoss
from monai_ext.losses.adversarial import MaskedBCEWithLogits, confidence_fake_targets, pose_fake_targets
from monai_ext.losses.morphology import (
    MorphologyAwareHeatmapLoss,
    MorphologyAwareLoss,
    group_pairs,
    heatmap_coordinates,
    vertebra_pairs,
)
from monai_ext.losses.wing import WingLoss, wing
