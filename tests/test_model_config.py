"""A trained model describes itself: the checkpoint carries the network definition and the values the model depends on
(:class:`monai_ext.bundle.ModelConfig`); folder inference, evaluation, TorchScript export and the MONAI Label infer task
then need no setting of the training repeated, and a setting that contradicts the record is an error naming it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import monai.bundle
import numpy as np
import pytest
import torch
from bundle_workflow import bundle_workflow
from conftest import REPO

from monai_ext.bundle import ModelConfig, ModelConfigMismatch, config_files
from monai_ext.data.synthetic import generate_dataset
from monai_ext.errors import LandmarkDataError
from monai_ext.networks import SpatialConfigurationNet, network_definition, record_arguments

SCN = REPO / "bundles" / "scn"
#: what the user changed at training: input size and widths
OVERRIDES = {"spatial_size": [64, 96], "network_def#local_filters": 8, "network_def#spatial_filters": 8,
             "network_def#spatial_kernel_size": 7, "max_epochs": 1, "num_workers": 0}


def test_networks_record_their_arguments_and_rebuild_from_them():
    net = SpatialConfigurationNet(2, 1, 5, local_filters=16)
    definition = network_definition(net)
    assert definition["_target_"] == "monai_ext.networks.scn.SpatialConfigurationNet"
    assert definition["local_filters"] == 16 and definition["spatial_filters"] == 64  # defaults filled in
    json.dumps(definition)  # plain JSON
    record = ModelConfig(network=torch.nn.parallel.DataParallel(net), values={"spatial_size": (64, 96)})
    rebuilt = record.network()
    assert type(rebuilt) is SpatialConfigurationNet and network_definition(rebuilt) == definition
    assert rebuilt.load_state_dict(net.state_dict()) is not None  # the same shapes
    assert record["spatial_size"] == [64, 96]

    class Plain(torch.nn.Module):
        def __init__(self, width: int = 3):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, width, 1)

    with pytest.raises(TypeError, match="record_arguments"):
        network_definition(Plain())
    assert network_definition(record_arguments(Plain)(width=4))["width"] == 4


def test_a_contradicting_setting_is_an_error_listing_every_difference(tmp_path: Path):
    net = SpatialConfigurationNet(2, 1, 3, local_filters=8)
    record = ModelConfig(net, values={"spatial_size": [64, 96], "decode_method": "quadratic", "header": {"unit": "mm"}},
                         defaults={"datalist": "d.json"})
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict(), "model_config": record.state_dict()}, ckpt)
    loaded = ModelConfig.load(ckpt)
    loaded.check({"spatial_size": (64, 96), "decode_method": "quadratic", "datalist": "other.json"})  # a default
    with pytest.raises(ModelConfigMismatch) as info:
        loaded.check({"spatial_size": [64, 64], "decode_method": "argmax", "header": {"unit": "mm"}})
    message = str(info.value)
    assert str(ckpt) in message and "spatial_size: trained with [64, 96], given [64, 64]" in message
    assert 'decode_method: trained with "quadratic", given "argmax"' in message and "header" not in message
    torch.save(net.state_dict(), tmp_path / "bare.pt")  # a checkpoint without a record
    with pytest.raises(LandmarkDataError, match="holds no 'model_config'"):
        ModelConfig.load(tmp_path / "bare.pt")
    with pytest.raises(FileNotFoundError, match="no trained model"):
        ModelConfig.load(tmp_path / "missing.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """SCN trained with OVERRIDES on a generated dataset whose landmarks have their own names, in a copy of the bundle."""
    root = tmp_path_factory.mktemp("trained")
    datalist = generate_dataset("hand", root / "data", n_train=4, n_val=2, n_test=2, seed=5)
    doc = json.loads(datalist.read_text())
    names = [f"point_{k:02d}" for k in range(len(doc["landmarks"]))]
    datalist.write_text(json.dumps({**doc, "landmarks": names}))
    bundle = root / "scn"
    shutil.copytree(SCN / "configs", bundle / "configs")
    wf = bundle_workflow(bundle, ["train.json"], "training", bundle, quick=False, datalist=str(datalist), **OVERRIDES)
    wf.run()
    wf.finalize()
    return {"bundle": bundle, "datalist": datalist, "names": names, "images": datalist.parent / "images"}


def _run(bundle: Path, names: list[str], run_id: str, **overrides) -> None:
    wf = bundle_workflow(bundle, names, run_id, bundle, quick=False, **overrides)
    wf.run()
    wf.finalize()


@pytest.mark.slow
def test_inference_evaluation_export_and_monai_label_repeat_no_override(trained: dict, tmp_path: Path):
    bundle, names = trained["bundle"], trained["names"]
    record = json.loads((bundle / "models" / "model_config.json").read_text())
    assert record["values"]["spatial_size"] == [64, 96] and record["network_def"]["local_filters"] == 8
    assert record["values"]["header"]["landmarks"] == names and record["defaults"]["datalist"] == str(trained["datalist"])

    # folder inference: only the folder
    _run(bundle, ["inference.json"], "inference", input=str(trained["images"]))
    doc = json.loads((bundle / "eval" / "inference" / "predictions.json").read_text())
    assert doc["landmark_names"] == names and len(doc["predictions"]) == 8
    assert all(r["error"] is None and [p["name"] for p in r["landmarks"]] == names for r in doc["predictions"])

    # evaluation: nothing at all (the record's datalist, its test split)
    _run(bundle, ["evaluate.json"], "evaluating")
    summary = json.loads((bundle / "eval" / "evaluation" / "summary.json").read_text())
    assert summary["n_images"] == 2 and summary["n_landmarks"] == len(names)
    evaluated = json.loads((bundle / "eval" / "evaluation" / "predictions.json").read_text())
    assert evaluated["landmark_names"] == names

    # TorchScript export with MONAI's command and the evaluation/inference composition
    ts = tmp_path / "model.ts"
    monai.bundle.ckpt_export("network_def", filepath=str(ts), ckpt_file=str(bundle / "models" / "model.pt"),
                             key_in_ckpt="model", meta_file=str(bundle / "configs" / "metadata.json"),
                             config_file=config_files(bundle, "inference"), bundle_root=str(bundle))
    exported = torch.jit.load(str(ts)).eval()
    eager = ModelConfig.load(bundle / "models" / "model.pt").network().eval()
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True)["model"])
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), eager(x))
    assert exported(x).shape == (1, len(names), 64, 96)

    # the MONAI Label infer task serves the folder as it is
    pytest.importorskip("monailabel")
    sys.path.insert(0, str(REPO / "monailabel_app"))
    from lib.infers import LandmarkInferTask

    task = LandmarkInferTask(str(bundle), {})
    assert task.is_valid(), task.error
    assert task.landmark_names == names
    image = sorted(trained["images"].glob("test_*"))[0]
    _, result = task({"image": str(image), "device": "cpu", "landmark_label": False})
    assert [p["name"] for p in result["landmarks"]] == names
    assert np.isfinite([[p["x"], p["y"]] for p in result["landmarks"]]).all()


@pytest.mark.slow
def test_an_override_that_contradicts_the_trained_model_is_an_error(trained: dict):
    with pytest.raises(Exception) as info:  # MONAI wraps the initialize step's error
        _run(trained["bundle"], ["inference.json"], "inference", spatial_size=[64, 64])
    error = info.value
    while error is not None and not isinstance(error, ModelConfigMismatch):
        error = error.__cause__
    assert error is not None and "spatial_size: trained with [64, 96], given [64, 64]" in str(error)
