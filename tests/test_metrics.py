from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.engines import SupervisedEvaluator

from monai_ext.errors import LandmarkDataError
from monai_ext.metrics.cumulative import LandmarkDistanceMetric
from monai_ext.metrics.distances import (
    parse_statistic,
    radial_errors,
    reference_distance_spacing,
    select_statistic,
    summarize_errors,
)
from monai_ext.metrics.ignite import (
    PCK,
    LandmarkMetric,
    MeanRadialError,
    SuccessfulDetectionRate,
    landmark_output_transform,
    lower_is_better,
)

NAN = math.nan


# ---------------------------------------------------------------- radial errors


def test_radial_errors_anisotropic_spacing_by_hand():
    gt = np.array([[[10.0, 10.0], [0.0, 0.0], [5.0, 5.0]]])
    pred = np.array([[[13.0, 14.0], [0.0, 2.0], [5.0, 5.0]]])
    # dx=3, dy=4 at (0.5, 0.25) mm/px -> sqrt(1.5^2 + 1^2); dy=2 -> 0.5 mm
    errors = radial_errors(pred, gt, spacing=[0.5, 0.25])
    np.testing.assert_allclose(errors, [[math.sqrt(1.5**2 + 1.0), 0.5, 0.0]])
    np.testing.assert_allclose(radial_errors(pred, gt), [[5.0, 2.0, 0.0]])
    # per-image spacing (N, 2) and a single image (K, 2)
    two = radial_errors(np.concatenate([pred, pred]), np.concatenate([gt, gt]), np.array([[1.0, 1.0], [2.0, 0.5]]))
    np.testing.assert_allclose(two, [[5.0, 2.0, 0.0], [math.sqrt(36 + 4), 1.0, 0.0]])
    np.testing.assert_allclose(radial_errors(torch.tensor(pred[0]), torch.tensor(gt[0]), 2.0), [10.0, 4.0, 0.0])


def test_radial_errors_missing_gt_is_nan_and_failed_prediction_is_inf():
    gt = np.array([[[NAN, NAN], [1.0, 1.0], [NAN, NAN]]])
    pred = np.array([[[3.0, 3.0], [NAN, NAN], [NAN, NAN]]])
    errors = radial_errors(pred, gt, [0.1, 0.1])
    assert np.isnan(errors[0, 0]) and np.isposinf(errors[0, 1]) and np.isnan(errors[0, 2])


def test_radial_errors_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        radial_errors(np.zeros((2, 3, 2)), np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="spacing must be"):
        radial_errors(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="finite and positive"):
        radial_errors(np.zeros((1, 3, 2)), np.zeros((1, 3, 2)), [NAN, 1.0])


def test_reference_distance_spacing():
    gt = np.array([[0.0, 0.0], [100.0, 0.0], [NAN, NAN], [100.0, 0.0]])
    assert reference_distance_spacing(gt, 0, 1) == pytest.approx(0.5)
    assert reference_distance_spacing(gt, 0, 1, distance_mm=20.0) == pytest.approx(0.2)
    # the hand convention: error_mm = 50 * |p - g| / |g_i - g_j|
    pred = gt + np.array([6.0, 8.0])
    s = reference_distance_spacing(gt, 0, 1)
    assert radial_errors(pred, gt, s)[0] == pytest.approx(50 * 10 / 100)
    with pytest.raises(LandmarkDataError, match="img.png: reference landmark 2 is missing"):
        reference_distance_spacing(gt, 0, 2, source="img.png")
    with pytest.raises(LandmarkDataError, match="coincide"):
        reference_distance_spacing(gt, 1, 3)
    with pytest.raises(LandmarkDataError, match="out of range"):
        reference_distance_spacing(gt, 0, 7)


# ---------------------------------------------------------------- summary


