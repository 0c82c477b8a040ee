"""Morphology-aware loss: zero for identical shapes (and for a translated copy), positive otherwise, missing landmarks
masked, gradients reach the heatmaps; spine pairs; BCE with masks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from monai_ext.heatmaps import gaussian_heatmaps
from monai_ext.losses.morphology import (
    MorphologyAwareHeatmapLoss,
    MorphologyAwareLoss,
    group_pairs,
    heatmap_coordinates,
    vertebra_pairs,
)


def shape(b: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(b, 8, 2) * 50 + 5


def test_vertebra_pairs():
    pairs = vertebra_pairs(68)
    assert len(pairs) == 17 * 6 + 16 * 16
    assert [0, 1] in pairs and [3, 4] in pairs and [3, 7] in pairs and [3, 8] not in pairs
    assert all(i < j for i, j in pairs)
    assert len(vertebra_pairs(68, neighbours=0)) == 17 * 6
    with pytest.raises(ValueError):
        vertebra_pairs(10)


def test_group_pairs_and_the_hand_config():
    assert group_pairs([[17, 18, 19, 20], [5, 2]]) == [[17, 18], [17, 19], [17, 20], [18, 19], [18, 20], [19, 20], [5, 2]]
    with pytest.raises(ValueError, match="repeats"):
        group_pairs([[1, 1]])
    # the interactive bundle's hand.json: every pair within each of the five digits (MCP, PIP, DIP, tip)
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundles" / "interactive_kp" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "hand.json")])
    pairs = parser.get_parsed_content("morphology_pairs")
    assert len(pairs) == 5 * 6 and [17, 20] in pairs and [33, 36] in pairs and [20, 21] not in pairs


def test_zero_for_identical_and_translated_shapes():
    loss = MorphologyAwareLoss(vertebra_pairs(8))
    gt = shape()
    dist, direction = loss(gt.clone(), gt)
    assert float(dist) == 0.0 and float(direction) == pytest.approx(0.0, abs=1e-6)
    dist, direction = loss(gt + torch.tensor([7.0, -3.0]), gt)  # same shape, elsewhere
    assert float(dist) == pytest.approx(0.0, abs=1e-5) and float(direction) == pytest.approx(0.0, abs=1e-6)


def test_positive_for_other_shapes():
    loss = MorphologyAwareLoss(vertebra_pairs(8))
    gt = shape()
    dist, direction = loss(gt * 1.5, gt)  # scaled: distances change, directions do not
    assert float(dist) > 1.0 and float(direction) == pytest.approx(0.0, abs=1e-6)
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    dist, direction = loss(gt @ rot.T, gt)  # rotated 90 deg: directions change, distances do not
    assert float(dist) == pytest.approx(0.0, abs=1e-4) and float(direction) == pytest.approx(1.0, abs=1e-5)


def test_missing_landmarks_are_masked():
    pairs = [[0, 1], [1, 2], [2, 3]]
    loss = MorphologyAwareLoss(pairs)
    gt = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [math.nan, math.nan], [30.0, 0.0]]])
    pred = torch.tensor([[[0.0, 0.0], [12.0, 0.0], [500.0, -80.0], [31.0, 0.0]]])
    dist, direction = loss(pred, gt)
    # only pair (0, 1) has both landmarks: |12 - 10|; the wild landmark 2 contributes nothing
    assert float(dist) == pytest.approx(2.0) and float(direction) == pytest.approx(0.0, abs=1e-6)
    none = torch.full_like(gt, math.nan)
    dist, direction = loss(pred.requires_grad_(), none)
    assert dist.requires_grad and float(dist.detach()) == 0.0 and float(direction.detach()) == 0.0


def test_gradients_reach_heatmaps_through_soft_argmax():
    gt = torch.tensor([[[10.0, 12.0], [20.0, 12.0], [10.0, 25.0], [20.0, 25.0]]])
    logits = torch.logit(gaussian_heatmaps(gt + torch.tensor([1.3, -0.7]) * torch.tensor([[1.0], [0.0], [0.0], [-1.0]]),
                                           (32, 40), 2.0).clamp(1e-4, 1 - 1e-4))
    logits.requires_grad_(True)
    coords = heatmap_coordinates(torch.sigmoid(logits), "local_soft_argmax", window=7)
    assert torch.allclose(coords[0, 1], gt[0, 1], atol=0.1)
    dist, direction = MorphologyAwareLoss(vertebra_pairs(4))(coords, gt)
    (dist + direction).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_heatmap_loss_masks_missing_channels_and_adds_morphology():
    torch.manual_seed(0)
    gt = torch.tensor([[[8.0, 8.0], [20.0, 9.0], [8.0, 20.0], [21.0, 21.0]]])
    heat = gaussian_heatmaps(gt, (32, 32), 2.0)
    mask = torch.ones(1, 4)
    logits = torch.randn(1, 4, 32, 32)
    bce_only = MorphologyAwareHeatmapLoss(pairs=None)
    full = MorphologyAwareHeatmapLoss(pairs=vertebra_pairs(4), lambda_distance=0.01, lambda_direction=0.01)
    l_bce = bce_only(logits, (heat, mask, gt))
    l_full = full(logits, (heat, mask, gt))
    assert float(l_full) > float(l_bce) and set(full.last_terms) == {"bce", "distance", "direction"}
    # a masked channel does not count, whatever its prediction
    mask[0, 2] = 0
    wild = logits.clone()
    wild[0, 2] = 50.0
    assert float(bce_only(wild, (heat, mask, gt))) == pytest.approx(float(bce_only(logits, (heat, mask, gt))))
    # a perfect prediction costs only the BCE entropy floor and no morphology terms
    perfect = torch.logit(heat.clamp(1e-6, 1 - 1e-6))
    full(perfect, (heat, torch.ones(1, 4), gt))
    assert full.last_terms["distance"] < 0.05 and full.last_terms["direction"] < 1e-3


def test_morphology_warmup_schedule():
    from types import SimpleNamespace

    from monai_ext.handlers.interactive import MorphologyWarmup

    loss = MorphologyAwareHeatmapLoss(pairs=vertebra_pairs(4), lambda_distance=0.01, lambda_direction=0.02)
    warmup = MorphologyWarmup(loss, start_epoch=2, ramp_epochs=4)
    weights = []
    for epoch in range(1, 9):
        warmup(SimpleNamespace(state=SimpleNamespace(epoch=epoch)))
        weights.append((round(loss.lambda_distance, 6), round(loss.lambda_direction, 6)))
    assert [w[0] for w in weights] == [0.0, 0.0, 0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01]
    assert weights[-1][1] == 0.02
    # switched off: no coordinates are computed and the loss is the BCE alone
    loss.lambda_distance = loss.lambda_direction = 0.0
    heat = torch.zeros(1, 4, 16, 16)
    loss(torch.zeros(1, 4, 16, 16), (heat, torch.ones(1, 4), torch.rand(1, 4, 2) * 10))
    assert set(loss.last_terms) == {"bce"}
    assert MorphologyWarmup(loss, 0, 0).factor(1) == 1.0
