"""Measurement pieces of the benchmark harness (``scripts/benchmark.py``): step timers, memory peaks,
latency statistics, detection-rate curves and machine information; and which ``--overrides`` of the harness
scripts a bundle's workflows can take (:func:`override_problems`, :func:`run_level_overrides`).

Times are wall-clock seconds of :func:`time.perf_counter`; memory is in MiB (2**20 bytes).

Step anatomy of an ignite engine (what :class:`IterationTimer` measures)::

    GET_BATCH_STARTED -> next(dataloader) -> GET_BATCH_COMPLETED -> ITERATION_STARTED -> process -> ITERATION_COMPLETED
    |<------------- wait_s (data) ------------>|<--------------------- compute_s --------------------------->|

``step_s = wait_s + compute_s``; the data-wait fraction of a run is ``sum(wait_s) / sum(step_s)``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = [
    "record_json",
    "write_record",
    "FORMER_IDS",
    "RECORD_SETS_IT",
    "RUN_LEVEL_IDS",
    "FinalValidation",
    "IterationTimer",
    "PeakMemoryMonitor",
    "RunTimer",
    "StepTiming",
    "StopAfterMinutes",
    "ValidationHistory",
    "release_workers",
    "config_names",
    "count_images",
    "detection_rate_curve",
    "latency_stats",
    "machine_info",
    "override_problems",
    "run_level_overrides",
    "source_revision",
]

MIB = 2**20


def count_images(batch: Any, key: str = "image") -> int:
    """Number of images in a batch: the first dimension of ``batch[key]`` for a collated dict (``batch[key]``
    missing: of its first tensor), the length of a list of per-image dicts, 0 for an empty batch."""
    if isinstance(batch, Mapping):
        value = batch.get(key)
        if value is None:
            value = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]) if value.ndim else 1
        return len(value) if isinstance(value, Sequence) else 0
    if isinstance(batch, (list, tuple)):
        if batch and isinstance(batch[0], torch.Tensor):
            return int(batch[0].shape[0])
        return len(batch)
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return 0


@dataclass(frozen=True)
class StepTiming:
    """One engine iteration: its epoch, images, seconds waiting for the batch and seconds processing it."""

    epoch: int
    iteration: int
    images: int
    wait_s: float
    compute_s: float

    @property
    def step_s(self) -> float:
        return self.wait_s + self.compute_s


class IterationTimer:
    """Ignite handler recording a :class:`StepTiming` per iteration of the engine it is attached to.

    Attach it *after* the workflow's own handlers so that its ``ITERATION_COMPLETED`` comes last and
    ``compute_s`` includes the post-processing and the iteration handlers.

    Args:
        sync_cuda: call ``torch.cuda.synchronize()`` before reading the clock at the end of an iteration, so
            queued GPU work is counted in the iteration that launched it.
        count_fn: number of images of ``engine.state.batch`` (read at ``GET_BATCH_COMPLETED``).
        clock: the time source (seconds).
    """

    def __init__(
        self,
        sync_cuda: bool = False,
        count_fn: Callable[[Any], int] = count_images,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.sync_cuda = sync_cuda
        self.count_fn = count_fn
        self.clock = clock
        self.steps: list[StepTiming] = []
        self._fetch_started: float | None = None
        self._fetch_completed: float | None = None
        self._wait = 0.0
        self._images = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)

    def _batch_started(self, engine: Engine) -> None:
        self._fetch_started = self.clock()

    def _batch_completed(self, engine: Engine) -> None:
        now = self.clock()
        self._wait = now - self._fetch_started if self._fetch_started is not None else 0.0
        self._fetch_completed = now
        self._images = self.count_fn(engine.state.batch)

    def _iteration_completed(self, engine: Engine) -> None:
        if self.sync_cuda and torch.cuda.is_available():
            torch.cuda.synchronize()
        now = self.clock()
        start = self._fetch_completed if self._fetch_completed is not None else now
        self.steps.append(StepTiming(int(engine.state.epoch), int(engine.state.iteration), self._images,
                                     self._wait, now - start))
        self._fetch_started = self._fetch_completed = None

    def summary(self, skip_first_epoch: bool = True) -> dict[str, Any]:
        """Throughput over the steady-state epochs (all but the first when more than one ran, unless
        ``skip_first_epoch`` is False) and a per-epoch breakdown.

        Returns ``{"images", "steps", "seconds", "images_per_s", "data_wait_fraction", "steady_epochs",
        "per_epoch": [{"epoch", "images", "steps", "seconds", "wait_s", "images_per_s", "data_wait_fraction"}]}``.
        """
        epochs = sorted({s.epoch for s in self.steps})
        steady = epochs[1:] if skip_first_epoch and len(epochs) > 1 else epochs
        per_epoch = [_aggregate([s for s in self.steps if s.epoch == e]) | {"epoch": e} for e in epochs]
        overall = _aggregate([s for s in self.steps if s.epoch in steady])
        return overall | {"steady_epochs": steady, "per_epoch": per_epoch}


def _aggregate(steps: Sequence[StepTiming]) -> dict[str, Any]:
    images = sum(s.images for s in steps)
    seconds = sum(s.step_s for s in steps)
    wait = sum(s.wait_s for s in steps)
    return {
        "images": images,
        "steps": len(steps),
        "seconds": seconds,
        "wait_s": wait,
        "images_per_s": images / seconds if seconds > 0 else None,
        "data_wait_fraction": wait / seconds if seconds > 0 else None,
    }


class RunTimer:
    """Ignite handler recording the seconds of each ``engine.run()`` (``STARTED`` to ``COMPLETED``), e.g. of
    an evaluator run once per training epoch."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: list[float] = []
        self._start: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self._start = self.clock()

    def _completed(self, engine: Engine) -> None:
        if self._start is not None:
            self.seconds.append(self.clock() - self._start)
            self._start = None


