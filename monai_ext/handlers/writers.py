"""Handlers that write what an evaluation or inference run produced: predictions, metrics, overlays."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_ext.data.predictions import make_prediction_record, write_predictions_csv, write_predictions_json
from monai_ext.handlers.sharded import (
    barrier,
    is_main_process,
    merge_prediction_shards,
    rank_and_world_size,
    write_prediction_shard,
)
from monai_ext.utils import atomic_write
from monai_ext.visualize import save_overlay

__all__ = ["LandmarkPredictionWriter", "LandmarkMetricsWriter", "PER_LANDMARK_KEYS"]

#: output key -> prediction-file field of the optional per-landmark values (written when an item has them)
PER_LANDMARK_KEYS = {
    "pred_spread": "spread",
    "pred_spread_mm": "spread_mm",
    "pred_region": "region",
    "pred_region_mm": "region_mm",
    "pred_review": "review",
}


def _items(output: Any) -> list[dict]:
    if isinstance(output, dict):  # batch dict (decollate=False): split along the batch
        n = len(output["pred_landmarks"])
        return [{k: (v[i] if isinstance(v, (torch.Tensor, list)) and len(v) == n else v) for k, v in output.items()} for i in range(n)]
    return list(output)


def _numpy(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class LandmarkPredictionWriter:
    """Collect each image's predicted landmarks (original pixels, mm, confidence) and write
    ``<output_dir>/<name>.json`` and ``.csv`` atomically when the run completes (format:
    :mod:`monai_ext.data.predictions`); draw the first ``num_overlays`` images with their predictions
    (and ground truth when the batch has ``landmarks``) into ``<output_dir>/overlays/``.

    Images that could not be loaded (see :mod:`monai_ext.data.dataset`) become entries with an ``error``
    (the message names the file and the reason), in input order among the predictions.

    Distributed runs (a process group of several ranks, each predicting its share of a ``DistributedSampler``):
    every rank writes its records to a shard ``<name>.rank<r>.json``/``.csv`` and rank 0 merges the shards into
    ``<name>.json``/``.csv``, sorted by image path, then deletes them (:mod:`monai_ext.handlers.sharded`). Rank
    ``r`` draws the overlays of its items at positions ``r, r + W, ...`` below ``num_overlays``, numbered
    ``r + j * W``: with an unshuffled ``DistributedSampler`` these are the overlays a single process draws.

    ``per_landmark_keys`` (default :data:`PER_LANDMARK_KEYS`) maps further ``(K,)`` output keys to prediction-file
    fields, written for the items that have them (the heatmap spread, the conformal region and its review flag).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        landmark_names: Sequence[str] | None = None,
        name: str = "predictions",
        num_overlays: int = 4,
        image_key: str = "image",
        pred_key: str = "pred_landmarks",
        confidence_key: str = "pred_confidence",
        gt_key: str = "landmarks",
        per_landmark_keys: Mapping[str, str] | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.per_landmark_keys = dict(PER_LANDMARK_KEYS if per_landmark_keys is None else per_landmark_keys)
        self.landmark_names = list(landmark_names) if landmark_names is not None else None
        self.name = name
        self.num_overlays = num_overlays
        self.image_key, self.pred_key, self.confidence_key, self.gt_key = image_key, pred_key, confidence_key, gt_key
        self.records: list[dict] = []
        self._num_drawn = 0
        self._rank, self._world_size = 0, 1
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.records = []
        self._num_drawn = 0
        self._rank, self._world_size = rank_and_world_size()

    def collect(self, engine: Engine) -> None:
        """Add this iteration's predictions and, in input order among them, its failed items: the
        ``engine.state.failed_items`` (``[{"image", "error", "position"}]``) left by
        :func:`~monai_ext.engines.skip_failed.skip_failed_items`, written as error entries."""
        batch = engine.state.batch
        batch_items = _items(batch) if isinstance(batch, list) else None
        records: list[tuple[dict, Any]] = []
        for i, item in enumerate(_items(engine.state.output)):
            image = item.get(self.image_key)
            meta = getattr(image, "meta", {}) or {}
            filename = str(meta.get("filename_or_obj", f"image_{len(self.records) + len(records)}"))
            source = str(meta.get("spacing_source", ""))
            spacing = _numpy(meta.get("spacing")) if source != "none" else None
            record = make_prediction_record(
                filename,
                landmarks=_numpy(item[self.pred_key]),
                confidence=_numpy(item.get(self.confidence_key)),
                spacing=spacing,
                spacing_source=source,
                landmark_names=self.landmark_names,
                per_landmark={field: _numpy(item[key]) for key, field in self.per_landmark_keys.items() if key in item},
            )
            gt = item.get(self.gt_key)
            if gt is None and batch_items is not None and i < len(batch_items):
                gt = batch_items[i].get(self.gt_key)
            records.append((record, (filename, _numpy(item[self.pred_key]), _numpy(gt))))
        failed = getattr(engine.state, "failed_items", None) or []
        for f in sorted(failed, key=lambda f: f["position"]):  # positions in the loader's batch
            records.insert(min(f["position"], len(records)), (make_prediction_record(f["image"], error=f["error"]), None))
        budget = len(range(self._rank, self.num_overlays, self._world_size))  # this rank's share of the overlays
        for record, overlay in records:
            self.records.append(record)
            if overlay is not None and self._num_drawn < budget:
                filename, pred, gt = overlay
                index = (len(self.records) - 1) * self._world_size + self._rank
                out = self.output_dir / "overlays" / f"{index:04d}_{Path(filename).stem}.png"
                save_overlay(filename, pred, out, gt=gt)
                self._num_drawn += 1

    def write(self, engine: Engine | None = None) -> None:
        rank, world_size = rank_and_world_size()
        if world_size == 1:
            records = self.records
            write_predictions_json(records, self.output_dir / f"{self.name}.json", landmark_names=self.landmark_names)
            write_predictions_csv(records, self.output_dir / f"{self.name}.csv")
        else:
            shard = write_prediction_shard(self.records, self.output_dir, self.name, rank, self.landmark_names)
            self.logger.info(f"rank {rank}: wrote {len(self.records)} predictions to the shard {shard}")
            barrier()
            records = merge_prediction_shards(self.output_dir, self.name, world_size, self.landmark_names) if rank == 0 else []
            barrier()  # the merged files exist when any rank returns
            if rank != 0:
                return
        failed = [r for r in records if r.get("error")]
        js = self.output_dir / f"{self.name}.json"
        self.logger.info(f"wrote {len(records)} predictions to {js} and .csv ({len(failed)} failed)")
        for r in failed:
            self.logger.warning(f"no prediction for {r['image']}: {r['error']}")


class LandmarkMetricsWriter:
    """Write the full error summary of a landmark metric (``engine.state.metric_summaries[metric_name]``,
    stored by :class:`~monai_ext.metrics.ignite.LandmarkMetric`) as ``summary.json`` and the per-landmark
    table as ``per_landmark.csv`` in ``output_dir`` when the run completes.

    In distributed runs the metric has gathered every rank's errors already (see
    :class:`~monai_ext.metrics.ignite.LandmarkMetric`): only rank 0 writes."""

    def __init__(self, output_dir: str | os.PathLike, metric_name: str):
        self.output_dir = Path(output_dir)
        self.metric_name = metric_name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        summary = getattr(engine.state, "metric_summaries", {}).get(self.metric_name)
        if summary is None:
            raise KeyError(f"no summary for metric {self.metric_name!r}: is it a LandmarkMetric of this engine?")
        with atomic_write(self.output_dir / "summary.json") as f:
            json.dump({k: v for k, v in summary.items() if k != "per_landmark"}, f, indent=1, default=float)
        rows = summary.get("per_landmark", [])
        if rows:
            flat = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows]
            with atomic_write(self.output_dir / "per_landmark.csv", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(flat[0]))
                writer.writeheader()
                writer.writerows(flat)
