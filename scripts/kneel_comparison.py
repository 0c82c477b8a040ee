"""Two-stage KNEEL vs a single model on the whole image, with the bundle's own configs: on synthetic knees
(default) or on any datalist with a list of landmark groups (e.g. ``../shared/data/hand_xray``).

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
* **two stage, stage 2 from scratch** (``--scratch True``): the same stage 1 (the two-stage arm's), stage 2 trained
  again without KNEEL's stage-1 -> stage-2 weight transfer (``--init_from_stage1 false``), evaluated the same way.

Models are selected on the validation split; the figures are on ``--section`` (default: the held-out test split when
the datalist has one, as the bundle's evaluation chooses; a datalist without one, such as the 91/21 hand split,
reports on its validation split, and ``settings.section`` says so), in mm of the original images: MRE and recall (%)
within 1, 1.5, 2, 2.5, 3, 3.5, 4, 5 mm, overall and per knee. Sizes default to a small CPU run (64x64 network inputs
for both stages); pass larger values on a GPU.

Usage::

    python scripts/kneel_comparison.py --out_dir runs/kneel_comparison --num_threads 1 [--epochs 40] [--size 64]

Timings in the output are CPU seconds of the process (``time.process_time``, all threads) and the total wall time.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import fire
import torch

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

#: Landmark groups of the 37-landmark hand set, as the bundle's ``configs/hand.json`` defines them (the four fingers
#: and the thumb as MCP, PIP, DIP, tip, and the carpus in equal-size groups; see that file).
_HAND = json.loads((CONFIGS / "hand.json").read_text())
HAND_GROUPS = dict(zip(_HAND["roi_group_names"], _HAND["roi_groups"]))
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
    root: Path, stages: list[str | None], first: dict[str, Any], later: dict[str, Any], **overrides: Any
) -> None:
    """The training runs ``stages`` of the bundle (``None``: ``train.json``; ``"stage2.json"``: stage 2) with bundle
    root ``root`` (models in ``root/models``, stage 2's in ``root/models/stage2``), ``overrides`` and, for the first
    run, ``first`` (its input size: stage 2 sets its own, the ROI size), for the later ones ``later``."""
    for stage in stages:
        wf = _workflow(config_files(BUNDLE, "train", stage=stage), "training", bundle_root=str(root),
                       output_dir=str(root / "eval"), **overrides, **(later if stage else first))
        wf.run()
        wf.finalize()


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
    """``groups``: ``"knees"``, ``"hand"`` or a JSON/dict ``{name: [indices]}``; knees flip the left knee."""
    if groups in ("knees", None):
        table, flip = KNEE_GROUPS, [False, True]
    elif groups == "hand":
        table, flip = HAND_GROUPS, None
    else:
        table, flip = (json.loads(groups) if isinstance(groups, str) else dict(groups)), None
    idx = [[int(i) for i in g] for g in table.values()]
    if any(not 0 <= i < len(names) for g in idx for i in g):
        raise ValueError(f"--groups: indices must be in [0, {len(names)}), got {table}")
    return idx, list(table), flip or [False] * len(idx)


def compare(
    out_dir: str = "runs/kneel_comparison",
    datalist: str | None = None,
    groups: Any = None,
    section: str | None = None,
    scratch: bool = False,
    n_train: int = 64,
    n_val: int = 8,
    n_test: int = 16,
    epochs: int = 40,
    size: int = 64,
    stage1_spacing: float = 7.0,
    roi_size_mm: float = 96.0,
    base_width: int = 12,
    depth: int = 3,
    batch_size: int = 8,
    val_interval: int = 5,
    seed: int = 42,
    num_threads: int | None = None,
    num_workers: int = 0,
) -> dict:
    """Train the arms briefly and print/write (``results.json``) their errors on ``section``.

    Args:
        out_dir: where data, checkpoints and outputs go.
        datalist: a datalist JSON (default: synthetic knees generated in ``out_dir/data``).
        groups: ROI landmark groups: ``"knees"`` (default, synthetic), ``"hand"`` (:data:`HAND_GROUPS`) or a JSON
            object ``{"name": [indices], ...}`` of equal-size groups.
        section: datalist section the figures are reported on (models are selected on ``validation``); default:
            ``test`` when the datalist has one, else ``validation`` (:func:`monai_ext.data.evaluation_section`).
        scratch: also train stage 2 from scratch (no stage-1 -> stage-2 transfer) on the same stage 1.
        n_train, n_val, n_test: synthetic knee images per split (ignored with ``datalist``).
        epochs: epochs per trained model (the LR drops at 50 % and 80 % of them, as 50/80 of 100).
        size: network input size (pixels, both stages; a multiple of ``4 * 2**depth``).
        stage1_spacing: mm per pixel of the whole-image input (``size * stage1_spacing`` mm must cover the image).
        roi_size_mm: physical ROI size; the ROI spacing is ``roi_size_mm / size``.
        base_width, depth: hourglass width and depth (both stages).
        batch_size: images per training batch (the bundle's ``images_per_batch``: stage 2 takes the ROIs of
            ``batch_size // groups`` images).
        val_interval, seed: training settings.
        num_threads: torch CPU threads (default: torch's); 1 avoids OpenMP spin-waiting on a busy machine.
        num_workers: DataLoader workers of every training and evaluation; 0 (default) keeps the run in one process,
            a GPU needs several (stage 2 resamples 10 ROIs per image on the CPU: about 0.25 s per image on one
            2-core worker).
    """
    if num_threads:
        torch.set_num_threads(int(num_threads))
    logging.basicConfig(level=logging.WARNING)
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
    roi_groups, group_names, roi_flip = _groups(groups, names)
    report_groups = LandmarkGroups(roi_groups, names=group_names)
    # training settings of every training run; stage 2's input is its ROI grid (roi_size_mm / roi_spacing = size)
    common = {
        "datalist": str(datalist_path),
        "max_epochs": int(epochs),
        "images_per_batch": int(batch_size),
        "num_workers": int(num_workers),
        "val_interval": int(val_interval),
        "seed": int(seed),
        "stage1_spacing": float(stage1_spacing),
        "roi_size_mm": [float(roi_size_mm), float(roi_size_mm)],
        "roi_spacing": float(roi_size_mm) / int(size),
        "base_width": int(base_width),
        "depth": int(depth),
        "roi_groups": roi_groups,
        "roi_group_names": group_names,
        "roi_flip": roi_flip,
    }
    stage1 = {"spatial_size": [int(size), int(size)]}
    stages = training_stages(BUNDLE)
    results: dict[str, dict[str, dict]] = {}
    timings: dict[str, float] = {}
    wall0, cpu0 = time.time(), time.process_time()

    # single stage: every landmark is its own "group", so stage 1 regresses all of them on the whole image
    single_root = out / "single"
    single = {**common, "roi_groups": [[k] for k in range(len(names))], "roi_group_names": names,
              "roi_flip": [False] * len(names)}
    t0, w0 = time.process_time(), time.time()
    _train(single_root, stages[:1], stage1, {}, **single)
    timings["single_stage_training_cpu_s"] = time.process_time() - t0
    timings["single_stage_training_wall_s"] = time.time() - w0
    # its own validator (errors of every landmark: one per group) on the section, with its best checkpoint
    wf = _workflow(
        config_files(BUNDLE, "train"), "testing", bundle_root=str(single_root), output_dir=str(single_root / "eval"),
        **single, **stage1,
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
    per_group = LandmarkGroupSummaryWriter(out, "val_mre", report_groups, names, RADII).summaries(errors)
    results["single stage (whole image)"] = {
        "all": _row(summarize_errors(errors.cpu().numpy(), RADII, landmark_names=names)),
        **{g: _row(s) for g, s in per_group.items()},
    }

    # two stages: the bundle's training runs as configured (stage 2 initialised from stage 1), evaluated end to end
    two_root = out / "two_stage"
    t0, w0 = time.process_time(), time.time()
    _train(two_root, stages, stage1, {}, **common)
    timings["two_stage_training_cpu_s"] = time.process_time() - t0
    timings["two_stage_training_wall_s"] = time.time() - w0
    # arm: (label, bundle root, run-level evaluation overrides, refinement passes)
    arms = [("two stage", two_root, {}, (0, 1))]
    if scratch:
        # the same stage 1 (the two-stage arm's models/model.pt); stage 2 trained again from random initialisation
        scratch_root = out / "two_stage_scratch"
        t0, w0 = time.process_time(), time.time()
        _train(scratch_root, stages[1:], stage1, {"init_from_stage1": False}, **common)
        timings["stage2_scratch_training_cpu_s"] = time.process_time() - t0
        timings["stage2_scratch_training_wall_s"] = time.time() - w0
        arms.append(("two stage, stage 2 from scratch", scratch_root,
                     {"ckpt_path": str(two_root / "models" / "model.pt")}, (0,)))
    for label0, root, over, refines in arms:
        for refine in refines:
            label = label0 + (" + 1 refinement" if refine else "")
            eval_dir = root / f"{section}_refine{refine}"
            t0 = time.time()
            # the models' records set the networks, groups, grids and sizes: only run-level ids here
            wf = _workflow(config_files(BUNDLE, "evaluate"), "evaluating", bundle_root=str(root),
                           output_dir=str(root / "eval"), datalist=str(datalist_path), num_workers=int(num_workers),
                           eval_section=section, eval_dir=str(eval_dir), refine_steps=refine, radii=RADII, **over)
            wf.run()
            wf.finalize()
            timings[f"{label} evaluation_wall_s"] = time.time() - t0
            summary = json.loads((eval_dir / "summary.json").read_text())
            groups_summary = json.loads((eval_dir / "groups.json").read_text())
            results[label] = {"all": _row(summary), **{g: _row(s) for g, s in groups_summary.items()}}

    timings["total_cpu_s"] = time.process_time() - cpu0
    timings["total_wall_s"] = time.time() - wall0
    report = {
        "settings": {"datalist": str(datalist_path), "section": section, "n_train": n_train, "n_val": n_val,
                     "n_test": n_test, **common, **stage1, "torch_threads": torch.get_num_threads()},
        "timings": timings,
        "results": results,
    }
    with atomic_write(out / "results.json") as f:
        json.dump(report, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    print(_format(results))
    print(json.dumps(timings))
    return report


if __name__ == "__main__":
    fire.Fire(compare, serialize=lambda result: None)