@pytest.fixture
def errors() -> np.ndarray:
    # 2 images x 3 landmarks: one missing gt (NaN), one failed detection (inf)
    return np.array([[1.0, 3.0, NAN], [2.0, math.inf, 12.0]])


def test_summary_by_hand(errors):
    s = summarize_errors(errors, radii=(2, 2.5, 10), outlier_radius=10.0, landmark_names=["a", "b", "c"])
    finite = [1.0, 3.0, 2.0, 12.0]
    assert s["n_images"] == 2 and s["n_landmarks"] == 3
    assert s["n_points"] == 5 and s["n_missing_gt"] == 1 and s["n_failed"] == 1
    assert s["n_outliers"] == 2  # 12 mm and the failed detection
    assert s["mre"] == pytest.approx(np.mean(finite))
    assert s["std"] == pytest.approx(np.std(finite))
    assert s["median"] == pytest.approx(2.5)
    assert s["max"] == pytest.approx(12.0)
    # SDR over the 5 points with ground truth: <=2 -> {1, 2}; <=10 -> {1, 3, 2}
    assert s["sdr"] == pytest.approx({"2": 40.0, "2.5": 40.0, "10": 60.0})
    assert s["sdr@2mm"] == s["sdr"]["2"] and s["sdr@2.5mm"] == 40.0 and s["sdr@10mm"] == 60.0
    a, b, c = s["per_landmark"]
    assert (a["name"], a["n"], a["mre"], a["sdr"]["2"]) == ("a", 2, 1.5, 100.0)
    assert (b["n"], b["n_failed"], b["mre"], b["sdr"]["10"]) == (2, 1, 3.0, 50.0)
    assert (c["n"], c["n_missing_gt"], c["mre"], c["n_outliers"]) == (1, 1, 12.0, 1)


def test_summary_pixel_unit_and_empty_landmark():
    s = summarize_errors(np.array([[1.0, NAN]]), radii=(2,), unit="px")
    assert s["unit"] == "px" and "sdr@2px" in s and s["sdr@2px"] == 100.0
    empty = s["per_landmark"][1]
    assert empty["n"] == 0 and math.isnan(empty["mre"]) and math.isnan(empty["sdr"]["2"])
    assert s["per_landmark"][0]["name"] == "landmark_0"
    all_failed = summarize_errors(np.array([[math.inf]]))
    assert math.isnan(all_failed["mre"]) and all_failed["sdr"]["2"] == 0.0 and all_failed["n_failed"] == 1


def test_statistic_names(errors):
    assert parse_statistic("MRE") == ("mre", None)
    assert parse_statistic("pck@2.5mm", "mm") == ("sdr", 2.5)
    assert parse_statistic("sdr@10") == ("sdr", 10.0)
    with pytest.raises(ValueError, match="unknown landmark statistic"):
        parse_statistic("accuracy")
    with pytest.raises(ValueError, match="in px"):
        parse_statistic("sdr@2px", "mm")
    assert select_statistic(errors, "pck@3") == pytest.approx(60.0)  # a radius not in the defaults: {1, 3, 2}
    assert select_statistic(errors, "sdr@3") == select_statistic(errors, "pck@3")
    assert select_statistic(errors, "n_failed") == 1
    assert select_statistic(errors, "summary")["n_points"] == 5


# ---------------------------------------------------------------- cumulative metric


