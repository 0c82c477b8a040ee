"""Sharded evaluation and inference: two CPU processes (torchrun, gloo) over an odd number of images write
prediction shards that rank 0 merges into the files of a single-process run (same images, same points, same
metrics), keeping going past a bad file and leaving no shard behind; under torchrun every bundle's evaluation and
inference resolve to sharded loaders by themselves."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from bundle_workflow import save_untrained_model
from conftest import BUNDLES
from monai.bundle import create_workflow
from monai.data import DistributedSampler

from monai_ext.bundle import config_files, read_config, training_stages
from monai_ext.data.predictions import make_prediction_record, merge_prediction_records
from monai_ext.data.synthetic import generate_dataset
from monai_ext.errors import LandmarkDataError
from monai_ext.handlers.sharded import merge_prediction_shards, shard_path, write_prediction_shard

REPO = Path(__file__).resolve().parents[1]
SCN = REPO / "bundles" / "scn"
BAD = "validation_001_bad.dcm"  # sorts between validation_001 and validation_002: the middle item of rank 0

# torchrun runs this in each process: the jobs as `monai.bundle run` builds them, one process group for all
DRIVER = """
import json, sys
from monai.bundle import create_workflow

workflows = []
for job in json.loads(sys.argv[1]):
    wf = create_workflow(**job)
    wf.run()
    workflows.append(wf)
