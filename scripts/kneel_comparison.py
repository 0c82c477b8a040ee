"""Two-stage KNEEL vs a single model on the whole image, with the bundle's own configs: on synthetic knees
(default) or on any datalist with a list of landmark groups (e.g. ``../shared/data/hand_xray``).

All arms use ``bundles/kneel/configs/train.json`` (same network, wing loss, mixup, cutout, optimiser and schedule,
same stage-1 input grid):

* **single stage**: stage 1 with one group per landmark (``roi_groups = [[0], [1], ..., [15]]``), i.e. the low-cost
  model regresses all 16 landmarks on the whole image (``run training_stage1``);
* **two stage**: the bundle as configured (``run training``: stage 1 predicts the two knee centres, stage 2 the 8
  landmarks of each knee on ROIs from the original image, initialised from stage 1), evaluated end to end
  (``run evaluating``), also with one refinement pass (ROIs re-centred on the first prediction);
* **two stage, stage 2 from scratch** (``--scratch True``): the same stage 1, stage 2 trained without KNEEL's
  stage-1 -> stage-2 weight transfer (``stage2#init_from_stage1 = false``), evaluated the same way.

Models are selected on the validation split; the figures are on ``--section`` (default the held-out test split;
a datalist without one, such as the 91/21 hand split, reports on its validation split and says so), in mm of the original
images: MRE and recall (%) within 1, 1.5, 2, 2.5, 3, 3.5, 4, 5 mm, overall and per knee. Sizes default to a small
CPU run (64x64 network inputs for both stages); pass larger values on a GPU.

Usage::

    python scripts/kneel_synthetic_comparison.py --out_dir runs/kneel_comparison --num_threads 1 [--epochs 40] [--size 64]

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

from monai_ext.bundle import datalist_header
from monai_ext.data.synthetic import PHANTOMS, generate_dataset
from monai_ext.engines.kneel import LandmarkGroupSummaryWriter
from monai_ext.metrics.distances import summarize_errors
from monai_ext.transforms.roi import LandmarkGroups
from monai_ext.utils import atomic_write

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "kneel" / "configs"
RADII = [1, 1.5, 2, 2.5, 3, 3.5, 4, 5]

#: Landmark groups of the 37-landmark hand set, as the bundle's ``configs/hand.json`` defines them (the four fingers
#: and the thumb as MCP, PIP, DIP, tip, and the carpus in equal-size groups; see that file).
_HAND = json.loads((CONFIGS / "hand.json").read_text())
HAND_GROUPS = dict(zip(_HAND["roi_group_names"], _HAND["roi_groups"]))
KNEE_GROUPS = {"right_knee": list(range(8)), "left_knee": list(range(8, 16))}


def _workflow(configs: list[str], run_id: str, **overrides: Any):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train" if run_id.startswith("training") else "infer",
        run_id=run_id,
        bundle_root=str(CONFIGS.parent),
        **overrides,
    )
    wf.initialize()
    return wf


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
    section: str = "test",
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
        section: datalist section the figures are reported on (models are selected on ``validation``).
        scratch: also train stage 2 from scratch (no stage-1 -> stage-2 transfer) on the same stage 1.
        n_train, n_val, n_test: synthetic knee images per split (ignored with ``datalist``).
        epochs: epochs per trained model (the LR drops at 50 % and 80 % of them, as 50/80 of 100).
        size: network input size (pixels, both stages; a multiple of ``4 * 2**depth``).
        stage1_spacing: mm per pixel of the whole-image input (``size * stage1_spacing`` mm must cover the image).
        roi_size_mm: physical ROI size; the ROI spacing is ``roi_size_mm / size``.
        base_width, depth: hourglass width and depth (both stages).
        batch_size, val_interval, seed: training settings.
        num_threads: torch CPU threads (default: torch's); 1 avoids OpenMP spin-waiting on a busy machine.
        num_workers: DataLoader workers of every training; 0 (default) keeps the run in one process, a GPU needs
            several (stage 2 resamples 10 ROIs per image on the CPU: about 0.25 s per image on one 2-core worker).
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
    roi_groups, group_names, roi_flip = _groups(groups, names)
    report_groups = LandmarkGroups(roi_groups, names=group_names)
    common = {
        "datalist": str(datalist_path),
        "max_epochs": int(epochs),
        "lr_milestones": [max(1, int(0.5 * epochs)), max(2, int(0.8 * epochs))],
        "batch_size": int(batch_size),
        "num_workers": int(num_workers),
        "val_interval": int(val_interval),
        "seed": int(seed),
        "stage1_spacing": float(stage1_spacing),
        "stage1_size": [int(size), int(size)],
        "roi_size_mm": [float(roi_size_mm), float(roi_size_mm)],
        "roi_spacing": float(roi_size_mm) / int(size),
        "base_width": int(base_width),
        "depth": int(depth),
        "roi_groups": roi_groups,
        "roi_group_names": group_names,
        "roi_flip": roi_flip,
    }
    results: dict[str, dict[str, dict]] = {}
    timings: dict[str, float] = {}
    wall0, cpu0 = time.time(), time.process_time()

    # single stage: every landmark is its own "group", so stage 1 regresses all of them on the whole image
    single = {**common, "ckpt_dir": str(out / "single" / "models"), "output_dir": str(out / "single" / "eval"),
              "roi_groups": [[k] for k in range(len(names))], "roi_group_names": names, "roi_flip": [False] * len(names)}
    t0, w0 = time.process_time(), time.time()
    wf = _workflow(["train.json"], "training_stage1", **single)
    wf.run()
    wf.finalize()
    timings["single_stage_training_cpu_s"] = time.process_time() - t0
    timings["single_stage_training_wall_s"] = time.time() - w0
    wf = _workflow(
        ["train.json"], "testing", **single,
        **{
            "validate#datalist": f"$monai_ext.data.load_datalist(@datalist, '{section}', @landmark_names)",
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

    # two stages: the bundle as configured (stage 2 initialised from stage 1), evaluated end to end
    two = {**common, "ckpt_dir": str(out / "two_stage" / "models"), "output_dir": str(out / "two_stage" / "eval")}
    t0, w0 = time.process_time(), time.time()
    wf = _workflow(["train.json"], "training", **two)
    wf.run()
    wf.finalize()
    timings["two_stage_training_cpu_s"] = time.process_time() - t0
    timings["two_stage_training_wall_s"] = time.time() - w0
    arms = [("two stage", two, (0, 1))]
    if scratch:
        # the same stage 1; stage 2 trained from random initialisation
        from_scratch = {**common, "ckpt_dir": str(out / "two_stage_scratch" / "models"),
                        "output_dir": str(out / "two_stage_scratch" / "eval"),
                        "stage1_ckpt": str(out / "two_stage" / "models" / "model.pt"), "stage2#init_from_stage1": False}
        t0, w0 = time.process_time(), time.time()
        wf = _workflow(["train.json"], "training_stage2", **from_scratch)
        wf.run()
        wf.finalize()
        timings["stage2_scratch_training_cpu_s"] = time.process_time() - t0
        timings["stage2_scratch_training_wall_s"] = time.time() - w0
        arms.append(("two stage, stage 2 from scratch", from_scratch, (0,)))
    for label0, arm, refines in arms:
        for refine in refines:
            label = label0 + (" + 1 refinement" if refine else "")
            eval_dir = Path(arm["output_dir"]).parent / f"{section}_refine{refine}"
            t0 = time.time()
            wf = _workflow(["train.json", "evaluate.json"], "evaluating", **arm, eval_section=section,
                           refine_steps=refine, eval_dir=str(eval_dir))
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
                     "n_test": n_test, **common, "torch_threads": torch.get_num_threads()},
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
