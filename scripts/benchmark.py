"""Benchmark a bundle: training speed, data wait, memory, validation accuracy, inference latency and throughput;
and the report of all recorded runs.

Usage::

    # train in-process (outputs in a temporary folder, never in bundles/), then time inference on the test split
    python scripts/benchmark.py run --bundle scn --epochs 3 --out runs/bench/scn_hand_256.json
    python scripts/benchmark.py run --bundle scn --datalist data/hand_xray/datalist.json --minutes 30 \\
        --overrides '{"spatial_size": [128, 128]}' --config quick --out runs/bench/scn_hand_128.json
    # regenerate docs/benchmarks.md (table) and docs/benchmarks/*.png (plots) from every run file
    python scripts/benchmark.py report --runs runs/bench --out docs/benchmarks.md
    # attach a note to a run (e.g. a later code change that its accuracy predates); shown by the report
    python scripts/benchmark.py note runs/bench/scn_hand_256.json "measured before ..."

``run`` composes the bundle's workflows with :func:`monai_ext.bundle.config_files` and runs them in-process with
MONAI's ``ConfigWorkflow`` (models, outputs and the generated dataset under ``--workdir``, the workflows' bundle
root). Training is every training run of the bundle (:func:`monai_ext.bundle.training_stages`: ``train.json``, the
``--config`` variants such as ``quick``, then KNEEL's ``stage2.json``), with ``--overrides``, for ``--epochs`` (or
whole epochs until ``--minutes`` have passed, per run). Evaluation and inference of the trained model take the
network and what it depends on from the model's record (``models/model.pt``): of ``--overrides`` they get only the
run-level ids (:func:`monai_ext.benchmark.run_level_overrides`; the record of the run lists both groups). One JSON
file (written atomically) records:

* ``training``: images/s and the fraction of step time spent waiting for the DataLoader, over the steady-state
  epochs (the first one excluded when more than one ran), per-epoch figures, validation seconds, peak memory (all
  training runs), wall seconds of all training runs;
* ``training.validation_history``: every validation during training with the minutes trained so far (a
  time-to-accuracy curve: MRE vs minutes);
* ``validation``: the evaluator's metrics after the last epoch, the key metric's full summary (MRE, SDR/PCK
  at each radius, per landmark) and an SDR/PCK curve over radii computed from the per-point errors;
* ``training.stages``: the timing of every further training run, by its overlay (KNEEL's ``stage2.json``, which
  trains on ROIs, initialised from the first run's best checkpoint);
* ``evaluation``: the same record from ``run evaluating`` (train.json + variants + the shared
  ``bundles/common/configs/evaluate.json`` + the overlays the bundle's ``train.json`` names in ``model_overlays``) with the best
  checkpoints, on the datalist's ``test`` section when it has one, else ``validation`` (``--eval_section`` chooses;
  ``section`` says which): end to end for two-stage KNEEL (whose training validation only scores the stage-1 ROI
  centres), and with the click-protocol table (MRE vs number of clicks, model and manual revision) for the
  interactive bundle; ``--evaluate False`` skips it;
* ``inference``: with ``run inference`` (the same configs) on the best checkpoints of this training, the latency of
  one image from the file on disk to landmarks in mm (batch 1; median and p95, on the CPU and, when present, the
  GPU; the first ``--warmup`` images are run but not counted) and the end-to-end throughput of the inference
  workflow over the ``--section`` images (batched, predictions written, overlays off; also after the first batch);
* ``machine``: CPU model, cores, memory, GPU, library versions, git commit, date.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from monai_ext.benchmark import (  # noqa: E402
    RECORD_SETS_IT,
    FinalValidation,
    IterationTimer,
    PeakMemoryMonitor,
    RunTimer,
    StopAfterMinutes,
    ValidationHistory,
    config_names,
    detection_rate_curve,
    latency_stats,
    machine_info,
    override_problems,
    release_workers,
    run_level_overrides,
)
from monai_ext.bundle import config_files, training_stages  # noqa: E402
from monai_ext.data.datalist import list_images, read_datalist  # noqa: E402
from monai_ext.metrics.distances import radius_key  # noqa: E402
from monai_ext.utils import atomic_path, atomic_write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "monai_ext.benchmark/1"
#: radii shown in the report table: SDR (ISBI hand/cephalometry style) or PCK (Adversarial PoseNet style).
HEADLINE_RADII = {"sdr": (2.0, 4.0, 10.0), "pck": (10.0, 20.0)}
CURVE_POINTS = 201
MAX_EPOCHS_FOR_MINUTES = 100_000


# ----------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------


def _bundle_dir(bundle: str) -> Path:
    path = Path(bundle)
    if not (path / "configs").is_dir():
        path = REPO / "bundles" / bundle
    if not (path / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"{bundle}: not a bundle name under {REPO / 'bundles'} nor a bundle folder "
                                "(expected configs/train.json)")
    return path.resolve()


def _extra_configs(bundle_dir: Path, config: Any) -> list[str]:
    """``--config quick`` / ``quick,other`` / a list: names in the bundle's configs/ or paths to JSON files."""
    if config is None or config == "":
        return []
    items = config.split(",") if isinstance(config, str) else list(config)
    files = []
    for item in (str(i).strip() for i in items):
        path = Path(item)
        if not path.is_file():
            path = bundle_dir / "configs" / (item if item.endswith(".json") else f"{item}.json")
        if not path.is_file():
            raise FileNotFoundError(f"--config {item}: neither a file nor {bundle_dir / 'configs'}/{item}.json")
        files.append(str(path.resolve()))
    return files


