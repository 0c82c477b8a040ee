"""Split-conformal landmark regions (monai_ext.uncertainty): quantiles, coverage, spreads and their units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ext.heatmaps import gaussian_heatmaps
from monai_ext.uncertainty import (
    ConformalRegions,
    angle_quantiles,
    load_angle_calibration,
    HeatmapSpreadd,
    conformal_quantile,
    heatmap_spread,
    load_calibration,
    region_coverage,
    save_calibration,
)


def test_conformal_quantile_rank_and_too_few_points():
    scores = np.arange(1.0, 10.0)  # 9 scores
    assert conformal_quantile(scores, 0.9) == 9.0  # rank ceil(10 * 0.9) = 9
    assert conformal_quantile(scores, 0.5) == 5.0  # rank 5
    assert math.isinf(conformal_quantile(scores[:8], 0.9))  # rank 9 > 8 points
    assert conformal_quantile([np.nan, 2.0, 1.0, np.inf], 0.5) == 2.0  # non-finite scores do not count: n = 2, rank 2
    with pytest.raises(ValueError, match="coverage"):
        conformal_quantile(scores, 1.0)


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_coverage_matches_the_target_on_a_known_error_distribution(coverage: float):
    """Radial errors of a 2-D Gaussian with a per-point scale (Rayleigh): both regions cover the target fraction of
    new points; the adaptive one, knowing each point's scale, is smaller on average."""
    rng = np.random.default_rng(0)

    def sample(n: int, k: int = 5):
        scale = np.exp(rng.uniform(np.log(0.25), np.log(4.0), size=(n, k)))
        return np.linalg.norm(rng.normal(size=(n, k, 2)), axis=-1) * scale, scale

    cal_e, cal_s = sample(400)
    new_e, new_s = sample(4000)
    fixed = ConformalRegions.fit(cal_e, coverage, "fixed")
    adaptive = ConformalRegions.fit(cal_e, coverage, "adaptive", spreads=cal_s)
    got_f = region_coverage(new_e, fixed.radii(shape=new_e.shape))
    got_a = region_coverage(new_e, adaptive.radii(new_s))
    assert abs(got_f["coverage"] - coverage) < 0.015 and abs(got_a["coverage"] - coverage) < 0.015
    assert got_a["mean_radius"] < got_f["mean_radius"] and got_a["median_radius"] < 0.8 * got_f["median_radius"]
    assert got_f["n_points"] == new_e.size and got_f["n_missing"] == 0


def test_missing_landmarks_are_excluded_from_calibration_and_counted():
    errors = np.array([[1.0, np.nan], [2.0, 3.0], [4.0, np.nan]])
    regions = ConformalRegions.fit(errors, 0.5, "fixed")
    assert (regions.n_calibration, regions.n_missing) == (4, 2)
    assert regions.quantile == conformal_quantile([1.0, 2.0, 3.0, 4.0], 0.5)
    per = ConformalRegions.fit(errors, 0.5, "fixed", per_landmark=True)
    assert per.quantile == [2.0, 3.0]
    assert per.radii(shape=(2, 2)).tolist() == [[2.0, 3.0], [2.0, 3.0]]
    stats = region_coverage(errors, per.radii(shape=errors.shape))
    assert stats["n_points"] == 4 and stats["n_missing"] == 2 and stats["coverage"] == 0.75
    with pytest.raises(ValueError, match="spread"):
        ConformalRegions.fit(errors, 0.5, "adaptive")


def test_calibration_file_roundtrip_and_bad_file(tmp_path):
    regions = [ConformalRegions.fit(np.arange(1.0, 6.0)[:, None], 0.9, "fixed", unit="px", landmark_names=["a"]),
               ConformalRegions.fit(np.ones((5, 1)), 0.5, "adaptive", spreads=np.full((5, 1), 2.0))]
    assert math.isinf(regions[0].quantile)
    save_calibration(regions, tmp_path / "conformal.json", section="validation")
    back = load_calibration(tmp_path / "conformal.json")
    assert back == regions
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        load_calibration(tmp_path / "bad.json")


def test_heatmap_spread_of_a_gaussian():
    pts = torch.tensor([[[20.3, 30.6], [1.0, 2.0]]])  # the second near the border: its window is clipped
    hm = gaussian_heatmaps(pts, (48, 64), sigma=2.0)
    spread = heatmap_spread(hm, pts, radius=10)
    assert spread[0, 0].item() == pytest.approx(2.0 * math.sqrt(2.0), rel=0.02)
    assert 0 < spread[0, 1].item() < 2.0 * math.sqrt(2.0)
    wide = heatmap_spread(gaussian_heatmaps(pts, (48, 64), sigma=4.0), pts, radius=10)
    assert wide[0, 0] > 1.8 * spread[0, 0]
    assert torch.isnan(heatmap_spread(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 2))).all()


def test_spread_in_original_pixels_and_mm():
    """A preprocessed image at half the file's resolution, heatmaps at stride 4: a spread of sqrt(2) heatmap pixels
    is 4 sqrt(2) image pixels, 8 sqrt(2) pixels of the file and 4 sqrt(2) mm at 0.5 mm per file pixel."""
    image = MetaTensor(torch.zeros(1, 64, 64), affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0])))
    image.meta["original_affine"] = torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0]))
    image.meta["spacing"] = [0.5, 0.5]
    peaks_hm = torch.tensor([[6.0, 9.0], [8.5, 7.25]])
    hm = gaussian_heatmaps(peaks_hm[None], (16, 16), sigma=1.0)[0]
    coords = (peaks_hm + 0.5) * 4 - 0.5  # DecodeHeatmapd's mapping to image pixels
    out = HeatmapSpreadd()({"pred": hm, "image": image, "pred_landmarks": coords})
    torch.testing.assert_close(out["pred_spread"], torch.full((2,), 8 * math.sqrt(2)), rtol=0.03, atol=0)
    torch.testing.assert_close(out["pred_spread_mm"], torch.full((2,), 4 * math.sqrt(2)), rtol=0.03, atol=0)
    image.meta["spacing"] = None
    assert torch.isnan(HeatmapSpreadd()({"pred": hm, "image": image, "pred_landmarks": coords})["pred_spread_mm"]).all()


def test_angle_intervals_cover_and_round_trip(tmp_path):
    """Conformal half-widths of angle errors (the Cobb angles): pred ± q covers new angles at the target rate; a
    column with a missing angle leaves that image out of the column only; stored and read back, inf included."""
    rng = np.random.default_rng(1)
    gt = rng.uniform(5, 60, size=(3000, 3))
    pred = gt + rng.normal(0, [2.0, 4.0, 8.0], size=gt.shape)
    pred[0, 1] = np.nan
    q = angle_quantiles(pred[:1000], gt[:1000], [0.9])["0.9"]
    assert q[0] < q[1] < q[2]
    inside = np.abs(pred[1000:] - gt[1000:]) <= np.asarray(q)
    assert np.all(np.abs(inside.mean(0) - 0.9) < 0.025)
    assert math.isinf(angle_quantiles(pred[:5], gt[:5], [0.9])["0.9"][0])  # 5 images cannot give 90 %
    save_calibration([], tmp_path / "c.json", cobb={"0.9": [1.5, "inf", 3.0]})
    assert load_angle_calibration(tmp_path / "c.json", 0.9) == [1.5, math.inf, 3.0]
    assert load_angle_calibration(tmp_path / "c.json", 0.8) is None
