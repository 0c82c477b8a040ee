"""Where a bundle's random augmentation runs: the per-sample transforms a DataLoader worker applies after the cache,
and the batch transform of the training device, with the bundle's own training config (``augment_on_device`` off
and on), timed on synthetic items.

Usage::

    python scripts/augment_benchmark.py --bundle scn --repeats 60 --out runs/bench/augment_scn_256.json

For each setting: ``train#augmentation`` + ``heatmap_transforms`` (what a worker runs per sample, the enabled ones)
on a ``(1, W, H)`` image with the config's landmark count, and ``train#parts#batch_augmentation`` (when enabled) on a batch
of ``--batch_size`` on ``--device``; median / mean / p95 ms over ``--repeats`` calls, ``--threads`` torch threads.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from monai_ext.benchmark import latency_stats, machine_info, record_json, write_record  # noqa: E402


def _parser(bundle_dir: Path, on_device: bool, overrides: dict[str, Any]):
    from monai_ext.bundle import config_files, read_config

    return read_config(config_files(bundle_dir, "train"), bundle_root=str(bundle_dir), augment_on_device=on_device, **overrides)


def _timed(fn, repeats: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return latency_stats(seconds)


def run(
    bundle: str = "scn",
    num_landmarks: int = 37,
    batch_size: int = 8,
    repeats: int = 60,
    threads: int = 1,
    device: str = "cpu",
    overrides: Any = None,
    out: str | None = None,
) -> dict[str, Any]:
    """Time the per-sample and the batch augmentation of ``bundle`` with ``augment_on_device`` off and on."""
    from monai.data import MetaTensor
    from monai.transforms import Compose

    from monai_ext.transforms import per_sample_augmentation

    torch.set_num_threads(int(threads))
    bundle_dir = Path(bundle) if (Path(bundle) / "configs").is_dir() else REPO / "bundles" / bundle
    user = json.loads(overrides) if isinstance(overrides, str) else dict(overrides or {})
    record: dict[str, Any] = {"bundle": bundle_dir.name, "num_landmarks": int(num_landmarks), "batch_size": int(batch_size),
                              "repeats": int(repeats), "threads": int(threads), "device": device, "overrides": user,
                              "settings": {}}
    rng = np.random.default_rng(0)
    for on_device in (False, True):
        parser = _parser(bundle_dir, on_device, user)
        size = [int(s) for s in parser.get_parsed_content("spatial_size")]
        per_sample = [*per_sample_augmentation(parser.get_parsed_content("augmentation"), on_device),
                      *parser.get_parsed_content("target_transforms")]
        points = torch.as_tensor(rng.uniform(0.1, 0.9, (num_landmarks, 2)) * np.asarray(size), dtype=torch.float32)
        item = {"image": MetaTensor(torch.rand(1, *size)), "landmarks": points}
        worker = Compose(per_sample)
        entry: dict[str, Any] = {"spatial_size": size, "per_sample": [type(t).__name__ for t in per_sample],
                                 "per_sample_ms": _timed(lambda: worker(dict(item)), int(repeats))}
        batch_aug = parser.get_parsed_content("train#parts#batch_augmentation")
        if batch_aug is not None:
            images = torch.rand(batch_size, 1, *size, device=device)
            landmarks = points[None].repeat(batch_size, 1, 1).to(device)

            def step():
                batch_aug(images, landmarks)
                if images.is_cuda:
                    torch.cuda.synchronize()

            entry["batch"] = type(batch_aug).__name__
            entry["batch_ms"] = _timed(step, max(1, int(repeats) // 3))
        record["settings"]["augment_on_device" if on_device else "per_sample"] = entry
    record["machine"] = machine_info(device)
    write_record(record, out)
    return record


if __name__ == "__main__":
    fire.Fire(run, serialize=record_json)
