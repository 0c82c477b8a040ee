"""Reduced-scale JPEG decoding (``decode_size``) against whole-file decoding, for one trained bundle checkpoint:
accuracy of the two inference runs on a datalist section and the time of the inference preprocessing, interleaved.

Usage::

    python scripts/decode_benchmark.py --bundle interactive_kp --checkpoint /tmp/ikp_hand/models/model.pt \\
        --datalist data/hand_xray/datalist.json --config hand --out runs/bench/decode_ikp_hand.json

Both runs are the bundle's inference workflow (``run inference``: ``train.json`` + the ``--config`` variants + the
trained-model overlays, :func:`monai_ext.bundle.config_files`) with ``--checkpoint``, whose record sets the network,
input size and decoding (no training override is repeated; ``--overrides`` takes run-level ids only, e.g.
``num_workers``), with ``decode_size`` ``None`` (whole files, as in training) and ``--decode_size`` (default: the
model's ``spatial_size``). Errors are against the section's ground truth, in mm with the datalist's (or the file's)
spacing, else in pixels. The preprocessing (the workflow's ``preprocessing`` Compose: load, fit, intensity) is timed
on every image alternately with both settings, ``--repeats`` times, on ``--threads`` torch threads (1 by default: on
a shared machine, OpenMP spin-waiting makes small multi-threaded ops erratic).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from monai_ext.benchmark import (  # noqa: E402
    config_names,
    latency_stats,
    machine_info,
    override_problems,
    record_json,
    run_level_overrides,
    write_record,
)
from monai_ext.bundle import config_files  # noqa: E402
from monai_ext.data.datalist import load_datalist  # noqa: E402
from monai_ext.metrics.distances import summarize_errors  # noqa: E402

MODES = ("full", "reduced")


def _workflow(bundle_dir: Path, configs: list[str], overrides: dict[str, Any]):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=configs, meta_file=str(bundle_dir / "configs" / "metadata.json"),
                        workflow_type="infer", run_id="inference", bundle_root=str(bundle_dir), **overrides)
    wf.initialize()
    return wf


def _points(path: Path) -> dict[str, np.ndarray]:
    doc = json.loads(path.read_text())
    bad = [r["image"] for r in doc["predictions"] if r.get("error")]
    if bad:
        raise RuntimeError(f"{path}: inference failed for {bad}")
    return {r["image"]: np.array([[p["x"], p["y"]] for p in r["landmarks"]], dtype=np.float64) for r in doc["predictions"]}


def run(
    bundle: str,
    checkpoint: str,
    datalist: str,
    section: str = "validation",
    config: Any = None,
    overrides: Any = None,
    decode_size: Any = None,
    repeats: int = 5,
    threads: int = 1,
    out: str | None = None,
) -> dict[str, Any]:
    """Compare whole-file and reduced-scale decoding; returns the record (printed as JSON on the command line) and
    writes it to ``out``.

    Args:
        bundle: a bundle name under ``bundles/`` or a bundle folder.
        checkpoint: the trained model (``models/model.pt``: weights and the record of its configuration).
        datalist: the datalist whose ``section`` is predicted.
        config: variants merged after ``train.json`` (names in the bundle's configs/ or paths), comma-separated.
        overrides: run-level config ids (a JSON object); an id that the model's record sets, or a training
            setting, is an error.
        decode_size: the reduced decoding size, ``"W,H"`` (default: the model's ``spatial_size``).
        repeats, threads: the preprocessing timing (interleaved repeats, torch threads).
        out: the JSON file written.
    """
    bundle_dir = Path(bundle) if (Path(bundle) / "configs").is_dir() else REPO / "bundles" / bundle
    extra = [] if not config else (config.split(",") if isinstance(config, str) else list(config))
    variants = [str(Path(str(c)).resolve()) if Path(str(c)).is_file() else f"{str(c).strip()}.json" for c in extra]
    configs = config_files(bundle_dir, "inference", variants)
    user = json.loads(overrides) if isinstance(overrides, str) else dict(overrides or {})
    run_level, rejected = run_level_overrides(user, configs[1 + len(variants):])
    rejected.update(override_problems(run_level, configs))
    if rejected:
        raise ValueError("--overrides: inference with a trained model takes run-level ids only (its record sets the "
                         "model's values):\n" + "\n".join(f"  - {k}: {why}" for k, why in rejected.items()))
    items = load_datalist(datalist, section)
    if not items:
        raise ValueError(f"{datalist}: section {section!r} is empty")
    reduced = "@spatial_size" if decode_size is None else [int(v) for v in (
        decode_size.split(",") if isinstance(decode_size, str) else decode_size)]
    record: dict[str, Any] = {"bundle": bundle_dir.name, "checkpoint": str(checkpoint), "datalist": str(datalist),
                              "section": section, "configs": config_names(configs), "overrides": user,
                              "n_images": len(items), "modes": {}, "preprocessing_ms": {}}
    predictions, preprocessing = {}, {}
    with tempfile.TemporaryDirectory(prefix="decode-") as tmp:
        for mode in MODES:
            over = {**run_level, "ckpt_path": str(checkpoint), "datalist": str(datalist), "num_overlays": 0,
                    "input": [it["image"] for it in items], "output_dir": f"{tmp}/{mode}",
                    "decode_size": None if mode == "full" else reduced}
            wf = _workflow(bundle_dir, configs, over)
            preprocessing[mode] = wf.parser.get_parsed_content("preprocessing")
            if mode == "reduced":
                record["decode_size"] = wf.parser.get_parsed_content("decode_size")
            wf.run()
            wf.finalize()
            predictions[mode] = _points(Path(tmp) / mode / "inference" / "predictions.json")
    unit = "mm" if all(it.get("spacing") is not None for it in items) else "px"
    for mode in MODES:
        errors = []
        for it in items:
            scale = np.asarray(it["spacing"], dtype=np.float64) if unit == "mm" else 1.0
            diff = (predictions[mode][it["image"]] - np.asarray(it["landmarks"], dtype=np.float64)) * scale
            errors.append(np.linalg.norm(diff, axis=-1))
        summary = summarize_errors(np.stack(errors), radii=[2, 4, 10], unit=unit)
        record["modes"][mode] = {k: summary[k] for k in ("mre", "median", "max", "sdr")}
    shift = np.concatenate([np.linalg.norm((predictions["reduced"][it["image"]] - predictions["full"][it["image"]])
                                           * (np.asarray(it["spacing"]) if unit == "mm" else 1.0), axis=-1)
                            for it in items])
    record["shift"] = {"unit": unit, "mean": float(np.nanmean(shift)), "median": float(np.nanmedian(shift)),
                       "max": float(np.nanmax(shift))}
    torch.set_num_threads(int(threads))
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    scales: dict[str, set[int]] = {mode: set() for mode in MODES}
    for _ in range(int(repeats)):
        for it in items:
            for mode in MODES:
                start = time.perf_counter()
                image = preprocessing[mode]({"image": it["image"]})["image"]
                seconds[mode].append(time.perf_counter() - start)
                scales[mode].add(int(image.meta["decode_scale"]))
    record["preprocessing_ms"] = {mode: latency_stats(seconds[mode]) for mode in MODES}
    record["decode_scales"] = {mode: sorted(scales[mode]) for mode in MODES}
    record["threads"], record["repeats"] = int(threads), int(repeats)
    record["machine"] = machine_info("cpu")
    write_record(record, out)
    return record


if __name__ == "__main__":
    fire.Fire(run, serialize=record_json)
