"""gaussian_heatmaps, HeatmapMSELoss and LearnableSigmaHeatmapLoss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import GenerateHeatmap

from monai_ext.heatmaps import gaussian_heatmaps
from monai_ext.losses.heatmap import HeatmapMSELoss, LearnableSigmaHeatmapLoss

NAN = float("nan")


# ---------------------------------------------------------------- gaussian_heatmaps


def test_gaussian_peak_is_at_the_point_in_spatial_dims_order():
    pts = torch.tensor([[[10.0, 40.0], [63.0, 0.0]]])  # (x, y)
    h = gaussian_heatmaps(pts, (64, 48), 2.0)
    assert h.shape == (1, 2, 64, 48)
    assert h[0, 0, 10, 40] == pytest.approx(1.0)
    assert np.unravel_index(int(h[0, 0].argmax()), (64, 48)) == (10, 40)
    assert np.unravel_index(int(h[0, 1].argmax()), (64, 48)) == (63, 0)
    assert h[0, 0, 12, 40].item() == pytest.approx(math.exp(-4 / 8), rel=1e-5)


def test_gaussian_sub_pixel_amplitude_and_normalisation():
    pts = torch.tensor([[[30.5, 31.25]]])
    h = gaussian_heatmaps(pts, (64, 64), 3.0, amplitude=100.0)
    assert h[0, 0, 30, 31].item() == pytest.approx(100 * math.exp(-(0.25 + 0.0625) / 18), rel=1e-5)
    hn = gaussian_heatmaps(pts, (64, 64), 3.0, amplitude=100.0, normalize=True)
    assert hn.sum().item() == pytest.approx(100.0, rel=1e-4)  # integrates to gamma (Payer Eq. 1)
    assert torch.allclose(hn, h / (2 * math.pi * 9))


def test_gaussian_nan_point_gives_zero_channel_and_clean_gradients():
    pts = torch.tensor([[[NAN, NAN], [20.0, 20.0]], [[5.0, NAN], [1.0, 2.0]]], requires_grad=True)
    sigma = torch.tensor([2.0, 3.0], requires_grad=True)
    h = gaussian_heatmaps(pts, (32, 32), sigma)
    assert torch.count_nonzero(h[0, 0]) == 0 and torch.count_nonzero(h[1, 0]) == 0
    assert h[0, 1].max() > 0.99
    h.sum().backward()
    assert torch.isfinite(pts.grad).all() and torch.isfinite(sigma.grad).all()
    assert torch.count_nonzero(pts.grad[0, 0]) == 0


def test_gaussian_per_landmark_and_per_sample_sigma():
    pts = torch.tensor([[[16.0, 16.0], [16.0, 16.0]]]).repeat(2, 1, 1)
    h = gaussian_heatmaps(pts, (32, 32), torch.tensor([1.0, 4.0]))
    assert h[0, 0, 18, 16] == pytest.approx(math.exp(-4 / 2), rel=1e-5)
    assert h[0, 1, 18, 16] == pytest.approx(math.exp(-4 / 32), rel=1e-5)
    hb = gaussian_heatmaps(pts, (32, 32), torch.tensor([[1.0, 4.0], [4.0, 1.0]]))
    assert torch.allclose(hb[1], h[0].flip(0))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_heatmaps(pts, (32, 32), torch.ones(3))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_heatmaps(pts, (32, 32), 0.0)
    with pytest.raises(ValueError, match="spatial_shape"):
        gaussian_heatmaps(pts, (32, 32, 32), 1.0)


def test_gaussian_3d():
    h = gaussian_heatmaps(torch.tensor([[[3.0, 5.0, 7.0]]]), (8, 10, 12), 1.5)
    assert h.shape == (1, 1, 8, 10, 12)
    assert np.unravel_index(int(h.argmax()), (8, 10, 12)) == (3, 5, 7)


def test_gaussian_gradcheck_wrt_points_and_sigma():
    pts = torch.tensor([[[5.3, 6.7], [2.2, 9.1]]], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([1.7, 2.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda p, s: gaussian_heatmaps(p, (12, 14), s, amplitude=3.0, normalize=True), (pts, sigma)
    )


@pytest.mark.parametrize("sigma", [2.0, 3.0, 5.0])
def test_gaussian_agrees_with_monai_generate_heatmap(sigma):
    # MONAI's points are in spatial dims order too: (x, y) for our (C, W, H) arrays
    pts = torch.tensor([[10.0, 40.0], [50.0, 5.0], [NAN, NAN], [33.0, 21.0]])
    monai_h = GenerateHeatmap(sigma=sigma, spatial_shape=(64, 48))(pts)  # peak-normalised, erf-integrated kernel
    ours = gaussian_heatmaps(pts[None], (64, 48), sigma)[0]
    assert ours.shape == monai_h.shape
    assert torch.allclose(ours, monai_h, atol=1e-2)
    # MONAI integrates the Gaussian over each pixel: a box filter of variance 1/12 per axis on top of sigma^2
    matched = gaussian_heatmaps(pts[None], (64, 48), math.sqrt(sigma**2 + 1 / 12))[0]
    assert torch.allclose(matched, monai_h, atol=5e-4)
    assert torch.count_nonzero(monai_h[2]) == 0 and torch.count_nonzero(ours[2]) == 0


# ---------------------------------------------------------------- HeatmapMSELoss


def _pair(b=2, k=3, shape=(16, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, *shape, generator=g), torch.rand(b, k, *shape, generator=g)


def test_mse_default_is_plain_mse():
    p, t = _pair()
    assert HeatmapMSELoss()(p, t).item() == pytest.approx(F.mse_loss(p, t).item(), rel=1e-6)


def test_mse_reductions_and_payer_normalisation():
    p, t = _pair()
    sq = (p - t) ** 2
    none = HeatmapMSELoss(reduction="none")(p, t)
    assert none.shape == (2, 3)
    assert torch.allclose(none, sq.mean((2, 3)))
    assert HeatmapMSELoss(reduction="sum")(p, t).item() == pytest.approx(sq.mean((2, 3)).sum().item(), rel=1e-6)
    payer = HeatmapMSELoss(reduction="batchmean", spatial_reduction="sum")(p, t)
    assert payer.item() == pytest.approx(sq.sum().item() / 2, rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        HeatmapMSELoss(reduction="max")
    with pytest.raises(ValueError, match="spatial_reduction"):
        HeatmapMSELoss(spatial_reduction="max")


def test_mse_masked_landmarks_contribute_nothing():
    p, t = _pair()
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    loss = HeatmapMSELoss()
    ref = loss(p, t, mask)
    # mean over pixels x *visible* landmarks
    vis = mask.bool()
    assert ref.item() == pytest.approx(((p - t) ** 2)[vis].mean().item(), rel=1e-6)
    p2, t2 = p.clone(), t.clone()
    p2[0, 1] += 100.0
    p2[1, 2] = -7.0
    t2[0, 1] = NAN  # a missing landmark's channel may hold anything
    assert loss(p2, t2, mask).item() == pytest.approx(ref.item(), rel=1e-6)
    p3 = p2.clone().requires_grad_(True)
    loss(p3, t2, mask).backward()
    assert torch.isfinite(p3.grad).all()
    assert torch.count_nonzero(p3.grad[0, 1]) == 0 and torch.count_nonzero(p3.grad[1, 2]) == 0
    assert torch.count_nonzero(p3.grad[0, 0]) > 0
    assert loss(p, t, torch.zeros(2, 3)).item() == 0.0
    with pytest.raises(ValueError, match="mask"):
        loss(p, t, torch.ones(3))


def test_mse_accepts_heatmap_mask_pair_as_target():
    # PrepareLandmarkBatch hands SupervisedTrainer the label (heatmaps, mask); the trainer calls loss(pred, label)
    p, t = _pair()
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]])
    loss = HeatmapMSELoss()
    assert loss(p, (t, mask)).item() == pytest.approx(loss(p, t, mask).item())
    assert loss(p, (t, mask)).item() != pytest.approx(loss(p, t).item())
    assert loss([p, p], [t, mask]).item() == pytest.approx(2 * loss(p, t, mask).item())
    with pytest.raises(ValueError, match="tuple target"):
        loss(p, (t, mask), mask)
    with pytest.raises(ValueError, match="tuple target"):
        loss(p, (t,))


def test_mse_target_weight():
    p, t = _pair()
    per = HeatmapMSELoss(reduction="none")(p, t)
    w = torch.tensor([0.0, 2.0, 1.0])
    assert torch.allclose(HeatmapMSELoss(reduction="none")(p, t, target_weight=w), per * w)
    wb = torch.tensor([[1.0, 0.5, 0.0], [3.0, 1.0, 1.0]])
    assert HeatmapMSELoss(reduction="sum")(p, t, target_weight=wb).item() == pytest.approx((per * wb).sum().item())
    with pytest.raises(ValueError, match="target_weight"):
        HeatmapMSELoss()(p, t, target_weight=torch.ones(4))


def test_mse_foreground_weight():
    t = gaussian_heatmaps(torch.tensor([[[8.0, 6.0]]]), (16, 12), 1.5)
    p = torch.zeros_like(t)
    fg = t > 0.1
    w = torch.where(fg, 5.0, 1.0)
    expected = (w * t**2).mean()
    assert HeatmapMSELoss(foreground_weight=5.0)(p, t).item() == pytest.approx(expected.item(), rel=1e-6)
    assert HeatmapMSELoss(foreground_weight=5.0)(p, t).item() > HeatmapMSELoss()(p, t).item()


def test_mse_list_of_predictions_is_summed():
    p, t = _pair()
    p2 = p * 0.5
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]])
    loss = HeatmapMSELoss()
    assert loss([p, p2], t, mask).item() == pytest.approx((loss(p, t, mask) + loss(p2, t, mask)).item(), rel=1e-6)
    assert HeatmapMSELoss(reduction="none")((p, p2), t).shape == (2, 3)
    with pytest.raises(ValueError, match="input and target"):
        loss(p[:, :2], t)
    with pytest.raises(ValueError, match="empty"):
        loss([], t)


# ---------------------------------------------------------------- LearnableSigmaHeatmapLoss


def _landmarks():
    return torch.tensor([[[10.0, 12.0], [20.0, 25.0]], [[NAN, NAN], [15.0, 8.0]]])  # (B=2, K=2, 2)


def test_learnable_sigma_gets_gradients_and_penalty_is_added():
    lm = _landmarks()
    pred = torch.rand(2, 2, 32, 32)
    data_only = LearnableSigmaHeatmapLoss(2, sigma_init=[3.0, 4.0], alpha=0.0, amplitude=100.0)
    with_pen = LearnableSigmaHeatmapLoss(2, sigma_init=[3.0, 4.0], alpha=2.5, amplitude=100.0)
    assert isinstance(with_pen.sigma, torch.nn.Parameter)
    l0, l1 = data_only(pred, lm), with_pen(pred, lm)
    assert (l1 - l0).item() == pytest.approx(2.5 * (9 + 16), rel=1e-5)
    l1.backward()
    assert with_pen.sigma.grad is not None and torch.count_nonzero(with_pen.sigma.grad) == 2
    # data term matches HeatmapMSELoss on the generated target with the NaN landmark masked
    target = gaussian_heatmaps(lm, (32, 32), torch.tensor([3.0, 4.0]), amplitude=100.0, normalize=True)
    mask = torch.tensor([[1, 1], [0, 1]])
    ref = HeatmapMSELoss(reduction="batchmean", spatial_reduction="sum")(pred, target, mask)
    assert l0.item() == pytest.approx(ref.item(), rel=1e-5)


def test_learnable_sigma_masks_missing_landmarks():
    lm = _landmarks()
    loss = LearnableSigmaHeatmapLoss(2)
    pred = torch.rand(2, 2, 32, 32)
    ref = loss(pred, lm)
    pred[1, 0] = 1e3
    assert loss(pred, lm).item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.isfinite(ref)


def test_learnable_sigma_moves_towards_the_true_width():
    # the prediction is the (unit-integral, Payer Eq. 1) target for sigma = 3: with alpha = 0 the optimum is sigma = 3
    lm = torch.tensor([[[16.0, 16.0], [10.0, 20.0]]])
    pred = gaussian_heatmaps(lm, (32, 32), 3.0, amplitude=100.0, normalize=True)
    loss = LearnableSigmaHeatmapLoss(2, sigma_init=[4.0, 2.2], alpha=0.0, amplitude=100.0)
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        loss(pred, lm).backward()
        opt.step()
    assert torch.allclose(loss.sigma.detach(), torch.tensor([3.0, 3.0]), atol=0.1)
    # the penalty pulls the sigmas below the data optimum
    loss_pen = LearnableSigmaHeatmapLoss(2, sigma_init=3.0, alpha=0.5, amplitude=100.0)
    loss_pen(pred, lm).backward()
    assert (loss_pen.sigma.grad > 0).all()


def test_learnable_sigma_options_and_errors():
    frozen = LearnableSigmaHeatmapLoss(3, learn_sigma=False)
    assert not frozen.sigma.requires_grad
    assert torch.equal(frozen.sigma.detach(), torch.full((3,), 4.0))
    peak = LearnableSigmaHeatmapLoss(1, sigma_init=2.0, normalize=False, amplitude=100.0)
    assert peak.target(torch.tensor([[[4.0, 4.0]]]), (8, 8)).max().item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="none"):
        LearnableSigmaHeatmapLoss(3, reduction="none")
    with pytest.raises(ValueError, match="sigma_init"):
        LearnableSigmaHeatmapLoss(3, sigma_init=[1.0, 2.0])
    with pytest.raises(ValueError, match="sigma_init"):
        LearnableSigmaHeatmapLoss(2, sigma_init=-1.0)
    with pytest.raises(ValueError, match="landmarks"):
        LearnableSigmaHeatmapLoss(3)(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 2))
