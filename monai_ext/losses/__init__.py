"""Losses: heatmap regression (masked), learnable-sigma heatmaps, morphology-aware (Kim et al. 2022)."""

from monai_ext.losses.heatmap import HeatmapMSELoss, LearnableSigmaHeatmapLoss
from monai_ext.losses.adversarial import MaskedBCEWithLogits, confidence_fake_targets, pose_fake_targets
from monai_ext.losses.morphology import (
    MorphologyAwareHeatmapLoss,
    MorphologyAwareLoss,
    aasce_morphology,
    group_pairs,
    group_triplets,
    heatmap_coordinates,
    load_morphology,
    vertebra_pairs,
)
from monai_ext.losses.wing import WingLoss, wing