def test_cumulative_metric_accumulates_and_resets():
    metric = LandmarkDistanceMetric(reduction="mre")
    gt = torch.tensor([[[0.0, 0.0], [10.0, 10.0]], [[5.0, 5.0], [NAN, NAN]]])
    pred = torch.tensor([[[3.0, 4.0], [10.0, 10.0]], [[5.0, 7.0], [1.0, 1.0]]])
    batch = metric(y_pred=pred, y=gt, spacing=torch.tensor([[1.0, 1.0], [0.5, 0.5]]))
    assert batch.shape == (2, 2)
    # a decollated batch: lists of (K, 2) and of (2,)
    metric(y_pred=[torch.tensor([[NAN, NAN], [0.0, 1.0]])], y=[torch.zeros(2, 2)], spacing=[[2.0, 2.0]])
    # errors: [5, 0], [1, nan], [inf, 2]
    assert metric.aggregate() == pytest.approx(8 / 4)
    assert metric.aggregate("median") == pytest.approx(1.5)
    assert metric.aggregate("sdr@2") == pytest.approx(100 * 3 / 5)
    assert metric.aggregate("n_failed") == 1
    assert metric.aggregate("none").shape == (3, 2)
    assert metric.aggregate("summary")["n_missing_gt"] == 1
    metric.reset()
    with pytest.raises(ValueError, match="no data"):
        metric.aggregate()


def test_cumulative_metric_units():
    with pytest.raises(ValueError, match="spacing"):
        LandmarkDistanceMetric()(y_pred=torch.zeros(1, 2, 2), y=torch.zeros(1, 2, 2))
    metric = LandmarkDistanceMetric(reduction="max", unit="px")
    metric(y_pred=torch.tensor([[[3.0, 4.0]]]), y=torch.zeros(1, 1, 2), spacing=torch.tensor([[9.0, 9.0]]))
    assert metric.aggregate() == pytest.approx(5.0)  # spacing ignored for pixel errors
    with pytest.raises(ValueError, match="unknown landmark statistic"):
        LandmarkDistanceMetric(reduction="dice")


# ---------------------------------------------------------------- ignite metrics


def fake_batches():
    """Two batches of two images, 3 landmarks; hand-computed errors below."""
    gt = torch.tensor(
        [
            [[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]],
            [[10.0, 10.0], [NAN, NAN], [30.0, 30.0]],
            [[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]],
            [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]],
        ]
    )
    offsets = torch.tensor(
        [
            [[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]],
            [[0.0, 1.0], [0.0, 0.0], [30.0, 40.0]],
            [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]],
            [[NAN, NAN], [0.0, 0.0], [0.0, 0.0]],
        ]
    )
    spacing = torch.tensor([[0.5, 0.5], [1.0, 1.0], [2.0, 1.0], [1.0, 1.0]])
    # errors (mm): [2.5, 0, 5], [1, nan, 50], [0, 2, 2], [inf, 0, 0]
    return [
        {
            "image": torch.zeros(2, 1, 4, 4),
            "landmarks": gt[i : i + 2],
            "spacing": spacing[i : i + 2],
            "pred_src": gt[i : i + 2] + offsets[i : i + 2],
        }
        for i in (0, 2)
    ]


FINITE_MM = [2.5, 0, 5, 1, 50, 0, 2, 2, 0, 0]


def run_evaluator(metrics: dict) -> SupervisedEvaluator:
    def post(d):  # the landmarks' postprocessing: a new key, so MONAI puts it in engine.state.output
        return {**d, "pred_landmarks": d["pred_src"]}

    key, *others = metrics
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=fake_batches(),
        network=torch.nn.Identity(),
        postprocessing=post,
        key_val_metric={key: metrics[key]},
        additional_metrics={k: metrics[k] for k in others},
        metric_cmp_fn=lower_is_better,
    )
    evaluator.run()
    return evaluator


def test_ignite_metrics_in_monai_evaluator():
    ev = run_evaluator(
        {
            "mre": MeanRadialError(),
            "sdr2": SuccessfulDetectionRate(2),
            "pck10": PCK(10),
            "median": LandmarkMetric("median", save_details=False),
            "failed": LandmarkMetric("n_failed", save_details=False),
        }
    )
    m = ev.state.metrics
    assert m["mre"] == pytest.approx(np.mean(FINITE_MM))
    assert m["median"] == pytest.approx(np.median(FINITE_MM))
    assert m["sdr2"] == pytest.approx(100 * 7 / 11)  # 11 points with gt (one failed), 7 within 2 mm
    assert m["pck10"] == pytest.approx(100 * 9 / 11)
    assert m["failed"] == 1
    assert ev.state.best_metric == pytest.approx(m["mre"])  # lower_is_better accepted the first value
    details = ev.state.metric_details["mre"]
    assert details.shape == (4, 3) and torch.isnan(details[1, 1]) and torch.isinf(details[3, 0])
    summary = ev.state.metric_summaries["mre"]
    assert summary["n_missing_gt"] == 1 and summary["n_points"] == 11 and len(summary["per_landmark"]) == 3


