"""Folder inference keeps going past bad files: each becomes an error entry (naming the file and the reason)
of the prediction JSON/CSV, in input order, while the good files get their landmarks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from bundle_workflow import save_untrained_model, workflow_files
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from monai_ext.data.dataset import FAILED_ITEMS_KEY, FailedItem, SkipFailedDataset, collate_failed_items
from monai_ext.data.predictions import read_prediction_file
from monai_ext.data.readers import LoadRadiographd
from monai_ext.data.synthetic import generate_dataset, make_phantom, write_dicom

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "scn" / "configs"

# bad file → words its error must contain (after the file name)
BAD = {
    "truncated.jpg": "truncated",
    "no_pixels.dcm": "no pixel data",
    "tiny.png": "8x8 pixels, smaller than the minimum",
    "random.dcm": "not a DICOM file",
    "nan.nii.gz": "NaN or infinite",
}
GOOD = ["good_0.dcm", "good_1.dcm", "good_2.dcm"]


def _write_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(GOOD):
        ph = make_phantom("hand", i)
        write_dicom(folder / name, ph.image, ph.spacing)
    jpg = folder / "whole.jpg"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(jpg, quality=90)
    data = jpg.read_bytes()
    jpg.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    ds = pydicom.dcmread(folder / GOOD[0])
    del ds.PixelData
    ds.save_as(folder / "no_pixels.dcm")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(folder / "tiny.png")
    (folder / "random.dcm").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    arr = np.random.default_rng(2).random((64, 48)).astype(np.float32)
    arr[5, 7] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(folder / "nan.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_inputs(tmp_path_factory.mktemp("inputs") / "folder")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic datalist: inference only reads its landmark names."""
    out = tmp_path_factory.mktemp("names") / "data"
    generate_dataset("hand", out, n_train=1, n_val=0, n_test=0)
    return out


def _infer(input_path: Path, tmp: Path, dataset_dir: Path, batch_size: int = 1, num_workers: int = 0) -> Path:
    out = tmp / "out"
    ckpt = save_untrained_model(CONFIGS.parent, tmp, dataset_dir=str(dataset_dir))  # untrained weights + record
    wf = ConfigWorkflow(
        config_file=workflow_files(CONFIGS.parent, ["inference.json"]),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        ckpt_path=str(ckpt),
        output_dir=str(out),
        dataset_dir=str(dataset_dir),
        input=str(input_path),
        **{"dataloader#batch_size": batch_size, "dataloader#num_workers": num_workers},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return out / "inference"


@pytest.mark.parametrize("batch_size,num_workers", [(1, 0), (3, 2)])
def test_bad_files_become_error_entries(
    inputs: Path, dataset_dir: Path, tmp_path: Path, batch_size: int, num_workers: int
):
    out = _infer(inputs, tmp_path, dataset_dir, batch_size, num_workers)
    expected = sorted(str(p.resolve()) for p in inputs.iterdir())
    doc = json.loads((out / "predictions.json").read_text())
    assert [r["image"] for r in doc["predictions"]] == expected  # one entry per input, in input order
    assert len(doc["landmark_names"]) == 37
    for rec in doc["predictions"]:
        name = Path(rec["image"]).name
        if name in BAD:
            assert rec["landmarks"] == []
            assert rec["error"].startswith(rec["image"]) and BAD[name] in rec["error"], rec["error"]
        else:
            assert rec["error"] is None and len(rec["landmarks"]) == 37
            assert all(p["x"] is not None and p["x_mm"] is not None for p in rec["landmarks"])

    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    errors = {Path(r["image"]).name: r["error"] for r in rows if r["error"]}
    assert {k: BAD[k] in v for k, v in errors.items()} == {k: True for k in BAD}
    assert sorted(Path(r["image"]).name for r in rows if not r["error"]) == sorted(GOOD * 37)

    preds = read_prediction_file(out / "predictions.json")
    assert sorted(Path(p).name for p in preds.errors) == sorted(BAD)
    assert not [p.name for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"], "temp files left"
    assert len(list((out / "overlays").glob("*.png"))) == len(GOOD)  # overlays of good images only


def test_only_bad_files(inputs: Path, dataset_dir: Path, tmp_path: Path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ["tiny.png", "random.dcm"]:
        (folder / name).write_bytes((inputs / name).read_bytes())
    out = _infer(folder, tmp_path, dataset_dir, batch_size=2)
    doc = json.loads((out / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in doc["predictions"]] == ["random.dcm", "tiny.png"]
    assert all(r["error"] for r in doc["predictions"])


def test_collate_keeps_failures_beside_the_batch(inputs: Path):
    ds = SkipFailedDataset([{"image": str(inputs / n)} for n in ["tiny.png", GOOD[0], "random.dcm", GOOD[1]]],
                           transform=LoadRadiographd(keys="image"))
    items = [ds[i] for i in range(len(ds))]
    assert [type(x).__name__ for x in items] == ["FailedItem", "dict", "FailedItem", "dict"]
    assert isinstance(items[0], FailedItem) and items[0].image == str(inputs / "tiny.png")
    batch = collate_failed_items(items[:2])
    assert [f["position"] for f in batch[FAILED_ITEMS_KEY]] == [0]
    assert batch["image"].shape[0] == 1
    assert collate_failed_items([items[0], items[2]]) == {
        FAILED_ITEMS_KEY: [{"image": items[0].image, "error": items[0].error, "position": 0},
                           {"image": items[2].image, "error": items[2].error, "position": 1}]
    }
    # list_keys: images of different sizes stay a list (one per good item) instead of failing to stack
    good = [{"image": torch.zeros(1, 4, 5), "original": torch.zeros(1, 7, 9)},
            {"image": torch.ones(1, 4, 5), "original": torch.ones(1, 3, 2)}]
    batch = collate_failed_items([good[0], items[0], good[1]], list_keys=["original"])
    assert batch["image"].shape == (2, 1, 4, 5) and batch[FAILED_ITEMS_KEY][0]["position"] == 1
    assert [tuple(o.shape) for o in batch["original"]] == [(1, 7, 9), (1, 3, 2)]
    assert "original" not in collate_failed_items([items[0]], list_keys=["original"])


def test_other_errors_still_stop_the_run(inputs: Path):
    def broken(item):
        raise KeyError("a bug, not bad data")

    with pytest.raises(RuntimeError) as info:  # MONAI's "applying transform ..." around the KeyError
        SkipFailedDataset([{"image": str(inputs / GOOD[0])}], transform=broken)[0]
    assert isinstance(info.value.__cause__, KeyError)
