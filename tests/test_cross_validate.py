"""scripts/cross_validate.py: fold checks, pooling of fold predictions (no training), and end to end on synthetic hand
phantoms: prepare_datalist --folds 2, then the SCN bundle (quick.json, 1 epoch, 32x32) trained on both folds."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from monai_ext.data.datalist import load_datalist, write_datalist
from monai_ext.data.predictions import make_prediction_record, write_predictions_json
from monai_ext.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cv = _load("cross_validate")
prep = _load("prepare_datalist")


def _recomputed_errors(fold_dirs: list[Path], datalists: list[Path]) -> dict[str, np.ndarray]:
    """image -> (K,) errors in mm, straight from each fold's predictions.json and its datalist's test section
    (spacing: the one the prediction records, read from the DICOM), independently of the scripts."""
    errors = {}
    for fold_dir, datalist in zip(fold_dirs, datalists):
        preds = json.loads((fold_dir / "eval" / "evaluation" / "predictions.json").read_text())["predictions"]
        by_image = {str(Path(r["image"]).resolve()): r for r in preds}
        for item in load_datalist(datalist, "test"):
            record = by_image[item["image"]]
            assert record["error"] is None
            pred = np.array([[math.nan if p["x"] is None else p["x"], math.nan if p["y"] is None else p["y"]]
                             for p in record["landmarks"]])
            diff = (pred - item["landmarks"]) * np.asarray(record["spacing"])
            errors[item["image"]] = np.sqrt((diff**2).sum(axis=1))
    return errors


def _per_image_rows(report: str) -> list[str]:
    """First cells of the report's per-image table."""
    section = report.split("## Per image", 1)[1].split("## Run", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| image ")]
    return [row.split("|")[1].strip() for row in rows]


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> list[Path]:
    """Two fold datalists of 8 synthetic hand phantoms (DICOM, spacing in the files): 4 test images each."""
    root = tmp_path_factory.mktemp("cv_data")
    synthetic = generate_dataset("hand", root / "synthetic", n_train=8, n_val=0, n_test=0, seed=3)
    items = json.loads(synthetic.read_text())["training"]
    points = {e["image"]: e["landmarks"] for e in items}
    (root / "points.json").write_text(json.dumps(points))
    paths = prep.dicom_folder(str(synthetic.parent), str(root / "points.json"), str(root / "lists" / "cv.json"),
                              folds=2, n_val=1, seed=0)
    return [Path(p) for p in paths]


@pytest.mark.slow
def test_cross_validate_end_to_end(folds: list[Path], tmp_path: Path):
    out = tmp_path / "cv" / "scn-hand"
    pattern = str(folds[0].parent / "cv_fold*.json")
    args = dict(bundle="scn", datalists=pattern, config="quick", epochs=1, overrides='{"spatial_size": [32, 32]}',
                out=str(out), batch_size=2)
    pooled_path = cv.run(**args)
    assert pooled_path == str(out.resolve() / "pooled.json")
    doc = json.loads(Path(pooled_path).read_text())
    fold_dirs = [out / "fold0", out / "fold1"]
    assert all((d / "fold.json").is_file() and (d / "benchmark.json").is_file() for d in fold_dirs)

    # pooled MRE = mean of every finite image-landmark error, recomputed from the fold predictions
    errors = _recomputed_errors(fold_dirs, folds)
    assert len(errors) == 8 and doc["n_images"] == 8 and doc["n_folds"] == 2 and doc["unit"] == "mm"
    flat = np.concatenate(list(errors.values()))
    assert doc["summary"]["mre"] == pytest.approx(flat[np.isfinite(flat)].mean(), rel=1e-9)
    assert doc["summary"]["median"] == pytest.approx(np.median(flat[np.isfinite(flat)]), rel=1e-9)
    assert doc["summary"]["n_points"] == 8 * 37
    assert doc["summary"]["sdr"]["10"] == pytest.approx(100.0 * (flat <= 10).mean())
    assert doc["outliers"]["count"] == int((flat > 10).sum()) and len(doc["outliers"]["worst"]) == min(10, (flat > 10).sum())
    for f, datalist, fold_dir in zip(doc["per_fold"], folds, fold_dirs):
        tests = load_datalist(datalist, "test")
        fold_errors = np.concatenate([errors[t["image"]] for t in tests])
        assert f["n_images"] == 4 and f["mre"] == pytest.approx(fold_errors.mean(), rel=1e-9)
        # the bundle's own evaluation scored the same test images with the same errors
        assert f["bundle_evaluation"]["section"] == "test"
        assert f["bundle_evaluation"]["mre"] == pytest.approx(f["mre"], rel=1e-4)
        assert f["training"]["settings"]["spatial_size"] == [32, 32] and f["training"]["epochs_run"] == 1
        assert f["n_training"] == 3 and f["n_validation"] == 1
    assert {r["image"] for r in doc["per_image"]} == set(errors)
    assert doc["machines"][0]["torch"] and doc["machines"][0]["folds"] == [0, 1]
    assert doc["command"].startswith("python scripts/cross_validate.py run --bundle scn")

    # the report: test-only statement, every image exactly once, the headline figures
    report = (out / "report.md").read_text()
    assert "on the **test** sections only" in report
    rows = _per_image_rows(report)
    assert len(rows) == 8 and sorted(rows) == sorted(Path(i).name for i in errors)
    assert f"{doc['summary']['mre']:.2f} ± {doc['summary']['std']:.2f}" in report
    for header in ("SDR@2 mm", "SDR@2.5 mm", "SDR@3 mm", "SDR@4 mm", "SDR@10 mm", "## Per landmark", "## Outliers",
                   "## Per fold", "torch", "configs bundles/scn/configs/train.json, bundles/scn/configs/quick.json"):
        assert header in report, header
    assert (out / "pooled" / "errors.csv").is_file() and (out / "pooled" / "per_landmark.csv").is_file()

    # resuming: finished folds are kept (no training), the pool is written again
    stamp = (fold_dirs[0] / "benchmark.json").stat().st_mtime_ns
    assert cv.run(**args) == pooled_path
    assert (fold_dirs[0] / "benchmark.json").stat().st_mtime_ns == stamp
    # other arguments into the same folder are refused
    with pytest.raises(ValueError, match="other arguments"):
        cv.run(**{**args, "epochs": 2})
    # `report` re-pools without training, with other radii if asked
    again = cv.main(["report", "--out", str(out), "--radii", "1,5"])
    redone = json.loads(Path(again).read_text())
    assert redone["summary"]["mre"] == doc["summary"]["mre"] and redone["radii"] == [1.0, 5.0]
    assert "SDR@5 mm" in (out / "report.md").read_text() and "--radii 1,5" in redone["pooled_by"]


def test_check_folds_rejects_what_is_not_one_cross_validation(folds: list[Path], tmp_path: Path):
    records = cv.check_folds(folds)
    assert [r["fold"] for r in records] == [0, 1] and [r["n_test"] for r in records] == [4, 4]
    with pytest.raises(ValueError, match="at least 2 fold datalists"):
        cv.check_folds(folds[:1])
    # the same fold twice: its test images are in both
    copy = folds[0].with_name("copy.json")
    copy.write_text(folds[0].read_text())
    with pytest.raises(ValueError, match="fold 0 again") as info:
        cv.check_folds([folds[0], copy])
    assert "4 test image(s) in both" in str(info.value)
    # no validation images: the bundles would save no best checkpoint
    doc = json.loads(folds[1].read_text())
    doc["training"] += doc.pop("validation")
    write_datalist(folds[1].with_name("noval.json"), doc)
    with pytest.raises(ValueError, match="empty or no 'validation' section"):
        cv.check_folds([folds[0], folds[1].with_name("noval.json")])
    with pytest.raises(ValueError, match="written as one of 2 folds, but 3"):
        cv.check_folds([*folds, folds[1].with_name("noval.json")])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        cv.expand_datalists(str(tmp_path / "none_fold*.json"))
    # argument errors come before any training (e.g. a variant the bundle does not have, such as a missing cpu.json)
    pattern = str(folds[0].parent / "cv_fold*.json")
    with pytest.raises(FileNotFoundError, match="--config no_such_variant"):
        cv.run(bundle="scn", datalists=pattern, config="no_such_variant", epochs=1, out=str(tmp_path / "cv"))
    with pytest.raises(ValueError, match="--epochs N and/or --minutes M"):
        cv.run(bundle="scn", datalists=pattern, out=str(tmp_path / "cv"))
    assert not (tmp_path / "cv").exists()


def test_expand_datalists_natural_order(tmp_path: Path):
    for k in (10, 2, 1):
        (tmp_path / f"d_fold{k}.json").write_text("{}")
    paths = cv.expand_datalists(str(tmp_path / "d_fold*.json"))
    assert [p.name for p in paths] == ["d_fold1.json", "d_fold2.json", "d_fold10.json"]
    assert cv.expand_datalists(f"{paths[2]},{paths[0]},{paths[0]}") == [paths[0], paths[2]]


def test_report_pools_fold_predictions_without_training(tmp_path: Path):
    """Hand-made fold folders (plan.json, fold.json, predictions): known errors, a failed image, outliers, pixels."""
    k = 3
    images = tmp_path / "images"
    images.mkdir()
    datalists, expected = [], {}
    rng = np.random.default_rng(0)
    for fold in range(2):
        entries = []
        for i in range(3):
            name = f"f{fold}_{i}.png"
            (images / name).write_bytes(b"")
            entries.append({"image": f"images/{name}", "landmarks": rng.uniform(10, 90, (k, 2)).tolist()})
        doc = {"name": "toy", "landmarks": ["a", "b", "c"], "spacing_mode": "pixel", "fold": fold, "folds": 2,
               "training": [], "validation": [], "test": entries}
        datalists.append(write_datalist(tmp_path / f"toy_fold{fold}.json", doc))
        fold_dir = tmp_path / "cv" / f"fold{fold}"
        records = []
        for i, e in enumerate(entries):
            gt = np.asarray(e["landmarks"])
            offset = np.array([[3.0, 4.0], [0.0, 1.0], [12.0, 0.0]]) * (1 + fold + i)
            if fold == 1 and i == 2:  # a failed image: every point +inf
                records.append(make_prediction_record(str(images / e["image"][7:]), error="unreadable"))
                expected[e["image"]] = np.full(k, np.inf)
                continue
            records.append(make_prediction_record(str(images / e["image"][7:]), gt + offset, landmark_names="abc"))
            expected[e["image"]] = np.linalg.norm(offset, axis=1)
        write_predictions_json(records, fold_dir / "eval" / "evaluation" / "predictions.json")
        (fold_dir / "fold.json").write_text("{}")
    plan = {"schema": cv.SCHEMA, "request": {"bundle": "toy"}, "command": "python scripts/cross_validate.py run ...",
            "folds": [{"fold": f, "datalist": str(d.resolve())} for f, d in enumerate(datalists)]}
    (tmp_path / "cv" / "plan.json").write_text(json.dumps(plan))

    doc = json.loads(Path(cv.report(str(tmp_path / "cv"))).read_text())
    flat = np.concatenate(list(expected.values()))
    finite = flat[np.isfinite(flat)]
    assert doc["unit"] == "px" and doc["n_images"] == 6 and doc["summary"]["n_failed"] == 3
    assert doc["summary"]["mre"] == pytest.approx(finite.mean()) and doc["summary"]["std"] == pytest.approx(finite.std())
    assert doc["summary"]["sdr"]["4"] == pytest.approx(100.0 * (flat <= 4).mean())
    per_fold = [_finite_mean([expected[f"images/f{f}_{i}.png"] for i in range(3)]) for f in range(2)]
    assert [f["mre"] for f in doc["per_fold"]] == pytest.approx(per_fold)
    outliers = doc["outliers"]
    assert outliers["count"] == int((flat > 10).sum()) and len(outliers["worst"]) == 10
    assert [w["failed"] for w in outliers["worst"][:3]] == [True] * 3 and outliers["worst"][0]["error"] is None
    assert outliers["worst"][3]["error"] == pytest.approx(finite.max())
    lm = {e["name"]: e for e in doc["summary"]["per_landmark"]}
    assert lm["b"]["mre"] == pytest.approx(np.mean([v[1] for v in expected.values() if np.isfinite(v[1])]))
    report = (tmp_path / "cv" / "report.md").read_text()
    assert "Errors in px (the datalists have no pixel spacing)" in report
    assert sorted(_per_image_rows(report)) == sorted(Path(i).name for i in expected)
    assert re.search(r"\| f1_2\.png \| 1 \| – \| – \| 3 \|", report)  # the failed image
    # an unfinished fold is named
    (tmp_path / "cv" / "fold1" / "fold.json").unlink()
    with pytest.raises(ValueError, match=r"fold\(s\) \[1\] not finished"):
        cv.report(str(tmp_path / "cv"))


def _finite_mean(rows: list[np.ndarray]) -> float:
    flat = np.concatenate(rows)
    return float(flat[np.isfinite(flat)].mean())
