"""Crash-safe training of the SCN bundle: a run killed with SIGKILL resumes from its last checkpoint
(``resume: "true"``, what ``--resume true`` gives) and runs only the remaining iterations; a resume at an
epoch boundary reproduces the uninterrupted run exactly (weights, optimizer, scheduler, random generators)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.handlers import from_engine

from monai_ext.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "scn" / "configs"
TINY = {"spatial_size": [32, 32], "batch_size": 2}  # 4 training images → 2 iterations per epoch
ITERS_PER_EPOCH = 2


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "data"
    generate_dataset("hand", out, n_train=4, n_val=2, n_test=0)
    return out


def _trainer_state(path: Path) -> dict:
    return dict(torch.load(path, map_location="cpu", weights_only=True)["trainer"])


def _cli(tmp: Path, dataset_dir: Path, override: dict, *extra: str) -> list[str]:
    override_file = tmp / f"override_{len(list(tmp.glob('override_*.json')))}.json"
    override_file.write_text(json.dumps(override))
    files = [str(CONFIGS / "train.json"), str(CONFIGS / "quick.json"), str(override_file)]
    return [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", repr(files),
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--ckpt_dir", str(tmp / "models"), "--output_dir", str(tmp / "eval"), "--dataset_dir", str(dataset_dir),
        "--max_epochs", "3", *extra,
    ]  # fmt: skip


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def test_sigkilled_training_resumes_from_saved_iteration(tmp_path: Path, dataset_dir: Path):
    ckpt = tmp_path / "models" / "checkpoint.pt"
    # first run: a checkpoint every iteration; after iteration 3 (mid epoch 2) it hangs until killed
    modules = "os.sys.modules"  # the config's expressions have `os`; MONAI parses any "import" as a statement
    hang = (f"$@train#trainer.add_event_handler({modules}['ignite.engine'].Events.ITERATION_COMPLETED(once=3), "
            f"lambda e: {modules}['time'].sleep(600))")
    first = _start(_cli(tmp_path, dataset_dir, {**TINY, "training": [hang, "$@train#trainer.run()"]},
                        "--ckpt_interval_iters", "1"), tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 240
        state = {}
        while time.monotonic() < deadline and first.poll() is None:
            if ckpt.is_file() and (state := _trainer_state(ckpt))["iteration"] >= 3:
                break
            time.sleep(0.2)
        assert first.poll() is None, f"first run ended early:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
        assert state.get("iteration") == 3, f"no checkpoint at iteration 3 in time: {state}"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _stop(first)
    assert first.returncode == -signal.SIGKILL
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["checkpoint.pt", "model.pt", "model_config.json"], (
        "temporary files left")

    # resume in-process (same config, ``--resume true``): only the remaining iterations run
    wf = _workflow(tmp_path, dataset_dir, max_epochs=3, resume="true")
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    ran: list[tuple[int, int]] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: ran.append((e.state.epoch, e.state.iteration)))
    wf.run()
    wf.finalize()
    assert ran == [(2, 4), (3, 5), (3, 6)], ran
    assert (trainer.state.epoch, trainer.state.iteration) == (3, 3 * ITERS_PER_EPOCH)
    state = _trainer_state(ckpt)
    assert state["iteration"] == 3 * ITERS_PER_EPOCH and state["epoch_length"] == ITERS_PER_EPOCH
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["checkpoint.pt", "model.pt", "model_config.json"]


def test_resume_without_checkpoint_names_the_file(tmp_path: Path, dataset_dir: Path):
    wf = _workflow(tmp_path, dataset_dir, max_epochs=1, resume="true")
    with pytest.raises(Exception) as info:  # MONAI wraps instantiation errors in RuntimeError
        wf.initialize()  # builds the trainer (to attach the final-weights saver): the missing file is named already
        wf.parser.get_parsed_content("train#trainer")
    error: BaseException | None = info.value
    while error is not None and not isinstance(error, FileNotFoundError):
        error = error.__cause__
    assert error is not None and str(tmp_path / "models" / "checkpoint.pt") in str(error)


def _workflow(tmp: Path, dataset_dir: Path, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "quick.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        ckpt_dir=str(tmp / "models"),
        output_dir=str(tmp / "eval"),
        dataset_dir=str(dataset_dir),
        **TINY,
        **overrides,
    )


def _losses(wf: ConfigWorkflow, stop_after_epoch: int | None = None) -> list[float]:
    """Run the workflow (stopped after the handlers of epoch ``stop_after_epoch``, the checkpoint saver
    included, have run); the training loss of every iteration."""
    losses: list[float] = []
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(e) -> None:
        losses.append(float(from_engine(["loss"], first=True)(e.state.output)))

    if stop_after_epoch is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda e: e.terminate())
    wf.run()
    wf.finalize()
    return losses


def test_epoch_boundary_resume_reproduces_uninterrupted_run(tmp_path: Path, dataset_dir: Path):
    full = _losses(_workflow(tmp_path / "full", dataset_dir, max_epochs=2))
    head = _losses(_workflow(tmp_path / "split", dataset_dir, max_epochs=2), stop_after_epoch=1)
    tail = _losses(_workflow(tmp_path / "split", dataset_dir, max_epochs=2, resume=True))
    assert len(full) == 2 * ITERS_PER_EPOCH
    assert head == full[:ITERS_PER_EPOCH]
    assert tail == full[ITERS_PER_EPOCH:], "the resumed epoch differs from the uninterrupted run's"