class StopAfterMinutes:
    """Ignite handler that ends the run at the first epoch end after ``minutes`` of running (whole epochs
    only, unlike :class:`ignite.handlers.TimeLimit`, so epoch-level handlers such as validation still run)."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.perf_counter) -> None:
        if not minutes > 0:
            raise ValueError(f"minutes must be positive, got {minutes}")
        self.minutes = float(minutes)
        self.clock = clock
        self._start: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._start = self.clock()

    def _epoch_completed(self, engine: Engine) -> None:
        if self._start is not None and self.clock() - self._start >= 60.0 * self.minutes:
            engine.terminate()


class ValidationHistory:
    """Records the validation metrics after every validation run with the training time spent so far, for
    time-to-accuracy curves (metric vs minutes of training).

    Each record: ``{"epoch", "iteration", "wall_s", "train_s", "metrics"}``: ``wall_s`` is the time since the
    trainer started, validation included (what a fixed budget pays); ``train_s`` leaves the validation runs out.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.records: list[dict[str, Any]] = []
        self._start: float | None = None
        self._validation_started: float | None = None
        self._validation_s = 0.0

    def attach(self, trainer: Engine, evaluator: Engine) -> None:
        trainer.add_event_handler(Events.STARTED, self._started)
        evaluator.add_event_handler(Events.STARTED, self._validation_start)
        evaluator.add_event_handler(Events.COMPLETED, self._validation_completed, trainer)

    def _started(self, engine: Engine) -> None:
        self._start, self._validation_s = self.clock(), 0.0

    def _validation_start(self, engine: Engine) -> None:
        self._validation_started = self.clock()

    def _validation_completed(self, evaluator: Engine, trainer: Engine) -> None:
        now = self.clock()
        if self._validation_started is not None:
            self._validation_s += now - self._validation_started
            self._validation_started = None
        if self._start is None:  # a validation outside training
            return
        metrics = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float, np.generic))}
        self.records.append({
            "epoch": int(trainer.state.epoch),
            "iteration": int(trainer.state.iteration),
            "wall_s": now - self._start,
            "train_s": now - self._start - self._validation_s,
            "metrics": metrics,
        })


