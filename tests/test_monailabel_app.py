"""The MONAI Label app (``monailabel_app/``): landmark label helpers, bundle discovery, the training task's datalist
and config, a 1-epoch training from a datastore (from another working directory, and under torchrun), the inference
task serving a trained model from its own record (names and network as trained, no override), clear errors for a
model that does not load and for bad options, and a real server answering ``/info/`` and ``/infer/scn`` with
landmarks in the original image's pixels, the same points as the bundle's own inference, and
``/infer/interactive_kp`` with clicks (clicked landmarks at their clicks, bad clicks answered with a message).
Skipped when monailabel is not installed (``requirements-monailabel.txt``). The bundles are copies in tmp_path,
trained there for one epoch with their quick.json (``tests/bundle_workflow.py``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
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
from bundle_workflow import bundle_workflow, train_bundle  # noqa: E402
from conftest import BUNDLES  # noqa: E402

from monai_ext.bundle import ModelConfig  # noqa: E402
from monai_ext.data.synthetic import ensure_dataset, generate_dataset  # noqa: E402
from monai_ext.errors import LandmarkDataError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "monailabel_app"
sys.path.insert(0, str(APP))  # the app's own layout: main.py imports lib.*, as MONAI Label loads it

from lib.landmarks import (  # noqa: E402
    clicks_by_index,
    disc_label,
    landmark_result,
    points_from_disc_label,
    points_from_json,
    read_landmark_label,
    write_label,
)

SERVER_START_TIMEOUT = 180.0
TORCHRUN_TIMEOUT = 300.0


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
    sized = disc_label(points, (50, 40), radius=np.array([1.0, 4.0, 2.0]))  # one radius per landmark
    assert np.count_nonzero(sized == 1) == 5 and 45 <= np.count_nonzero(sized == 2) <= 55  # radius 1 and 4 px (~pi 16)
    with pytest.raises(ValueError, match="positive"):
        disc_label(points, (50, 40), radius=np.array([1.0, 0.0, 1.0]))


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


def test_clicks_by_index_resolves_landmark_names():
    names = ["a", "b", "c"]
    clicks = [{"landmark": "c", "x": 1.5, "y": 2}, {"landmark": 0, "x": 3, "y": 4}, {"landmark": "1", "x": 0, "y": 0}]
    assert [c["landmark"] for c in clicks_by_index(clicks, names)] == [2, 0, 1]
    assert clicks_by_index(json.dumps(clicks[:1]), names) == [{"landmark": 2, "x": 1.5, "y": 2}]
    assert clicks_by_index([{"x": 1, "y": 2}], names) == [{"x": 1, "y": 2}]  # left to the bundle's checks
    with pytest.raises(LandmarkDataError, match=r"img.dcm: click 1: 'd' is neither a landmark index \(0..2\)"):
        clicks_by_index([clicks[0], {"landmark": "d", "x": 1, "y": 1}], names, "img.dcm")
    with pytest.raises(LandmarkDataError, match="not valid JSON"):
        clicks_by_index("[{", names)


def test_find_bundles_names_a_missing_bundle(tmp_path):
    from main import find_bundles

    for name in ["b1", "b2_no_metadata"]:
        (tmp_path / name / "configs").mkdir(parents=True)
        (tmp_path / name / "configs" / "train.json").write_text("{}")
    (tmp_path / "b1" / "configs" / "metadata.json").write_text("{}")
    (tmp_path / "common" / "configs").mkdir(parents=True)  # the shared skeleton is not a bundle
    (tmp_path / "common" / "configs" / "train.json").write_text("{}")
    (tmp_path / "no_configs").mkdir()
    assert list(find_bundles(tmp_path)) == ["b1"] == list(find_bundles(tmp_path, "all"))
    with pytest.raises(ValueError, match="b2"):
        find_bundles(tmp_path, "b1,b2")
    assert list(find_bundles(REPO / "bundles")) == [b.name for b in BUNDLES]


def test_takes_clicks_reads_the_inference_composition():
    from lib.infers import takes_clicks

    assert [b.name for b in BUNDLES if takes_clicks(b)] == ["interactive_kp"]  # its clicks.json


def test_bundles_trained_in_stages_are_not_served():
    """MONAI Label loads and trains one model: a two-stage bundle (KNEEL) is skipped with the reason."""
    from lib.infers import LandmarkInferTask
    from lib.trainers import LandmarkTrainTask

    from monai_ext.bundle import training_stages

    staged = [b for b in BUNDLES if len(training_stages(b)) > 1]
    assert staged, "no two-stage bundle left to check"
    for bundle in staged:
        for task in (LandmarkInferTask(str(bundle), {}), LandmarkTrainTask(str(bundle), {})):
            assert not task.is_valid() and "stages" in task.error, task.error


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_train_task_overrides_ids_the_bundle_has(bundle, tmp_path, monkeypatch):
    """MONAI Label sets the epochs, the datalists, the handlers, the device and the bundle root of a training: every
    bundle's training config has those ids, read from any working directory (no silent no-op override)."""
    from lib.trainers import LandmarkTrainConstants, train_config

    monkeypatch.chdir(tmp_path)
    const = LandmarkTrainConstants()
    parser = train_config(bundle)
    ids = [const.key_train_trainer_max_epochs(), const.key_train_dataset_data(), const.key_validate_dataset_data(),
           const.key_train_handlers(), const.key_network(), const.key_network_def(), const.key_device(),
           const.key_bundle_root(), "header"]
    assert [i for i in ids if i not in parser] == []
    assert parser["bundle_root"] == str(bundle)
    parser.resolve_macro_and_relative_ids()  # the skeleton is found from here
    assert parser["train"]["trainer"]["max_epochs"] == "@max_epochs"
    assert parser["train"]["parts"]["dataset"]["data"] == "@train#datalist"
    assert parser["validate"]["parts"]["dataset"]["data"] == "@validate#datalist"


