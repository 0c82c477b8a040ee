"""Wing loss (KNEEL's coordinate loss): values in both regimes, continuity, missing-landmark masking."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ext.losses import WingLoss, wing


def test_values_in_both_regimes_match_hand_computation():
    # w = 15, eps = 3: C = 15 - 15 ln(1 + 15/3) = 15 - 15 ln 6
    c = 15.0 - 15.0 * math.log(6.0)
    diff = torch.tensor([0.0, 2.0, -2.0, 14.0, 20.0, -40.0], dtype=torch.float64)
    expected = torch.tensor(
        [0.0, 15 * math.log(1 + 2 / 3), 15 * math.log(1 + 2 / 3), 15 * math.log(1 + 14 / 3), 20 - c, 40 - c],
        dtype=torch.float64,
    )
    torch.testing.assert_close(wing(diff, 15.0, 3.0), expected)
    # the two pieces meet at |x| = w
    left, right = wing(torch.tensor([15.0 - 1e-6, 15.0 + 1e-6], dtype=torch.float64))
    assert abs(float(left - right)) < 1e-5


def test_mean_over_coordinates_and_sum():
    pred = torch.tensor([[[10.0, 10.0], [0.0, 0.0]]])
    target = torch.tensor([[[12.0, 10.0], [25.0, 0.0]]])  # differences: 2, 0, 25, 0
    c = 15.0 - 15.0 * math.log(6.0)
    per = [15 * math.log(1 + 2 / 3), 0.0, 25 - c, 0.0]
    assert WingLoss()(pred, target).item() == pytest.approx(sum(per) / 4, rel=1e-6)
    assert WingLoss(reduction="sum")(pred, target).item() == pytest.approx(sum(per), rel=1e-6)
    assert WingLoss(reduction="none")(pred, target).shape == (1, 2, 2)


def test_missing_landmarks_are_masked_by_nan_and_by_mask():
    pred = torch.tensor([[[10.0, 10.0], [50.0, 50.0], [3.0, 4.0]]], requires_grad=True)
    target = torch.tensor([[[12.0, 10.0], [float("nan"), float("nan")], [3.0, 4.0]]])
    loss = WingLoss()(pred, target)
    expected = 15 * math.log(1 + 2 / 3) / 4  # two present landmarks = four coordinates
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0, 1].abs().sum() == 0

    # the same through a (points, mask) target: the masked landmark's (finite) target is ignored
    finite = torch.nan_to_num(target, nan=999.0)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    assert WingLoss()(pred, (finite, mask)).item() == pytest.approx(expected, rel=1e-6)
    assert WingLoss()(pred, finite, mask).item() == pytest.approx(expected, rel=1e-6)


def test_all_missing_gives_zero_with_a_gradient_path():
    pred = torch.rand(2, 3, 2, requires_grad=True)
    loss = WingLoss()(pred, torch.full((2, 3, 2), float("nan")))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_bad_arguments():
    with pytest.raises(ValueError, match="width"):
        WingLoss(width=0.0)
    with pytest.raises(ValueError, match="reduction"):
        WingLoss(reduction="batchmean")
    with pytest.raises(ValueError, match="shape"):
        WingLoss()(torch.zeros(1, 2, 2), torch.zeros(1, 3, 2))


def test_scale_normalises_coordinates_as_the_official_code():
    # official KNEEL: wing on coordinates / crop size, where it is nearly L1 (slope width / curvature = 5)
    pred, target = torch.zeros(1, 1, 2), torch.tensor([[[12.8, 6.4]]])
    expected = 15.0 * torch.log1p(torch.tensor([0.1, 0.05]) / 3.0)
    torch.testing.assert_close(WingLoss(scale=128)(pred, target), expected.mean())
    torch.testing.assert_close(WingLoss(scale=[128, 64])(pred, target), 15.0 * torch.log1p(torch.tensor(0.1 / 3.0)))
    with pytest.raises(ValueError, match="positive"):
        WingLoss(scale=0)
