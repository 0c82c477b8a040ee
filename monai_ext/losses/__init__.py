"""Losses: heatmap regression (masked), learnable-sigma heatmaps."""

from monai_ext.losses.heatmap import HeatmapMSELoss, LearnableSigmaHeatmapLoss, gaussian_heatmaps
