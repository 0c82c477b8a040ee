"""Occlusion study of the adv_posenet bundle: does the adversarial model estimate occluded landmarks better than the
supervised one?

Both checkpoints (``models/model.pt`` of a bundle training with ``--adversarial True`` and one with ``--adversarial
False``) are evaluated by the bundle's own evaluation (``run evaluating`` of
``monai_ext.bundle.config_files("bundles/adv_posenet", "evaluate", configs, extra=["evaluate_occlusion.json"])``:
``train.json``, the ``--configs`` variants, the trained-model overlays, then ``evaluate_occlusion.json``; in-process
``ConfigWorkflow``) on the same images of ``--section`` under each condition:

* ``none``: the images as they are;
* ``blob``: a bright prosthesis-like ellipse over one random visible landmark per image;
* ``crop``: a band of the field of view at the top or the bottom set to the background.

Each image's occlusion depends only on ``--seed`` and its file name, so both models see exactly the same occluded
images. Ground truth is unchanged: an occluded landmark still counts and is scored. Outputs in ``--output_dir``:
``<model>/<condition>/`` (the evaluation outputs of the bundle: predictions, summary.json, per_landmark.csv,
overlays/, occluded/ and visible/ summaries, inputs/ with the occluded network inputs) and the side-by-side table
``occlusion_study.md`` / ``occlusion_study.json``: PCK@10, PCK@20 and MRE over all landmarks and over the occluded
ones (errors in mm, or in pixels when the datalist has no spacing).

Usage::

    python scripts/occlusion_study.py --datalist bundles/adv_posenet/data/synthetic_limbs/datalist.json \\
        --adversarial_ckpt runs/adv/models/model.pt --supervised_ckpt runs/sup/models/model.pt \\
        --output_dir runs/occlusion_study [--section test] [--seed 0] [--occlusion_crop_fraction 0.3]

Each checkpoint's record sets its network and what it depends on (input size, landmarks, decoding): nothing given
at training is repeated here, and further overrides are run-level ids only (an id the record sets is an error).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire

from monai_ext.benchmark import config_names, override_problems, run_level_overrides
from monai_ext.bundle import config_files
from monai_ext.data import evaluation_section
from monai_ext.utils import atomic_write

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "adv_posenet"
#: the bundle's overlay after its evaluation composition
OCCLUSION = BUNDLE / "configs" / "evaluate_occlusion.json"
CONDITIONS = ("none", "blob", "crop")
#: engine metric -> (column, subset)
METRICS = {
    "val_pck10": ("PCK@10", "all"),
    "val_pck20": ("PCK@20", "all"),
    "val_mre": ("MRE", "all"),
    "val_pck10_occluded": ("PCK@10", "occluded"),
    "val_pck20_occluded": ("PCK@20", "occluded"),
    "val_mre_occluded": ("MRE", "occluded"),
}


def evaluation_files(configs: Sequence[str] = ()) -> list[str]:
    """The study's composition: the bundle's evaluation with the ``configs`` variants (names in its configs/ or
    paths), then ``evaluate_occlusion.json``."""
    variants = [str(Path(c).resolve()) if Path(c).is_file() else c for c in configs]
    return config_files(BUNDLE, "evaluate", variants, extra=[OCCLUSION.name])


def _check_overrides(files: Sequence[str], n_variants: int, override: dict[str, Any]) -> None:
    """Only run-level ids: the checkpoints' records set the models' values (a contradicting id would fail in every
    evaluation, after the first ones ran)."""
    _, rejected = run_level_overrides(override, files[1 + n_variants:])
    rejected.update(override_problems({k: v for k, v in override.items() if k not in rejected}, files))
    if rejected:
        raise ValueError("overrides of a trained model's evaluation are run-level ids only:\n"
                         + "\n".join(f"  - {k}: {why}" for k, why in rejected.items()))


def _evaluate(checkpoint: Path, condition: str, eval_dir: Path, files: Sequence[str], **override: Any) -> dict:
    """One bundle evaluation; returns ``{"metrics": {engine metric: value}, "n_points", "n_occluded", "unit"}``."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=list(files),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"),
        workflow_type="infer",
        run_id="evaluating",
        bundle_root=str(BUNDLE),
        **{**override, "ckpt_path": str(checkpoint), "occlusion": condition, "output_dir": str(eval_dir),
           "eval_dir": str(eval_dir)},
    )
    wf.initialize()
    try:
        wf.run()
        evaluator = wf.parser.get_parsed_content("evaluator")
        metrics = {k: float(evaluator.state.metrics[k]) for k in METRICS}
        unit = str(wf.parser.get_parsed_content("header")["unit"])
    finally:
        wf.finalize()
    summary = json.loads((eval_dir / "summary.json").read_text())
    occluded = json.loads((eval_dir / "occluded" / "summary.json").read_text())
    return {
        "metrics": metrics, "n_points": int(summary["n_points"]), "n_occluded": int(occluded["n_points"]), "unit": unit
    }


