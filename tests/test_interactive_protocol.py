"""The simulated-user click protocol (Kim et al. 2022, Fig. 4): the worst landmark is clicked each round, manual
revision sets exactly the clicked landmarks, the evaluator carries clicks to the network's pixels and back, the
writer reports both curves; the bundle's inference takes clicks in original pixels."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, ScaleIntensityRanged

from monai_ext.data import LoadRadiographd, load_datalist
from monai_ext.data.synthetic import generate_dataset
from monai_ext.engines.interactive import (
    InteractiveKeypointEvaluator,
    click_protocol,
    select_worst_landmark,
)
from monai_ext.handlers.interactive import InteractiveCurveWriter
from monai_ext.transforms import EnsureLandmarksd, FitToShaped
from monai_ext.uncertainty import ConformalRegions, save_calibration

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "interactive_kp"


def test_select_worst_landmark():
    errors = torch.tensor([[1.0, 5.0, 3.0, math.nan], [2.0, 2.0, 1.0, 0.5], [math.inf, 9.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    clicked = torch.zeros(4, 4, dtype=torch.bool)
    clicked[3] = True
    assert select_worst_landmark(errors, clicked).tolist() == [1, 0, 0, -1]  # ties: lowest index; inf is worst
    clicked[0, 1] = True
    assert select_worst_landmark(errors, clicked)[0] == 2  # clicked and missing landmarks are never picked


def _setup():
    gt = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0], [math.nan, math.nan]]])
    initial = gt + torch.tensor([[[1.0, 0.0], [0.0, 4.0], [3.0, 0.0], [0.0, -2.0], [0.0, 0.0]]])
    return gt, initial


def test_click_protocol_clicks_the_worst_landmark_each_round():
    gt, initial = _setup()
    seen = []

    def predict(clicked: torch.Tensor, r: int) -> torch.Tensor:
        # a model that fixes the clicked landmarks and, from round 2 on, makes landmark 0 the worst
        seen.append(clicked.clone())
        out = initial.clone()
        out[clicked] = gt[clicked]
        if r >= 2:
            out[0, 0] = gt[0, 0] + torch.tensor([9.0, 0.0])
        return out

    res = click_protocol(predict, initial, gt, num_clicks=4)
    assert res["model"].shape == (1, 5, 5, 2) and res["errors_model"].shape == (1, 5, 5)
    # model: worst of the current prediction: 1 (err 4), 2 (err 3), then 0 (err 9 after round 2), then 3
    assert res["clicks_model"][0].tolist() == [1, 2, 0, 3]
    assert [int(c.sum()) for c in seen] == [1, 2, 3, 4]  # cumulative clicks go to the model
    # manual: the initial errors in decreasing order: 1 (4), 2 (3), 3 (2), 0 (1); the missing landmark never
    assert res["clicks_manual"][0].tolist() == [1, 2, 3, 0]
    np.testing.assert_allclose(res["errors_manual"][0, :, :4].sum(-1).numpy(), [10.0, 6.0, 3.0, 1.0, 0.0])
    assert torch.isnan(res["errors_model"][0, :, 4]).all()


def test_least_confident_order_needs_no_ground_truth_to_choose():
    gt, initial = _setup()
    conf0 = torch.tensor([[0.9, 0.2, 0.5, 0.7, 0.1]])  # landmark 4 is the least confident but has no ground truth

    def predict(clicked: torch.Tensor, r: int):
        conf = conf0.clone()
        conf[clicked] = 1.0
        conf[0, 0] = 0.05 if r >= 2 else 0.9  # from round 2 the model is unsure of landmark 0
        out = initial.clone()
        out[clicked] = gt[clicked]
        return out, conf

    res = click_protocol(predict, initial, gt, num_clicks=4, order="least_confident", initial_confidence=conf0)
    # model: lowest current confidence among clicked-able landmarks: 1 (0.2), 2 (0.5), then 0 (0.05), then 3
    assert res["clicks_model"][0].tolist() == [1, 2, 0, 3]
    # manual: the 0-click confidences only: 1, 2, 3, 0; the missing landmark never
    assert res["clicks_manual"][0].tolist() == [1, 2, 3, 0]
    with pytest.raises(ValueError, match="initial_confidence"):
        click_protocol(predict, initial, gt, num_clicks=1, order="least_confident")
    with pytest.raises(ValueError, match="order"):
        click_protocol(predict, initial, gt, num_clicks=1, order="random")


def test_largest_region_order_clicks_the_widest_heatmap_first():
    gt, initial = _setup()
    spread0 = torch.tensor([[1.0, 3.0, 2.0, 0.5, 9.0]])  # landmark 4 is the widest but has no ground truth

    def predict(clicked: torch.Tensor, r: int):
        spread = spread0.clone()
        spread[0, 0] = 5.0 if r >= 2 else 1.0  # from round 2 the model's heatmap of landmark 0 widens
        out = initial.clone()
        out[clicked] = gt[clicked]
        return out, torch.ones(1, 5), spread

    res = click_protocol(predict, initial, gt, num_clicks=4, order="largest_region", initial_spread=spread0)
    assert res["clicks_model"][0].tolist() == [1, 2, 0, 3]
    assert res["clicks_manual"][0].tolist() == [1, 2, 0, 3]  # the 0-click spreads: 3, 2, 1, 0.5
    with pytest.raises(ValueError, match="initial_spread"):
        click_protocol(predict, initial, gt, num_clicks=1, order="largest_region")


def test_manual_revision_sets_exactly_the_clicked_landmarks():
    gt, initial = _setup()
    res = click_protocol(lambda clicked, r: initial.clone(), initial, gt, num_clicks=3, enforce_clicks=False)
    manual = res["manual"][0]
    for r in range(1, 4):
        clicked = res["clicks_manual"][0, :r]
        assert torch.equal(manual[r, clicked], gt[0, clicked].double())  # exactly the click
        others = [k for k in range(4) if k not in clicked.tolist()]
        assert torch.equal(manual[r, others], initial[0, others].double())  # untouched
    # without enforcement, a model that ignores hints stays where it was
    assert torch.equal(res["model"][0, 3, :4], initial[0, :4].double())
    res = click_protocol(lambda clicked, r: initial.clone(), initial, gt, num_clicks=3, enforce_clicks=True)
    assert torch.equal(res["errors_model"][0, 3, :4], res["errors_manual"][0, 3, :4])


class HintEcho(nn.Module):
    """A stand-in network whose sigmoid heatmaps are its hint maps: clicked landmarks are found at the click."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(x[:, 1 : 1 + self.k].clamp(1e-6, 1 - 1e-6)) + self.dummy


