"""User clicks as network hints: hint maps peak where clicked, simulated training clicks, clicks in original pixels
mapped into the network's pixels (the same mapping as the landmarks), clicks applied to predictions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ext.data.readers import spacing_affine
from monai_ext.decoding import decode_heatmaps
from monai_ext.errors import LandmarkDataError
from monai_ext.transforms import FitToShaped
from monai_ext.transforms.hints import (
    AppendHintMapsd,
    ApplyClicksd,
    ClicksToHintsd,
    RandClickSimulationd,
    attach_clicks,
    click_count_probabilities,
    encode_hints,
    parse_clicks,
)


def test_hint_maps_peak_where_clicked_and_are_zero_elsewhere():
    points = torch.full((2, 4, 2), float("nan"))
    points[0, 1] = torch.tensor([10.3, 20.6])
    points[1, 3] = torch.tensor([40.0, 5.25])
    maps = encode_hints(points, (48, 32), sigma=3.0)
    assert maps.shape == (2, 4, 48, 32)
    clicked = torch.isfinite(points).all(-1)
    assert (maps[~clicked] == 0).all()
    assert torch.allclose(maps[clicked].amax(dim=(1, 2)), torch.ones(2), atol=0.05)
    coords, _ = decode_heatmaps(maps, method="local_soft_argmax", window=7)
    assert torch.allclose(coords[clicked], points[clicked], atol=0.1)
    # peak 1 at the click itself
    assert maps[0, 1, 10, 21] > maps[0, 1, 10, 19]  # y = 20.6 lies between rows 20 and 21


def test_click_count_distribution_favours_few_clicks():
    p = click_count_probabilities(12, 0.7)
    assert len(p) == 13 and p.sum() == pytest.approx(1.0)
    assert np.all(np.diff(p) < 0) and p[0] > 0.25


def test_official_click_count_distribution():
    """Kim et al.'s ``num_dist`` (official util.py): 1/8, 1/2, 1/4, 1/16, ... for 0, 1, 2, 3, ... clicks up to 12."""
    from monai_ext.transforms import kim2022_click_count_probabilities

    p = kim2022_click_count_probabilities()
    assert len(p) == 13 and p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(p[:5], [1 / 8, 1 / 2, 1 / 4, 1 / 16, 1 / 32])
    assert p[-1] == p[-2] == pytest.approx(1 / 4096)
    sim = RandClickSimulationd(keys="landmarks", probabilities=p).set_random_state(0)
    counts = [int(torch.isfinite(sim({"landmarks": torch.rand(68, 2) * 50})["hint_landmarks"]).all(-1).sum())
              for _ in range(400)]
    assert 0.08 < counts.count(0) / 400 < 0.18 and 0.42 < counts.count(1) / 400 < 0.58


def test_simulated_clicks_are_ground_truth_positions_of_visible_landmarks():
    landmarks = torch.arange(20, dtype=torch.float32).reshape(10, 2) * 3.0
    landmarks[[2, 7]] = float("nan")
    sim = RandClickSimulationd(keys="landmarks", max_clicks=12, decay=0.8)
    sim.set_random_state(0)
    counts = []
    for _ in range(300):
        out = sim({"landmarks": landmarks})
        hints = out["hint_landmarks"]
        clicked = torch.isfinite(hints).all(-1)
        assert torch.equal(hints[clicked], landmarks[clicked])
        assert not clicked[[2, 7]].any()  # missing landmarks are never clicked
        counts.append(int(clicked.sum()))
    counts = np.array(counts)
    assert counts.max() <= 8 and counts.min() == 0  # capped at the 8 visible landmarks
    assert np.mean(counts <= 3) > 0.5  # mostly few clicks
    # deterministic for a seed
    a = RandClickSimulationd(max_clicks=5).set_random_state(3)({"landmarks": landmarks})["hint_landmarks"]
    b = RandClickSimulationd(max_clicks=5).set_random_state(3)({"landmarks": landmarks})["hint_landmarks"]
    assert torch.equal(torch.nan_to_num(a, nan=-1), torch.nan_to_num(b, nan=-1))


