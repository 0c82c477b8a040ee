"""Calibrate a trained model's conformal landmark regions (run once per model) and report their test coverage.

1. The bundle's own evaluation (``run evaluating`` of ``monai_ext.bundle.config_files(bundle, "evaluate")``,
   in-process) predicts the calibration ``--section`` (default ``validation``: images the model was not trained on)
   with each landmark's heatmap spread.
2. Radial errors against the datalist's ground truth (mm, or original pixels when the datalist has no spacing) give
   the split-conformal quantiles of the ``fixed`` and, for heatmap models, the ``adaptive`` regions at each of
   ``--coverages`` (:class:`monai_ext.uncertainty.ConformalRegions`), written to ``conformal.json`` next to the
   checkpoint; for AASCE's 68 corners also the half-widths of the Cobb-angle intervals (split-conformal on the
   absolute angle errors, :func:`monai_ext.uncertainty.angle_quantiles`). Evaluation and inference of that model then add ``region``/``region_mm``/``review`` to every
   prediction and the coverage to ``summary.json`` (``region_method``, ``region_coverage``, ``review_threshold``).
3. With ``--report_section test`` the same evaluation predicts that section and the empirical coverage and mean
   radius of every calibrated region are tabulated (``regions_report.md`` / ``.json`` in ``--output_dir``).

Usage::

    python scripts/calibrate_regions.py --bundle adv_posenet --ckpt runs/adv/models/model.pt \\
        --datalist data/hand_xray/datalist.json --report_section test --output_dir runs/adv/regions
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np

from monai_ext.bundle import REPO_ROOT, config_files
from monai_ext.data.predictions import match_images, read_ground_truth
from monai_ext.uncertainty import METHODS, ConformalRegions, angle_quantiles, region_coverage, save_calibration
from monai_ext.utils import atomic_write


def _bundle_dir(bundle: str) -> Path:
    path = Path(bundle)
    return path if path.is_dir() else REPO_ROOT / "bundles" / bundle


def evaluate_section(bundle: Path, checkpoint: Path, datalist: Path, section: str, out: Path, configs: Sequence[str] = (),
                     **override: Any) -> Path:
    """Run the bundle's evaluation of ``checkpoint`` on ``section`` into ``out`` (no regions applied); returns the
    predictions JSON."""
    from monai.bundle import ConfigWorkflow

    files = config_files(bundle, "evaluate", [str(Path(c).resolve()) if Path(c).is_file() else c for c in configs])
    wf = ConfigWorkflow(
        config_file=files, meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"), workflow_type="infer", run_id="evaluating",
        bundle_root=str(bundle),
        **{**override, "ckpt_path": str(checkpoint), "datalist": str(datalist), "eval_section": section,
           "output_dir": str(out), "eval_dir": str(out), "region_calibration": None},
    )
    wf.initialize()
    try:
        wf.run()
    finally:
        wf.finalize()
    return out / "predictions.json"


def errors_and_spreads(predictions: Path, datalist: Path, section: str, unit: str) -> dict[str, Any]:
    """Radial errors ``(N, K)`` in ``unit`` of the predictions of ``section``'s images and their spreads in the same
    unit (``None`` without spreads); NaN where the ground truth or the prediction is missing."""
    doc = json.loads(predictions.read_text())
    gt = read_ground_truth(datalist, section)
    records = {r["image"]: r for r in doc["predictions"]}
    pairs, _, missing = match_images(records, gt.landmarks, predictions.parent, datalist.parent)
    if missing:
        raise ValueError(f"{predictions}: no prediction for {len(missing)} images of '{section}', e.g. {missing[0]}")
    spread_field = "spread_mm" if unit == "mm" else "spread"
    errors, spreads, points = [], [], []
    for pred_image, gt_image in pairs:
        r = records[pred_image]
        if r.get("error"):
            raise ValueError(f"{pred_image}: the evaluation failed on this image ({r['error']})")
        pts = np.array([[np.nan if e["x"] is None else e["x"], np.nan if e["y"] is None else e["y"]] for e in r["landmarks"]])
        diff = pts - gt.landmarks[gt_image]
        if unit == "mm":
            spacing = gt.spacing.get(gt_image, r.get("spacing"))
            if spacing is None:
                raise ValueError(f"{gt_image}: no spacing for errors in mm")
            diff = diff * np.asarray(spacing, dtype=np.float64).reshape(1, 2)
        errors.append(np.linalg.norm(diff, axis=-1))
        points.append((pts, gt.landmarks[gt_image]))
        spreads.append([np.nan if e.get(spread_field) is None else e[spread_field] for e in r["landmarks"]])
    spreads_arr = np.asarray(spreads, dtype=np.float64)
    has_spread = bool(np.isfinite(spreads_arr).any())
    return {"errors": np.asarray(errors), "spreads": spreads_arr if has_spread else None, "images": [g for _, g in pairs],
            "landmark_names": list(doc.get("landmark_names") or []), "points": points}


def cobb_angle_pairs(data: dict[str, Any], endplate: str = "top") -> tuple[np.ndarray, np.ndarray]:
    """``(predicted, ground-truth)`` Cobb angles ``(N, 3)`` of the images of :func:`errors_and_spreads` (AASCE's 68
    corners; each image's height read from its file, as the S-curve rule needs)."""
    from monai_ext.clinical.cobb import cobb_angles
    from monai_ext.data.readers import read_radiograph

    pred, gt = [], []
    for image, (p, g) in zip(data["images"], data["points"]):
        height = float(read_radiograph(image, min_size=1)[0].shape[1])
        pred.append(cobb_angles(p, height, endplate=endplate).as_array())
        gt.append(cobb_angles(g, height, endplate=endplate).as_array())
    return np.asarray(pred), np.asarray(gt)


def angle_table(halfwidths: dict[str, list[float]], pred: np.ndarray, gt: np.ndarray) -> list[dict]:
    """Coverage and width of the angle intervals ``pred ± q`` (clipped to 0..90 deg) per coverage and angle."""
    rows = []
    for cov, q in halfwidths.items():
        for a, name in enumerate(("main", "upper", "lower")):
            ok = np.isfinite(pred[:, a]) & np.isfinite(gt[:, a])
            low, high = np.clip(pred[ok, a] - q[a], 0, 90), np.clip(pred[ok, a] + q[a], 0, 90)
            rows.append({"angle": name, "coverage_target": float(cov), "halfwidth_deg": q[a], "n_images": int(ok.sum()),
                         "coverage": float(np.mean((low <= gt[ok, a]) & (gt[ok, a] <= high))) if ok.any() else math.nan,
                         "mean_width_deg": float(np.mean(high - low)) if ok.any() else math.nan})
    return rows


def coverage_table(regions: Sequence[ConformalRegions], errors: np.ndarray, spreads: np.ndarray | None) -> list[dict]:
    """One row per calibrated region: target, empirical coverage, mean and median radius on ``errors``."""
    rows = []
    for r in regions:
        radii = r.radii(spreads) if r.method == "adaptive" else r.radii(shape=errors.shape)
        rows.append({"method": r.method, "coverage_target": r.coverage, "quantile": r.to_dict()["quantile"],
                     **region_coverage(errors, radii)})
    return rows


def format_rows(rows: Sequence[dict], unit: str) -> str:
    head = f"| region | target | coverage | mean radius ({unit}) | median radius ({unit}) | points |\n|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['method']} | {100 * r['coverage_target']:.0f} % | {100 * r['coverage']:.1f} % | {r['mean_radius']:.2f} | "
        f"{r['median_radius']:.2f} | {r['n_points']} |\n" for r in rows
    )