def _parse_overrides(overrides: Any) -> dict[str, Any]:
    """``--overrides``: a JSON object (text) or the dict fire already parsed from it. Fire reads the command line's
    ``{"decode_size": null}`` as a Python literal with the bare word ``null`` as the string ``"null"``: such
    values (top level) are JSON's null, i.e. ``None``."""
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as e:
            raise ValueError(f"--overrides must be a JSON object of config ids, got {overrides!r}: {e}") from e
    if not isinstance(overrides, Mapping):
        raise ValueError(f"--overrides must be a JSON object of config ids, got {type(overrides).__name__}")
    return {str(k): None if v == "null" else v for k, v in overrides.items()}


def _stage_conflicts(bundle_dir: Path, stage: str, overrides: Mapping[str, Any]) -> list[str]:
    """The ids of ``overrides`` that the stage overlay ``stage`` sets for its own training run (an override, applied
    after every file, would replace them there too: KNEEL's ``spatial_size`` of stage 2 is its ROI size)."""
    own = [k.lstrip("+") for k in json.loads((bundle_dir / "configs" / stage).read_text()) if k != "_comment"]
    return [key for key in overrides
            if any(key.lstrip("+") == k or key.startswith(k + "#") or k.startswith(key.lstrip("+") + "#") for k in own)]


