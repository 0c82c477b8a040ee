"""Intensity-side transforms: histogram matching (SCN), cutout and mixup (KNEEL) keep landmark targets consistent."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import RandCoarseDropoutd

from monai_ext.losses import HeatmapMSELoss
from monai_ext.transforms import MatchHistogram, Mixup, mixup_loss


def _hand_like(rng: np.random.Generator, scale: float, offset: float) -> np.ndarray:
    img = rng.normal(0.1, 0.02, (64, 64))
    img[16:48, 10:54] = rng.normal(0.7, 0.1, (32, 44))  # foreground
    return img * scale + offset


def test_match_histogram_maps_foreground_quantiles_to_the_reference():
    rng = np.random.default_rng(0)
    reference = _hand_like(rng, 1.0, 0.0)
    moving = _hand_like(rng, 300.0, 50.0)  # other scanner: other scale and offset
    op = MatchHistogram(reference, mask="otsu")
    out = op(MetaTensor(torch.tensor(moving[None], dtype=torch.float32)))
    assert isinstance(out, MetaTensor) and out.shape == (1, 64, 64)
    fg = out[0, 16:48, 10:54].numpy()
    ref_fg = reference[16:48, 10:54]
    np.testing.assert_allclose(np.quantile(fg, [0.1, 0.5, 0.9]), np.quantile(ref_fg, [0.1, 0.5, 0.9]), atol=0.02)
    # monotone: the ordering of intensities is kept
    flat_in, flat_out = moving.reshape(-1), out.numpy().reshape(-1)
    order = np.argsort(flat_in)
    assert np.all(np.diff(flat_out[order]) >= -1e-6)


def test_cutout_leaves_landmarks_untouched():
    d = {"image": MetaTensor(torch.ones(1, 64, 64)), "landmarks": torch.tensor([[10.0, 20.0], [40.5, 33.2]])}
    t = RandCoarseDropoutd("image", holes=1, spatial_size=(16, 16), fill_value=0.0, prob=1.0)
    t.set_random_state(1)
    out = t(dict(d))
    assert torch.equal(out["landmarks"], d["landmarks"])
    assert 0 < float((out["image"] == 0).float().mean()) <= 0.1  # 16x16 of 64x64 = 6.25 %


def test_mixup_mixes_images_and_pairs_the_targets():
    images = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(4)])
    mix = Mixup(alpha=0.75, seed=3)
    mixed, perm, lam = mix(images)
    assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == [0, 1, 2, 3]
    expected = lam * torch.arange(4.0) + (1 - lam) * perm.float()
    torch.testing.assert_close(mixed[:, 0, 0, 0], expected)
    # the loss is the lam-weighted sum of the two unmixed targets' losses (mask permuted with its heatmaps)
    pred = torch.rand(4, 2, 8, 8)
    target = torch.rand(4, 2, 8, 8)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss = HeatmapMSELoss()
    got = mixup_loss(loss, pred, (target, mask), perm, lam)
    want = lam * loss(pred, target, mask) + (1 - lam) * loss(pred, target[perm], mask[perm])
    torch.testing.assert_close(got, want)


def test_mixup_identity_when_not_applied():
    images = torch.rand(3, 1, 4, 4)
    mixed, perm, lam = Mixup(prob=0.0, seed=0)(images)
    assert lam == 1.0 and torch.equal(mixed, images) and perm.tolist() == [0, 1, 2]
