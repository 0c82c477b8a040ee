"""``configs/multi_gpu_train.json`` of every bundle, on CPU: ``torchrun --standalone --nproc_per_node=2 -m monai.bundle
run training`` with ``quick.json`` (one tiny synthetic epoch per stage), the gloo backend, outputs in a temp dir.

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
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir())
NPROC = 2
TIMEOUT = 600
ITERATION = re.compile(r"Epoch: \d+/\d+, Iter: (\d+)/(\d+) --")
METRICS = re.compile(r"Epoch\[\d+\] Metrics -- (.*)")
SAVED = "monai_ext.handlers.checkpoint - INFO - saved"
STAGE_BATCH_SIZES = ("batch_size", "stage2#batch_size")  # config ids of the training stages' batch sizes


def configs(bundle: Path) -> list[str]:
    return [str(bundle / "configs" / f) for f in ("train.json", "quick.json", "multi_gpu_train.json")]


def expected_iterations(bundle: Path, num_training: int) -> list[int]:
    """Iterations of every epoch, stage after stage, on one rank: the DistributedSampler (``even_divisible``) gives
    every rank ``ceil(n / NPROC)`` images, batched by the stage's batch size (one process would run twice as many)."""
    parser = ConfigParser()
    parser.read_config(configs(bundle))
    per_rank = math.ceil(num_training / NPROC)
    stages = [math.ceil(per_rank / parser.get_parsed_content(k)) for k in STAGE_BATCH_SIZES if k in parser]
    return [n for n in stages for _ in range(parser.get_parsed_content("max_epochs"))]


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


CUDNN_BUNDLES = ("scn", "kneel", "interactive_kp")  # bundles with the cudnn_benchmark switch


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_multi_gpu_initialize_keeps_the_cudnn_switch(bundle: Path):
    """The multi-GPU ``initialize`` replaces train.json's: it must still set cudnn (after set_determinism, which
    resets it)."""
    single, multi = ConfigParser(), ConfigParser()
    single.read_config(str(bundle / "configs" / "train.json"))
    multi.read_config(configs(bundle))
    lines, merged = [x for x in single["initialize"] if "cudnn" in x], list(multi["initialize"])
    assert bool(lines) == (bundle.name in CUDNN_BUNDLES), f"{bundle.name}: train.json initialize cudnn lines {lines}"
    determinism = [i for i, x in enumerate(merged) if "set_determinism" in x]
    assert determinism, f"{bundle.name}: no set_determinism in the multi-GPU initialize {merged}"
    for line in lines:
        assert line in merged and merged.index(line) > determinism[-1], f"{bundle.name}: {line!r} missing or early"


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_multi_gpu_train_two_cpu_processes(bundle: Path, tmp_path: Path):
    log_dir = tmp_path / "logs"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
        "--log-dir", str(log_dir), "--redirects", "3",
        "-m", "monai.bundle", "run", "training", "--config_file", repr(configs(bundle)),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
        "--dataset_dir", str(tmp_path / "data"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",  # CPU processes: the gloo backend
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, (
        f"torchrun exited {result.returncode}:\n{result.stderr[-3000:]}\n"
        + "".join(f"--- rank {r} stderr\n{p.read_text()[-3000:]}" for r, p in
                  enumerate(sorted(log_dir.glob("*/attempt_0/*/stderr.log"))))
    )
    logs = [rank_log(log_dir, r) for r in range(NPROC)]

    # every rank ran every stage on its share of the data
    num_training = len(json.loads((tmp_path / "data" / "datalist.json").read_text())["training"])
    expected = expected_iterations(bundle, num_training)
    for rank, log in enumerate(logs):
        runs = epochs(log)
        totals = [epoch[0][1] for epoch in runs]
        assert totals == expected, f"rank {rank}: iterations per epoch {totals}, expected {expected}:\n{log[-2000:]}"
        for epoch in runs:
            assert [i for i, _ in epoch] == list(range(1, epoch[0][1] + 1)), f"rank {rank}: incomplete epoch {epoch}"

    # validation metrics are computed over both ranks' shares, so they agree
    metrics = [METRICS.findall(log) for log in logs]
    assert metrics[0] and metrics[0] == metrics[1], f"validation metrics differ between ranks: {metrics}"

    # only rank 0 writes; the best-metric weights (model.pt, model_stage2.pt) are the bare network's state_dict
    assert SAVED not in logs[1], "rank 1 wrote a checkpoint"
    ckpts = sorted((tmp_path / "models").glob("model*.pt"))
    assert tmp_path / "models" / "model.pt" in ckpts, f"no model.pt written, found {ckpts}"
    for ckpt in ckpts:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert state and not any(k.startswith("module.") for k in state), f"{ckpt.name} holds the DDP wrapper's keys"
    # the resume checkpoints too: every network in them loads into a plain (unwrapped) network
    resume = sorted((tmp_path / "models").glob("checkpoint*.pt"))
    assert resume, "no resume checkpoint written"
    for path in resume:
        for key, value in torch.load(path, map_location="cpu", weights_only=True).items():
            if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                assert not any(k.startswith("module.") for k in value), f"{path.name}[{key!r}] holds DDP's keys"