def calibrate_regions(
    bundle: str,
    ckpt: str,
    datalist: str | None = None,
    section: str = "validation",
    coverages: Sequence[float] = (0.8, 0.9, 0.95),
    per_landmark: bool = False,
    report_section: str | None = None,
    output_dir: str | None = None,
    configs: Sequence[str] = (),
    **override: Any,
) -> dict:
    """Calibrate ``ckpt``'s regions on ``section``; write ``conformal.json`` next to it; optionally report on
    ``report_section``. Returns the report (calibration settings, quantiles, the coverage rows)."""
    from monai_ext.bundle import ModelConfig

    bundle_dir, checkpoint = _bundle_dir(bundle), Path(ckpt).resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no trained model")
    record = ModelConfig.load(str(checkpoint))
    datalist_path = Path(datalist or record["datalist"]).resolve()
    unit = str(record["header"]["unit"])
    out = Path(output_dir) if output_dir else checkpoint.parent / "regions"
    coverages = [float(c) for c in (coverages if isinstance(coverages, (list, tuple)) else str(coverages).split(","))]
    configs = [configs] if isinstance(configs, str) else list(configs)
    t0 = time.time()
    cal = errors_and_spreads(evaluate_section(bundle_dir, checkpoint, datalist_path, section, out / section, configs, **override),
                             datalist_path, section, unit)
    methods = [m for m in METHODS if m == "fixed" or cal["spreads"] is not None]
    regions = [ConformalRegions.fit(cal["errors"], c, m, spreads=cal["spreads"], per_landmark=per_landmark, unit=unit,
                                    landmark_names=cal["landmark_names"]) for m in methods for c in coverages]
    info = {"checkpoint": str(checkpoint), "datalist": str(datalist_path), "section": section,
            "n_images": len(cal["images"]), "per_landmark": bool(per_landmark),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    cobb = int(record["header"]["num_landmarks"]) == 68  # AASCE's corners: the Cobb angles get intervals too
    if cobb:
        cal_angles = cobb_angle_pairs(cal)
        halfwidths = angle_quantiles(*cal_angles, coverages)
        info["cobb"] = {c: ["inf" if math.isinf(v) else v for v in q] for c, q in halfwidths.items()}
    save_calibration(regions, checkpoint.parent / "conformal.json", **info)
    report: dict[str, Any] = {**info, "unit": unit, "regions": [r.to_dict() for r in regions],
                              "calibration": coverage_table(regions, cal["errors"], cal["spreads"])}
    if report_section:
        test = errors_and_spreads(evaluate_section(bundle_dir, checkpoint, datalist_path, report_section, out / report_section,
                                                   configs, **override), datalist_path, report_section, unit)
        report["report_section"] = report_section
        report["report"] = coverage_table(regions, test["errors"], test["spreads"])
        report["report_n_images"] = len(test["images"])
        text = (f"## Conformal regions: calibrated on '{section}' ({len(cal['images'])} images), "
                f"coverage on '{report_section}' ({len(test['images'])} images)\n\n" + format_rows(report["report"], unit))
        if cobb:
            report["cobb_report"] = angle_table(halfwidths, *cobb_angle_pairs(test))
            text += "\n| Cobb angle | target | coverage | half-width (deg) | images |\n|---|---|---|---|---|\n" + "".join(
                f"| {r['angle']} | {100 * r['coverage_target']:.0f} % | {100 * r['coverage']:.1f} % | {r['halfwidth_deg']:.1f} | "
                f"{r['n_images']} |\n" for r in report["cobb_report"])
        with atomic_write(out / "regions_report.md") as f:
            f.write(text)
        print(text)
    report["wall_s"] = time.time() - t0
    with atomic_write(out / "regions_report.json") as f:
        json.dump(report, f, indent=1, default=lambda v: "inf" if isinstance(v, float) and math.isinf(v) else str(v))
    return report


if __name__ == "__main__":
    fire.Fire(calibrate_regions, serialize=lambda result: None)