def _plan_overrides(bundle_dir: Path, extra: list[str], user: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Where each ``--overrides`` id goes: ``training`` (the ids the training runs have), ``evaluate`` and
    ``inference`` (the run-level ids that the evaluation / inference of the trained model take,
    :func:`~monai_ext.benchmark.run_level_overrides`) and ``training_only`` (``{id: why}``: applied to training only,
    for the record). An id that no workflow can take (a former id, one inside a macro'd block, a typo), or that a
    later training stage sets itself, is an error before anything runs."""
    train_problems = override_problems(user, config_files(bundle_dir, "train", extra))
    plan: dict[str, dict[str, Any]] = {"training": {k: v for k, v in user.items() if k not in train_problems}}
    refused: dict[str, list[str]] = {k: [] for k in user}
    for workflow in ("evaluate", "inference"):
        files = config_files(bundle_dir, workflow, extra)
        run_level, rejected = run_level_overrides(user, files[1 + len(extra):])
        problems = override_problems(run_level, files)
        plan[workflow] = {k: v for k, v in run_level.items() if k not in problems}
        for k, why in {**rejected, **problems}.items():
            refused[k].append(f"{why} ({workflow})")
    applied = set(plan["evaluate"]) | set(plan["inference"])
    bad = {k: "; ".join([f"{p} (training)", *refused[k]]) for k, p in train_problems.items() if k not in applied}
    if bad:
        raise ValueError(f"--overrides: no workflow of {bundle_dir.name} can take these ids:\n"
                         + "\n".join(f"  - {k}: {p}" for k, p in bad.items()))
    for stage in training_stages(bundle_dir)[1:]:
        clash = _stage_conflicts(bundle_dir, stage, user)
        if clash:
            raise ValueError(f"--overrides {clash}: {bundle_dir.name}'s {stage} sets these for its own training run "
                             "(an override would replace them there too); override the ids they derive from instead")
    plan["training_only"] = {
        k: RECORD_SETS_IT if any(why.startswith(RECORD_SETS_IT) for why in refused[k]) else "a training setting"
        for k in plan["training"] if k not in applied
    }
    return plan


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tensors/arrays to lists, numpy scalars to numbers, NaN/inf to None, paths to str."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _workflow(files: Sequence[str], bundle_dir: Path, workflow_type: str, run_id: str, overrides: Mapping[str, Any]):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=list(files),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        run_id=run_id,
        **overrides,
    )
    wf.initialize()
    return wf


def _get(parser: Any, key: str, default: Any = None) -> Any:
    return parser.get_parsed_content(key) if key in parser else default


def _validation_record(evaluator: Any, unit: str) -> dict[str, Any]:
    """The evaluator's metrics, its key metric's summary (per landmark) and an SDR/PCK curve."""
    state = evaluator.state
    metrics = {k: float(v) for k, v in state.metrics.items() if isinstance(v, (int, float, np.generic))}
    summaries = getattr(state, "metric_summaries", {}) or {}
    key = getattr(state, "key_metric_name", None)
    name = key if key in summaries else next((n for n, s in summaries.items() if s.get("per_landmark")), None)
    record: dict[str, Any] = {
        "metrics": metrics,
        "key_metric": key,
        "best_metric": float(state.best_metric) if getattr(state, "best_metric", None) is not None else None,
        "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
        "metric_kind": "pck" if any("pck" in m.lower() for m in state.metrics) else "sdr",
        "unit": unit,
        "summary_metric": name,
        "summary": summaries.get(name),
        "curve": None,
    }
    details = (getattr(state, "metric_details", {}) or {}).get(name)
    if name is not None and details is not None:
        summary_radii = [float(r) for r in summaries[name].get("radii", [])] or [1.0]
        radii = np.linspace(0.0, max(summary_radii), CURVE_POINTS).tolist()
        record["curve"] = {"radii": radii, "rate": detection_rate_curve(details, radii)}
    return record


def _evaluation(bundle_dir: Path, extra: list[str], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``run evaluating`` with the best checkpoints: its evaluator's record (:func:`_validation_record`), the
    section it evaluated, the seconds it took and, when the bundle evaluates a click protocol, the MRE-vs-clicks
    table of its ``InteractiveCurveWriter``."""
    from monai_ext.handlers import InteractiveCurveWriter

    files = config_files(bundle_dir, "evaluate", extra)
    start = time.perf_counter()
    ewf = _workflow(files, bundle_dir, "infer", "evaluating", overrides)
    parser = ewf.parser
    evaluator = parser.get_parsed_content("evaluator")
    handlers = parser.get_parsed_content("handlers") or []
    section = str(parser.get_parsed_content("eval_section"))
    unit = str(parser.get_parsed_content("header")["unit"])
    ewf.run()
    ewf.finalize()
    release_workers(evaluator.data_loader)
    record = {**_validation_record(evaluator, unit), "configs": config_names(files), "section": section,
              "wall_s": time.perf_counter() - start, "clicks": None}
    for handler in handlers:
        if isinstance(handler, InteractiveCurveWriter):
            summary = handler.summary()
            record["clicks"] = {"unit": summary["unit"], "n_images": summary["n_images"], "table": summary["table"]}
    return record


def _prediction_errors(output_dir: Path) -> int:
    doc = json.loads((output_dir / "predictions.json").read_text())
    return sum(1 for r in doc["predictions"] if r.get("error"))


def _command(**kwargs: Any) -> str:
    parts = ["python", "scripts/benchmark.py", "run"]
    for k, v in kwargs.items():
        if v is None or v == {} or v == "":
            continue
        text = json.dumps(v) if isinstance(v, (dict, list, tuple)) else str(v)
        parts += [f"--{k}", shlex.quote(text)]
    return " ".join(parts)


def run(
    bundle: str = "scn",
    datalist: str | None = None,
    epochs: int | None = None,
    minutes: float | None = None,
    overrides: Any = None,
    config: Any = None,
    out: str | None = None,
    workdir: str | None = None,
    section: str = "test",
    latency_images: int = 20,
    warmup: int = 2,
    batch_size: int = 8,
    num_workers: int | None = None,
    latency_devices: Any = None,
    evaluate: bool = True,
    eval_section: str | None = None,
) -> str:
    """Train ``bundle`` in-process and record its benchmark as JSON; returns the JSON path.

    Args:
        bundle: a bundle name under ``bundles/`` or a bundle folder.
        datalist: the datalist JSON; default: the bundle's synthetic dataset, generated in ``workdir``.
        epochs: epochs to train (with ``minutes``: the most epochs), per training run.
        minutes: train whole epochs until this many minutes have passed, per training run.
        overrides: config ids to override, a JSON object, e.g. ``'{"spatial_size": [128, 128]}'``: top-level ids
            (or parts of literal blocks, e.g. ``network_def#width``), applied to every training run; evaluation
            and inference take only the run-level ones (the trained model's record sets the rest). An id that no
            workflow of the bundle has, or that a later training stage sets itself, is an error.
        config: variants merged after train.json (before the evaluation/inference overlays): names in the bundle's
            configs/ (``quick``, ``hand``) or paths; comma-separated or a list.
        out: the JSON file (default ``runs/bench/<bundle>-<UTC time>.json``); its name is the run's name.
        workdir: folder for checkpoints, predictions and the generated dataset (default: a temporary folder,
            removed at the end); never inside the repository's ``bundles/``.
        section: datalist section whose images are used for latency and throughput.
        latency_images: images timed one by one (the section's images, repeated when there are fewer).
        warmup: images run before the timed ones (not counted).
        batch_size: batch size of the throughput run.
        num_workers: DataLoader workers of the throughput run (default: the training's).
        latency_devices: devices timed at batch 1, e.g. ``cuda`` (default: ``cpu`` and, when present, ``cuda``).
        evaluate: also run the evaluation (``run evaluating``) with the best checkpoints.
        eval_section: the datalist section evaluated (default: ``test`` when the datalist has one, else
            ``validation``, as the bundle's evaluation chooses).
    """
    if epochs is None and minutes is None:
        raise ValueError("give --epochs N and/or --minutes M: how long to train")
    if epochs is not None and int(epochs) < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    if int(latency_images) < 1 or int(warmup) < 0 or int(batch_size) < 1:
        raise ValueError("--latency_images and --batch_size must be >= 1 and --warmup >= 0")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if latency_devices is not None:
        wanted = latency_devices.split(",") if isinstance(latency_devices, str) else list(latency_devices)
        devices = [str(d).strip() for d in wanted if str(d).strip()]
        unknown = [d for d in devices if d not in ("cpu", "cuda") or (d == "cuda" and not torch.cuda.is_available())]
        if unknown or not devices:
            raise ValueError(f"--latency_devices {latency_devices!r}: 'cpu' and/or 'cuda' (when present), got {unknown}")
    bundle_dir = _bundle_dir(bundle)
    extra = _extra_configs(bundle_dir, config)
    user = _parse_overrides(overrides)
    plan = _plan_overrides(bundle_dir, extra, user)
    out_path = Path(out) if out else Path("runs") / "bench" / (
        f"{bundle_dir.name}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}.json")
    command = _command(bundle=bundle, datalist=datalist, epochs=epochs, minutes=minutes, overrides=user,
                       config=",".join(Path(f).stem for f in extra) or None, out=str(out_path), section=section,
                       latency_images=latency_images, warmup=warmup, batch_size=batch_size, num_workers=num_workers,
                       latency_devices=None if latency_devices is None else ",".join(devices),
                       evaluate=None if evaluate else False, eval_section=eval_section)
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        work = Path(workdir).resolve() if workdir else Path(tmp)
        bundles = (REPO / "bundles").resolve()
        if work == bundles or bundles in work.parents:
            raise ValueError(f"--workdir {work}: benchmark outputs never go into {bundles}")
        record = _run(bundle_dir, extra, user, plan, work, datalist, epochs, minutes, section, int(latency_images),
                      int(warmup), int(batch_size), num_workers, devices, bool(evaluate), eval_section)
    record = {"schema": SCHEMA, "name": out_path.stem, "command": command, **record}
    with atomic_write(out_path) as f:
        json.dump(_jsonable(record), f, indent=1, allow_nan=False)
        f.write("\n")
    print(f"benchmark written to {out_path}")
    return str(out_path)


def _train(
    files: Sequence[str], bundle_dir: Path, overrides: Mapping[str, Any], minutes: float | None
) -> dict[str, Any]:
    """One training run (``run training`` of ``files``), timed: its parser, trainer, validator, step timer,
    validation timer and history, wall seconds and best checkpoint. The final weights are validated when the
    last epoch was not, so the best-metric checkpoint exists for what runs next."""
    wf = _workflow(files, bundle_dir, "train", "training", overrides)
    parser = wf.parser
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    device = torch.device(parser.get_parsed_content("device"))
    timer = IterationTimer(sync_cuda=device.type == "cuda")
    timer.attach(trainer)
    if minutes is not None:
        StopAfterMinutes(float(minutes)).attach(trainer)
    validation_timer = RunTimer()
    validation_timer.attach(evaluator)
    history = ValidationHistory()
    history.attach(trainer, evaluator)
    # the last epoch unvalidated (val_interval, time budget): validate the final weights when the trainer ends
    FinalValidation(evaluator, history).attach(trainer)
    start = time.perf_counter()
    wf.run()
    wall = time.perf_counter() - start
    wf.finalize()
    release_workers(trainer.data_loader, evaluator.data_loader)
    checkpoint = Path(parser.get_parsed_content("ckpt_dir")) / "model.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: training saved no best-metric checkpoint to run inference with")
    return {"files": list(files), "parser": parser, "trainer": trainer, "evaluator": evaluator, "device": device,
            "timer": timer, "validation_timer": validation_timer, "history": history, "wall_s": wall}


def _run(
    bundle_dir: Path,
    extra: list[str],
    user: dict[str, Any],
    plan: Mapping[str, dict[str, Any]],
    work: Path,
    datalist: str | None,
    epochs: int | None,
    minutes: float | None,
    section: str,
    latency_images: int,
    warmup: int,
    batch_size: int,
    num_workers: int | None,
    devices: Sequence[str],
    evaluate: bool = True,
    eval_section: str | None = None,
) -> dict[str, Any]:
    # the work folder is the workflows' bundle root: models/ (KNEEL: models/stage2/), eval/, data/
    common: dict[str, Any] = {"bundle_root": str(work), "output_dir": str(work / "eval"),
                              "dataset_dir": str(work / "data")}
    if datalist is not None:
        if not Path(datalist).is_file():
            raise FileNotFoundError(f"--datalist {datalist}: file does not exist")
        common["datalist"] = str(Path(datalist).resolve())
    train_overrides = {
        **common,
        "max_epochs": int(epochs) if epochs is not None else MAX_EPOCHS_FOR_MINUTES,
        **plan["training"],
    }

    # ---- training (+ validation each val_interval): every training run of the bundle, in order ----
    runs = []
    with PeakMemoryMonitor() as train_memory:
        for stage in training_stages(bundle_dir):
            runs.append(_train(config_files(bundle_dir, "train", extra, stage), bundle_dir, train_overrides, minutes))
            runs[-1]["stage"] = stage
    first = runs[0]
    parser, trainer, evaluator, device = first["parser"], first["trainer"], first["evaluator"], first["device"]
    datalist_path = str(parser.get_parsed_content("datalist"))
    unit = str(parser.get_parsed_content("header")["unit"])
    train_summary = first["timer"].summary(skip_first_epoch=True)
    if not train_summary["steps"]:
        raise RuntimeError(f"{datalist_path}: training ran no iteration (empty 'training' section?)")
    loader = trainer.data_loader
    settings = {
        "configs": config_names(first["files"]),
        "overrides": user,
        "evaluation_overrides": plan["evaluate"],
        "inference_overrides": plan["inference"],
        "training_only_overrides": plan["training_only"],
        "spatial_size": _get(parser, "spatial_size"),  # KNEEL: the stage-1 input
        "roi_size": _get(parser, "roi_size"),  # KNEEL: the stage-2 ROIs (pixels)
        "batch_size": getattr(loader, "batch_size", None),
        "num_workers": getattr(loader, "num_workers", None),
        "max_epochs": _get(parser, "max_epochs"),
        "minutes": minutes,
        "val_interval": _get(parser, "val_interval"),
        "device": str(device),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "radii": _get(parser, "radii"),
        "unit": unit,
    }
    doc = read_datalist(datalist_path)
    dataset = {
        "name": doc.get("name"),
        "datalist": datalist_path,
        "num_landmarks": len(doc.get("landmarks", [])),
        **{f"n_{s}": len(doc.get(s, []) or []) for s in ("training", "validation", "test")},
    }
    training = {
        "epochs_run": int(trainer.state.epoch),
        "wall_s": sum(r["wall_s"] for r in runs),  # every training run (KNEEL: both stages)
        **train_summary,
        "validation_s": first["validation_timer"].seconds,
        "validation_history": first["history"].records,
        "stages": {
            r["stage"]: {"configs": config_names(r["files"]), "epochs_run": int(r["trainer"].state.epoch),
                         "wall_s": r["wall_s"], **r["timer"].summary(skip_first_epoch=True),
                         "validation_s": r["validation_timer"].seconds}
            for r in runs[1:]
        },
        **train_memory.result(),
    }
    validation = _validation_record(evaluator, unit)
    # evaluation and inference: the trained models' records, this run's data and outputs, run-level overrides only
    base = {**common, "datalist": datalist_path}
    evaluation = None
    if evaluate:
        over = {**base, **plan["evaluate"], **({"eval_section": eval_section} if eval_section else {})}
        evaluation = _evaluation(bundle_dir, extra, over)

    # ---- inference: latency (batch 1, per device) and throughput (batched) ----
    inference_files = config_files(bundle_dir, "inference", extra)
    base = {**base, **plan["inference"], "num_overlays": 0}
    images = [item["image"] for item in list_images(datalist_path, section)]
    if not images:
        raise ValueError(f"{datalist_path}: section {section!r} has no images to time inference on")
    latency = {}
    for dev in (f"{d}:0" if d == "cuda" else d for d in devices):
        timed = list(itertools.islice(itertools.cycle(images), warmup + latency_images))
        out_dir = work / "inference" / f"latency_{dev.replace(':', '')}"
        over = {**base, "input": timed, "output_dir": str(out_dir), "device": f"$torch.device('{dev}')",
                "dataloader#batch_size": 1, "dataloader#num_workers": 0}
        with PeakMemoryMonitor() as memory:
            iwf = _workflow(inference_files, bundle_dir, "infer", "inference", over)
            lat_timer = IterationTimer(sync_cuda=dev.startswith("cuda"))
            lat_timer.attach(iwf.parser.get_parsed_content("evaluator"))
            iwf.run()
            iwf.finalize()
        seconds = [s.step_s for s in lat_timer.steps]
        timed_steps = lat_timer.steps[warmup:]
        latency[dev.split(":")[0]] = {
            **latency_stats(seconds[warmup:]),
            # where the time goes: the batch-1 DataLoader (no workers) reads and preprocesses on the CPU; the
            # iteration moves the image, runs the network, decodes the heatmaps and maps the points back
            "load_preprocess_median_ms": latency_stats([s.wait_s for s in timed_steps])["median_ms"],
            "network_decode_median_ms": latency_stats([s.compute_s for s in timed_steps])["median_ms"],
            "warmup": warmup,
            "warmup_ms": [1000.0 * s for s in seconds[:warmup]],
            "images_ms": [1000.0 * s for s in seconds[warmup:]],
            "failed": _prediction_errors(out_dir / "inference"),
            "peak_gpu_allocated_mb": memory.result()["peak_gpu_allocated_mb"],
        }
    workers = int(num_workers) if num_workers is not None else int(settings["num_workers"] or 0)
    out_dir = work / "inference" / "throughput"
    over = {**base, "input": images, "output_dir": str(out_dir),
            "dataloader#batch_size": batch_size, "dataloader#num_workers": workers}
    iwf = _workflow(inference_files, bundle_dir, "infer", "inference", over)
    inference_device = str(iwf.parser.get_parsed_content("device"))
    thr_timer = IterationTimer(sync_cuda=inference_device.startswith("cuda"))
    thr_timer.attach(iwf.parser.get_parsed_content("evaluator"))
    start = time.perf_counter()
    iwf.run()
    wall = time.perf_counter() - start
    iwf.finalize()
    steps = thr_timer.summary(skip_first_epoch=False)
    later = thr_timer.steps[1:]  # after the first batch (cold start: checkpoint in memory, kernels chosen)
    later_s = sum(s.step_s for s in later)
    throughput = {
        "images": len(images),
        "batch_size": batch_size,
        "num_workers": workers,
        "device": inference_device,
        "wall_s": wall,
        "images_per_s": len(images) / wall,
        "first_batch_s": thr_timer.steps[0].step_s if thr_timer.steps else None,
        "steady_images_per_s": sum(s.images for s in later) / later_s if later and later_s > 0 else None,
        "data_wait_fraction": steps["data_wait_fraction"],
        "failed": _prediction_errors(out_dir / "inference"),
    }
    return {
        "bundle": bundle_dir.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "dataset": dataset,
        "settings": settings,
        "training": training,
        "validation": validation,
        "evaluation": evaluation,
        "inference": {"section": section, "configs": config_names(inference_files),
                      "checkpoint": "best key metric (models/model.pt; KNEEL also models/stage2/model.pt)",
                      "latency": latency, "throughput": throughput},
    }


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def note(run: str, text: str) -> str:
    """Set the ``note`` of the run file ``run`` to ``text`` (empty: remove it); the report shows it under the
    run and marks the run's table row. The measured fields are not touched. Returns ``run``."""
    path = Path(run)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable run file: {e}") from e
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a benchmark run file (schema {SCHEMA!r})")
    if str(text).strip():
        doc["note"] = str(text).strip()
    else:
        doc.pop("note", None)
    with atomic_write(path) as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")
    return str(path)


def load_runs(runs: str | os.PathLike) -> list[dict[str, Any]]:
    """Every benchmark JSON (``"schema": SCHEMA``) in the folder ``runs`` (not recursive), oldest first;
    other JSON files (e.g. datalists) are ignored."""
    folder = Path(runs)
    if not folder.is_dir():
        raise FileNotFoundError(f"--runs {folder}: not a folder")
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable JSON: {e}") from e
        if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
            found.append(doc)
    return sorted(found, key=lambda d: (d.get("date") or "", d.get("name") or ""))


def _number(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "—"
    value = float(value)
    if digits is None:
        if 0 < abs(value) < 1:
            return f"{value:.3g}"
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}"


def _memory(mb: Any) -> str:
    if mb is None:
        return "—"
    return f"{mb / 1024:.2f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


def _resolution(run: Mapping[str, Any]) -> str:
    settings = run.get("settings", {})
    size, roi = settings.get("spatial_size"), settings.get("roi_size")
    text = "×".join(str(int(s)) for s in size) if size else "—"
    return f"{text}, ROIs {'×'.join(str(int(s)) for s in roi)}" if roi else text


def _result(run: Mapping[str, Any]) -> dict[str, Any]:
    """The accuracy record the report shows: ``evaluation`` (best checkpoint) when the run has one, else
    ``validation`` (after the last training epoch)."""
    return run.get("evaluation") or run.get("validation") or {}


def _section(run: Mapping[str, Any]) -> str:
    """The datalist section of :func:`_result`: the evaluated one (runs recorded before evaluations chose their
    section, and the training's validation: ``validation``)."""
    return (run.get("evaluation") or {}).get("section") or "validation"


def _headline(run: Mapping[str, Any]) -> str:
    val = _result(run)
    summary = val.get("summary") or {}
    kind = val.get("metric_kind", "sdr")
    sdr = summary.get("sdr") or {}
    radii = [r for r in HEADLINE_RADII[kind] if radius_key(r) in sdr] or [float(r) for r in sdr][:3]
    if not radii:
        return "—"
    values = " / ".join(_number(sdr[radius_key(r)], 1) for r in radii)
    return f"{kind.upper()}@{'/'.join(radius_key(r) for r in radii)} {val.get('unit', '')}: {values} %"


def _mre(run: Mapping[str, Any]) -> str:
    val = _result(run)
    summary = val.get("summary") or {}
    mre = summary.get("mre", val.get("metrics", {}).get("val_mre"))
    return "—" if mre is None else f"{_number(mre)} {val.get('unit', '')}"


def _latency(run: Mapping[str, Any]) -> str:
    latency = run.get("inference", {}).get("latency", {})
    cells = [f"{dev} {_number(v['median_ms'])} / {_number(v['p95_ms'])} ms" for dev, v in latency.items()]
    return "; ".join(cells) or "—"


def latency_split_line(run: Mapping[str, Any]) -> str:
    """``latency split (median): cpu 12.3 ms load + preprocess, 45.6 ms network + decode + map back; ...`` for the
    devices whose latency record has the split (runs recorded before it was added have none: empty string)."""
    latency = run.get("inference", {}).get("latency", {})
    cells = [f"{dev} {_number(v['load_preprocess_median_ms'])} ms load + preprocess, "
             f"{_number(v['network_decode_median_ms'])} ms network + decode + map back"
             for dev, v in latency.items() if "load_preprocess_median_ms" in v]
    return "latency split (median): " + "; ".join(cells) if cells else ""


def _throughput(run: Mapping[str, Any]) -> str:
    t = run.get("inference", {}).get("throughput")
    if not t:
        return "—"
    steady = t.get("steady_images_per_s")
    after = "" if steady is None else f", {_number(steady)} after the first batch"
    return f"{_number(t['images_per_s'])} img/s{after} ({t['device']}, batch {t['batch_size']})"


def _machine(run: Mapping[str, Any]) -> str:
    m = run.get("machine", {})
    cores = m.get("cpu_affinity") or m.get("cpu_count_logical")
    if str(m.get("device", "")).startswith("cuda") and m.get("gpu"):
        return f"{m['gpu']} ({cores} CPU cores)"
    return f"{m.get('cpu_model', '?')}, {cores} cores"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    os.chmod(path, 0o644)  # documentation: world-readable (the atomic temp file is created 0600)


def plot_detection_curve(run: Mapping[str, Any], path: Path) -> bool:
    """SDR/PCK (%) vs radius of one run as a PNG; False (nothing written) when the run has no curve."""
    from matplotlib.figure import Figure

    val = _result(run)
    curve = val.get("curve")
    if not curve:
        return False
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    rate = [np.nan if r is None else r for r in curve["rate"]]
    ax.plot(curve["radii"], rate, drawstyle="steps-post", label="validation points")
    summary = val.get("summary") or {}
    sdr = summary.get("sdr") or {}
    if sdr:
        values = [np.nan if v is None else v for v in sdr.values()]
        ax.plot([float(r) for r in sdr], values, "o", label="reported radii")
    kind, unit = val.get("metric_kind", "sdr").upper(), val.get("unit", "")
    ax.set_xlabel(f"radius ({unit})")
    ax.set_ylabel(f"{kind} (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{run['name']}: {run.get('bundle')}, {run.get('dataset', {}).get('name')}, {_resolution(run)}",
                 fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    return True


def plot_per_landmark(run: Mapping[str, Any], path: Path) -> bool:
    """Mean radial error ± std per landmark of one run as a PNG; False when the run has no per-landmark summary."""
    from matplotlib.figure import Figure

    val = _result(run)
    rows = (val.get("summary") or {}).get("per_landmark") or []
    if not rows:
        return False
    names = [r["name"] for r in rows]
    mre = [np.nan if r.get("mre") is None else r["mre"] for r in rows]
    std = [0.0 if r.get("std") is None else r["std"] for r in rows]
    fig = Figure(figsize=(max(5.0, 0.22 * len(rows) + 1.5), 3.5))
    ax = fig.subplots()
    ax.bar(range(len(rows)), mre, yerr=std, capsize=2, color="tab:blue", ecolor="0.3")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel(f"radial error ({val.get('unit', '')}), mean ± std")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"{run['name']}: per-landmark error ({_section(run)} split)", fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    return True


def plot_clicks(run: Mapping[str, Any], path: Path) -> bool:
    """MRE vs number of clicks (model and manual revision) of an interactive run as a PNG; False when the run
    has no click-protocol table."""
    from matplotlib.figure import Figure

    clicks = (run.get("evaluation") or {}).get("clicks")
    if not clicks or not clicks.get("table"):
        return False
    rows = clicks["table"]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    n = [r["clicks"] for r in rows]
    for key, label in (("mre_model", "model revision"), ("mre_manual", "manual revision")):
        ax.plot(n, [np.nan if r.get(key) is None else r[key] for r in rows], "o-", label=label)
    ax.set(xlabel="clicks", ylabel=f"MRE ({clicks.get('unit', '')})", ylim=(0, None))
    ax.set_xticks(n)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title(f"{run['name']}: MRE vs clicks ({clicks.get('n_images')} {_section(run)} images)", fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    return True


def clicks_line(run: Mapping[str, Any]) -> str | None:
    """One line: MRE without clicks and after each click (model revision; manual revision after the last)."""
    clicks = (run.get("evaluation") or {}).get("clicks")
    if not clicks or not clicks.get("table"):
        return None
    rows, unit = clicks["table"], clicks.get("unit", "")
    model = " → ".join(_number(r.get("mre_model")) for r in rows)
    line = (f"MRE vs clicks 0..{rows[-1]['clicks']} (model revision, {unit}): {model}; manual revision after "
            f"{rows[-1]['clicks']} clicks {_number(rows[-1].get('mre_manual'))} {unit}")
    if rows[0].get("smape_model") is not None:
        line += (f"; Cobb-angle SMAPE {_number(rows[0]['smape_model'])} → {_number(rows[-1]['smape_model'])} % "
                 f"(model revision, {rows[0].get('n_cobb')} images)")
    return line


def _history_points(run: Mapping[str, Any]) -> tuple[str | None, list[tuple[float, float]]]:
    """The metric of the time-to-accuracy curve (the key metric, else an MRE-like one) and its
    ``(minutes of training with validation, value)`` points."""
    history = run.get("training", {}).get("validation_history") or []
    names = {k for h in history for k in h["metrics"]}
    key = (run.get("validation") or {}).get("key_metric")
    metric = key if key in names else next((n for n in sorted(names) if "mre" in n.lower()), None)
    return metric, [(h["wall_s"] / 60.0, h["metrics"][metric]) for h in history if metric in h["metrics"]]


def plot_time_to_accuracy(run: Mapping[str, Any], path: Path) -> bool:
    """Validation metric vs minutes of training (validation time included) as a PNG; False when the run has
    fewer than two validations."""
    from matplotlib.figure import Figure

    metric, points = _history_points(run)
    if len(points) < 2:
        return False
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    minutes, values = zip(*points)
    ax.plot(minutes, values, "o-", markersize=3)
    ax.set(xlabel="training minutes (validation included)",
           ylabel=f"{metric} ({(run.get('validation') or {}).get('unit', '')})",
           yscale="log" if "mre" in metric.lower() and min(values) > 0 else "linear")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{run['name']}: time to accuracy", fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    return True


def time_to_accuracy(run: Mapping[str, Any]) -> str | None:
    """One line: the curve's metric at its best, when it was reached, and its last value."""
    metric, points = _history_points(run)
    if not points:
        return None
    higher = any(k in metric.lower() for k in ("pck", "sdr", "recall"))
    best = (max if higher else min)(points, key=lambda p: p[1])
    unit = (run.get("validation") or {}).get("unit", "")
    return (f"{metric} {_number(points[-1][1])} {unit} after {_number(points[-1][0])} min; best "
            f"{_number(best[1])} {unit} at {_number(best[0])} min ({len(points)} validations)")


TABLE_HEADER = ("run", "bundle", "dataset", "resolution", "epochs", "train img/s", "data wait", "peak RSS (+workers)",
                "peak GPU", "MRE", "SDR/PCK", "latency median / p95", "throughput", "machine", "date")


def table_row(run: Mapping[str, Any]) -> list[str]:
    """One row of the report table (cells in :data:`TABLE_HEADER` order)."""
    tr = run.get("training", {})
    wait = tr.get("data_wait_fraction")
    return [
        run["name"] + (" (see note)" if run.get("note") else ""),
        run.get("bundle", "—"),
        run.get("dataset", {}).get("name") or "—",
        _resolution(run),
        str(tr.get("epochs_run", "—")),
        _number(tr.get("images_per_s")),
        "—" if wait is None else f"{100 * wait:.1f} %",
        f"{_memory(tr.get('peak_rss_mb'))} ({_memory(tr.get('peak_rss_with_children_mb'))})",
        _memory(tr.get("peak_gpu_allocated_mb")),
        _mre(run),
        _headline(run),
        _latency(run),
        _throughput(run),
        _machine(run),
        str(run.get("date", "—"))[:10],
    ]


def report(runs: str = "runs/bench", out: str = "docs/benchmarks.md", plots: str | None = None) -> str:
    """Regenerate the benchmark page ``out`` (a table of every run in ``runs``, then one section per run with
    its command, settings and plots) and the plots (PNG, default ``<out folder>/benchmarks/``); returns ``out``."""
    records = load_runs(runs)
    out_path = Path(out)
    plot_dir = Path(plots) if plots else out_path.parent / "benchmarks"
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python scripts/benchmark.py report --runs {runs} --out {out}` from "
        f"{len(records)} run file(s); do not edit by hand. Every number was measured by "
        "`python scripts/benchmark.py run` (each run's command is listed below); none is estimated.",
        "",
        "- **train img/s**: training images per second over the steady-state epochs (the first epoch is excluded "
        "when more than one ran); step = waiting for the batch + forward/backward/optimizer and iteration handlers.",
        "- **data wait**: share of the step time spent waiting for the DataLoader "
        "(ignite `GET_BATCH_STARTED` → `GET_BATCH_COMPLETED`).",
        "- **peak RSS**: resident memory of the training process (in brackets: plus its DataLoader workers, "
        "shared pages counted per process); **peak GPU**: `torch.cuda.max_memory_allocated` during training.",
        "- **MRE**, **SDR/PCK**: errors in the original image (mm unless the dataset is in pixels) of the "
        "bundle's evaluation (`run evaluating`: train.json + variants + `bundles/common/configs/evaluate.json` "
        "+ the bundle's `model_overlays`) with the best checkpoint, on the split named in the run's section (the "
        "datalist's test split when it has one, else validation; end to end for KNEEL's two stages, no clicks for "
        "the interactive bundle, whose MRE vs clicks follows in its section); runs recorded without that "
        "evaluation: the validation after the last training epoch.",
        "- **latency**: one image from the file on disk to landmarks in mm with the bundle's inference workflow "
        "(`run inference`; load, preprocess, forward, decode, map back; batch 1), median / p95 over the timed "
        "images, per device.",
        "- **throughput**: the bundle's inference workflow over the run's inference section (batched, "
        "predictions written, no overlays), images / wall-clock second of the whole run (checkpoint loading "
        "included), then over the batches after the first one.",
        "",
    ]
    if not records:
        lines += ["No benchmark run recorded yet: `python scripts/benchmark.py run ...` writes one into "
                  f"`{runs}/`, then rerun this report.", ""]
    else:
        lines += ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
        lines += ["| " + " | ".join(_cell(c) for c in table_row(r)) + " |" for r in records]
        lines.append("")
    for run in records:
        name = run["name"]
        s, m, d = run.get("settings", {}), run.get("machine", {}), run.get("dataset", {})
        tr, inf = run.get("training", {}), run.get("inference", {})
        val = run.get("validation") or {}
        lines += [
            f"## {name}",
            "",
            "```bash",
            run.get("command", ""),
            "```",
            "",
            f"- dataset: {d.get('name')} ({d.get('n_training')} training / {d.get('n_validation')} validation / "
            f"{d.get('n_test')} test images, {d.get('num_landmarks')} landmarks)",
            f"- settings: {_resolution(run)}, batch {s.get('batch_size')}, {s.get('num_workers')} workers, "
            f"{tr.get('epochs_run')} epoch(s) in {_number(tr.get('wall_s'))} s (with validation"
            f"{', all training runs' if tr.get('stages') else ''}), device "
            f"{s.get('device')}, configs {', '.join(Path(c).name for c in s.get('configs', []))}, "
            f"overrides `{json.dumps(s.get('overrides') or {})}`",
            f"- best {val.get('key_metric')}: {_number(val.get('best_metric'))} at epoch {val.get('best_metric_epoch')}"
            f" (the checkpoint timed for inference); inference on the {inf.get('section')} section",
            f"- machine: {m.get('cpu_model')} ({m.get('cpu_affinity')} usable cores, {m.get('torch_num_threads')} "
            f"torch threads, {_number(m.get('memory_total_gb'), 0)} GB RAM), GPU {m.get('gpu') or 'none'}; "
            f"torch {m.get('torch')}, MONAI {m.get('monai')}, Python {m.get('python')}; "
            f"commit {str(m.get('git_commit'))[:10]}{' (modified)' if m.get('git_dirty') else ''}; {run.get('date')}",
        ]
        if run.get("note"):
            lines.append(f"- **note**: {run['note']}")
        if s.get("training_only_overrides"):
            lines.append(f"- overrides of training only (evaluation and inference take the trained model's record): "
                         f"{', '.join(f'`{k}` ({why})' for k, why in s['training_only_overrides'].items())}")
        for key, stage in (tr.get("stages") or {}).items():
            lines.append(f"- {key}: {stage.get('epochs_run')} epoch(s), {_number(stage.get('images_per_s'))} "
                         f"train img/s, data wait {100 * (stage.get('data_wait_fraction') or 0):.1f} %"
                         + (f", {_number(stage['wall_s'])} s" if stage.get("wall_s") is not None else ""))
        evaluation = run.get("evaluation")
        if evaluation:
            first = "first stage, " if tr.get("stages") else ""
            lines.append(f"- evaluation ({' + '.join(evaluation.get('configs', []))}, {_section(run)} split, best "
                         f"checkpoint): {evaluation.get('summary_metric')} {_mre(run)}, {_headline(run)}; the "
                         f"training's own validation ({first}validation split) after the last epoch: "
                         f"{_number((val.get('summary') or {}).get('mre'))} {val.get('unit', '')}")
        split = latency_split_line(run)
        if split:
            lines.append(f"- {split}")
        clicks = clicks_line(run)
        if clicks:
            lines.append(f"- {clicks}")
        tta = time_to_accuracy(run)
        if tta:
            first = ", first stage" if tr.get("stages") else ""
            lines.append(f"- time to accuracy (validation during training{first}): {tta}")
        lines.append("")
        for kind, plot in (("detection", plot_detection_curve), ("landmarks", plot_per_landmark),
                           ("clicks", plot_clicks), ("time", plot_time_to_accuracy)):
            png = plot_dir / f"{name}_{kind}.png"
            if plot(run, png):
                rel = os.path.relpath(png, out_path.parent).replace(os.sep, "/")
                title = {"detection": "SDR/PCK vs radius", "landmarks": "per-landmark error",
                         "clicks": "MRE vs clicks", "time": "validation metric vs training minutes"}[kind]
                lines += [f"![{name}: {title}]({rel})", ""]
    with atomic_write(out_path) as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    os.chmod(out_path, 0o644)
    print(f"report written to {out_path} ({len(records)} run(s))")
    return str(out_path)


COMMANDS = {"run": run, "report": report, "note": note}


def main(argv: Sequence[str] | None = None) -> Any:
    """Command line entry point: ``argv`` (default ``sys.argv[1:]``) names a command and its flags."""
    return fire.Fire(COMMANDS, command=None if argv is None else list(argv), name="benchmark")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        # a failed run must end: DataLoader workers / pin-memory threads of an interrupted CUDA run were seen
        # keeping the interpreter alive at shutdown (H100, persistent workers), so skip the teardown
        os._exit(1)
