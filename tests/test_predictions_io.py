from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monai_ext.data.predictions import (
    make_prediction_record,
    match_images,
    read_ground_truth,
    read_prediction_file,
    read_predictions,
    write_predictions_csv,
    write_predictions_json,
)
from monai_ext.errors import DatalistValidationError, LandmarkDataError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "evaluate_predictions.py"
NAN = math.nan


def load_script():
    spec = importlib.util.spec_from_file_location("evaluate_predictions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strict_json(path: Path) -> dict:
    def reject(name):
        raise AssertionError(f"non-standard JSON constant {name} in {path}")

    return json.loads(path.read_text(), parse_constant=reject)


@pytest.fixture
def records() -> list[dict]:
    return [
        make_prediction_record(
            "images/a.png",
            [[10.0, 20.0], [NAN, NAN], [3.5, 4.25]],
            confidence=[0.9, 0.1, 0.8],
            spacing=[0.5, 0.25],
            spacing_source="datalist",
            landmark_names=["p0", "p1", "p2"],
        ),
        make_prediction_record("images/b.png", error="cannot read images/b.png: truncated file"),
    ]


# ---------------------------------------------------------------- prediction files


def test_record_fields(records):
    ok, failed = records
    assert ok["spacing"] == [0.5, 0.25] and ok["error"] is None
    first = ok["landmarks"][0]
    assert first == {"index": 0, "name": "p0", "x": 10.0, "y": 20.0, "x_mm": 5.0, "y_mm": 5.0, "confidence": 0.9}
    assert ok["landmarks"][1]["x"] is None and ok["landmarks"][1]["x_mm"] is None
    assert failed["landmarks"] == [] and "truncated" in failed["error"]
    with pytest.raises(ValueError, match="a.png: landmarks must be"):
        make_prediction_record("a.png", [1.0, 2.0])


def test_json_round_trip(tmp_path, records):
    path = write_predictions_json(records, tmp_path / "out" / "predictions.json")
    doc = strict_json(path)
    assert doc["landmark_names"] == ["p0", "p1", "p2"] and doc["unit"] == "mm"
    assert doc["predictions"][1]["error"].startswith("cannot read")
    preds = read_prediction_file(path)
    np.testing.assert_array_equal(preds.landmarks["images/a.png"], [[10.0, 20.0], [NAN, NAN], [3.5, 4.25]])
    assert preds.landmarks["images/b.png"].shape == (3, 2) and np.isnan(preds.landmarks["images/b.png"]).all()
    np.testing.assert_array_equal(preds.spacing["images/a.png"], [0.5, 0.25])
    assert set(preds.errors) == {"images/b.png"} and preds.landmark_names == ["p0", "p1", "p2"]
    assert [p.name for p in path.parent.iterdir()] == ["predictions.json"]  # no temporary file left


def test_csv_round_trip(tmp_path, records):
    path = write_predictions_csv(records, tmp_path / "predictions.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "index", "name", "x", "y", "x_mm", "y_mm", "confidence", "error"]
    assert len(rows) == 1 + 3 + 1
    assert rows[2][3:7] == ["", "", "", ""] and rows[4][0] == "images/b.png" and rows[4][8].startswith("cannot")
    preds = read_prediction_file(path)
    np.testing.assert_array_equal(preds.landmarks["images/a.png"], [[10.0, 20.0], [NAN, NAN], [3.5, 4.25]])
    assert np.isnan(preds.landmarks["images/b.png"]).all() and preds.landmarks["images/b.png"].shape == (3, 2)
    assert preds.landmark_names == ["p0", "p1", "p2"] and "images/b.png" in preds.errors


def test_atomic_write_keeps_old_file_on_failure(tmp_path, records):
    path = write_predictions_json(records, tmp_path / "p.json")
    before = path.read_text()
    bad = [{**records[0], "landmarks": [{"index": 0, "name": "p0", "x": NAN}]}]  # NaN is refused by strict JSON
    with pytest.raises(ValueError):
        write_predictions_json(bad, path)
    assert path.read_text() == before and len(list(tmp_path.iterdir())) == 1


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_wide_csv_extra_columns_and_missing_cells(tmp_path):
    text = "image,x0,y0,x1,y1,cobb_main\nimages/a.jpg,1,2,3.5,4,12.5\nimages/b.jpg,5,6,,,7\n"
    path = write_text(tmp_path / "landmarks.csv", text)
    points = read_predictions(path)
    np.testing.assert_array_equal(points["images/a.jpg"], [[1, 2], [3.5, 4]])
    np.testing.assert_array_equal(points["images/b.jpg"], [[5, 6], [NAN, NAN]])
    gt = read_ground_truth(path)
    assert gt.spacing == {} and gt.landmark_names is None and set(gt.landmarks) == {"images/a.jpg", "images/b.jpg"}


def test_bad_csv_rows_name_file_and_line(tmp_path):
    text = "image,x0,y0,x1,y1\na.jpg,1,2,3,4\nb.jpg,1,2,3\nc.jpg,1,abc,3,4\nd.jpg,1,,3,4\n"
    path = write_text(tmp_path / "bad.csv", text)
    with pytest.raises(DatalistValidationError) as info:
        read_predictions(path)
    message = str(info.value)
    assert str(path) in message and "3 problem(s)" in message
    assert "line 3: expected 5 columns, got 4" in message
    assert "line 4, column y0: 'abc' is not a number" in message
    assert "line 5: landmarks [0] have only one of their two coordinates" in message
    with pytest.raises(LandmarkDataError, match="unrecognised CSV header"):
        read_predictions(write_text(tmp_path / "h.csv", "file,a,b\nx,1,2\n"))
    text = "image,index,name,x,y,x_mm,y_mm,confidence,error\na.png,one,,1,2,,,,\n"
    long_bad = write_text(tmp_path / "long.csv", text)
    with pytest.raises(DatalistValidationError, match="line 2: index 'one' is not a non-negative integer"):
        read_predictions(long_bad)
    with pytest.raises(LandmarkDataError, match="not found"):
        read_predictions(tmp_path / "absent.csv")
    doc = {"predictions": [{"image": "a.png", "spacing": [0, 1], "landmarks": [{"index": 0, "x": "?", "y": 1}]}]}
    with pytest.raises(DatalistValidationError) as info:
        read_predictions(write_text(tmp_path / "p.json", json.dumps(doc)))
    assert "predictions[0]: spacing must be [sx, sy] positive" in str(info.value)
    assert "predictions[0].landmarks[0].x: '?' is not a number" in str(info.value)


def datalist(tmp_path: Path) -> Path:
    doc = {
        "name": "tiny",
        "landmarks": ["a", "b", "c"],
        "spacing_mode": "datalist",
        "training": [{"image": "images/t.png", "landmarks": [[0, 0], [1, 1], [2, 2]]}],
        "validation": [
            {"image": "images/v1.png", "landmarks": [[10, 10], [20, 20], None], "spacing": [0.5, 0.5]},
            {"image": "images/v2.png", "landmarks": [[0, 0], [100, 0], [50, 50]], "spacing": [0.1, 0.2]},
        ],
    }
    return write_text(tmp_path / "data" / "datalist.json", json.dumps(doc))


def test_read_ground_truth_datalist(tmp_path):
    path = datalist(tmp_path)
    gt = read_ground_truth(path, section="validation")
    assert gt.landmark_names == ["a", "b", "c"] and gt.spacing_mode == "datalist"
    v1, v2 = (str((path.parent / "images" / n).resolve()) for n in ("v1.png", "v2.png"))
    assert list(gt.landmarks) == [v1, v2]  # absolute paths, as load_datalist gives
    np.testing.assert_array_equal(gt.landmarks[v1], [[10, 10], [20, 20], [NAN, NAN]])
    np.testing.assert_array_equal(gt.spacing[v2], [0.1, 0.2])
    assert list(read_ground_truth(path, section="training").spacing) == []
    with pytest.raises(LandmarkDataError, match="no section 'test'.*training"):
        read_ground_truth(path, section="test")
    bad = {
        "landmarks": ["a", "b"],
        "validation": [{"image": "x.png", "landmarks": [[1, 2]]}, {"image": "y.png", "landmarks": [[1, "q"], None]}],
    }
    with pytest.raises(DatalistValidationError) as info:
        read_ground_truth(write_text(tmp_path / "bad.json", json.dumps(bad)))
    assert str(tmp_path / "bad.json") in str(info.value)
    assert "validation[0] x.png: 1 landmarks, expected 2" in str(info.value)
    assert "validation[1] y.png: landmark 0 is not a point" in str(info.value)
    unannotated = {"landmarks": ["a"], "test": [{"image": "x.png"}]}
    with pytest.raises(DatalistValidationError, match="test\\[0\\] .*x.png: no 'landmarks'"):
        read_ground_truth(write_text(tmp_path / "test.json", json.dumps(unannotated)), section="test")


def test_match_images(tmp_path):
    pred_base, gt_base = tmp_path / "preds", tmp_path / "data"
    preds = [str(gt_base / "images" / "a.png"), "elsewhere/b.png", "x/c.png", "y/c.png", "extra.png"]
    gts = ["images/a.png", "images/b.png", "images/c.png", "images/d.png"]
    pairs, unmatched_pred, unmatched_gt = match_images(preds, gts, pred_base, gt_base)
    # a: same resolved path; b: unique basename; c: ambiguous basename among predictions -> unmatched
    assert pairs == [(preds[0], "images/a.png"), ("elsewhere/b.png", "images/b.png")]
    assert unmatched_pred == ["x/c.png", "y/c.png", "extra.png"]
    assert unmatched_gt == ["images/c.png", "images/d.png"]


# ---------------------------------------------------------------- evaluate_predictions CLI


def tiny_predictions(tmp_path: Path) -> Path:
    """Predictions for the datalist's validation images, paths relative to another folder."""
    records = [
        make_prediction_record(
            str(tmp_path / "data" / "images" / "v1.png"), [[13, 14], [20, 20], [5, 5]], spacing=[0.5, 0.5]
        ),
        make_prediction_record("../data/images/v2.png", [[0, 10], [NAN, NAN], [50, 50]], spacing=[0.1, 0.2]),
        make_prediction_record("../data/images/unknown.png", [[0, 0], [0, 0], [0, 0]]),
    ]
    return write_predictions_json(records, tmp_path / "run" / "predictions.json")


def test_evaluate_function_by_hand(tmp_path, capsys):
    script = load_script()
    out_dir = tmp_path / "eval"
    summary = script.evaluate_predictions(
        pred=str(tiny_predictions(tmp_path)), gt=str(datalist(tmp_path)), out_dir=str(out_dir), radii=(2, 3)
    )
    # v1 (0.5 mm/px): |(3, 4)| = 5 px -> 2.5 mm, 0, gt missing; v2 (0.1, 0.2): dy 10 px -> 2 mm, failed, 0
    assert summary["unit"] == "mm" and summary["evaluation"]["spacing_mode"] == "datalist"
    assert summary["n_points"] == 5 and summary["n_missing_gt"] == 1 and summary["n_failed"] == 1
    assert summary["mre"] == pytest.approx((2.5 + 0 + 2 + 0) / 4)
    assert summary["sdr"] == pytest.approx({"2": 60.0, "3": 80.0})
    assert summary["evaluation"]["unmatched_predictions"] == ["../data/images/unknown.png"]
    assert summary["evaluation"]["n_matched"] == 2
    assert "MRE 1.125" in capsys.readouterr().out
    written = strict_json(out_dir / "summary.json")
    assert written["sdr@2mm"] == 60.0 and written["per_landmark"][2]["name"] == "c"
    assert written["per_landmark"][1]["mre"] == 0.0 and written["per_landmark"][1]["n_failed"] == 1
    with open(out_dir / "per_landmark.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["a", "b", "c"] and rows[0]["sdr@2mm"] == "50.0"
    with open(out_dir / "errors.csv", newline="") as f:
        errors = list(csv.DictReader(f))
    assert len(errors) == 6 and errors[2]["error_mm"] == "" and errors[4]["error_mm"] == "inf"


def test_evaluate_pixels_missing_images_and_reference_distance(tmp_path):
    script = load_script()
    gt = write_text(tmp_path / "gt.csv", "image,x0,y0,x1,y1\nimages/a.jpg,0,0,100,0\nimages/b.jpg,0,0,50,0\n")
    pred = write_text(tmp_path / "pred.csv", "image,x0,y0,x1,y1\nimages/a.jpg,3,4,100,0\n")
    px = script.evaluate_predictions(pred=str(pred), gt=str(gt), quiet=True)
    assert px["unit"] == "px" and px["mre"] == pytest.approx(2.5) and px["n_failed"] == 2  # b has no prediction
    skipped = script.evaluate_predictions(pred=str(pred), gt=str(gt), missing="skip", quiet=True)
    assert skipped["n_images"] == 1 and skipped["evaluation"]["unmatched_ground_truth"] == ["images/b.jpg"]
    ref = script.evaluate_predictions(
        pred=str(pred), gt=str(gt), spacing_mode="reference_distance", reference="0,1", distance_mm=50, quiet=True
    )
    assert ref["unit"] == "mm" and ref["mre"] == pytest.approx((50 * 5 / 100 + 0) / 2)
    with pytest.raises(ValueError, match="needs --reference"):
        script.evaluate_predictions(pred=str(pred), gt=str(gt), spacing_mode="reference_distance", quiet=True)
    with pytest.raises(LandmarkDataError, match="no spacing"):
        script.evaluate_predictions(pred=str(pred), gt=str(gt), spacing_mode="datalist", quiet=True)


def test_evaluate_reference_from_datalist(tmp_path):
    script = load_script()
    doc = {
        "landmarks": ["a", "b"],
        "spacing_mode": "reference_distance",
        "reference": {"landmarks": [0, 1], "distance_mm": 20.0},
        "validation": [{"image": "a.png", "landmarks": [[0, 0], [40, 0]]}],
    }
    gt = write_text(tmp_path / "datalist.json", json.dumps(doc))
    pred = write_text(tmp_path / "pred.csv", "image,x0,y0,x1,y1\na.png,0,4,40,0\n")
    summary = script.evaluate_predictions(pred=str(pred), gt=str(gt), quiet=True)
    assert summary["evaluation"]["spacing_mode"] == "reference_distance"
    assert summary["evaluation"]["reference"] == [0, 1] and summary["evaluation"]["distance_mm"] == 20.0
    assert summary["max"] == pytest.approx(4 * 20 / 40)


def test_evaluate_cli_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out_dir = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--pred", str(tiny_predictions(tmp_path)), "--gt", str(datalist(tmp_path)),
         "--section", "validation", "--spacing_mode", "image", "--out_dir", str(out_dir)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "MRE 1.125" in result.stdout and "spacing: image" in result.stdout
    assert strict_json(out_dir / "summary.json")["n_failed"] == 1
    assert (out_dir / "per_landmark.csv").is_file() and (out_dir / "errors.csv").is_file()


HAND = REPO.parent / "shared" / "data" / "hand_xray" / "landmarks.csv"


@pytest.mark.realdata
@pytest.mark.skipif(not HAND.is_file(), reason="../shared/data is absent")
def test_hand_ground_truth_against_itself_shifted(tmp_path):
    script = load_script()
    gt = read_ground_truth(HAND)
    assert len(gt.landmarks) == 112 and all(v.shape == (37, 2) for v in gt.landmarks.values())
    records = [make_prediction_record(image, points + [1.0, 0.0]) for image, points in gt.landmarks.items()]
    pred = write_predictions_csv(records, tmp_path / "predictions.csv")
    summary = script.evaluate_predictions(
        pred=str(pred), gt=str(HAND), spacing_mode="reference_distance", reference=(1, 5), quiet=True
    )
    # a 1 px shift is 50 / |g1 - g5| mm per image (about 0.15 mm)
    expected = np.mean([50.0 / np.linalg.norm(g[1] - g[5]) for g in gt.landmarks.values()])
    assert summary["n_points"] == 112 * 37 and summary["n_failed"] == 0
    assert summary["mre"] == pytest.approx(expected) and summary["sdr@2mm"] == 100.0