@pytest.fixture(scope="module")
def spine_data(tmp_path_factory) -> Path:
    return generate_dataset("spine", tmp_path_factory.mktemp("spine"), n_train=0, n_val=2, n_test=2, seed=3)


def test_evaluator_maps_clicks_to_the_network_and_back(spine_data: Path, tmp_path: Path):
    items = load_datalist(spine_data, "validation")
    pre = Compose([
        LoadRadiographd(keys="image"),
        EnsureLandmarksd(keys="landmarks", num_landmarks=68),
        FitToShaped(keys="image", spatial_size=(64, 128)),  # the landmarks move with the image, as in the bundle
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=4095.0, b_min=-1.0, b_max=1.0),
    ])
    loader = DataLoader(Dataset(items, pre), batch_size=2)
    calibration = tmp_path / "conformal.json"  # fixed 6-px regions at 90 % (as scripts/calibrate_regions.py writes)
    save_calibration([ConformalRegions("fixed", 0.9, 6.0, unit="px")], calibration)
    writer = InteractiveCurveWriter(tmp_path, unit="px", cobb=True, calibration=calibration, region_coverage=0.9)
    # with calibrated angles (scripts/calibrate_regions.py on a spine model) the interval is the angle ± its half-width
    angles = tmp_path / "angles" / "conformal.json"
    angles.parent.mkdir()
    save_calibration([ConformalRegions("fixed", 0.9, 6.0, unit="px")], angles, cobb={"0.9": [5.0, "inf", 2.0]})
    by_angle = InteractiveCurveWriter(angles.parent, unit="px", cobb=True, calibration=angles, region_coverage=0.9)
    evaluator = InteractiveKeypointEvaluator(
        device="cpu", val_data_loader=loader, network=HintEcho(68), num_landmarks=68, hint_sigma=2.0, num_clicks=3,
        unit="px", enforce_clicks=False, decode_window=5, val_handlers=[writer, by_angle],
    )
    evaluator.run()
    summary = evaluator.state.interactive_summary
    table = summary["table"]
    assert [r["clicks"] for r in table] == [0, 1, 2, 3] and summary["n_images"] == 2
    for rec in writer.records:
        for r in range(1, 4):
            clicked = rec["clicks_model"][:r]
            # the click went original -> network pixels (hint map) -> decoded -> original pixels (~2.4 per network
            # pixel here): back within 0.3 px, the decoding's sub-pixel accuracy
            assert np.all(rec["errors_model"][r, clicked] < 0.3), rec["errors_model"][r, clicked]
        assert rec["cobb_gt"].shape == (3,) and np.isfinite(rec["cobb_gt"]).all()
    manual = [r["mre_manual"] for r in table]
    assert all(b <= a for a, b in zip(manual, manual[1:]))
    with open(tmp_path / "interactive.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["clicks"]) for r in rows] == [0, 1, 2, 3] and "smape_model" in rows[0]
    assert {"mre_model_confident", "mre_manual_confident", "smape_model_confident"} <= set(rows[0])
    assert {"mre_model_region", "mre_manual_region", "smape_model_region"} <= set(rows[0])
    assert (tmp_path / "interactive.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "interactive.json").read_text())
    assert saved["unit"] == "px" and saved["cobb_interval"]["coverage_target"] == 0.9
    assert saved["cobb_interval"]["n_images"] == 2  # (this echo network's 0-click corners all coincide: the
    with open(tmp_path / "cobb.csv", newline="") as f:  # intervals' widths are tested in tests/test_cobb.py)
        cobb = list(csv.DictReader(f))
    assert len(cobb) == 2 and all(row[f"pred_{b}_{a}"] != "" for row in cobb for b in ("low", "high") for a in ("main", "lower"))
    for rec in by_angle.records:
        expected = np.clip(rec["cobb_model"][0][None] + np.array([[-5.0, -np.inf, -2.0], [5.0, np.inf, 2.0]]), 0.0, 90.0)
        np.testing.assert_allclose(rec["cobb_interval"], expected)
    assert json.loads((angles.parent / "interactive.json").read_text())["cobb_interval"]["source"] == "calibrated angles"


def _inference(spine_data: Path, tmp_path: Path, ckpt: Path, name: str, **overrides) -> dict:
    from monai.bundle import ConfigWorkflow

    from bundle_workflow import workflow_files

    cfg = BUNDLE / "configs"
    wf = ConfigWorkflow(
        config_file=workflow_files(BUNDLE, ["inference.json"]),
        meta_file=str(cfg / "metadata.json"), logging_file=str(cfg / "logging.conf"), workflow_type="infer",
        run_id="inference", bundle_root=str(tmp_path), ckpt_path=str(ckpt), output_dir=str(tmp_path / name),
        dataset_dir=str(spine_data.parent), input=str(spine_data), **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return json.loads((tmp_path / name / "inference" / "predictions.json").read_text())


def test_bundle_inference_takes_clicks_in_original_pixels(spine_data: Path, tmp_path: Path):
    from bundle_workflow import save_untrained_model

    torch.manual_seed(0)
    ckpt = save_untrained_model(BUNDLE, tmp_path, dataset_dir=str(spine_data.parent))

    test_images = [row["image"] for row in json.loads(spine_data.read_text())["test"]]
    click = {"landmark": 5, "x": 60.25, "y": 140.5}
    clicks = {Path(test_images[0]).name: [click]}
    plain = _inference(spine_data, tmp_path, ckpt, "plain")
    hinted = _inference(spine_data, tmp_path, ckpt, "hinted", clicks=clicks, enforce_clicks=False)
    again = _inference(spine_data, tmp_path, ckpt, "again", clicks=clicks, enforce_clicks=False)
    enforced = _inference(spine_data, tmp_path, ckpt, "enforced", clicks=clicks)

    def points(doc: dict, i: int) -> np.ndarray:
        return np.array([[p["x"], p["y"]] for p in doc["predictions"][i]["landmarks"]], dtype=float)

    assert not np.allclose(points(plain, 0), points(hinted, 0))  # the click changes the output ...
    np.testing.assert_array_equal(points(hinted, 0), points(again, 0))  # ... deterministically
    np.testing.assert_array_equal(points(plain, 1), points(hinted, 1))  # the other image is not clicked
    # enforced: the clicked landmark is the click, mapped original -> network -> original pixels
    np.testing.assert_allclose(points(enforced, 0)[5], [click["x"], click["y"]], atol=1e-3)
    assert enforced["predictions"][0]["landmarks"][5]["confidence"] == pytest.approx(1.0)


def test_bundle_evaluate_config_writes_both_curves(spine_data: Path, tmp_path: Path):
    from bundle_workflow import save_untrained_model, workflow_files
    from monai.bundle import ConfigWorkflow

    cfg = BUNDLE / "configs"
    torch.manual_seed(0)
    save_untrained_model(BUNDLE, tmp_path, dataset_dir=str(spine_data.parent))
    wf = ConfigWorkflow(
        config_file=workflow_files(BUNDLE, ["evaluate.json"]), meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"), workflow_type="infer", run_id="evaluating", bundle_root=str(tmp_path),
        output_dir=str(tmp_path / "eval"), dataset_dir=str(spine_data.parent), num_clicks=2,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    out = tmp_path / "eval" / "evaluation"
    with open(out / "interactive.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["clicks"]) for r in rows] == [0, 1, 2]
    assert {"mre_model", "mre_manual", "smape_model", "smape_manual"} <= set(rows[0])
    assert float(rows[0]["mre_model"]) == pytest.approx(float(rows[0]["mre_manual"]))  # same 0-click start
    assert float(rows[2]["mre_manual"]) < float(rows[0]["mre_manual"])
    for name in ("interactive.png", "interactive.json", "cobb.csv", "predictions.json", "summary.json"):
        assert (out / name).is_file(), name


def test_prepare_batch_and_iterative_inferer_build_the_input_channels():
    from monai_ext.engines.interactive import PrepareInteractiveBatch
    from monai_ext.inferers.hints import IterativeHintInferer

    hints = torch.full((1, 3, 2), float("nan"))
    hints[0, 1] = torch.tensor([5.0, 7.0])
    batch = {"image": torch.randn(1, 1, 16, 20), "hint_landmarks": hints, "heatmap": torch.zeros(1, 3, 16, 20),
             "landmark_mask": torch.ones(1, 3), "landmarks": torch.rand(1, 3, 2)}
    inputs, target = PrepareInteractiveBatch(3, hint_sigma=2.0, previous_prediction=True)(batch)
    assert inputs.shape == (1, 7, 16, 20) and len(target) == 3
    assert torch.equal(inputs[:, :1], batch["image"])
    assert inputs[0, 2, 5, 7] == pytest.approx(1.0) and inputs[0, [1, 3]].abs().sum() == 0  # only landmark 1 hinted
    assert inputs[:, 4:].abs().sum() == 0  # no previous prediction yet
    inputs_no_hint, _ = PrepareInteractiveBatch(3, hint_sigma=2.0)({"image": batch["image"]})
    assert inputs_no_hint.shape == (1, 4, 16, 20) and inputs_no_hint[:, 1:].abs().sum() == 0

    with pytest.raises(ValueError, match="previous-prediction"):
        PrepareInteractiveBatch(3, hint_sigma=2.0, iterative=True)
    _, _, args, kwargs = PrepareInteractiveBatch(3, hint_sigma=2.0, previous_prediction=True, iterative=True)(batch)
    assert args == () and set(kwargs) == {"hints", "landmarks"}
    assert torch.equal(torch.isnan(kwargs["hints"]), torch.isnan(hints))


def test_iterative_inferer_adds_the_worst_landmark_each_round():
    """Kim et al.'s official training loop: r rounds without gradient (eval mode), each adding the landmark with the
    largest hard-argmax error as a click; the trained pass gets the clicks and the last round's heatmaps."""
    from monai_ext.engines.interactive import interactive_inputs
    from monai_ext.inferers.hints import IterativeHintInferer

    k, shape = 3, (16, 20)
    gt = torch.tensor([[[3.0, 4.0], [10.0, 10.0], [14.0, 17.0]]])
    hints = torch.full((1, k, 2), float("nan"))
    hints[0, 0] = gt[0, 0]  # landmark 0 already clicked
    inputs = interactive_inputs(torch.randn(1, 1, *shape), hints, k, 2.0, True)
    peak = torch.zeros(1, k, *shape)
    peak[0, 0, 3, 4] = peak[0, 1, 9, 10] = peak[0, 2, 0, 0] = 1.0  # errors 0, 1, ~22: landmark 2 is the worst
    seen, modes = [], []

    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            modes.append(self.training)
            return torch.logit(peak.clamp(0.01, 0.99))

    net = Net().train()
    inferer = IterativeHintInferer(k, hint_sigma=2.0, max_rounds=2, seed=0)
    counts = set()
    for _ in range(30):
        seen.clear(), modes.clear()
        inferer(inputs, net, hints=hints, landmarks=gt)
        rounds = len(seen) - 1
        counts.add(rounds)
        assert modes == [False] * rounds + [True] and net.training  # no-grad rounds in eval mode, then train again
        last = seen[-1]
        assert torch.equal(last[:, :1], inputs[:, :1])
        clicked = [int(c) for c in range(k) if last[0, 1 + c].max() > 0.99]
        # round 1 adds landmark 2 (the worst unclicked), round 2 landmark 1
        assert clicked == [[0], [0, 2], [0, 1, 2]][rounds]
        if rounds == 0:
            assert last[:, 1 + k :].abs().sum() == 0
        else:  # previous prediction: the last round's sigmoid heatmaps, every channel
            assert torch.allclose(last[:, 1 + k :], peak.clamp(0.01, 0.99), atol=1e-6)
    assert counts == {0, 1, 2}
    seen.clear()
    inferer(inputs, net)  # without clicks and landmarks: a plain forward pass
    assert len(seen) == 1