def _column(metric: str, unit: str) -> str:
    """``"PCK@10 mm"`` (radius in ``unit``), ``"MRE (mm)"``."""
    return f"MRE ({unit})" if metric == "MRE" else f"{metric} {unit}"


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(results: dict[str, dict[str, dict]], unit: str) -> str:
    """Markdown: one table for all landmarks and one for the occluded ones; a row per condition, the models side by
    side for each metric."""
    models = list(results)
    conditions = list(next(iter(results.values())))
    lines: list[str] = []
    for subset, title in (("all", "All landmarks"), ("occluded", "Occluded landmarks")):
        keys = [k for k, (_, s) in METRICS.items() if s == subset]
        head = ["condition"] + [f"{_column(METRICS[k][0], unit)} {m}" for k in keys for m in models]
        head.append("points" if subset == "all" else "occluded points")
        lines += [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in conditions:
            cells = [c]
            for k in keys:
                for m in models:
                    cells.append(_cell(results[m][c]["metrics"][k], 2 if METRICS[k][0] == "MRE" else 1))
            first = results[models[0]][c]
            cells.append(str(first["n_points"] if subset == "all" else first["n_occluded"]))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"PCK in % of points within the radius ({unit}); MRE over finite errors. '–': no occluded landmark.")
    return "\n".join(lines) + "\n"


def occlusion_study(
    datalist: str,
    adversarial_ckpt: str,
    supervised_ckpt: str,
    output_dir: str = "occlusion_study",
    section: str | None = None,
    conditions: Sequence[str] = CONDITIONS,
    seed: int = 0,
    configs: Sequence[str] = (),
    **override: Any,
) -> dict:
    """Evaluate both models under every condition; write ``occlusion_study.md`` and ``.json`` into ``output_dir``.

    Args:
        datalist: the datalist (its ``section`` is evaluated).
        adversarial_ckpt, supervised_ckpt: the generators' ``model.pt`` of the two bundle trainings.
        output_dir: folder of the outputs.
        section: datalist section to evaluate (``"test"``, ``"validation"``, ...; default: ``test`` when the
            datalist has one, else ``validation``, as the bundle's evaluation chooses).
        conditions: a subset of ``none``, ``blob``, ``crop``.
        seed: the occlusion seed (``occlusion_seed``).
        configs: variants merged after the bundle's ``train.json`` (names in its configs/ or paths, e.g.
            ``hand.json``); the checkpoints' records override what they say about the models.
        override: further run-level overrides, e.g. ``occlusion_crop_fraction=0.3`` or ``num_workers=0`` (an id
            that the models' records set, such as ``network_def#num_stacks`` or ``spatial_size``, is an error).

    Returns:
        the JSON report: ``{"settings", "results": {model: {condition: {"metrics", "n_points", "n_occluded",
        "unit"}}}, "timings"}``.
    """
    conditions = [conditions] if isinstance(conditions, str) else list(conditions)
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown or not conditions:
        raise ValueError(f"conditions must be among {CONDITIONS}, got {conditions}.")
    models = {"adversarial": Path(adversarial_ckpt), "supervised": Path(supervised_ckpt)}
    for name, ckpt in models.items():
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: no {name} checkpoint (train the bundle with --adversarial "
                                    f"{name == 'adversarial'} and pass its models/model.pt).")
    if not Path(datalist).is_file():
        raise FileNotFoundError(f"{datalist}: no such datalist.")
    section = section or evaluation_section(datalist)
    out = Path(output_dir)
    configs = [configs] if isinstance(configs, str) else list(configs)
    files = evaluation_files(configs)
    _check_overrides(files, len(configs), override)
    settings = {"datalist": str(Path(datalist).resolve()), "section": section, "seed": int(seed),
                "checkpoints": {k: str(v.resolve()) for k, v in models.items()}, "configs": [str(c) for c in configs],
                "evaluation_configs": config_names(files),
                "override": {k: v for k, v in override.items()}}
    results: dict[str, dict[str, dict]] = {}
    timings: dict[str, float] = {}
    for name, ckpt in models.items():
        results[name] = {}
        for condition in conditions:
            t0 = time.time()
            results[name][condition] = _evaluate(
                ckpt, condition, out / name / condition, files,
                datalist=str(Path(datalist).resolve()), eval_section=section, occlusion_seed=int(seed), **override,
            )
            timings[f"{name}/{condition}_wall_s"] = time.time() - t0
    unit = next(iter(next(iter(results.values())).values()))["unit"]
    report = {"settings": settings, "results": results, "timings": timings}
    with atomic_write(out / "occlusion_study.json") as f:
        json.dump(_nan_to_none(report), f, indent=1, default=str)
    title = f"## Occlusion study: {Path(datalist).name}, section '{section}', seed {seed}\n\n"
    table = title + format_table(results, unit)
    with atomic_write(out / "occlusion_study.md") as f:
        f.write(table)
    print(table)
    return report


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: a statistic without data (no occluded landmark) is written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


if __name__ == "__main__":
    fire.Fire(occlusion_study, serialize=lambda result: None)
