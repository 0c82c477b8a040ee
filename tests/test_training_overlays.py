"""Training overlays: pictures of the input with the predicted heatmaps/landmarks every N iterations, for the
adversarial trainer and MONAI's SupervisedTrainer, and their MLflow artifacts when a run is open."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.engines import SupervisedTrainer
from monai.utils import path_to_sqlite_uri
from PIL import Image

from monai_ext.engines.prepare_batch import PrepareLandmarkBatch
from monai_ext.handlers.training_overlays import TrainingOverlayWriter, find_mlflow_run

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "adv_posenet"

RED, GREEN = (255, 0, 0), (0, 255, 0)


def _output(batch: int = 2) -> dict:
    """A batched trainer output: images (B, 1, 32, 64), last-stack heatmaps (B, 2, 8, 16) with peaks at heatmap
    index (3, 10) for landmark 0 and (6, 2) for landmark 1, targets with peaks at (1, 13) and (6, 2)."""
    pred = torch.zeros(batch, 2, 8, 16)
    pred[:, 0, 3, 10] = 1.0
    pred[:, 1, 6, 2] = 0.5
    label = torch.zeros(batch, 2, 8, 16)
    label[:, 0, 1, 13] = 1.0
    label[:, 1, 6, 2] = 1.0
    return {"image": torch.rand(batch, 1, 32, 64), "pred": [torch.zeros_like(pred), pred], "label": label,
            "mask": torch.ones(batch, 2), "loss": torch.tensor(0.5)}


def _zoomed(x: float, y: float, zoom: int) -> tuple[int, int]:
    """Heatmap index (stride 4) -> image pixel -> pixel of the picture enlarged ``zoom`` times."""
    px, py = (x + 0.5) * 4 - 0.5, (y + 0.5) * 4 - 0.5
    return round((px + 0.5) * zoom - 0.5), round((py + 0.5) * zoom - 0.5)


def _near(picture: np.ndarray, xy: tuple[int, int], colour: tuple[int, int, int], r: int = 6) -> bool:
    x, y = xy
    window = picture[max(0, y - r): y + r + 1, max(0, x - r): x + r + 1]
    return bool((window == colour).all(-1).any())


@pytest.mark.parametrize("decollate", [False, True])
def test_picture_draws_predictions_and_ground_truth_at_their_pixels(decollate: bool, tmp_path: Path):
    from monai.data import decollate_batch

    output = _output(3)
    if decollate:
        output = decollate_batch(output, detach=True)
    writer = TrainingOverlayWriter(tmp_path, interval=1, num_images=2, min_size=256)
    picture = writer.picture(output)
    zoom = 4  # 64 px high panels enlarged to 256
    assert picture.size == (2 * 32 * zoom + 4, 64 * zoom)  # two panels side by side, 4 px apart
    arr = np.asarray(picture)
    for offset in (0, 32 * zoom + 4):
        pred0 = _zoomed(3, 10, zoom)
        assert tuple(arr[pred0[1], pred0[0] + offset]) == RED  # filled red dot on the predicted landmark 0
        gt0 = _zoomed(1, 13, zoom)
        assert _near(arr, (gt0[0] + offset, gt0[1]), GREEN)  # green ring on its ground truth
        assert not _near(arr, (pred0[0] + offset, pred0[1]), GREEN, r=3)
        assert _near(arr, (_zoomed(6, 2, zoom)[0] + offset, _zoomed(6, 2, zoom)[1]), RED)
    # the heatmap overlay reddens the picture at the peak, not far from it
    p = _zoomed(3, 10, zoom)
    redness = arr[..., 0].astype(int) - arr[..., 1].astype(int)
    assert redness[p[1] + 8, p[0]] > 40 and redness[10, 10] == 0


def test_missing_landmark_and_point_ground_truth(tmp_path: Path):
    output = _output(1)
    output["mask"][0, 0] = 0  # landmark 0 missing: no ground truth drawn for it
    arr = np.asarray(TrainingOverlayWriter(tmp_path, min_size=64).picture(output))
    assert not _near(arr, _zoomed(1, 13, 1), GREEN, r=2)
    # ground truth as points in the input's pixels
    output = _output(1)
    output["label"] = torch.tensor([[[20.5, 40.0], [5.0, 5.0]]])
    arr = np.asarray(TrainingOverlayWriter(tmp_path, min_size=64).picture(output))
    assert _near(arr, (20, 40), GREEN, r=3) and _near(arr, (5, 5), GREEN, r=3)


class _TwoStacks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        h = torch.nn.functional.avg_pool2d(self.conv(x), 4)
        return [h, h * 2]


def _supervised_trainer(decollate: bool, handler: TrainingOverlayWriter, iterations: int = 4) -> SupervisedTrainer:
    data = [{"image": torch.rand(2, 1, 32, 64), "heatmap": torch.rand(2, 2, 8, 16), "landmark_mask": torch.ones(2, 2)}
            for _ in range(iterations)]
    net = _TwoStacks()

    def loss(pred, target):
        heatmap, mask = target
        return sum(((p - heatmap) ** 2).mean() for p in pred)

    return SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=loss,
        prepare_batch=PrepareLandmarkBatch(), train_handlers=[handler], decollate=decollate,
    )


@pytest.mark.parametrize("decollate", [False, True])
def test_supervised_trainer_every_n_iterations(decollate: bool, tmp_path: Path):
    writer = TrainingOverlayWriter(tmp_path / "overlays", interval=2, num_images=2, min_size=64)
    _supervised_trainer(decollate, writer).run()
    files = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert files == ["iteration_0000002.png", "iteration_0000004.png"]
    assert Image.open(tmp_path / "overlays" / files[0]).size == (2 * 32 + 4, 64)


def test_interval_zero_disables_and_max_files_limits(tmp_path: Path):
    _supervised_trainer(True, TrainingOverlayWriter(tmp_path / "off", interval=0)).run()
    assert not (tmp_path / "off").exists()
    writer = TrainingOverlayWriter(tmp_path / "capped", interval=1, max_files=3, prefix="input", min_size=64)
    _supervised_trainer(True, writer, iterations=5).run()
    assert sorted(p.name for p in (tmp_path / "capped").iterdir()) == [f"input_000000{i}.png" for i in (1, 2, 3)]
    with pytest.raises(ValueError):
        TrainingOverlayWriter(tmp_path, interval=-1)


def test_logs_into_the_active_mlflow_run_without_starting_one(tmp_path: Path):
    mlflow = pytest.importorskip("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(path_to_sqlite_uri(str(tmp_path / "mlruns.db")))
    try:
        writer = TrainingOverlayWriter(tmp_path / "overlays", interval=2, min_size=64)
        trainer = _supervised_trainer(True, writer)
        assert find_mlflow_run(trainer) is None
        trainer.run()  # no run open: files only, no run created
        assert mlflow.MlflowClient().search_experiments()[0].name == "Default"
        assert not mlflow.MlflowClient().search_runs(["0"])
        client = mlflow.MlflowClient()
        exp = client.create_experiment("overlays", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            _supervised_trainer(True, TrainingOverlayWriter(tmp_path / "overlays2", interval=2, min_size=64)).run()
        names = [a.path for a in client.list_artifacts(run.info.run_id, "training_images")]
        assert names == ["training_images/iteration_0000002.png", "training_images/iteration_0000004.png"]
        assert sorted(p.name for p in (tmp_path / "artifacts").rglob("*.png")) == [n.split("/")[1] for n in names]
    finally:
        mlflow.set_tracking_uri(previous)


def test_bundle_training_writes_overlays_and_mlflow_artifacts(tmp_path: Path, monkeypatch):
    """A 1-epoch tiny adv_posenet training (quick.json, 4 iterations of 2 images) with the project's MLflow tracking
    settings: PNGs at iterations 2 and 4 under <output_dir>/training_images, logged into the training run."""
    mlflow = pytest.importorskip("mlflow")
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    root = tmp_path / "adv_posenet"
    shutil.copytree(BUNDLE / "configs", root / "configs")  # output_dir keeps its expression (see test_mlflow_tracking)
    wf = ConfigWorkflow(
        config_file=[str(root / "configs" / c) for c in ("train.json", "quick.json")],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type="train",
        run_id="training",
        tracking=str(REPO / "bundles" / "tracking_mlflow.json"),
        bundle_root=str(root),
        dataset_dir=str(tmp_path / "data"),
        overlay_interval=2,
        overlay_num_images=2,
        batch_size=2,
        **{"train#datalist": "$monai_ext.data.load_datalist(@datalist, 'training', @header['landmarks'])[:8]",
           "validate#datalist": "$monai_ext.data.load_datalist(@datalist, 'validation', @header['landmarks'])[:1]"},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 4
    out = root / "eval" / "training_images"
    assert sorted(p.name for p in out.iterdir()) == ["iteration_0000002.png", "iteration_0000004.png"]
    assert Image.open(out / "iteration_0000002.png").size[0] > Image.open(out / "iteration_0000002.png").size[1]

    client = mlflow.MlflowClient(path_to_sqlite_uri(str(root / "eval" / "mlruns.db")))
    exp = client.get_experiment_by_name("adv_posenet")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    names = [a.path for a in client.list_artifacts(run.info.run_id, "training_images")]
    assert names == ["training_images/iteration_0000002.png", "training_images/iteration_0000004.png"]
    local = client.download_artifacts(run.info.run_id, names[0], str(tmp_path / "download"))
    assert Path(local).read_bytes() == (out / "iteration_0000002.png").read_bytes()
    assert json.loads((root / "configs" / "train.json").read_text())["overlay_interval"] == 50  # the default
