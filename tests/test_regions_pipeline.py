"""Conformal regions end to end on a quick adv_posenet model: calibration next to the weights, regions and review
flags in the evaluation's predictions, coverage in its summary (scripts/calibrate_regions.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from bundle_workflow import bundle_workflow, train_bundle

from monai_ext.data.predictions import read_ground_truth

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "adv_posenet"


def _script():
    spec = importlib.util.spec_from_file_location("calibrate_regions", ROOT / "scripts" / "calibrate_regions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("regions")
    train_bundle(BUNDLE, tmp, **{"train#trainer#epoch_length": 2})
    ckpt = tmp / "models" / "model.pt"
    report = _script().calibrate_regions("adv_posenet", str(ckpt), report_section="test", output_dir=str(tmp / "regions"),
                                         num_workers=0)
    return tmp, report


def test_calibration_file_and_report(calibrated):
    tmp, report = calibrated
    saved = json.loads((tmp / "models" / "conformal.json").read_text())
    assert saved["section"] == "validation" and saved["n_images"] == 8
    assert sorted((r["method"], r["coverage"]) for r in saved["regions"]) == [
        (m, c) for m in ("adaptive", "fixed") for c in (0.8, 0.9, 0.95)]
    rows = {(r["method"], r["coverage_target"]): r for r in report["report"]}
    assert len(rows) == 6 and all(r["n_points"] == 8 * 6 for r in rows.values())  # 8 test images x 6 landmarks
    for m in ("fixed", "adaptive"):  # a higher target never gives smaller regions
        radii = [rows[(m, c)]["mean_radius"] for c in (0.8, 0.9, 0.95)]
        assert radii == sorted(radii)
    assert (tmp / "regions" / "regions_report.md").is_file()


@pytest.mark.parametrize("method", ["fixed", "adaptive"])
def test_evaluation_writes_regions_review_and_coverage(calibrated, method: str):
    tmp, _ = calibrated
    out = tmp / f"eval_{method}"
    wf = bundle_workflow(BUNDLE, ["evaluate.json"], "evaluating", tmp, quick=False, num_workers=0, output_dir=str(out),
                         region_method=method, region_coverage=0.9)
    wf.run()
    wf.finalize()
    saved = json.loads((tmp / "models" / "conformal.json").read_text())
    q = {(r["method"], r["coverage"]): r["quantile"] for r in saved["regions"]}
    doc = json.loads((out / "evaluation" / "predictions.json").read_text())
    gt = read_ground_truth(wf.parser.get_parsed_content("datalist"), "test")
    covered, radii = [], []
    for record in doc["predictions"]:
        image = next(g for g in gt.landmarks if Path(g).name == Path(record["image"]).name)
        for e in record["landmarks"]:
            expected = q[(method, 0.9)] * (e["spread_mm"] if method == "adaptive" else 1.0)
            assert e["region_mm"] == pytest.approx(expected, rel=1e-5)
            assert e["review"] == (method == "adaptive" and e["region_mm"] > q[("fixed", 0.9)] * (1 + 1e-6))
            err = np.linalg.norm((np.array([e["x"], e["y"]]) - gt.landmarks[image][e["index"]]) * gt.spacing[image])
            covered.append(err <= e["region_mm"])
            radii.append(e["region_mm"])
    regions = json.loads((out / "evaluation" / "summary.json").read_text())["regions"]
    assert regions["n_points"] == len(covered) == 48
    assert regions["coverage"] == pytest.approx(np.mean(covered)) and regions["mean_radius"] == pytest.approx(np.mean(radii))
    assert regions["method"] == method and regions["coverage_target"] == 0.9
