"""Two-stage KNEEL vs a single model on the whole image, with the bundle's own configs: on synthetic knees
(default) or on any datalist with the bundle's variants (e.g. ``--variants hand,cpu`` on ``../shared/data/hand_xray``:
the hand layout and the CPU recipe's time budgets) or a list of landmark groups.

All arms use ``bundles/kneel/configs/train.json`` (same network, wing loss, mixup, cutout, optimiser and schedule,
same stage-1 input grid), each in its own bundle root under ``--out_dir`` (``<arm>/models``, ``<arm>/eval``):

* **single stage**: the first training run (``train.json``) with one group per landmark (``roi_groups = [[0], [1],
  ..., [15]]``), i.e. the low-cost model regresses all 16 landmarks on the whole image; scored by its own validator
  on ``--section`` with its best checkpoint;
* **two stage**: the bundle's two training runs (:func:`monai_ext.bundle.training_stages`: ``train.json``, whose
  stage 1 predicts the two knee centres, then ``train.json`` + ``stage2.json``, whose stage 2 regresses the 8
  landmarks of each knee on ROIs from the original image, initialised from stage 1's ``models/model.pt``), evaluated
  end to end (``run evaluating``: the bundle's evaluation overlays, each model from its checkpoint's record), also
  with one refinement pass (ROIs re-centred on the first prediction);
* **stage 1 alone**: the two-stage arm's stage-1 model scored by its own validator: the error of the ROI centres it
  predicts (with one ROI per landmark, as the hand layout, these are its landmarks: what stage 2 must improve on);
* **two stage, stage 2 from scratch** (``--scratch True``): the same stage 1 (the two-stage arm's), stage 2 trained
  again without KNEEL's stage-1 -> stage-2 weight transfer (``--init_from_stage1 false``), evaluated the same way.

Budgets: ``--epochs`` per training run, or ``--minutes`` per training run (the bundle's ``max_minutes``); the single
stage gets ``--single_minutes`` (default: the two stages' total, an equal budget).

Models are selected on the validation split; the figures are on ``--section`` (default: the held-out test split when
the datalist has one, as the bundle's evaluation chooses; a datalist without one, such as the 91/21 hand split,
reports on its validation split, and ``settings.section`` says so), in mm of the original images: MRE and recall (%)
within 1, 1.5, 2, 2.5, 3, 3.5, 4, 5 mm, overall and per knee. Sizes default to a small CPU run (64x64 network inputs
for both stages); pass larger values on a GPU.

Usage::

    python scripts/kneel_comparison.py --out_dir runs/kneel_comparison --num_threads 1 [--epochs 40] [--size 64]
    python scripts/kneel_comparison.py --out_dir runs/kneel_hand --datalist data/hand_xray/datalist.json \
        --variants hand,cpu --minutes 7.5 --scratch True

Timings in the output are CPU seconds of the process (``time.process_time``, all threads) and the total wall time.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fire
import torch

from monai_ext.benchmark import machine_info
from monai_ext.bundle import config_files, datalist_header, training_stages
from monai_ext.data import evaluation_section, load_datalist
from monai_ext.data.synthetic import PHANTOMS, generate_dataset
from monai_ext.handlers.groups import LandmarkGroupSummaryWriter
from monai_ext.metrics.distances import summarize_errors
from monai_ext.transforms.roi import LandmarkGroups
from monai_ext.utils import atomic_write

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "kneel"
CONFIGS = BUNDLE / "configs"
RADII = [1, 1.5, 2, 2.5, 3, 3.5, 4, 5]

KNEE_GROUPS = {"right_knee": list(range(8)), "left_knee": list(range(8, 16))}


def _workflow(files: list[str], run_id: str, **overrides: Any):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=files,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train" if run_id.startswith("training") else "infer",
        run_id=run_id,
        **overrides,
    )
    wf.initialize()
    return wf


def _train(
    root: Path, stages: list[str | None], variants: list[str], first: dict[str, Any], later: dict[str, Any],
    **overrides: Any,
) -> None:
    """The training runs ``stages`` of the bundle (``None``: ``train.json``; ``"stage2.json"``: stage 2) with its
    ``variants`` and bundle root ``root`` (models in ``root/models``, stage 2's in ``root/models/stage2``),
    ``overrides`` and, for the first run, ``first`` (e.g. its input size: stage 2 sets its own, the ROI size), for the
    later ones ``later``."""
    for stage in stages:
        wf = _workflow(config_files(BUNDLE, "train", variants, stage=stage), "training", bundle_root=str(root),
                       output_dir=str(root / "eval"), **overrides, **(later if stage else first))
        wf.run()
        wf.finalize()


def _validate(root: Path, variants: list[str], section: str, overrides: dict[str, Any]) -> torch.Tensor:
    """Errors ``(N, G)`` (mm) of the stage-1 model in ``root/models/model.pt`` on ``section``, by its own validator:
    of the ROI centres it predicts (of the landmarks with one group per landmark)."""
    wf = _workflow(
        config_files(BUNDLE, "train", variants), "testing", bundle_root=str(root), output_dir=str(root / "eval"),
        **overrides,
        **{
            "validate#datalist": f"$monai_ext.data.load_datalist(@datalist, '{section}', @header['landmarks'])",
            "validate#handlers": [{"_target_": "CheckpointLoader", "load_path": "@stage1_ckpt", "load_dict": {"model": "@network"}}],
            "radii": RADII,
            "testing": ["$@validate#evaluator.run()"],
        },
    )
    wf.run()
    errors = wf.parser.get_parsed_content("validate#evaluator").state.metric_details["val_mre"]
    wf.finalize()
    return errors


def _row(summary: dict) -> dict:
    return {"mre": summary["mre"], "median": summary["median"], **{f"recall@{r:g}": summary["sdr"][f"{r:g}"] for r in RADII}}


def _format(results: dict[str, dict[str, dict]]) -> str:
    head = f"{'method':<34}{'part':<12}{'MRE':>8}{'median':>8}" + "".join(f"{'<=' + format(r, 'g'):>7}" for r in RADII)
    lines = [head, "-" * len(head)]
    for method, parts in results.items():
        for part, row in parts.items():
            cells = "".join(f"{row[f'recall@{r:g}']:>7.1f}" for r in RADII)
            lines.append(f"{method:<34}{part:<12}{row['mre']:>8.2f}{row['median']:>8.2f}{cells}")
    return "\n".join(lines)


def _groups(groups: Any, names: list[str]) -> tuple[list[list[int]], list[str], list[bool]]:
    """``groups``: ``"knees"`` or a JSON/dict ``{name: [indices]}``; knees flip the left knee."""
    if groups in ("knees", None):
        table, flip = KNEE_GROUPS, [False, True]
    else:
        table, flip = (json.loads(groups) if isinstance(groups, str) else dict(groups)), None
    idx = [[int(i) for i in g] for g in table.values()]
    if any(not 0 <= i < len(names) for g in idx for i in g):
        raise ValueError(f"--groups: indices must be in [0, {len(names)}), got {table}")
    return idx, list(table), flip or [False] * len(idx)


def _rows(errors: torch.Tensor, names: list[str], report: LandmarkGroups | None) -> dict[str, dict]:
    """``{"all": row, group: row, ...}`` of ``(N, K)`` landmark errors (per group only with ``report``)."""
    rows = {"all": _row(summarize_errors(errors.cpu().numpy(), RADII, landmark_names=names))}
    if report is not None:
        per_group = LandmarkGroupSummaryWriter(Path("."), "val_mre", report, names, RADII).summaries(errors)
        rows.update({g: _row(s) for g, s in per_group.items()})
    return rows


#: sizes of the default run on synthetic knees (without ``--variants``); with variants the configs' values apply
SYNTHETIC_DEFAULTS = {"size": 64, "stage1_spacing": 7.0, "roi_size_mm": 96.0, "base_width": 12, "depth": 3,
                      "batch_size": 8, "val_interval": 5}


def compare(
    out_dir: str = "runs/kneel_comparison",
    datalist: str | None = None,
    variants: Any = None,
    groups: Any = None,
    section: str | None = None,
    scratch: bool = False,
    n_train: int = 64,
    n_val: int = 8,
    n_test: int = 16,
    epochs: int = 40,
    minutes: float | None = None,
    single_minutes: float | None = None,
    size: int | None = None,
    stage1_spacing: float | None = None,
    roi_size_mm: float | None = None,
    base_width: int | None = None,
    depth: int | None = None,
    batch_size: int | None = None,
    val_interval: int | None = None,
    seed: int = 42,
    num_threads: int | None = None,
    num_workers: int = 0,
) -> dict:
    """Train the arms and print/write (``results.json``) their errors on ``section``.

    Args:
        out_dir: where data, checkpoints and outputs go.
        datalist: a datalist JSON (default: synthetic knees generated in ``out_dir/data``).
        variants: the bundle's config variants merged after ``train.json`` (e.g. ``"hand,cpu"``); their groups,
            sizes and budgets apply unless given here. Without variants the synthetic defaults
            (:data:`SYNTHETIC_DEFAULTS`) apply.
        groups: ROI landmark groups: ``"knees"`` (default without variants, synthetic) or a JSON object
            ``{"name": [indices], ...}`` of equal-size groups; also the per-group rows of the report.
        section: datalist section the figures are reported on (models are selected on ``validation``); default:
            ``test`` when the datalist has one, else ``validation`` (:func:`monai_ext.data.evaluation_section`).
        scratch: also train stage 2 from scratch (no stage-1 -> stage-2 transfer) on the same stage 1.
        n_train, n_val, n_test: synthetic knee images per split (ignored with ``datalist``).
        epochs: epochs per trained model (ignored with ``minutes``).
        minutes: time budget per training run (the bundle's ``max_minutes``; then as many epochs as fit).
        single_minutes: the single stage's budget (default: ``minutes`` times the number of training runs).
        size: network input size of stage 1 and of the ROIs (pixels; a multiple of ``4 * 2**depth``).
        stage1_spacing: mm per pixel of the whole-image input (``size * stage1_spacing`` mm must cover the image).
        roi_size_mm: physical ROI size; the ROI spacing is ``roi_size_mm / size``.
        base_width, depth: hourglass width and depth (both stages).
        batch_size: images per training batch (the bundle's ``images_per_batch``).
        val_interval, seed: training settings.
        num_threads: torch CPU threads (default: torch's); 1 avoids OpenMP spin-waiting on a busy machine.
        num_workers: DataLoader workers of every training and evaluation; 0 (default) keeps the run in one process.
    """
    cli = _cli_args(dict(locals()))
    if num_threads:
        torch.set_num_threads(int(num_threads))
    logging.basicConfig(level=logging.WARNING)
    variants = [v if v.endswith(".json") else f"{v}.json" for v in _names(variants)]
    out = Path(out_dir).resolve()
    if datalist is None:
        data_dir = out / "data"
        if not (data_dir / "datalist.json").is_file():
            generate_dataset("knees", data_dir, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
        datalist_path = data_dir / "datalist.json"
        names = list(PHANTOMS["knees"].landmarks)
    else:
        datalist_path = Path(datalist).resolve()
        names = list(datalist_header(str(datalist_path))["landmarks"])
    section = section or evaluation_section(datalist_path)
    if not load_datalist(datalist_path, section, validate=False):
        raise ValueError(f"{datalist_path}: section {section!r} has no images to report on")
    given = {"size": size, "stage1_spacing": stage1_spacing, "roi_size_mm": roi_size_mm, "base_width": base_width,
             "depth": depth, "batch_size": batch_size, "val_interval": val_interval}
    value = {k: v if v is not None else (None if variants else SYNTHETIC_DEFAULTS[k]) for k, v in given.items()}
    # training settings of every training run; stage 2's input is its ROI grid (roi_size_mm / roi_spacing = size)
    common: dict[str, Any] = {"datalist": str(datalist_path), "num_workers": int(num_workers), "seed": int(seed)}
    common.update({"max_epochs": 100000, "max_minutes": float(minutes)} if minutes else {"max_epochs": int(epochs)})
    for key, name in (("images_per_batch", "batch_size"), ("val_interval", "val_interval"),
                      ("stage1_spacing", "stage1_spacing"), ("base_width", "base_width"), ("depth", "depth")):
        if value[name] is not None:
            common[key] = value[name]
    if value["roi_size_mm"] is not None:
        if value["size"] is None:
            raise ValueError("--roi_size_mm needs --size (the ROI spacing is roi_size_mm / size)")
        common["roi_size_mm"] = [float(value["roi_size_mm"])] * 2
        common["roi_spacing"] = float(value["roi_size_mm"]) / int(value["size"])
    report = None
    if groups is not None or not variants:
        roi_groups, group_names, roi_flip = _groups(groups, names)
        common.update({"roi_groups": roi_groups, "roi_group_names": group_names, "roi_flip": roi_flip})
        report = LandmarkGroups(roi_groups, names=group_names, slots="landmarks")
    stage1 = {"spatial_size": [int(value["size"])] * 2} if value["size"] is not None else {}
    stages = training_stages(BUNDLE)
    results: dict[str, dict[str, dict]] = {}
    timings: dict[str, float] = {}
    wall0, cpu0 = time.time(), time.process_time()

    # single stage: every landmark is its own "group", so stage 1 regresses all of them on the whole image
    single_root = out / "single"
    single = {**common, "roi_groups": [[k] for k in range(len(names))], "roi_group_names": names,
              "roi_flip": [False] * len(names)}
    if minutes:
        single["max_minutes"] = float(single_minutes or minutes * len(stages))
    t0, w0 = time.process_time(), time.time()
    _train(single_root, stages[:1], variants, stage1, {}, **single)
    timings["single_stage_training_cpu_s"] = time.process_time() - t0
    timings["single_stage_training_wall_s"] = time.time() - w0
    # its own validator (errors of every landmark: one per group) on the section, with its best checkpoint
    results["single stage (whole image)"] = _rows(_validate(single_root, variants, section, {**single, **stage1}), names, report)

    # two stages: the bundle's training runs as configured (stage 2 initialised from stage 1), evaluated end to end
    two_root = out / "two_stage"
    t0, w0 = time.process_time(), time.time()
    _train(two_root, stages, variants, stage1, {}, **common)
    timings["two_stage_training_cpu_s"] = time.process_time() - t0
    timings["two_stage_training_wall_s"] = time.time() - w0
    # its stage 1 alone: the ROI centres stage 2 starts from (with one ROI per landmark, its landmarks)
    centres = _validate(two_root, variants, section, {**common, **stage1})
    centre_names = names if centres.shape[-1] == len(names) else [f"centre_{g}" for g in range(centres.shape[-1])]
    results["stage 1 alone (its ROI centres)"] = _rows(centres, centre_names, report if centre_names is names else None)
    # arm: (label, bundle root, run-level evaluation overrides, refinement passes)
    arms = [("two stage", two_root, {}, (0, 1))]
    if scratch:
        # the same stage 1 (the two-stage arm's models/model.pt); stage 2 trained again from random initialisation
        scratch_root = out / "two_stage_scratch"
        stage1_ckpt = str(two_root / "models" / "model.pt")
        t0, w0 = time.process_time(), time.time()
        _train(scratch_root, stages[1:], variants, stage1, {"init_from_stage1": False, "stage1_ckpt": stage1_ckpt}, **common)
        timings["stage2_scratch_training_cpu_s"] = time.process_time() - t0
        timings["stage2_scratch_training_wall_s"] = time.time() - w0
        arms.append(("two stage, stage 2 from scratch", scratch_root, {"ckpt_path": stage1_ckpt}, (0, 1)))
    for label0, root, over, refines in arms:
        for refine in refines:
            label = label0 + (f" + {refine} refinement" if refine else " (no refinement)")
            eval_dir = root / f"{section}_refine{refine}"
            t0 = time.time()
            # the models' records set the networks, groups, grids and sizes: only run-level ids here
            wf = _workflow(config_files(BUNDLE, "evaluate"), "evaluating", bundle_root=str(root),
                           output_dir=str(root / "eval"), datalist=str(datalist_path), num_workers=int(num_workers),
                           eval_section=section, eval_dir=str(eval_dir), refine_steps=refine, radii=RADII, **over)
            wf.run()
            errors = wf.parser.get_parsed_content("evaluator").state.metric_details["val_mre"]
            wf.finalize()
            timings[f"{label} evaluation_wall_s"] = time.time() - t0
            results[label] = _rows(errors, names, report)

    timings["total_cpu_s"] = time.process_time() - cpu0
    timings["total_wall_s"] = time.time() - wall0
    record = {
        "command": "python scripts/kneel_comparison.py " + " ".join(f"--{k} {v}" for k, v in cli.items()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"datalist": str(datalist_path), "section": section, "variants": variants, "n_train": n_train,
                     "n_val": n_val, "n_test": n_test, **common, **stage1, "torch_threads": torch.get_num_threads()},
        "timings": timings,
        "results": results,
    }
    with atomic_write(out / "results.json") as f:
        json.dump(record, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    print(_format(results))
    print(json.dumps(timings))
    return record


def _names(value: Any) -> list[str]:
    """``"a,b"`` / ``["a", "b"]`` / ``None`` -> a list of names."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _cli_args(args: dict[str, Any]) -> dict[str, Any]:
    """The arguments of :func:`compare` that differ from their defaults (for the record's command line)."""
    import inspect

    params = inspect.signature(compare).parameters
    shown = {k: args[k] for k, p in params.items() if k in args and args[k] != p.default}
    return {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in shown.items()}


if __name__ == "__main__":
    fire.Fire(compare, serialize=lambda result: None)