def test_parse_clicks_and_errors():
    pts = parse_clicks([{"landmark": 2, "x": 5, "y": 6.5}, {"landmark": 0, "x": 1, "y": 2}], 4, "a.dcm")
    assert pts[2].tolist() == [5.0, 6.5] and pts[0].tolist() == [1.0, 2.0]
    assert np.isnan(pts[[1, 3]]).all()
    assert parse_clicks('[{"landmark": 1, "x": 3, "y": 4}]', 2)[1].tolist() == [3.0, 4.0]
    with pytest.raises(LandmarkDataError, match="a.dcm: click 0: landmark 9"):
        parse_clicks([{"landmark": 9, "x": 1, "y": 1}], 4, "a.dcm")
    with pytest.raises(LandmarkDataError, match="must have"):
        parse_clicks([{"x": 1, "y": 1}], 4)
    with pytest.raises(LandmarkDataError, match="finite"):
        parse_clicks([{"landmark": 1, "x": math.nan, "y": 1}], 4)
    # inside the original image's pixel extent (pixel centres at integers: edges at -0.5 and W - 0.5)
    assert parse_clicks([{"landmark": 0, "x": 9.5, "y": -0.5}], 1, image_size=(10, 20))[0].tolist() == [9.5, -0.5]
    with pytest.raises(LandmarkDataError, match=r"b.png: click 0: \(10.0, 1.0\) is outside the 10 x 20 image"):
        parse_clicks([{"landmark": 0, "x": 10, "y": 1}], 1, "b.png", image_size=(10, 20))


def test_clicks_follow_the_same_mapping_as_the_landmarks():
    """A click at a landmark's original position lands exactly where the fitted landmark lands."""
    arr = torch.rand(1, 90, 200)
    affine = spacing_affine((0.8, 1.1))
    img = MetaTensor(arr, affine=affine, meta={"original_affine": affine.clone(), "filename_or_obj": "x.dcm"})
    landmarks = torch.tensor([[10.0, 20.0], [70.5, 150.25], [44.0, 3.0]])
    clicks = [{"landmark": 1, "x": 70.5, "y": 150.25}, {"landmark": 2, "x": 44.0, "y": 3.0}]
    d = FitToShaped(keys="image", spatial_size=(64, 128))({"image": img, "landmarks": landmarks, "clicks": clicks})
    out = ClicksToHintsd(keys="clicks", num_landmarks=3)(d)
    assert "clicks" not in out  # replaced by tensors that collate
    assert torch.isnan(out["hint_landmarks"][0]).all()
    assert torch.allclose(out["hint_landmarks"][1:], d["landmarks"][1:], atol=1e-4)
    assert torch.allclose(out["hint_landmarks_original"][1:], landmarks[1:])
    # no clicks at all: every hint missing
    assert torch.isnan(ClicksToHintsd(num_landmarks=3)({"image": d["image"]})["hint_landmarks"]).all()


def test_attach_clicks_by_name_path_or_file(tmp_path):
    items = [{"image": str(tmp_path / "a.dcm")}, {"image": str(tmp_path / "b.dcm")}]
    out = attach_clicks(items, {"b.dcm": [{"landmark": 0, "x": 1, "y": 2}]})
    assert "clicks" not in out[0] and out[1]["clicks"][0]["landmark"] == 0
    f = tmp_path / "clicks.json"
    f.write_text(json.dumps({str(tmp_path / "a.dcm"): []}))
    assert attach_clicks(items, str(f))[0]["clicks"] == []
    assert attach_clicks(items, {}) == items
    with pytest.raises(LandmarkDataError, match="c.dcm"):
        attach_clicks(items, {"c.dcm": []})


def test_apply_clicks_sets_clicked_predictions_and_confidence():
    pred = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    hints = torch.tensor([[math.nan, math.nan], [7.0, 8.0], [math.nan, math.nan]])
    out = ApplyClicksd()({"pred_landmarks": pred, "hint_landmarks": hints, "pred_confidence": torch.tensor([0.2, 0.3, 0.4])})
    assert out["pred_landmarks"].tolist() == [[1.0, 1.0], [7.0, 8.0], [3.0, 3.0]]
    assert out["pred_confidence"].tolist() == pytest.approx([0.2, 1.0, 0.4])


def test_append_hint_maps_keeps_the_image_and_its_affine():
    affine = spacing_affine((0.5, 0.7))
    img = MetaTensor(torch.rand(1, 20, 30), affine=affine, meta={"original_affine": affine.clone()})
    hints = torch.full((3, 2), float("nan"))
    hints[2] = torch.tensor([4.0, 9.0])
    out = AppendHintMapsd(num_landmarks=3, sigma=1.5, previous_channels=True)({"image": img, "hint_landmarks": hints})["image"]
    assert out.shape == (7, 20, 30) and isinstance(out, MetaTensor)
    assert torch.equal(out[0], img[0]) and torch.allclose(out.affine, img.affine)
    assert out[3, 4, 9] == pytest.approx(1.0) and out[1:3].abs().sum() == 0 and out[4:].abs().sum() == 0
    assert AppendHintMapsd(num_landmarks=3)({"image": img})["image"][1:].abs().sum() == 0  # no clicks
