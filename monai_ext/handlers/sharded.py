"""Sharded evaluation and inference under ``torch.distributed``.

With a ``DistributedSampler`` every rank predicts its own part of the images. Each rank writes its records as a
prediction shard ``<name>.rank<r>.json`` / ``.csv`` (atomically); after a barrier rank 0 merges the shards into
``<name>.json`` / ``.csv``, the files a single-process run writes (images sorted by path, each once, see
:func:`~monai_ext.data.predictions.merge_prediction_records`), and removes them. Under ``torchrun``
the shared ``bundles/common/configs/{evaluate,inference}.json`` shard the data (``monai_ext.utils.distributed_sampler``);
:class:`~monai_ext.handlers.writers.LandmarkPredictionWriter` does it by itself when the process group has more
than one rank. Outside a process group (or with one rank) every function here is the single-process case.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from monai_ext.data.predictions import merge_prediction_records, write_predictions_csv, write_predictions_json
from monai_ext.errors import LandmarkDataError

__all__ = [
    "barrier",
    "is_main_process",
    "merge_prediction_shards",
    "rank_and_world_size",
    "shard_path",
    "write_prediction_shard",
]


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0, and in a single-process run."""
    return rank_and_world_size()[0] == 0


def barrier() -> None:
    """Wait for every rank (``torch.distributed.barrier``); nothing to wait for in a single-process run."""
    if rank_and_world_size()[1] > 1:
        dist.barrier()


def shard_path(path: str | os.PathLike, rank: int) -> Path:
    """``dir/predictions.json`` -> ``dir/predictions.rank<rank>.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{int(rank)}{path.suffix}")


def write_prediction_shard(
    records: Iterable[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    name: str,
    rank: int,
    landmark_names: Sequence[str] | None = None,
) -> Path:
    """Write a rank's records as ``<output_dir>/<name>.rank<rank>.json`` and ``.csv`` (each a complete prediction
    file, written atomically); returns the JSON path."""
    records = list(records)
    write_predictions_csv(records, shard_path(Path(output_dir) / f"{name}.csv", rank))
    return write_predictions_json(records, shard_path(Path(output_dir) / f"{name}.json", rank), landmark_names=landmark_names)


def _read_shard(path: Path) -> tuple[list[dict[str, Any]], list[str] | None]:
    if not path.is_file():
        raise LandmarkDataError(f"{path}: prediction shard not found: did every rank finish its part?")
    try:
        doc = json.loads(path.read_text())
        records = doc["predictions"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LandmarkDataError(f"{path}: unreadable prediction shard ({e!r}).") from e
    if not isinstance(records, list) or not all(isinstance(r, Mapping) and "image" in r for r in records):
        raise LandmarkDataError(f"{path}: 'predictions' must be a list of records with an 'image'.")
    names = doc.get("landmark_names")
    return records, (list(names) if isinstance(names, list) and names else None)


def merge_prediction_shards(
    output_dir: str | os.PathLike,
    name: str = "predictions",
    world_size: int | None = None,
    landmark_names: Sequence[str] | None = None,
    remove: bool = True,
) -> list[dict[str, Any]]:
    """Merge the shards ``<name>.rank0..rank<world_size - 1>.json`` of ``output_dir`` into ``<name>.json`` and
    ``<name>.csv`` (atomically), then delete the shards (JSON and CSV) unless ``remove`` is False.

    Args:
        output_dir: the folder of the shards and of the merged files.
        name: the prediction file name without suffix.
        world_size: number of shards; default the current process group's size.
        landmark_names: names written in the JSON; default those of the first shard that has them.

    Returns:
        the merged records (sorted by image path, each image once).

    Raises:
        LandmarkDataError: a shard is missing or unreadable (nothing is written or deleted then).
    """
    world_size = rank_and_world_size()[1] if world_size is None else int(world_size)
    json_path, csv_path = Path(output_dir) / f"{name}.json", Path(output_dir) / f"{name}.csv"
    read = [_read_shard(shard_path(json_path, r)) for r in range(world_size)]
    if landmark_names is None:
        landmark_names = next((names for _, names in read if names), None)
    records = merge_prediction_records(*(recs for recs, _ in read))
    write_predictions_json(records, json_path, landmark_names=landmark_names)
    write_predictions_csv(records, csv_path)
    if remove:
        for r in range(world_size):
            shard_path(json_path, r).unlink(missing_ok=True)
            shard_path(csv_path, r).unlink(missing_ok=True)
    return records