class FinalValidation:
    """Ignite handler that validates once more when the trainer ends (completed, or stopped by a time budget)
    unless its last epoch was already validated (``history``: the :class:`ValidationHistory` of the same trainer
    and validator), so the final weights are scored and the best-metric checkpoint exists before anything that
    needs it runs next (KNEEL's stage 2 starts from stage 1's best checkpoint)."""

    def __init__(self, validator: Any, history: ValidationHistory) -> None:
        self.validator = validator
        self.history = history

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.COMPLETED, self)

    def __call__(self, trainer: Engine) -> None:
        if not self.history.records or self.history.records[-1]["epoch"] != trainer.state.epoch:
            self.validator.run(trainer.state.epoch)


def record_json(record: Any) -> str:
    """A benchmark record as indented JSON text (numpy scalars and other numbers as floats)."""
    return json.dumps(record, indent=1, default=float)


def write_record(record: Any, out: str | os.PathLike | None) -> None:
    """Write :func:`record_json` of ``record`` to ``out`` atomically (nothing when ``out`` is empty)."""
    if out:
        from monai_ext.utils import atomic_write

        with atomic_write(Path(out)) as f:
            f.write(record_json(record) + "\n")


def release_workers(*loaders: Any) -> None:
    """End the worker processes of DataLoaders with ``persistent_workers`` (they outlive an epoch, and the
    engine keeps the iterator): call after training so idle workers neither hold memory during later timings
    nor keep the interpreter waiting at exit."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None


def _rss(process: Any) -> int:
    try:
        return int(process.memory_info().rss)
    except Exception:  # the process ended between listing and reading it
        return 0


class PeakMemoryMonitor:
    """Context manager sampling the resident memory of this process (and of its children: DataLoader
    workers) in a background thread, plus the CUDA allocator peaks when CUDA is available.

    ``result()`` gives ``{"peak_rss_mb", "peak_rss_with_children_mb", "peak_gpu_allocated_mb",
    "peak_gpu_reserved_mb"}`` (GPU entries None without CUDA). The children's RSS is summed with the main
    process's, so pages shared after ``fork`` are counted once per process (an upper bound).
    """

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.interval = float(interval)
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_rss = 0
        self.peak_rss_with_children = 0
        self.gpu_allocated: int | None = None
        self.gpu_reserved: int | None = None

    def sample(self) -> None:
        own = _rss(self._process)
        try:
            children = self._process.children(recursive=True)
        except Exception:
            children = []
        total = own + sum(_rss(c) for c in children)
        self.peak_rss = max(self.peak_rss, own)
        self.peak_rss_with_children = max(self.peak_rss_with_children, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakMemoryMonitor:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="PeakMemoryMonitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.gpu_allocated = int(torch.cuda.max_memory_allocated())
            self.gpu_reserved = int(torch.cuda.max_memory_reserved())

    def result(self) -> dict[str, float | None]:
        return {
            "peak_rss_mb": self.peak_rss / MIB,
            "peak_rss_with_children_mb": self.peak_rss_with_children / MIB,
            "peak_gpu_allocated_mb": None if self.gpu_allocated is None else self.gpu_allocated / MIB,
            "peak_gpu_reserved_mb": None if self.gpu_reserved is None else self.gpu_reserved / MIB,
        }


def latency_stats(seconds: Sequence[float]) -> dict[str, float | int]:
    """``{"n", "median_ms", "p95_ms", "mean_ms", "min_ms", "max_ms"}`` of per-item durations in seconds
    (p95 by linear interpolation, :func:`numpy.percentile`)."""
    values = np.asarray(list(seconds), dtype=np.float64) * 1000.0
    if values.size == 0:
        raise ValueError("latency_stats needs at least one duration")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"durations must be finite and non-negative, got {values.tolist()}")
    return {
        "n": int(values.size),
        "median_ms": float(np.median(values)),
        "p95_ms": float(np.percentile(values, 95)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
    }


def detection_rate_curve(errors: Any, radii: Sequence[float]) -> list[float]:
    """SDR/PCK (%) at each radius from radial errors ``(N, K)`` (as stored in ``metric_details``).

    Same convention as :func:`monai_ext.metrics.distances.summarize_errors`: NaN (missing ground truth) is
    excluded, ``+inf`` (failed prediction) counts as a miss. Empty (no ground truth at all) gives NaN.
    """
    errs = np.asarray(errors.detach().cpu() if isinstance(errors, torch.Tensor) else errors, dtype=np.float64)
    valid = errs[~np.isnan(errs)]
    if valid.size == 0:
        return [float("nan") for _ in radii]
    return [float(100.0 * np.count_nonzero(valid <= float(r)) / valid.size) for r in radii]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_revision(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the git checkout holding this package (None values outside git)."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """What ran the benchmark: CPU model and core counts, memory, OS, library versions, GPU, date (UTC)."""
    import ignite
    import monai
    import psutil

    cuda = torch.cuda.is_available()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": affinity,
        "torch_num_threads": torch.get_num_threads(),
        "memory_total_gb": psutil.virtual_memory().total / 2**30,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
        "numpy": np.__version__,
        "device": str(device) if device is not None else ("cuda:0" if cuda else "cpu"),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
    }
    info.update({f"git_{k}": v for k, v in source_revision().items()})
    return info



# ----------------------------------------------------------------------------------------------
# overrides of a bundle's workflows (``--overrides`` of the harness scripts)
# ----------------------------------------------------------------------------------------------

#: ids that say how a run executes, not what the model is: evaluation and inference of a trained model take them
#: from ``--overrides`` like training does (with the ids their overlays define, :func:`run_level_overrides`)
RUN_LEVEL_IDS = ("datalist", "device", "seed", "num_workers", "amp", "compile", "channels_last", "cudnn_benchmark")

#: override ids of the former config layout (an id or the block it starts) -> what to override now
FORMER_IDS = {
    "train#dataloader#batch_size": "batch_size",
    "train#dataloader#num_workers": "num_workers (training and validation loaders)",
    "validate#dataloader#num_workers": "num_workers (training and validation loaders)",
    "train#dataloader": "batch_size / num_workers",
    "validate#dataloader": "num_workers",
    "train#dataset": "load_transforms / augmentation / target_transforms",
    "train#preprocessing": "load_transforms / augmentation / target_transforms",
    "train#prepare_batch": "prepare_batch",
    "train#checkpoint_objects": "checkpoint_objects",
    "validate#metrics": "metrics",
    "validate#key_metric": "key_metric",
    "heatmap_transforms": "target_transforms",
    "num_landmarks": "nothing: the datalist's header sets it (id 'header')",
    "landmark_names": "nothing: the datalist's header sets it (id 'header')",
    "unit": "nothing: the datalist's header sets it (id 'header')",
    "flip_pairs": "nothing: the datalist's header sets it (id 'header')",
    "stage1_size": "spatial_size (stage 1 is train.json)",
    "lr_decay": "lr_scheduler#end_factor (1.0: a constant learning rate)",
    "stage2": "the top-level id (KNEEL's stage 2 is a training run of its own, train.json + stage2.json)",
}


def config_names(files: Sequence[str | os.PathLike]) -> list[str]:
    """Config paths as a record states them: relative to the repository when inside it
    (``bundles/scn/configs/train.json``), else absolute."""
    repo = Path(__file__).resolve().parent.parent
    names = []
    for f in files:
        path = Path(f).resolve()
        names.append(path.relative_to(repo).as_posix() if repo in path.parents else str(path))
    return names


def _former_id(key: str) -> str | None:
    for old, new in FORMER_IDS.items():
        if key == old or key.startswith(old + "#"):
            return f"an id of the former config layout: override {new}"
    return None


def _override_problem(key: str, config: Mapping[str, Any]) -> str | None:
    """Why ``key`` cannot be overridden in the merged, unresolved ``config`` (None: it can). Overrides reach
    top-level ids and the literal blocks under them, not into a block that a bundle pulls in with a macro
    (``"%bundles/common/configs/train.json#train#parts"``), and a new key only where its parent is a dict (e.g. a
    constructor argument of ``network_def``)."""
    parts = key.lstrip("+").replace("::", "#").split("#")
    node: Any = config
    for depth, part in enumerate(parts):
        where = "#".join(parts[:depth])
        if isinstance(node, str) and node.startswith("%"):
            return (f"'{where}' is pulled in with a macro ({node}): an override cannot reach into it; override the "
                    "top-level id it reads instead")
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
                continue
            if depth == 0:
                return "not an id of these configs"
            if depth < len(parts) - 1:
                return f"'{where}#{part}' does not exist"
            return None
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        return f"'{where}' is no dict or list to override a part of (it is {json.dumps(node)[:80]})"
    return None


def override_problems(overrides: Mapping[str, Any], files: Sequence[str | os.PathLike]) -> dict[str, str]:
    """``{id: why}`` for the ids of ``overrides`` that the composition ``files`` (merged in order) cannot take:
    ids of the former layout (:data:`FORMER_IDS`, with what to override instead), ids the configs do not have, ids
    inside a block pulled in with a macro or inside a value that is no dict/list. Empty: every id applies."""
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_files([str(f) for f in files])
    problems = {}
    for key in overrides:
        problem = _former_id(key) or _override_problem(key, config)
        if problem:
            problems[key] = problem
    return problems


def _reads_record(value: Any, records: set[str]) -> bool:
    text = json.dumps(value)
    return any(f"@{r}" in text for r in records)


def _overlay_ids(overlays: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """``{id: value}`` that the ``overlays`` set (``+`` merge keys as their id), with their macros resolved (the shared
    overlays pull ids from each other: ``"%bundles/common/configs/inference.json#network_def"``)."""
    from monai.bundle import ConfigParser

    from monai_ext.bundle import absolute_macros

    defined: dict[str, Any] = {}
    for f in overlays:
        raw = {k.lstrip("+"): v for k, v in json.loads(Path(f).read_text()).items() if k != "_comment"}
        parser = ConfigParser(absolute_macros(raw))
        parser.resolve_macro_and_relative_ids()
        defined.update(parser.get())
    return defined


#: why :func:`run_level_overrides` refuses an id that the trained model's record sets
RECORD_SETS_IT = "the trained model's record sets it"


def run_level_overrides(
    overrides: Mapping[str, Any], overlays: Sequence[str | os.PathLike]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Split ``overrides`` for an evaluation or inference of a trained model into ``(run-level, {id: why not})``.

    Such a run takes the network and every value the model depends on from the model's record
    (:class:`monai_ext.bundle.ModelConfig`; a contradicting override is an error there), and the training recipe
    does not apply to it. Run-level ids: :data:`RUN_LEVEL_IDS` and the ids that the workflow's ``overlays`` (what
    :func:`monai_ext.bundle.config_files` merges after ``train.json`` and the variants: the shared
    ``bundles/common/configs/{evaluate,inference}.json``, the bundle's model overlays, ...) define themselves, except
    those they read from a record (``"$@model_config['spatial_size']"``, the record itself)."""
    defined = _overlay_ids(overlays)
    records = {k for k, v in defined.items() if "ModelConfig.load" in json.dumps(v)}
    from_record = {k for k, v in defined.items() if k in records or _reads_record(v, records)}
    allowed = set(RUN_LEVEL_IDS) | (set(defined) - from_record)

    def under(key: str, ids: set[str]) -> bool:
        key = key.lstrip("+")
        return any(key == i or key.startswith(i + "#") for i in ids)

    passed, rejected = {}, {}
    for key, value in overrides.items():
        if under(key, allowed):
            passed[key] = value
        elif under(key, from_record | {"network_def", "network"}):
            rejected[key] = RECORD_SETS_IT
        else:
            rejected[key] = "not a run-level id of this workflow"
    return passed, rejected
