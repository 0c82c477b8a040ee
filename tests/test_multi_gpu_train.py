"""Distributed training of every bundle, on CPU: ``torchrun --standalone --nproc_per_node=2 -m monai.bundle run
training`` of each training stage with ``quick.json`` (one tiny synthetic epoch), the gloo backend, outputs in a temp
dir. No overlay: under torchrun the workflows run distributed by themselves (``monai_ext.utils.distributed_launch``).

Both ranks must train on their half of the training set (DistributedSampler), report the same validation metrics
(gathered across ranks), and only rank 0 may write checkpoints, which must load without DDP's ``module.`` prefix.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BUNDLES, REPO

from monai_ext.bundle import config_files, read_config, training_stages

NPROC = 2
TIMEOUT = 600
ITERATION = re.compile(r"Epoch: \d+/\d+, Iter: (\d+)/(\d+) --")
METRICS = re.compile(r"Epoch\[\d+\] Metrics -- (.*)")
SAVED = "monai_ext.handlers.checkpoint - INFO - saved"
def configs(bundle: Path, stage: str | None) -> list[str]:
    return config_files(bundle, "train", ["quick.json"], stage)


def expected_iterations(bundle: Path, stage: str | None, num_training: int) -> list[int]:
    """Iterations of every epoch of a stage on one rank: the DistributedSampler (``even_divisible``) gives every rank
    ``ceil(n / NPROC)`` images, batched by the stage's batch size (one process would run twice as many)."""
    parser = read_config(configs(bundle, stage))
    per_rank = math.ceil(num_training / NPROC)
    return [math.ceil(per_rank / parser.get_parsed_content("batch_size"))] * parser.get_parsed_content("max_epochs")


def epochs(log: str) -> list[list[tuple[int, int]]]:
    """The ``(iteration, iterations per epoch)`` pairs of the trainers' iteration logs, split into epochs."""
    out: list[list[tuple[int, int]]] = []
    for i, n in ITERATION.findall(log):
        if int(i) == 1:
            out.append([])
        if out:
            out[-1].append((int(i), int(n)))
    return out


def rank_log(log_dir: Path, rank: int) -> str:
    logs = list(log_dir.glob(f"*/attempt_0/{rank}/stdout.log"))
    assert len(logs) == 1, f"expected one stdout log of rank {rank} under {log_dir}, found {logs}"
    return logs[0].read_text()


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_initialize_sets_cudnn_after_determinism(bundle: Path, monkeypatch: pytest.MonkeyPatch):
    """Every training stage initialises through ``monai_ext.utils.initialize_workflow`` (process group under torchrun,
    seeds, then the cudnn switch, which set_determinism would reset): ``--cudnn_benchmark True`` is on afterwards."""
    import torch.backends.cudnn as cudnn

    for stage in training_stages(bundle):
        parser = read_config(configs(bundle, stage), cudnn_benchmark=True)
        parser.resolve_macro_and_relative_ids()
        init = parser.get("initialize")
        assert any("initialize_workflow(" in x and "@cudnn_benchmark" in x for x in init), f"{bundle.name}: {init}"
        monkeypatch.setattr(cudnn, "benchmark", False)
        parser.get_parsed_content("initialize#0")
        assert cudnn.benchmark is True and cudnn.deterministic is False
    monkeypatch.setattr(cudnn, "deterministic", False)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_multi_gpu_train_two_cpu_processes(bundle: Path, tmp_path: Path):
    for stage in training_stages(bundle):
        _check_distributed_stage(bundle, stage, tmp_path)


def _check_distributed_stage(bundle: Path, stage: str | None, tmp_path: Path) -> None:
    log_dir = tmp_path / f"logs_{stage or 'train'}"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
        "--log-dir", str(log_dir), "--redirects", "3",
        "-m", "monai.bundle", "run", "training", "--config_file", repr(configs(bundle, stage)),
        "--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "data"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",  # CPU processes: the gloo backend
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, (
        f"torchrun exited {result.returncode}:\n{result.stderr[-3000:]}\n"
        + "".join(f"--- rank {r} stderr\n{p.read_text()[-3000:]}" for r, p in
                  enumerate(sorted(log_dir.glob("*/attempt_0/*/stderr.log"))))
    )
    logs = [rank_log(log_dir, r) for r in range(NPROC)]

    # every rank ran the stage on its share of the data
    num_training = len(json.loads((tmp_path / "data" / "datalist.json").read_text())["training"])
    expected = expected_iterations(bundle, stage, num_training)
    for rank, log in enumerate(logs):
        runs = epochs(log)
        totals = [epoch[0][1] for epoch in runs]
        assert totals == expected, f"rank {rank}: iterations per epoch {totals}, expected {expected}:\n{log[-2000:]}"
        for epoch in runs:
            assert [i for i, _ in epoch] == list(range(1, epoch[0][1] + 1)), f"rank {rank}: incomplete epoch {epoch}"

    # validation metrics are computed over both ranks' shares, so they agree
    metrics = [METRICS.findall(log) for log in logs]
    assert metrics[0] and metrics[0] == metrics[1], f"validation metrics differ between ranks: {metrics}"

    # only rank 0 writes; the best-metric weights are the bare network's state_dict, with the model's record
    assert SAVED not in logs[1], "rank 1 wrote a checkpoint"
    models = tmp_path / "models" / ("stage2" if stage else "")
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert state["model"] and not any(k.startswith("module.") for k in state["model"]), "model.pt holds DDP's keys"
    assert state["model_config"]["network_def"]["_target_"], "model.pt lacks the model's record"
    # the resume checkpoint too: every network in it loads into a plain (unwrapped) network
    resume = sorted(models.glob("checkpoint*.pt"))
    assert resume, "no resume checkpoint written"
    for path in resume:
        for key, value in torch.load(path, map_location="cpu", weights_only=True).items():
            if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                assert not any(k.startswith("module.") for k in value), f"{path.name}[{key!r}] holds DDP's keys"
