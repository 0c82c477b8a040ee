"""Morphology-aware loss: zero for identical shapes (and for a translated copy), positive otherwise, missing landmarks
masked, gradients reach the heatmaps; normalised distances and the official three-point angle (Kim et al. 2022); the
official patch-softmax decoder; spine pairs and the shipped official pairs/triplets; BCE with masks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from monai_ext.decoding import DECODING_METHODS, decode_heatmaps
from monai_ext.heatmaps import gaussian_heatmaps
from monai_ext.losses import load_morphology
from monai_ext.losses.morphology import (
    MorphologyAwareHeatmapLoss,
    MorphologyAwareLoss,
    group_pairs,
    group_triplets,
    heatmap_coordinates,
    vertebra_pairs,
)

from monai_ext.losses.morphology import AASCE_MORPHOLOGY


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


def test_morphology_terms_switched_off_leave_the_bce_alone():
    loss = MorphologyAwareHeatmapLoss(pairs=vertebra_pairs(4), lambda_distance=0.0, lambda_direction=0.0)
    # switched off: no coordinates are computed and the loss is the BCE alone
    heat = torch.zeros(1, 4, 16, 16)
    loss(torch.zeros(1, 4, 16, 16), (heat, torch.ones(1, 4), torch.rand(1, 4, 2) * 10))
    assert set(loss.last_terms) == {"bce"}


def chain(b: int = 1) -> torch.Tensor:
    """A bent, non-symmetric chain of 5 points (pixels)."""
    return torch.tensor([[[10.0, 10.0], [18.0, 13.0], [24.0, 21.0], [27.0, 33.0], [35.0, 38.0]]]).repeat(b, 1, 1)


def rotate(points: torch.Tensor, degrees: float, shift: tuple[float, float]) -> torch.Tensor:
    t = math.radians(degrees)
    rot = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return points @ rot.T + torch.tensor(shift)


def test_normalised_distance_by_hand():
    loss = MorphologyAwareLoss([[0, 1]], triplets=[[0, 1, 2]])
    gt = torch.tensor([[[0.0, 0.0], [6.0, 8.0], [6.0, 0.0]]])
    pred = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]]])
    dist, _ = loss(pred, gt, spatial_shape=(10, 20))
    # (6/10, 8/20) vs (3/10, 4/20): |sqrt(0.52) - sqrt(0.13)|
    assert float(dist) == pytest.approx(math.sqrt(0.52) - math.sqrt(0.13), rel=1e-6)
    assert float(loss(pred, gt)[0]) == pytest.approx(5.0)  # no spatial_shape: pixels
    raw = MorphologyAwareLoss([[0, 1]], normalize=False)
    assert float(raw(pred, gt, spatial_shape=(10, 20))[0]) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="spatial_shape"):
        loss(pred, gt, spatial_shape=(10,))


def test_three_point_angle_is_rigid_invariant_and_signed():
    loss = MorphologyAwareLoss(vertebra_pairs(4)[:1], triplets=group_triplets([[0, 1, 2, 3, 4]]))
    gt = chain(2)
    for pred in (gt.clone(), rotate(gt, 37.0, (5.0, -9.0)), rotate(gt, -120.0, (40.0, 3.0)), gt * 1.7):
        assert float(loss(pred, gt, spatial_shape=(64, 64))[1]) == pytest.approx(0.0, abs=1e-6)
    bent = gt.clone()
    bent[:, 2] += torch.tensor([4.0, -3.0])
    assert float(loss(bent, gt)[1]) > 1e-3
    mirrored = gt * torch.tensor([-1.0, 1.0])  # same unsigned angles, opposite turns: the official angle is signed
    assert float(loss(mirrored, gt)[0]) == pytest.approx(0.0, abs=1e-5) and float(loss(mirrored, gt)[1]) > 0.1
    # by hand: a straight angle predicted as a right angle costs 1 - cos(90 deg) = 1
    one = MorphologyAwareLoss([[0, 1]], triplets=[[0, 1, 2]])
    straight = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]])
    right = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]])
    assert float(one(right, straight)[1]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="2D"):
        one(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3))


def test_missing_landmarks_mask_pairs_and_triplets():
    loss = MorphologyAwareLoss([[0, 1], [2, 3]], triplets=[[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    gt = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [math.nan, math.nan], [4.0, 0.0]]])
    pred = gt.nan_to_num(0.0).clone()
    pred[0, 3] = torch.tensor([90.0, -50.0])  # wild where the truth is missing: ignored
    pred[0, 2] = torch.tensor([1.0, 1.0])  # triplet (0, 1, 2) bent by 90 deg; pair (2, 3) masked
    dist, angle = loss(pred, gt)
    assert float(dist) == pytest.approx(0.0, abs=1e-6)  # only pair (0, 1) counts
    assert float(angle) == pytest.approx(1.0, abs=1e-6)  # only triplet (0, 1, 2) counts: 1 - cos(90 deg)
    dist, angle = loss(pred.requires_grad_(), torch.full_like(gt, math.nan))
    assert angle.requires_grad and float(dist.detach()) == 0.0 and float(angle.detach()) == 0.0


def test_group_triplets():
    assert group_triplets([[17, 18, 19, 20], [5, 2], [1, 2, 3]]) == [[17, 18, 19], [18, 19, 20], [1, 2, 3]]
    with pytest.raises(ValueError, match="repeats"):
        group_triplets([[1, 2, 1]])


def test_local_softmax_decoding():
    assert "local_softmax" in DECODING_METHODS
    p = torch.tensor([[[30.3, 41.8], [12.0, 60.45]]], dtype=torch.float64)
    heat = gaussian_heatmaps(p, (64, 80), 3.0).requires_grad_(True)
    coords, conf = decode_heatmaps(heat, "local_softmax", window=15, beta=10.0)
    assert torch.allclose(coords, p, atol=0.05) and torch.allclose(conf, torch.ones_like(conf), atol=0.02)
    assert (decode_heatmaps(heat, "argmax")[0] - p).abs().max() > 0.2  # the refinement matters
    coords.sum().backward()
    assert heat.grad is not None and heat.grad.abs().sum() > 0
    # by hand: softmax(beta * patch) over the whole 3x3 patch, zeros included (weight exp(0))
    h = torch.zeros(1, 1, 9, 9)
    h[0, 0, 5, 5], h[0, 0, 5, 6] = 1.0, 0.5
    c = decode_heatmaps(h, "local_softmax", window=3, beta=10.0)[0][0, 0]
    e = math.exp
    assert float(c[0]) == pytest.approx(5.0, abs=1e-6)
    assert float(c[1]) == pytest.approx(5.0 + (e(5) - 1) / (e(10) + e(5) + 7), rel=1e-5)
    # zero padding at the border: a corner peak is pulled by the padded pixels' weight as in the official code
    corner = torch.zeros(1, 1, 9, 9)
    corner[0, 0, 0, 0] = 1.0
    corner_coords = decode_heatmaps(corner, "local_softmax", window=3, beta=10.0)[0]
    assert torch.allclose(corner_coords, torch.zeros(1, 1, 2), atol=1e-6)
    assert heatmap_coordinates(h, "local_softmax", window=3, beta=10.0).allclose(c)


def test_load_morphology(tmp_path):
    pairs, triplets = load_morphology(AASCE_MORPHOLOGY)
    assert len(pairs) == 70 and len(triplets) == 70
    assert pairs[0] == [2, 4] and triplets[0] == [2, 63, 4]
    assert max(max(e) for e in pairs + triplets) < 68 and min(min(e) for e in pairs + triplets) >= 0
    assert all(len(set(e)) == len(e) for e in pairs + triplets)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_morphology(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    for text, match in (
        ("{not json", "not valid JSON"),
        ('{"pairs": [[0, 1]]}', "triplets"),
        ('{"landmarks": 4, "pairs": [[0, 4]], "triplets": [[0, 1, 2]]}', "out of range"),
        ('{"pairs": [[0, 1]], "triplets": [[0, 1]]}', "3 integer"),
        ('{"pairs": [[0, 0]], "triplets": [[0, 1, 2]]}', "different"),
        ('{"pairs": [[0, -1]], "triplets": [[0, 1, 2]]}', "different"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=match) as info:
            load_morphology(bad)
        assert "bad.json" in str(info.value)


def test_heatmap_loss_official_defaults():
    pairs, triplets = load_morphology(AASCE_MORPHOLOGY)
    loss = MorphologyAwareHeatmapLoss(pairs=pairs, triplets=triplets)
    assert (loss.coordinate_method, loss.coordinate_window, loss.coordinate_beta) == ("local_softmax", 15, None)
    assert loss.normalize_coordinates and loss.lambda_distance == 0.01 and loss.lambda_direction == 0.01
    torch.manual_seed(0)
    size = (64, 32)
    gt = torch.rand(1, 68, 2) * torch.tensor([56.0, 24.0]) + 4
    heat = gaussian_heatmaps(gt, size, 2.0)
    mask = torch.ones(1, 68)
    logits = torch.randn(1, 68, *size)
    total = loss(logits, (heat, mask, gt))
    assert set(loss.last_terms) == {"bce", "distance", "direction"}
    # the terms are MorphologyAwareLoss on the patch-softmax coordinates of the sigmoid, divided by the heatmap size
    coords = heatmap_coordinates(torch.sigmoid(logits), "local_softmax", window=15, beta=10.0)
    dist, angle = MorphologyAwareLoss(pairs, triplets)(coords / torch.tensor(size), gt / torch.tensor(size))
    assert loss.last_terms["distance"] == pytest.approx(float(dist), rel=1e-5)
    assert loss.last_terms["direction"] == pytest.approx(float(angle), rel=1e-5)
    assert float(total) == pytest.approx(loss.last_terms["bce"] + 0.01 * float(dist) + 0.01 * float(angle), rel=1e-5)
    # a perfect prediction: no morphology terms
    loss(torch.logit(heat.clamp(1e-6, 1 - 1e-6)), (heat, mask, gt))
    assert loss.last_terms["distance"] < 1e-3 and loss.last_terms["direction"] < 1e-3
    with pytest.raises(ValueError, match="coordinate_method"):
        MorphologyAwareHeatmapLoss(pairs, coordinate_method="argmax")
