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

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir())
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
SUBSET = {"train#dataset#data": "$@train#datalist[:8]", "validate#dataset#data": "$@validate#datalist[:4]"}


def _run(root: Path, configs: list[str], run_id: str, tracking: str, dataset_dir: Path) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        **SUBSET,
        config_file=[str(root / "configs" / c) for c in configs] + [str(root / "configs" / "quick.json")],
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
    """The settings wire every bundle: hyper-parameters, the checkpoint for training, the evaluation outputs and a
    run of its own for evaluation (the model-zoo ids ``evaluator``/``handlers``). No run: only the config is resolved."""
    root = _copy_bundle(bundle, tmp_path)

    def workflow(configs: list[str], run_id: str) -> ConfigWorkflow:
        return ConfigWorkflow(
            config_file=[str(root / "configs" / c) for c in configs + ["quick.json"]],
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=False,
            workflow_type="train" if run_id == "training" else "infer",
            run_id=run_id,
            tracking=str(SETTINGS),
            bundle_root=str(root),
            dataset_dir=str(datasets / bundle.name),
        )

    parser = workflow(["train.json"], "training").parser
    i = len(parser.get("train#handlers")) - 1
    assert parser.get(f"train#handlers#{i}#_target_").endswith("LandmarkMLFlowHandler")
    params = parser.get_parsed_content(f"train#handlers#{i}#experiment_param")
    hyper = parser.get_parsed_content("experiment_params")
    assert hyper, f"{bundle.name}/configs/train.json defines no 'experiment_params' (hyper-parameters to track)"
    assert params["bundle"] == bundle.name and all(params[k] == v for k, v in hyper.items())
    artifacts = parser.get_parsed_content(f"train#handlers#{i}#artifacts")
    assert len(artifacts) >= 2, f"{bundle.name}: training logs no artifact but the config (set 'tracking_artifacts')"
    assert any(str(a).endswith(".pt") for a in artifacts), artifacts

    if parser.get("stage2#train#trainer") is not None:  # two-stage bundles: stage 2 is a tracked run of its own
        for engine, handlers_id in (("trainer", "stage2#train#handlers"), ("validator", "stage2#validate#handlers")):
            last = parser.get(handlers_id)[-1]
            assert last["_target_"].endswith("LandmarkMLFlowHandler"), (engine, last)
            assert last["run_name"] == "@stage2_run_name", engine
        artifacts = parser.get_parsed_content(f"stage2#train#handlers#{len(parser.get('stage2#train#handlers')) - 1}#artifacts")
        assert str(artifacts[-1]).endswith("model_stage2.pt"), artifacts
    else:
        assert "stage2_trainer" not in parser  # the stage-2 settings add nothing to single-stage bundles

    parser = workflow(["train.json", "evaluate.json"], "evaluating").parser
    handlers = parser.get("handlers")
    assert isinstance(handlers, list) and "evaluator" in parser, (
        f"{bundle.name}/configs/evaluate.json: the evaluation engine must be 'evaluator' with handlers 'handlers' "
        "(MONAI's ids for tracking evaluation)"
    )
    assert _raw_engine(parser, "evaluator")["val_handlers"] == "@handlers"
    assert handlers[-1]["_target_"].endswith("LandmarkMLFlowHandler") and handlers[-1]["close_on_complete"]
    artifacts = parser.get_parsed_content(f"handlers#{len(handlers) - 1}#artifacts")
    assert len(artifacts) >= 2, f"{bundle.name}: evaluation logs no artifact but the config (set 'tracking_artifacts')"


