"""The MONAI Label app (``monailabel_app/``): landmark label helpers, the training task's datalist, a 1-epoch
training from a datastore, and a real server answering ``/info/`` and ``/infer/scn`` with landmarks in the
original image's pixels, the same points as the bundle's own inference. Skipped when monailabel is not installed
(``requirements-monailabel.txt``). The bundle is a copy in tmp_path (small network, random weights)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="MONAI Label is not installed (requirements-monailabel.txt)")

import nibabel as nib  # noqa: E402
import pydicom  # noqa: E402
import torch  # noqa: E402
from monai.bundle import ConfigParser, ConfigWorkflow  # noqa: E402

from monai_ext.data.synthetic import ensure_dataset  # noqa: E402
from monai_ext.errors import LandmarkDataError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "monailabel_app"
sys.path.insert(0, str(APP))  # the app's own layout: main.py imports lib.*, as MONAI Label loads it

from lib.landmarks import (  # noqa: E402
    disc_label,
    landmark_result,
    points_from_disc_label,
    points_from_json,
    read_landmark_label,
    write_label,
)

SERVER_START_TIMEOUT = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- label helpers
def test_disc_label_round_trip_and_orientation():
    points = np.array([[10.0, 30.0], [40.3, 5.6], [np.nan, np.nan]])  # (x, y); the last one missing
    label = disc_label(points, (50, 40), radius=2.5)
    assert label.shape == (50, 40) and label.dtype == np.uint8
    assert label[10, 30] == 1 and label[40, 6] == 2  # indexed [x, y]
    assert set(np.unique(label)) == {0, 1, 2}
    back = points_from_disc_label(label, 3)
    np.testing.assert_allclose(back[:2], points[:2], atol=0.5)
    assert np.isnan(back[2]).all()
    with pytest.raises(ValueError, match="label values"):
        points_from_disc_label(label, 1)


@pytest.mark.parametrize("suffix", [".nii.gz", ".png"])
def test_label_files_keep_x_and_y(tmp_path, suffix):
    points = np.array([[5.0, 20.0], [25.0, 3.0]])
    path = write_label(disc_label(points, (30, 24), radius=1.5), tmp_path / f"label{suffix}", spacing=(0.5, 0.7))
    np.testing.assert_allclose(read_landmark_label(path, ["a", "b"]), points, atol=0.5)
    if suffix == ".nii.gz":
        np.testing.assert_allclose(np.diag(nib.load(str(path)).affine)[:2], [0.5, 0.7])


def test_points_from_json_both_formats(tmp_path):
    names = ["a", "b", "c"]
    result = landmark_result(np.array([[1.0, 2.0], [np.nan, np.nan], [3.5, 4.5]]), np.array([0.9, 0.1, 0.5]),
                             names, spacing=(0.5, 2.0), spacing_source="PixelSpacing", image_size=(10, 12))
    assert result["unit"] == "mm" and result["image_size"] == [10, 12]
    assert result["landmarks"][2] | {"x_mm": 1.75, "y_mm": 9.0} == result["landmarks"][2]
    assert result["landmarks"][1]["x"] is None
    got = points_from_json(json.loads(json.dumps(result)), names)
    np.testing.assert_allclose(got[[0, 2]], [[1.0, 2.0], [3.5, 4.5]])
    assert np.isnan(got[1]).all()
    got = points_from_json({"landmarks": [[1, 2], None, [3, 4]]}, names)
    np.testing.assert_allclose(got[[0, 2]], [[1, 2], [3, 4]])
    (tmp_path / "bad.json").write_text(json.dumps({"landmarks": [{"name": "z", "x": 1, "y": 1}]}))
    with pytest.raises(LandmarkDataError, match="bad.json"):
        read_landmark_label(tmp_path / "bad.json", names)
    assert landmark_result(np.zeros((3, 2)), None, names, (1.0, 1.0), "none", (4, 4))["unit"] == "px"


def test_find_bundles_names_a_missing_bundle(tmp_path):
    from main import find_bundles

    (tmp_path / "b1" / "configs").mkdir(parents=True)
    (tmp_path / "b1" / "configs" / "inference.json").write_text("{}")
    (tmp_path / "no_configs").mkdir()
    assert list(find_bundles(tmp_path)) == ["b1"] == list(find_bundles(tmp_path, "all"))
    with pytest.raises(ValueError, match="b2"):
        find_bundles(tmp_path, "b1,b2")


# --------------------------------------------------------------------------------- a served copy of the bundle
@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """A copy of bundles/scn (quick.json's small network merged into its configs, random weights), the synthetic
    hand dataset it names its landmarks from, and a studies folder with one square DICOM (square: the 64x64
    network input has no padding, so even a random model predicts inside the image)."""
    tmp = tmp_path_factory.mktemp("monailabel")
    data = tmp / "data"
    datalist = ensure_dataset("hand", data)
    bundle = tmp / "bundles" / "scn"
    shutil.copytree(REPO / "bundles" / "scn" / "configs", bundle / "configs")
    for name in ["inference.json", "train.json"]:
        parser = ConfigParser()
        parser.read_config([str(bundle / "configs" / name), str(bundle / "configs" / "quick.json")])
        parser["dataset_dir"] = str(data)
        config = {k: v for k, v in parser.get().items() if k != "_meta_"}
        ConfigParser.export_config_file(config, str(bundle / "configs" / name), indent=1)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")

    studies = tmp / "studies"
    studies.mkdir()
    ds = pydicom.dcmread(data / "images" / "validation_000.dcm")
    arr = ds.pixel_array
    n = min(arr.shape)
    r0, c0 = (arr.shape[0] - n) // 2, (arr.shape[1] - n) // 2
    ds.PixelData = np.ascontiguousarray(arr[r0 : r0 + n, c0 : c0 + n]).tobytes()
    ds.Rows = ds.Columns = n
    ds.PixelSpacing = [0.8, 0.8]
    ds.save_as(studies / "square.dcm")
    return {"tmp": tmp, "bundle": bundle, "studies": studies, "datalist": datalist, "size": n}


def _label_studies(served: dict, folder: Path, count: int):
    """A datastore of ``count`` training images whose final labels are disc images of the ground truth."""
    from monailabel.datastore.local import LocalDatastore

    from monai_ext.data.readers import read_radiograph

    folder.mkdir()
    doc = json.loads(Path(served["datalist"]).read_text())
    rows = doc["training"][:count]
    for row in rows:
        shutil.copy(Path(served["datalist"]).parent / row["image"], folder)
    store = LocalDatastore(str(folder), extensions=["*.dcm", "*.nii.gz"], auto_reload=False)
    truth = {}
    for row in rows:
        image = Path(served["datalist"]).parent / row["image"]
        points = np.array([p if p is not None else [np.nan, np.nan] for p in row["landmarks"]], dtype=float)
        label = write_label(disc_label(points, read_radiograph(image)[0].shape, 2.0), folder.parent / "label.nii.gz")
        store.save_label(image.stem, str(label), "final", {})
        truth[image.name] = points
    return store, truth


def test_train_task_reads_landmarks_from_the_datastore(served, tmp_path):
    from lib.trainers import LandmarkTrainTask

    store, truth = _label_studies(served, tmp_path / "studies", 3)
    items = LandmarkTrainTask(str(served["bundle"]), {})._fetch_datalist({}, store)
    assert len(items) == 3
    for item in items:
        expected = truth[Path(item["image"]).name]
        got = np.array([p if p is not None else [np.nan, np.nan] for p in item["landmarks"]], dtype=float)
        np.testing.assert_allclose(got, expected, atol=0.5)  # disc centroids (interior landmarks)


@pytest.mark.slow
def test_train_task_trains_one_epoch_from_the_datastore(served, tmp_path):
    from lib.trainers import LandmarkTrainTask

    bundle = tmp_path / "scn"
    shutil.copytree(served["bundle"], bundle)  # training writes the bundle's models/
    before = (bundle / "models" / "model.pt").stat().st_mtime_ns
    store, _ = _label_studies(served, tmp_path / "studies", 8)
    task = LandmarkTrainTask(str(bundle), {})
    task({"model": "scn", "max_epochs": 1, "device": "cpu", "val_split": 0.25, "tracking": "None",
          "multi_gpu": False, "pretrained": True}, store)
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns > before, "training saved no best checkpoint"


# ------------------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(served):
    tmp, port = served["tmp"], _free_port()
    app = tmp / "app"  # the server writes logs/, bin/ and model/ into its app folder: a copy
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "logs", "bin", "model"))
    env = dict(os.environ, MONAI_LABEL_SESSION_PATH=str(tmp / "sessions"), MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
               MONAI_LABEL_TRACKING_ENABLED="false")
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(served["studies"]),
         "--conf", "models", "scn", "--conf", "bundles_dir", str(served["bundle"].parent), "--conf", "zoo_source",
         "local", "--conf", "sam2", "false", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"MONAI Label server exited ({proc.returncode}):\n{(tmp / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/info/", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    pytest.fail(f"MONAI Label server not ready after {SERVER_START_TIMEOUT} s")
                time.sleep(1.0)
        yield url, info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def _infer(url: str, image: str, output: str, params: dict) -> bytes:
    body = urllib.parse.urlencode({"params": json.dumps(params)}).encode()
    query = urllib.parse.urlencode({"image": image, "output": output})
    with urllib.request.urlopen(urllib.request.Request(f"{url}/infer/scn?{query}", data=body), timeout=120) as r:
        return r.read()


@pytest.mark.slow
def test_server_infers_landmarks_in_original_pixels(served, server, tmp_path):
    url, info = server
    assert info["models"]["scn"]["dimension"] == 2
    assert "scn" in info["trainers"]
    names = json.loads(Path(served["datalist"]).read_text())["landmarks"]
    assert list(info["models"]["scn"]["labels"]) == names  # label value k + 1 for landmark k

    result = json.loads(_infer(url, "square", "json", {"device": "cpu"}))
    n = served["size"]
    assert result["image_size"] == [n, n] and result["spacing"] == pytest.approx([0.8, 0.8])
    assert [p["name"] for p in result["landmarks"]] == names
    for p in result["landmarks"]:
        assert set(p) >= {"name", "x", "y", "confidence", "x_mm", "y_mm"}
        assert -0.5 <= p["x"] <= n - 0.5 and -0.5 <= p["y"] <= n - 0.5, p
        assert p["x_mm"] == pytest.approx(p["x"] * 0.8) and p["y_mm"] == pytest.approx(p["y"] * 0.8)

    # a spacing in the request overrides the file's
    given = json.loads(_infer(url, "square", "json", {"device": "cpu", "spacing": [0.5, 0.25], "landmark_label": False}))
    assert given["spacing"] == [0.5, 0.25] and given["spacing_source"] == "datalist"
    assert given["landmarks"][0]["y_mm"] == pytest.approx(given["landmarks"][0]["y"] * 0.25)

    # the bundle's own inference gives the same points for the same file
    bundle = served["bundle"]
    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"),
                        meta_file=str(bundle / "configs" / "metadata.json"), logging_file=False,
                        workflow_type="infer", bundle_root=str(bundle), input=str(served["studies"] / "square.dcm"),
                        ckpt_path=str(bundle / "models" / "model.pt"), output_dir=str(tmp_path / "inference"))
    wf.initialize()
    wf.run()
    (record,) = json.loads((tmp_path / "inference" / "predictions.json").read_text())["predictions"]
    expected = np.array([[p["x"], p["y"]] for p in record["landmarks"]])
    got = np.array([[p["x"], p["y"]] for p in result["landmarks"]])
    np.testing.assert_allclose(got, expected, atol=1e-3)

    # the label image: a disc per landmark in the image's grid, with the spacing in its affine
    (tmp_path / "label.nii.gz").write_bytes(_infer(url, "square", "image", {"device": "cpu", "label_radius": 2}))
    img = nib.load(str(tmp_path / "label.nii.gz"))
    label = np.asarray(img.dataobj)
    assert label.shape[:2] == (n, n) and np.diag(img.affine)[:2] == pytest.approx([0.8, 0.8])
    assert 0 < label.max() <= len(names)
    k = int(label.max()) - 1  # the last landmark's disc is drawn last: never overwritten
    x, y = (int(round(v)) for v in got[k])
    assert label[min(max(x, 0), n - 1), min(max(y, 0), n - 1)] == k + 1