def test_ignite_metric_on_plain_engine_with_batch_dicts():
    batches = fake_batches()
    engine = Engine(lambda e, batch: {"pred_landmarks": batch["pred_src"], "landmarks": batch["landmarks"]})
    MeanRadialError(unit="px", save_details=False).attach(engine, "mre_px")
    MeanRadialError(save_details=False).attach(engine, "mre_mm")  # spacing found in engine.state.batch
    engine.run(batches)
    px = [5, 0, 10, 1, 50, 0, 1, 2, 0, 0]  # pixel errors of the finite points
    assert engine.state.metrics["mre_px"] == pytest.approx(np.mean(px))
    assert engine.state.metrics["mre_mm"] == pytest.approx(np.mean(FINITE_MM))


def test_ignite_metric_in_mm_needs_spacing():
    engine = Engine(lambda e, batch: batch)
    MeanRadialError(save_details=False).attach(engine, "mre")
    with pytest.raises(ValueError, match="no pixel spacing"):
        engine.run([{"pred_landmarks": torch.zeros(1, 1, 2), "landmarks": torch.zeros(1, 1, 2)}])


def test_ignite_metric_resets_each_run():
    engine = Engine(lambda e, b: b)
    metric = LandmarkMetric("max", unit="px", save_details=False)
    metric.attach(engine, "max")
    engine.run([{"pred_landmarks": torch.tensor([[[3.0, 4.0]]]), "landmarks": torch.zeros(1, 1, 2)}])
    assert engine.state.metrics["max"] == pytest.approx(5.0)
    engine.run([{"pred_landmarks": torch.tensor([[[0.0, 1.0]]]), "landmarks": torch.zeros(1, 1, 2)}])
    assert engine.state.metrics["max"] == pytest.approx(1.0)


def test_output_transform_forms():
    items = [
        {"pred_landmarks": np.array([[1.0, 2.0]]), "landmarks": torch.tensor([[1.0, 2.0]]), "spacing": [0.5, 0.5]},
        {"pred_landmarks": np.array([[3.0, 2.0]]), "landmarks": torch.tensor([[1.0, 2.0]]), "spacing": torch.ones(2)},
    ]
    pred, gt, spacing = landmark_output_transform(items)
    assert pred.shape == (2, 1, 2) and gt.shape == (2, 1, 2) and spacing.shape == (2, 2)
    _, _, none = landmark_output_transform([{k: v for k, v in i.items() if k != "spacing"} for i in items])
    assert none is None
    with pytest.raises(ValueError, match="some images"):
        landmark_output_transform([items[0], {k: v for k, v in items[1].items() if k != "spacing"}])
    with pytest.raises(KeyError, match="pred_landmarks"):
        landmark_output_transform({"landmarks": torch.zeros(1, 1, 2)})
    renamed = {"p": torch.ones(1, 1, 2), "g": torch.ones(1, 1, 2)}
    pred, _, _ = landmark_output_transform(renamed, pred_key="p", gt_key="g")
    assert pred.shape == (1, 1, 2)


def test_lower_is_better():
    assert lower_is_better(5.0, -1)  # MONAI's initial best_metric
    assert lower_is_better(1.0, 2.0)
    assert not lower_is_better(3.0, 2.0)
    assert not lower_is_better(math.nan, 2.0)