# -------------------------------------------------------------------------------- served copies of the bundles
def _trained_bundle(name: str, dest: Path, **overrides) -> Path:
    """A copy of ``bundles/<name>/configs`` in ``dest/<name>``, trained there for one epoch with its quick.json
    (``train_bundle``; ``overrides`` as on the command line): its ``models/model.pt`` carries the network and the
    values it was trained with, which the app serves with no override."""
    bundle = dest / name
    shutil.copytree(REPO / "bundles" / name / "configs", bundle / "configs")
    train_bundle(bundle, bundle, **overrides)
    assert (bundle / "models" / "model.pt").is_file(), "training wrote no model"
    return bundle


def _crop_dicom(source: Path, target: Path, width: int, height: int, spacing: list[float] | None = None) -> None:
    """Save the centre ``width x height`` pixels of the DICOM ``source`` as ``target``."""
    ds = pydicom.dcmread(source)
    arr = ds.pixel_array
    r0, c0 = (arr.shape[0] - height) // 2, (arr.shape[1] - width) // 2
    ds.PixelData = np.ascontiguousarray(arr[r0 : r0 + height, c0 : c0 + width]).tobytes()
    ds.Rows, ds.Columns = height, width
    if spacing is not None:
        ds.PixelSpacing = spacing
    ds.save_as(target)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """Small trained copies of bundles/scn (on the synthetic hand dataset it names its landmarks from) and
    bundles/interactive_kp (on the synthetic spines), and a studies folder with one square hand DICOM and one spine
    DICOM of width:height 1:2 (square pixels). Both fill their network input (64x64, 64x128) without padding, so
    even a barely trained model predicts inside the image."""
    tmp = tmp_path_factory.mktemp("monailabel")
    data = tmp / "data"
    datalist = ensure_dataset("hand", data)
    bundle = _trained_bundle("scn", tmp / "bundles", dataset_dir=str(data))
    spine = tmp / "spine"
    spine_datalist = ensure_dataset("spine", spine)
    interactive = _trained_bundle("interactive_kp", tmp / "bundles", dataset_dir=str(spine))

    studies = tmp / "studies"
    studies.mkdir()
    hand = data / "images" / "validation_000.dcm"
    n = min(pydicom.dcmread(hand).pixel_array.shape)
    _crop_dicom(hand, studies / "square.dcm", n, n, spacing=[0.8, 0.8])
    spine_image = spine / json.loads(spine_datalist.read_text())["validation"][0]["image"]
    ds = pydicom.dcmread(spine_image)
    w = min(ds.Columns, ds.Rows // 2)
    _crop_dicom(spine_image, studies / "spine.dcm", w, 2 * w, spacing=[2.0, 2.0])  # square pixels: no padding
    return {"tmp": tmp, "bundle": bundle, "studies": studies, "datalist": datalist, "size": n,
            "interactive": interactive, "spine_datalist": spine_datalist, "spine_size": (w, 2 * w)}


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


def _train_from_datastore(served: dict, tmp_path: Path, request: dict) -> tuple[Path, dict]:
    """Train a copy of the served SCN bundle on a datastore of 8 labelled images with ``request`` from ``tmp_path``
    as working directory (not the repository's: the skeleton's macros are found all the same); the copy and the
    served model's record."""
    from lib.trainers import LandmarkTrainTask

    bundle = tmp_path / "scn"
    shutil.copytree(served["bundle"], bundle)  # training writes the bundle's models/
    record = ModelConfig.load(bundle / "models" / "model.pt").config
    before = (bundle / "models" / "model.pt").stat().st_mtime_ns
    store, _ = _label_studies(served, tmp_path / "studies", 8)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        task = LandmarkTrainTask(str(bundle), {})
        task({"model": "scn", "max_epochs": 1, "device": "cpu", "val_split": 0.25, "tracking": "None",
              "pretrained": True, **request}, store)
    finally:
        os.chdir(cwd)
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns > before, "training saved no best checkpoint"
    assert not (bundle / "configs" / "monailabel_train.json").exists()
    return bundle, record


@pytest.mark.slow
def test_train_task_trains_one_epoch_from_the_datastore(served, tmp_path):
    bundle, served_record = _train_from_datastore(served, tmp_path, {"multi_gpu": False})
    # pretrained: the served model was trained further: its network and values, its landmarks
    record = ModelConfig.load(bundle / "models" / "model.pt").config
    assert record["network_def"] == served_record["network_def"]
    assert record["values"] == served_record["values"]
    assert json.loads((bundle / "models" / "model_config.json").read_text()) == record  # the workflow's initialize ran


def _run_in_session(cmd: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` for the app's torchrun, in a session of its own that is killed whole after
    ``TORCHRUN_TIMEOUT`` (a stuck rank fails the test instead of hanging it)."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return subprocess.CompletedProcess(cmd, proc.wait(timeout=TORCHRUN_TIMEOUT))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"torchrun did not finish in {TORCHRUN_TIMEOUT} s: {cmd}")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() == 1, reason="two ranks need two GPUs, or none (gloo on the CPU)")
def test_train_task_trains_under_torchrun_with_train_json_alone(served, tmp_path, monkeypatch):
    """MONAI Label's multi-GPU path (forced here: two CPU ranks with gloo without GPUs) runs train.json itself under
    torchrun: the bundles have no multi_gpu_train.json."""
    import lib.trainers

    monkeypatch.setattr(lib.trainers, "subprocess", types.SimpleNamespace(run=_run_in_session))
    bundle, served_record = _train_from_datastore(served, tmp_path, {"multi_gpu": True, "force_multi_gpu": True,
                                                                     "gpus": "0,1"})
    assert ModelConfig.load(bundle / "models" / "model.pt").config["network_def"] == served_record["network_def"]


# ------------------------------------------------------------------------------------------ the inference task
@pytest.mark.slow
def test_infer_task_serves_a_model_trained_with_overrides(tmp_path):
    """A model trained with overrides (input size, network width) on a datalist whose landmark names are not the
    synthetic default is served with NO override: network, input size and names come from its record; with a
    conformal calibration next to it, the result carries each landmark's region and review flag."""
    from fastapi import HTTPException
    from lib.infers import LandmarkInferTask

    from monai_ext.networks import network_definition

    datalist = generate_dataset("hand", tmp_path / "data", n_train=4, n_val=2, n_test=0, seed=3)
    doc = json.loads(datalist.read_text())
    names = [f"renamed_{k:02d}" for k in range(len(doc["landmarks"]))]
    datalist.write_text(json.dumps({**doc, "landmarks": names}))
    bundle = _trained_bundle("scn", tmp_path / "bundles", datalist=str(datalist), spatial_size=[64, 96],
                             **{"network_def#local_filters": 8})

    task = LandmarkInferTask(str(bundle), {})
    assert task.is_valid(), task.error
    assert task.landmark_names == names and list(task.labels) == names
    assert task.bundle_config.get_parsed_content("spatial_size") == [64, 96]
    assert network_definition(task.network)["local_filters"] == 8
    image = datalist.parent / doc["validation"][0]["image"]
    _, result = task({"image": str(image), "device": "cpu", "landmark_label": False})
    assert [p["name"] for p in result["landmarks"]] == names
    assert np.isfinite([[p["x"], p["y"]] for p in result["landmarks"]]).all()
    assert "region" not in result["landmarks"][0]  # no calibration next to the model: no regions

    # calibrated (as scripts/calibrate_regions.py writes next to model.pt): each landmark carries its region in mm
    # and pixels and a review flag; label_region draws the discs with those radii
    from monai_ext.uncertainty import ConformalRegions, save_calibration

    save_calibration([ConformalRegions("fixed", 0.9, 2.0), ConformalRegions("adaptive", 0.9, 1.5)],
                     bundle / "models" / "conformal.json")
    label_file, result = task({"image": str(image), "device": "cpu", "landmark_label": True, "label_region": True,
                               "result_extension": ".png"})
    spacing = np.asarray(result["spacing"])
    for p in result["landmarks"]:
        assert p["region_mm"] > 0 and p["region"] == pytest.approx(p["region_mm"] / np.sqrt(spacing.prod()), rel=1e-4)
        assert p["review"] == (p["region_mm"] > 2.0)
    from monai_ext.data.readers import read_radiograph

    points = np.array([[p["x"], p["y"]] for p in result["landmarks"]])
    radii = np.array([p["region"] for p in result["landmarks"]])
    drawn, _ = read_radiograph(label_file, min_size=1)
    np.testing.assert_array_equal(np.asarray(drawn), disc_label(points, result["image_size"], radii))
    with pytest.raises(HTTPException) as err:
        task({"image": str(image), "device": "cpu", "landmark_label": False, "region_coverage": 0.8})
    assert err.value.status_code == 422 and "coverage 0.8" in err.value.detail


def _replace_model(path: Path, checkpoint) -> None:
    """Write ``checkpoint`` as ``path`` with a later modification time (a model replaced while served)."""
    stamp = path.stat().st_mtime_ns
    torch.save(checkpoint, path)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))


def test_infer_task_reports_bad_options_and_a_model_that_does_not_load(served, tmp_path):
    from fastapi import HTTPException
    from lib.infers import LandmarkInferTask

    bundle = tmp_path / "scn"
    shutil.copytree(served["bundle"], bundle)
    task = LandmarkInferTask(str(bundle), {})
    assert task.is_valid(), task.error
    image = str(served["studies"] / "square.dcm")
    _, result = task({"image": image, "device": "cpu", "landmark_label": False})
    assert len(result["landmarks"]) == len(task.landmark_names)

    # bad options: 422 naming the image, the option and the value
    for option, message in [({"label_radius": -1}, r"label_radius must be a positive number.*-1"),
                            ({"result_extension": ".jpg"}, r"result_extension must be one of .*'\.jpg'"),
                            ({"device": "no_such_device"}, r"device 'no_such_device' is not a device"),
                            ({"spacing": [0, 1]}, r"invalid spacing")]:
        with pytest.raises(HTTPException) as info:
            task({"image": image, "device": "cpu", **option})
        assert info.value.status_code == 422, info.value.detail
        assert re.search(message, info.value.detail) and "square.dcm" in info.value.detail, info.value.detail

    # weights that do not fit the network of the model's record: 500 naming the model and the keys
    model = bundle / "models" / "model.pt"
    checkpoint = torch.load(model, weights_only=True)
    missing = sorted(checkpoint["model"])[0]
    del checkpoint["model"][missing]
    _replace_model(model, checkpoint)
    with pytest.raises(HTTPException) as info:
        task({"image": image, "device": "cpu"})
    assert info.value.status_code == 500
    assert str(model) in info.value.detail and missing in info.value.detail, info.value.detail

    # a checkpoint without the model's record (weights only): not served, and the error says why
    _replace_model(model, checkpoint["model"])
    with pytest.raises(HTTPException) as info:
        task({"image": image, "device": "cpu"})
    assert info.value.status_code == 500 and "holds no 'model_config'" in info.value.detail, info.value.detail
    task = LandmarkInferTask(str(bundle), {})
    assert not task.is_valid() and "holds no 'model_config'" in task.error


# ------------------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(served):
    tmp, port = served["tmp"], _free_port()
    app = tmp / "app"  # the server writes logs/, bin/ and model/ into its app folder: a copy
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "logs", "bin", "model"))
    env = dict(os.environ, MONAI_LABEL_SESSION_PATH=str(tmp / "sessions"), MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
               MONAI_LABEL_TRACKING_ENABLED="false")
    cwd = tmp / "cwd"  # the server's working directory is not the repository; an empty folder, as MONAI Label
    cwd.mkdir()  # would take an image id naming a file or folder there for that path
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(served["studies"]),
         "--conf", "models", "scn,interactive_kp", "--conf", "bundles_dir", str(served["bundle"].parent),
         "--conf", "zoo_source",
         "local", "--conf", "sam2", "false", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=str(cwd),
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


def _infer(url: str, image: str, output: str, params: dict, model: str = "scn") -> bytes:
    body = urllib.parse.urlencode({"params": json.dumps(params)}).encode()
    query = urllib.parse.urlencode({"image": image, "output": output})
    with urllib.request.urlopen(urllib.request.Request(f"{url}/infer/{model}?{query}", data=body), timeout=120) as r:
        return r.read()


def _infer_error(url: str, image: str, params: dict, model: str = "interactive_kp") -> tuple[int, str]:
    """``(HTTP status, error detail)`` of a request that must fail."""
    with pytest.raises(urllib.error.HTTPError) as info:
        _infer(url, image, "json", params, model)
    body = info.value.read().decode()
    try:
        return info.value.code, str(json.loads(body)["detail"])
    except (ValueError, KeyError):
        return info.value.code, body


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

    # the bundle's own inference (its inference composition, no override) gives the same points
    bundle = served["bundle"]
    wf = bundle_workflow(bundle, ["inference.json"], "inference", bundle, quick=False,
                         input=str(served["studies"] / "square.dcm"), output_dir=str(tmp_path / "eval"))
    wf.run()
    wf.finalize()
    (record,) = json.loads((tmp_path / "eval" / "inference" / "predictions.json").read_text())["predictions"]
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


# --------------------------------------------------------------------------------------- the interactive model
def _inside(p: dict, size: tuple[int, int]) -> bool:
    return -0.5 <= p["x"] <= size[0] - 0.5 and -0.5 <= p["y"] <= size[1] - 0.5


@pytest.mark.slow
def test_server_lists_the_interactive_model(served, server):
    _, info = server
    names = json.loads(Path(served["spine_datalist"]).read_text())["landmarks"]
    model = info["models"]["interactive_kp"]
    assert model["type"] == "deepedit" and info["models"]["scn"]["type"] == "segmentation"
    assert model["dimension"] == 2 and list(model["labels"]) == names


@pytest.mark.slow
def test_server_refines_landmarks_with_a_click(served, server):
    url, _ = server
    names = json.loads(Path(served["spine_datalist"]).read_text())["landmarks"]
    size = served["spine_size"]
    keys = {"index", "name", "x", "y", "x_mm", "y_mm", "confidence", "clicked"}

    auto = json.loads(_infer(url, "spine", "json", {"device": "cpu"}, "interactive_kp"))
    assert auto["image_size"] == list(size) and auto["clicks"] == []
    assert [p["name"] for p in auto["landmarks"]] == names
    assert all(set(p) >= keys and not p["clicked"] and _inside(p, size) for p in auto["landmarks"])

    k = 5
    before = np.array([auto["landmarks"][k]["x"], auto["landmarks"][k]["y"]])
    w, h = size
    corners = np.array([[10.25, 12.75], [w - 10.5, 12.75], [10.25, h - 9.5], [w - 10.5, h - 9.5]])
    click = corners[np.argmax(np.linalg.norm(corners - before, axis=1))]
    assert np.linalg.norm(click - before) >= 20.0
    clicks = [{"landmark": k, "x": float(click[0]), "y": float(click[1])}]
    result = json.loads(_infer(url, "spine", "json", {"device": "cpu", "clicks": clicks}, "interactive_kp"))

    points = result["landmarks"]
    assert [p["name"] for p in points] == names and all(set(p) >= keys for p in points)
    assert [p["clicked"] for p in points] == [i == k for i in range(len(names))]
    np.testing.assert_allclose([points[k]["x"], points[k]["y"]], click, atol=0.5)
    assert points[k]["confidence"] == pytest.approx(1.0)
    assert all(_inside(p, size) for p in points)
    assert result["clicks"] == [{"index": k, "name": names[k], "x": pytest.approx(click[0]),
                                 "y": pytest.approx(click[1])}]
    assert points[k]["x_mm"] == pytest.approx(points[k]["x"] * result["spacing"][0])

    # the same click by landmark name gives the same landmarks
    by_name = [{"landmark": names[k], "x": float(click[0]), "y": float(click[1])}]
    again = json.loads(_infer(url, "spine", "json", {"device": "cpu", "clicks": by_name}, "interactive_kp"))
    np.testing.assert_allclose([[p["x"], p["y"]] for p in again["landmarks"]], [[p["x"], p["y"]] for p in points],
                               atol=1e-4)


@pytest.mark.slow
def test_server_answers_bad_clicks_with_what_is_wrong(served, server):
    url, _ = server
    n = len(json.loads(Path(served["spine_datalist"]).read_text())["landmarks"])
    w, h = served["spine_size"]
    cases = [
        ([{"landmark": n, "x": 10, "y": 10}], "interactive_kp", rf"click 0: landmark {n} is outside 0\.\.{n - 1}"),
        ([{"landmark": 0, "x": 10, "y": h + 3}], "interactive_kp",
         rf"click 0: \(10\.0, {h + 3}\.0\) is outside the {w} x {h} image"),
        ([{"landmark": "T0_XX", "x": 10, "y": 10}], "interactive_kp", r"click 0: 'T0_XX' is neither a landmark index"),
        ([{"landmark": 0, "x": 10}], "interactive_kp", r"click 0 must have 'landmark', 'x' and 'y'"),
        ([{"landmark": 0, "x": 10, "y": 10}], "scn", r"model 'scn' takes no clicks"),
    ]
    for clicks, model, message in cases:
        image = "spine" if model == "interactive_kp" else "square"
        status, detail = _infer_error(url, image, {"device": "cpu", "clicks": clicks}, model)
        assert status == 422, (status, detail)
        assert re.search(message, detail), detail
        assert f"{image}.dcm" in detail, detail  # names the image
    # the server is still up and answers the next request
    ok = json.loads(_infer(url, "spine", "json", {"device": "cpu", "clicks": [{"landmark": 1, "x": 20, "y": 30}]},
                           "interactive_kp"))
    assert [ok["landmarks"][1]["x"], ok["landmarks"][1]["y"]] == pytest.approx([20.0, 30.0], abs=0.5)