workflows[-1].finalize()
"""


def _jobs(root: Path, out: Path) -> list[dict]:
    """Evaluation and folder inference of the model in ``root/models``, as ``monai.bundle run`` builds them (the same
    commands single-process and under torchrun)."""
    common = {"meta_file": str(SCN / "configs" / "metadata.json"), "bundle_root": str(root), "dataset_dir": str(root / "data")}
    return [
        {"run_id": "evaluating", "config_file": config_files(SCN, "evaluate", ["quick.json"]),
         "output_dir": str(out / "evaluate"), **common},
        {"run_id": "inference", "config_file": config_files(SCN, "inference", ["quick.json"]),
         "output_dir": str(out / "inference"), "input": str(root / "folder"), **common},
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """5 validation images (evaluation) and a folder of 4 of them plus a bad file (inference), an untrained SCN;
    the output folders of the single-process runs and of the 2-process runs."""
    root = tmp_path_factory.mktemp("sharded")
    images = generate_dataset("hand", root / "data", n_train=1, n_val=5, n_test=0).parent / "images"
    (root / "folder").mkdir()
    for i in range(4):
        (root / "folder" / f"validation_00{i}.dcm").write_bytes((images / f"validation_00{i}.dcm").read_bytes())
    (root / "folder" / BAD).write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    torch.manual_seed(0)
    save_untrained_model(SCN, root, dataset_dir=str(root / "data"))

    single = root / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the arithmetic of the 2 processes below (OMP_NUM_THREADS=1)
    try:
        for job in _jobs(root, single):
            wf = create_workflow(logging_file=False, **job)
            wf.run()
            wf.finalize()
    finally:
        torch.set_num_threads(threads)

    sharded = root / "sharded"
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver),
           json.dumps(_jobs(root, sharded))]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return single, sharded


def _points(doc: dict) -> dict[str, np.ndarray]:
    return {
        r["image"]: np.array([[np.nan if p["x"] is None else p["x"], np.nan if p["y"] is None else p["y"]] for p in r["landmarks"]])
        for r in doc["predictions"]
    }


def _csv_rows(path: Path) -> dict[tuple[str, str], tuple[str, str, list[float]]]:
    with open(path, newline="") as f:
        return {
            (r["image"], r["index"]): (r["name"], r["error"], [float(r["x"] or "nan"), float(r["y"] or "nan")])
            for r in csv.DictReader(f)
        }


def _assert_same_predictions(single: Path, sharded: Path) -> dict:
    one, two = (json.loads((d / "predictions.json").read_text()) for d in (single, sharded))
    images = [r["image"] for r in two["predictions"]]
    assert images == sorted(images), "the merged predictions are not sorted by image"
    assert sorted(r["image"] for r in one["predictions"]) == images
    assert (one["landmark_names"], one["unit"]) == (two["landmark_names"], two["unit"])
    p1, p2 = _points(one), _points(two)
    for image in images:
        np.testing.assert_allclose(p2[image], p1[image], atol=1e-4, err_msg=image)
    e1 = {r["image"]: r["error"] for r in one["predictions"]}
    assert {r["image"]: r["error"] for r in two["predictions"]} == e1
    c1, c2 = _csv_rows(single / "predictions.csv"), _csv_rows(sharded / "predictions.csv")
    assert c1.keys() == c2.keys()
    for key, (name, error, xy) in c1.items():
        assert c2[key][:2] == (name, error), key
        np.testing.assert_allclose(c2[key][2], xy, atol=1e-4, err_msg=str(key))
    left = [p.name for p in sharded.rglob("*") if ".rank" in p.name or p.name.startswith(".")]
    assert not left, f"shard or temporary files left behind: {left}"
    assert sorted(p.name for p in (sharded / "overlays").glob("*.png")) == sorted(
        p.name for p in (single / "overlays").glob("*.png")
    )
    return two


def _assert_close(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), where
    else:
        assert a == b, where


def _per_landmark(path: Path) -> list[dict]:
    def value(cell: str):
        if cell.startswith("{"):
            return json.loads(cell)
        try:
            return float(cell)
        except ValueError:
            return cell

    with open(path, newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_two_process_evaluation_equals_single_process(runs: tuple[Path, Path]):
    single, sharded = (r / "evaluate" / "evaluation" for r in runs)
    doc = _assert_same_predictions(single, sharded)
    assert len(doc["predictions"]) == 5 and not any(r["error"] for r in doc["predictions"])
    _assert_close(json.loads((single / "summary.json").read_text()), json.loads((sharded / "summary.json").read_text()))
    assert json.loads((sharded / "summary.json").read_text())["n_images"] == 5  # every rank's errors, none twice
    _assert_close(_per_landmark(single / "per_landmark.csv"), _per_landmark(sharded / "per_landmark.csv"))


@pytest.mark.slow
def test_two_process_inference_keeps_going_past_a_bad_file(runs: tuple[Path, Path]):
    single, sharded = (r / "inference" / "inference" for r in runs)
    doc = _assert_same_predictions(single, sharded)
    assert [Path(r["image"]).name for r in doc["predictions"]] == sorted(
        [f"validation_00{i}.dcm" for i in range(4)] + [BAD]
    )
    errors = {Path(r["image"]).name: r["error"] for r in doc["predictions"] if r["error"]}
    assert list(errors) == [BAD] and "not a DICOM file" in errors[BAD]
    # rank 0 had validation_000, the bad file and validation_003: it predicted the one after the failure
    assert all(len(r["landmarks"]) == 37 for r in doc["predictions"] if not r["error"])


def test_merge_sorts_by_image_keeps_one_record_per_image_and_removes_the_shards(tmp_path: Path):
    names = ["a", "b"]
    rec = lambda image, x: make_prediction_record(image, [[x, 1.0], [np.nan, np.nan]], spacing=[0.5, 0.5], landmark_names=names)  # noqa: E731
    shards = [[rec("img_2.dcm", 2.0), rec("img_0.dcm", 0.0)], [rec("img_1.dcm", 1.0), rec("img_0.dcm", 9.0)],
              [make_prediction_record("bad.dcm", error="bad.dcm: not a DICOM file")]]
    assert [r["image"] for r in merge_prediction_records(*shards)] == ["bad.dcm", "img_0.dcm", "img_1.dcm", "img_2.dcm"]
    for r, records in enumerate(shards):
        assert write_prediction_shard(records, tmp_path, "predictions", r, names) == tmp_path / f"predictions.rank{r}.json"
    merged = merge_prediction_shards(tmp_path, "predictions", world_size=3)
    assert [r["image"] for r in merged] == ["bad.dcm", "img_0.dcm", "img_1.dcm", "img_2.dcm"]
    assert merged[1]["landmarks"][0]["x"] == 0.0  # the first shard's record of a padded duplicate
    doc = json.loads((tmp_path / "predictions.json").read_text())
    assert doc["predictions"] == merged and doc["landmark_names"] == names and doc["unit"] == "mm"
    with open(tmp_path / "predictions.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 1 + 1 + 3 * 2  # header, the failed image, 2 points of 3 images
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "predictions.json"]


def test_merge_names_a_missing_shard_and_writes_nothing(tmp_path: Path):
    write_prediction_shard([make_prediction_record("a.dcm", [[1.0, 2.0]])], tmp_path, "predictions", 0)
    with pytest.raises(LandmarkDataError, match=r"predictions\.rank1\.json: prediction shard not found"):
        merge_prediction_shards(tmp_path, "predictions", world_size=2)
    assert not (tmp_path / "predictions.json").exists() and (tmp_path / "predictions.rank0.json").is_file()
    assert shard_path(tmp_path / "p.v2.csv", 3).name == "p.v2.rank3.csv"


@pytest.fixture
def one_process_group(tmp_path: Path):
    """A 1-process gloo group, as torchrun --nproc_per_node=1 would give (the samplers need one)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_distributed_launch_resolves_to_sharded_loaders(bundle: Path, tmp_path: Path, one_process_group, monkeypatch):
    """Under torchrun (``WORLD_SIZE`` > 1) evaluation and inference shard their images by themselves: a
    ``DistributedSampler`` in order and unpadded, nothing cached (one pass), the prediction writer (which merges the
    shards) among the handlers; the process group and its end are in ``initialize`` / ``finalize``."""
    data = generate_dataset(json.loads((bundle / "configs" / "train.json").read_text())["synthetic_kind"],
                            tmp_path / "data", n_train=1, n_val=1, n_test=1).parent
    for stage in training_stages(bundle):
        save_untrained_model(bundle, tmp_path, stage=stage, dataset_dir=str(data))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for workflow, loader_id in (("evaluate", "validate#parts#dataloader"), ("inference", "dataloader")):
        parser = read_config(config_files(bundle, workflow, ["quick.json"]), bundle_root=str(tmp_path),
                             dataset_dir=str(data), output_dir=str(tmp_path / "out"))
        parser.resolve_macro_and_relative_ids()
        assert "initialize_workflow" in parser["initialize"][0] and "finalize_workflow" in parser["finalize"][0]
        evaluator = parser.get_parsed_content("evaluator")
        sampler = evaluator.data_loader.sampler
        assert evaluator.data_loader is parser.get_parsed_content(loader_id)
        assert isinstance(sampler, DistributedSampler) and not sampler.shuffle and sampler.num_replicas == 1
        assert len(sampler) == len(evaluator.data_loader.dataset)
        handlers = [type(h).__name__ for h in parser.get_parsed_content("handlers")]
        assert "LandmarkPredictionWriter" in handlers
        if workflow == "evaluate":
            assert evaluator.data_loader.dataset.cache_num == 0  # one pass: each rank loads only its own images