@pytest.mark.slow
def test_default_mlflow_tracking_sqlite_scn_train_and_evaluate(datasets: Path, tmp_path):
    root = _copy_bundle(REPO / "bundles" / "scn", tmp_path)
    _run(root, ["train.json"], "training", "mlflow", datasets / "scn")
    db = root / "eval" / "mlruns.db"  # MONAI's default: SQLite under output_dir
    assert db.is_file()
    client = mlflow.MlflowClient(path_to_sqlite_uri(str(db)))
    exp = client.get_experiment_by_name("monai_experiment")
    (train_run,) = client.search_runs([exp.experiment_id])
    assert train_run.info.status == "FINISHED"
    assert len(client.get_metric_history(train_run.info.run_id, "train_loss")) == 2  # 8 images, batch 4
    assert {"val_mre", "val_sdr2", "val_sdr2.5", "val_sdr20"} <= set(train_run.data.metrics)

    # evaluation with the plain settings: its own run, finished, with the executed config
    _run(root, ["train.json", "evaluate.json"], "evaluating", "mlflow", datasets / "scn")
    runs = client.search_runs([exp.experiment_id])
    (eval_run,) = [r for r in runs if r.info.run_id != train_run.info.run_id]
    assert eval_run.info.status == "FINISHED"
    assert "val_mre" in eval_run.data.metrics
    assert any(f.startswith("config_") for f in _artifacts(client, eval_run.info.run_id))

    # evaluation with the project's settings: params, overlays and summaries as artifacts, in the same database
    _run(root, ["train.json", "evaluate.json"], "evaluating", str(SETTINGS), datasets / "scn")
    run = _only_run(client, "scn")
    assert run.data.params["eval_section"] == "validation"
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

    wf = _run(root, ["train.json"], "training", str(tmp_path / "tracking.json"), datasets / bundle.name)

    client = mlflow.MlflowClient(mlflow_server.url)
    run = _only_run(client, bundle.name)  # experiment named after the bundle folder
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    params, tags = run.data.params, run.data.tags
    assert params["bundle"] == tags["bundle"] == bundle.name
    assert params["bundle_version"] == tags["bundle_version"] == meta["version"]
    hyper = wf.parser.get_parsed_content("experiment_params")
    assert {"learning_rate", "batch_size", "spatial_size", "max_epochs", "local_filters"} <= set(hyper)
    for key, value in hyper.items():
        assert params[key] == str(value), key
    assert (params["max_epochs"], params["spatial_size"]) == ("1", "[64, 64]")  # quick.json's values

    trainer = wf.parser.get_parsed_content("train#trainer")
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, trainer.state.iteration + 1))  # one per iteration
    key_metric = next(iter(wf.parser.get_parsed_content("validate#key_metric")))
    for name in [key_metric] + [f"val_sdr{r:g}" for r in hyper["radii"]]:  # mm metrics, one value per epoch
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1], name

    files = _artifacts(client, run.info.run_id)
    assert "model.pt" in files, files  # the best checkpoint
    config = [f for f in files if f.startswith("config_") and f.endswith(".json")]
    assert len(config) == 1, files
    local = client.download_artifacts(run.info.run_id, config[0], str(tmp_path))
    assert json.loads(Path(local).read_text())["network_def"], "the executed config lacks network_def"


#: the scalar losses each bundle's trainer logs per iteration (the adversarial engine: all five terms)
TRAIN_LOSSES = {
    "adv_posenet": {"train_mse", "train_adv_P", "train_adv_C", "train_d_P", "train_d_C"},
    "kneel": {"train_loss"},
    "interactive_kp": {"train_loss"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAIN_LOSSES))
def test_default_mlflow_tracking_sqlite_other_bundles(name: str, datasets: Path, tmp_path):
    """Tracking into SQLite under the bundle's eval dir on every other bundle: a finished training run with the
    losses per iteration and the validation metrics per epoch, then an evaluation run of its own. interactive_kp
    with MONAI's ``--tracking mlflow``; adv_posenet with the project's settings (all five adversarial losses) and KNEEL
    with them too (its stage-2 training is a run of its own)."""
    root = _copy_bundle(REPO / "bundles" / name, tmp_path)
    tracking = "mlflow" if name == "interactive_kp" else str(SETTINGS)
    wf = _run(root, ["train.json"], "training", tracking, datasets / name)
    db = root / "eval" / "mlruns.db"
    assert db.is_file()
    client = mlflow.MlflowClient(path_to_sqlite_uri(str(db)))
    exp = client.get_experiment_by_name("monai_experiment" if tracking == "mlflow" else name)
    runs = client.search_runs([exp.experiment_id])
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    first = min(runs, key=lambda r: r.info.start_time)
    trainer = wf.parser.get_parsed_content("train#trainer")
    for loss in TRAIN_LOSSES[name]:
        assert len(client.get_metric_history(first.info.run_id, loss)) == trainer.state.iteration, loss
    key_metric = next(iter(wf.parser.get_parsed_content("validate#key_metric")))
    assert key_metric in first.data.metrics, sorted(first.data.metrics)
    if name == "kneel":
        (stage2,) = [r for r in runs if r.info.run_name.startswith("kneel-stage2_")]
        assert stage2.data.tags["engine"] == "stage2_trainer"
        stage2_trainer = wf.parser.get_parsed_content("stage2#train#trainer")
        assert len(client.get_metric_history(stage2.info.run_id, "train_loss")) == stage2_trainer.state.iteration
        assert key_metric in stage2.data.metrics
        assert "model_stage2.pt" in _artifacts(client, stage2.info.run_id)
    else:
        assert len(runs) == 1

    n_before = len(runs)
    _run(root, ["train.json", "evaluate.json"], "evaluating", tracking, datasets / name)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == n_before + 1
    newest = max(runs, key=lambda r: r.info.start_time)
    assert newest.info.status == "FINISHED" and newest.data.metrics
