"""MLflow tracking of the bundles: ``bundles/tracking_mlflow.json`` against a real ``mlflow server`` (every bundle
under bundles/: params, per-iteration losses, per-epoch metrics, config/checkpoint/overlay artifacts), and MONAI's
plain ``--tracking mlflow`` (SQLite under the bundle's output_dir) for the SCN training and evaluation.

The workflows run in-process through :class:`monai.bundle.ConfigWorkflow` with ``tracking=`` (what
``python -m monai.bundle run ... --tracking`` calls), on a copy of the bundle's configs in tmp_path so that
``output_dir`` keeps its config expression (MONAI 1.6.1 builds the executed-config path from it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow
from monai.utils import path_to_sqlite_uri

mlflow = pytest.importorskip("mlflow")

from bundle_workflow import save_untrained_model
from conftest import BUNDLES, REPO

from monai_ext.bundle import config_files, training_stages
from monai_ext.handlers.tracking import scalars_from_output

SETTINGS = REPO / "bundles" / "tracking_mlflow.json"
SERVER_START_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _MLflowServer:
    """``mlflow server`` with a SQLite store and proxied local artifacts, all in ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.url = f"http://127.0.0.1:{_free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job consumers
        self.log = open(root / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", path_to_sqlite_uri(str(root / "mlflow.db")),
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
             "--port", self.url.rsplit(":", 1)[1], "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}): {self.log_text()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server not ready after {timeout} s: {self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return (self.root / "server.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(tmp_path_factory):
    """Started with the module and waited for in the test that uses it (the last one): it boots, creating its
    database, while the other tests run."""
    server = _MLflowServer(tmp_path_factory.mktemp("mlflow_server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    """A folder of synthetic datasets shared by the tests (each bundle generates its own on first run)."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)


def _copy_bundle(bundle: Path, dst: Path) -> Path:
    root = dst / bundle.name
    shutil.copytree(bundle / "configs", root / "configs")
    return root


#: fewer images than the synthetic dataset has: 2 training iterations of 4 images, 4 validation images
SUBSET = {"train#datalist": "$monai_ext.data.load_datalist(@datalist, 'training', @header['landmarks'])[:8]",
          "validate#datalist": "$monai_ext.data.load_datalist(@datalist, 'validation', @header['landmarks'])[:4]"}


def _files(root: Path, run_id: str, stage: str | None = None) -> list[str]:
    """The workflow's configs with the quick variant: training (a stage), or evaluation of the trained model."""
    return config_files(root, "train" if run_id == "training" else "evaluate", ["quick.json"], stage)


def _run(root: Path, run_id: str, tracking: str, dataset_dir: Path, stage: str | None = None) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        **(SUBSET if run_id == "training" else {}),
        config_file=_files(root, run_id, stage),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type="train" if run_id == "training" else "infer",
        run_id=run_id,
        tracking=tracking,
        bundle_root=str(root),
        dataset_dir=str(dataset_dir),
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    out: list[str] = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def _only_run(client, experiment_name: str):
    exp = client.get_experiment_by_name(experiment_name)
    assert exp is not None, f"no MLflow experiment {experiment_name!r}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    assert runs[0].info.status == "FINISHED"
    return runs[0]


def _raw_engine(parser, id: str) -> dict:
    """The raw config of engine ``id``, following ``"@other"`` references."""
    item = parser.get(id)
    while isinstance(item, str) and item.startswith("@"):
        item = parser.get(item[1:])
    return item


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_tracking_settings_patch_every_bundle(bundle: Path, datasets: Path, tmp_path):
    """The settings wire every bundle: hyper-parameters and the checkpoint of every training stage, the evaluation
    outputs and a run of its own for evaluation (its validator with ``standalone_evaluation``) and for inference (the
    model-zoo ids ``evaluator``/``handlers``). No run: only the config is resolved."""
    root = _copy_bundle(bundle, tmp_path)

    def workflow(run_id: str, stage: str | None = None) -> ConfigWorkflow:
        return ConfigWorkflow(
            config_file=_files(root, run_id, stage),
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=False,
            workflow_type="train" if run_id == "training" else "infer",
            run_id=run_id,
            tracking=str(SETTINGS),
            bundle_root=str(root),
            dataset_dir=str(datasets / bundle.name),
        )

    for stage in training_stages(bundle):  # untrained models with their records, as training writes them
        save_untrained_model(root, root, stage=stage, dataset_dir=str(datasets / bundle.name))
    names = set()
    for stage in training_stages(bundle):
        parser = workflow("training", stage).parser
        last = parser.get("train#handlers")[-1]
        assert last["_target_"].endswith("LandmarkMLFlowHandler"), last
        i = len(parser.get("train#handlers")) - 1
        params = parser.get_parsed_content(f"train#handlers#{i}#experiment_param")
        hyper = parser.get_parsed_content("experiment_params")
        assert hyper, f"{bundle.name}: no 'experiment_params' (hyper-parameters to track)"
        assert params["bundle"] == bundle.name and all(params[k] == v for k, v in hyper.items())
        artifacts = parser.get_parsed_content(f"train#handlers#{i}#artifacts")
        assert len(artifacts) >= 2, f"{bundle.name}: training logs no artifact but the config (set 'tracking_artifacts')"
        ckpt = parser.get_parsed_content("ckpt_dir")  # the stage's own best checkpoint
        assert str(Path(ckpt) / "model.pt") in map(str, artifacts), artifacts
        names.add(parser.get_parsed_content("tracking_name"))
        validator = parser.get("validate#handlers")[-1]
        assert validator["_target_"].endswith("LandmarkMLFlowHandler") and not validator.get("close_on_complete")
        assert validator["run_name"] == "@run_name", "the validator logs into its trainer's run"
    assert len(names) == len(training_stages(bundle)), f"{bundle.name}: every training stage needs a run of its own"

    for run_id in ("evaluating", "inference"):  # MONAI's ids for tracking: engine 'evaluator', handlers 'handlers'
        parser = workflow(run_id).parser
        handlers = parser.get("handlers")
        assert isinstance(handlers, list) and "evaluator" in parser, f"{bundle.name} {run_id}"
        assert handlers[-1]["_target_"].endswith("LandmarkMLFlowHandler") and handlers[-1]["close_on_complete"]
        i = len(handlers) - 1
        artifacts = parser.get_parsed_content(f"handlers#{i}#artifacts")
        assert len(artifacts) >= 2, f"{bundle.name} {run_id}: logs no artifact but the config (set 'tracking_artifacts')"
        assert parser.get_parsed_content(f"handlers#{i}#experiment_param")["bundle"] == bundle.name
        # the engine runs the handlers of 'handlers' (its tracker), not the training validator's
        engine, tracker = parser.get_parsed_content("evaluator"), parser.get_parsed_content(f"handlers#{i}")
        attached = {getattr(h[0], "__self__", None) for hs in engine._event_handlers.values() for h in hs}
        assert tracker in attached and not attached & set(parser.get_parsed_content("validate#handlers")), run_id


@pytest.mark.slow
def test_default_mlflow_tracking_sqlite_scn_train_and_evaluate(datasets: Path, tmp_path):
    root = _copy_bundle(REPO / "bundles" / "scn", tmp_path)
    _run(root, "training", "mlflow", datasets / "scn")
    db = root / "eval" / "mlruns.db"  # MONAI's default: SQLite under output_dir
    assert db.is_file()
    client = mlflow.MlflowClient(path_to_sqlite_uri(str(db)))
    exp = client.get_experiment_by_name("monai_experiment")
    (train_run,) = client.search_runs([exp.experiment_id])
    assert train_run.info.status == "FINISHED"
    assert len(client.get_metric_history(train_run.info.run_id, "train_loss")) == 2  # 8 images, batch 4
    assert {"val_mre", "val_sdr2", "val_sdr2.5", "val_sdr20"} <= set(train_run.data.metrics)

    # evaluation with the plain settings: its own run, finished, with the executed config
    _run(root, "evaluating", "mlflow", datasets / "scn")
    runs = client.search_runs([exp.experiment_id])
    (eval_run,) = [r for r in runs if r.info.run_id != train_run.info.run_id]
    assert eval_run.info.status == "FINISHED"
    assert "val_mre" in eval_run.data.metrics
    assert any(f.startswith("config_") for f in _artifacts(client, eval_run.info.run_id))

    # evaluation with the project's settings: params, overlays and summaries as artifacts, in the same database
    _run(root, "evaluating", str(SETTINGS), datasets / "scn")
    run = _only_run(client, "scn")
    assert run.data.params["eval_section"] == "test"  # the split checkpoint selection never saw
    assert run.data.tags["engine"] == "evaluator"
    files = _artifacts(client, run.info.run_id)
    assert {"evaluation/summary.json", "evaluation/predictions.json", "evaluation/per_landmark.csv"} <= set(files)
    assert any(f.startswith("evaluation/overlays/") and f.endswith(".png") for f in files), files
    assert run.data.metrics["val_mre"] == pytest.approx(eval_run.data.metrics["val_mre"])


@pytest.mark.slow
def test_tracking_settings_log_to_mlflow_server(mlflow_server: _MLflowServer, datasets: Path, tmp_path):
    bundle = REPO / "bundles" / "scn"
    root = _copy_bundle(bundle, tmp_path)
    settings = json.loads(SETTINGS.read_text())
    settings["configs"]["tracking_uri"] = mlflow_server.url
    (tmp_path / "tracking.json").write_text(json.dumps(settings))
    mlflow_server.wait_ready()

    wf = _run(root, "training", str(tmp_path / "tracking.json"), datasets / bundle.name)

    client = mlflow.MlflowClient(mlflow_server.url)
    run = _only_run(client, bundle.name)  # experiment named after the bundle folder
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    params, tags = run.data.params, run.data.tags
    assert params["bundle"] == tags["bundle"] == bundle.name
    assert params["bundle_version"] == tags["bundle_version"] == meta["version"]
    hyper = wf.parser.get_parsed_content("experiment_params")
    assert {"learning_rate", "batch_size", "spatial_size", "max_epochs", "network"} <= set(hyper)
    for key, value in hyper.items():
        assert params[key] == str(value), key
    assert "'local_filters': 16" in params["network"]  # the resolved network definition, quick.json's width
    assert (params["max_epochs"], params["spatial_size"]) == ("1", "[64, 64]")  # quick.json's values

    trainer = wf.parser.get_parsed_content("train#trainer")
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, trainer.state.iteration + 1))  # one per iteration
    key_metric = next(iter(wf.parser.get_parsed_content("validate#parts#key_metric")))
    for name in [key_metric] + [f"val_sdr{r:g}" for r in hyper["radii"]]:  # mm metrics, one value per epoch
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1], name

    files = _artifacts(client, run.info.run_id)
    assert "model.pt" in files, files  # the best checkpoint
    config = [f for f in files if f.startswith("config_") and f.endswith(".json")]
    assert len(config) == 1, files
    local = client.download_artifacts(run.info.run_id, config[0], str(tmp_path))
    assert json.loads(Path(local).read_text())["network_def"], "the executed config lacks network_def"


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_tracking_settings_sqlite_every_bundle(bundle: Path, datasets: Path, tmp_path):
    """Tracking into SQLite under the bundle's eval dir on every bundle with the project's settings: for every
    training stage a finished run with each scalar loss of its trainer per iteration (the adversarial engine: all five
    terms) and the validation metrics per epoch, then an evaluation run of its own."""
    root = _copy_bundle(bundle, tmp_path)
    db = root / "eval" / "mlruns.db"
    runs_before = 0
    for stage in training_stages(bundle):
        wf = _run(root, "training", str(SETTINGS), datasets / bundle.name, stage)
        assert db.is_file()
        client = mlflow.MlflowClient(path_to_sqlite_uri(str(db)))
        exp = client.get_experiment_by_name(bundle.name)
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == runs_before + 1 and all(r.info.status == "FINISHED" for r in runs)
        runs_before = len(runs)
        run = max(runs, key=lambda r: r.info.start_time)
        assert run.info.run_name.startswith(wf.parser.get_parsed_content("tracking_name") + "_")
        trainer = wf.parser.get_parsed_content("train#trainer")
        losses = set(scalars_from_output(trainer.state.output))
        assert losses, f"{bundle.name}: the trainer logs no scalar loss"
        for loss in losses:
            assert len(client.get_metric_history(run.info.run_id, loss)) == trainer.state.iteration, loss
        key_metric = next(iter(wf.parser.get_parsed_content("validate#parts#key_metric")))
        assert key_metric in run.data.metrics, sorted(run.data.metrics)
        assert "model.pt" in _artifacts(client, run.info.run_id)

    _run(root, "evaluating", str(SETTINGS), datasets / bundle.name)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == runs_before + 1
    newest = max(runs, key=lambda r: r.info.start_time)
    assert newest.info.status == "FINISHED" and newest.data.metrics and newest.data.tags["engine"] == "evaluator"
