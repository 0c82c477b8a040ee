"""Handlers of the interactive keypoint workflow (Kim et al., "Morphology-Aware Interactive Keypoint Estimation",
MICCAI 2022; engines in :mod:`monai_ext.engines.interactive`).

* :class:`LossTermsToOutput` (training) puts the loss terms (BCE, distance, direction) into the trainer output for logging.
* :class:`InteractiveCurveWriter` (evaluation): writes the table (CSV/JSON) and plot (PNG) of the mean radial error
  (and, for spines, the Cobb-angle SMAPE) against the number of clicks, from the click-protocol results of
  :class:`~monai_ext.engines.interactive.InteractiveKeypointEvaluator`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import decollate_batch
from monai.utils import CommonKeys

from monai_ext.clinical.cobb import cobb_angles, cobb_interval, smape
from monai_ext.utils import as_flag, atomic_path, atomic_write

__all__ = ["LossTermsToOutput", "InteractiveCurveWriter"]


class LossTermsToOutput:
    """After each training iteration, copy ``loss.last_terms`` (e.g. ``{"bce", "distance", "direction"}`` of
    :class:`~monai_ext.losses.morphology.MorphologyAwareHeatmapLoss`) into the trainer's output dict as
    ``loss_<term>`` floats, where stats and tracking handlers attached after it read them: the dict
    (``decollate=False``) or every per-item dict (``decollate=True``)."""

    def __init__(self, loss: Any) -> None:
        self.loss = loss

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        terms = {f"loss_{k}": float(v) for k, v in getattr(self.loss, "last_terms", {}).items()}
        output = engine.state.output
        for item in [output] if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else []:
            if isinstance(item, dict):
                item.update(terms)


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _mean_finite(errors: np.ndarray) -> float:
    e = errors[np.isfinite(errors)]
    return float(e.mean()) if e.size else math.nan


#: click orders besides the oracle one -> suffix of their columns
OTHER_ORDERS = {"least_confident": "_confident", "largest_region": "_region"}


class InteractiveCurveWriter:
    """Collect the click-protocol results of :class:`~monai_ext.engines.interactive.InteractiveKeypointEvaluator`
    and, when the run completes, write to ``output_dir``:

    * ``<name>.csv``: one row per number of clicks ``n = 0..R``: ``mre_model``, ``mre_manual`` (mean radial error
      over every landmark with ground truth of every image, failed predictions excluded as in
      :mod:`monai_ext.metrics.distances`), ``n_points`` and, with ``cobb``, ``smape_model`` / ``smape_manual``
      (Cobb-angle SMAPE, :func:`monai_ext.clinical.cobb.smape`, predicted-point angles against ground-truth-point
      angles) and ``n_cobb`` (images with all angles defined);
    * ``<name>.json``: the same table, the unit, and per image the clicked landmarks and the per-round MRE;
    * ``<name>.png``: MRE against clicks, both curves;
    * when the evaluator also ran the ``least_confident`` click order (the user clicks the landmark the model is
      least sure of, no ground truth needed to choose): the same columns with the suffix ``_confident``; for the
      ``largest_region`` order (the widest heatmap, i.e. the largest adaptive conformal region, first): ``_region``;
    * with ``cobb`` (``cobb_endplate``: see :func:`monai_ext.clinical.cobb.cobb_angles`): ``cobb.csv``, per image
      the three angles from the ground-truth points, from the 0-click
      prediction and after ``R`` clicks (model revision), and the angles given with the data when the batch has a
      ``cobb_key`` entry; with a conformal ``calibration`` of the model (``conformal.json``, see
      ``scripts/calibrate_regions.py``) also the interval of each 0-click angle (``pred_low_*``, ``pred_high_*``) at
      ``region_coverage``: the angle ± its calibrated half-width when the file has calibrated angles (``"cobb"``,
      :func:`monai_ext.uncertainty.angle_quantiles`), else :func:`monai_ext.clinical.cobb.cobb_interval` from the
      corners' ``region_method`` regions; in the summary, how often it holds the ground-truth angle
      (``cobb_interval``, with its ``source``).

    The summary is also stored in ``engine.state.interactive_summary``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        unit: str = "px",
        name: str = "interactive",
        cobb: bool = False,
        corners_per_vertebra: int = 4,
        cobb_endplate: str = "top",
        cobb_key: str = "cobb",
        image_key: str = CommonKeys.IMAGE,
        calibration: str | os.PathLike | None = None,
        region_method: str = "auto",
        region_coverage: float = 0.9,
    ):
        self.output_dir = Path(output_dir)
        self.unit = unit
        self.name = name
        self.cobb = as_flag(cobb, "cobb")
        self.corners_per_vertebra = int(corners_per_vertebra)
        self.cobb_endplate = cobb_endplate
        self.cobb_key = cobb_key
        self.image_key = image_key
        self.region_coverage = float(region_coverage)
        self.regions = None
        self.angle_halfwidths: list[float] | None = None
        if self.cobb and calibration is not None and Path(calibration).is_file():
            from monai_ext.uncertainty import load_angle_calibration
            from monai_ext.uncertainty.regions import ConformalRegiond

            self.angle_halfwidths = load_angle_calibration(calibration, region_coverage)
            if self.angle_halfwidths is None:  # no calibrated angles: propagate the corners' regions
                self.regions = ConformalRegiond(calibration=calibration, method=region_method, coverage=region_coverage)
        self.records: list[dict] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.records = []

    def collect(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else decollate_batch(engine.state.output)
        batch = engine.state.batch if isinstance(engine.state.batch, list) else None
        for i, item in enumerate(outputs):
            res = item["interactive"]
            meta = getattr(item.get(self.image_key), "meta", {}) or {}
            record = {
                "image": str(meta.get("filename_or_obj", f"image_{len(self.records)}")),
                **{key: _np(res[key]) for key in ("errors_model", "errors_manual", "clicks_model", "clicks_manual")},
            }
            for order, suffix in OTHER_ORDERS.items():  # click orders without ground truth
                other = res.get(order)
                if other is not None:
                    for curve in ("model", "manual"):
                        record[f"errors_{curve}{suffix}"] = _np(other[f"errors_{curve}"])
                        record[f"clicks_{curve}{suffix}"] = _np(other[f"clicks_{curve}"])
            if self.cobb:
                height = float(_np(res["image_height"]))
                record["cobb_gt"] = self._angles(_np(res["gt"]), height)
                for curve in self._curves(record):
                    base, _, suffix = curve.partition("_")
                    source = res if not suffix else res[next(o for o, s in OTHER_ORDERS.items() if s == f"_{suffix}")]
                    points = _np(source[base])
                    record[f"cobb_{curve}"] = np.stack([self._angles(p, height) for p in points])
                given = item.get(self.cobb_key)
                if given is None and batch is not None and i < len(batch):
                    given = batch[i].get(self.cobb_key)
                record["cobb_given"] = None if given is None else _np(given).astype(np.float64).reshape(-1)
                if self.angle_halfwidths is not None:  # split-conformal on the angles themselves: 0-click angle ± q
                    q = np.asarray(self.angle_halfwidths, dtype=np.float64)
                    angles = record["cobb_model"][0]
                    record["cobb_interval"] = np.stack([np.clip(angles - q, 0.0, 90.0), np.clip(angles + q, 0.0, 90.0)])
                elif self.regions is not None:  # the 0-click angles' interval from the corners' conformal regions
                    region = self.regions({"pred_landmarks": item["pred_landmarks"], "image": item[self.image_key],
                                           **{k: item[k] for k in ("pred_spread", "pred_spread_mm") if k in item}})
                    record["cobb_interval"] = np.stack(cobb_interval(
                        _np(item["pred_landmarks"]), _np(region["pred_region"]), height, self.region_coverage,
                        corners_per_vertebra=self.corners_per_vertebra, endplate=self.cobb_endplate))
            self.records.append(record)

    @staticmethod
    def _curves(record: Mapping[str, Any]) -> list[str]:
        """``model``, ``manual`` (oracle order) and, when run, ``model_confident``, ``manual_confident`` (least
        confident first) and ``model_region``, ``manual_region`` (largest region first)."""
        names = ["model", "manual"] + [f"{c}{suffix}" for suffix in OTHER_ORDERS.values() for c in ("model", "manual")]
        return [c for c in names if f"errors_{c}" in record]

    def _angles(self, points: np.ndarray, height: float) -> np.ndarray:
        return cobb_angles(points, height, self.corners_per_vertebra, self.cobb_endplate).as_array()

    def summary(self) -> dict[str, Any]:
        """The table (list of rows) and per-image details of the collected records."""
        if not self.records:
            raise RuntimeError("InteractiveCurveWriter: no images were evaluated.")
        rounds = self.records[0]["errors_model"].shape[0]
        curves = self._curves(self.records[0])
        errors = {c: np.stack([r[f"errors_{c}"] for r in self.records]) for c in curves}  # (N, R+1, K)
        rows = []
        for n in range(rounds):
            row: dict[str, Any] = {"clicks": n}
            row.update({f"mre_{c}": _mean_finite(errors[c][:, n]) for c in curves})
            row["n_points"] = int(np.count_nonzero(~np.isnan(errors["model"][:, n])))
            if self.cobb:
                gt = np.stack([r["cobb_gt"] for r in self.records])
                for curve in curves:
                    pred = np.stack([r[f"cobb_{curve}"][n] for r in self.records])
                    row[f"smape_{curve}"] = smape(pred, gt)
                ok = np.isfinite(gt).all(1) & np.isfinite(np.stack([r["cobb_model"][n] for r in self.records])).all(1)
                row["n_cobb"] = int(ok.sum())
            rows.append(row)
        images = [
            {
                "image": r["image"],
                **{f"clicks_{c}": [int(i) for i in r[f"clicks_{c}"]] for c in curves},
                **{f"mre_{c}": [_mean_finite(e) for e in r[f"errors_{c}"]] for c in curves},
            }
            for r in self.records
        ]
        out = {"unit": self.unit, "n_images": len(self.records), "table": rows, "images": images}
        if self.cobb and self.records and all("cobb_interval" in r for r in self.records):
            gt = np.stack([r["cobb_gt"] for r in self.records])
            low, high = np.stack([r["cobb_interval"][0] for r in self.records]), np.stack([r["cobb_interval"][1] for r in self.records])
            ok = np.isfinite(gt) & np.isfinite(low) & np.isfinite(high)
            inside = (low <= gt) & (gt <= high)
            out["cobb_interval"] = {
                "source": "calibrated angles" if self.angle_halfwidths is not None else "corner regions",
                "coverage_target": self.region_coverage,
                **{f"coverage_{a}": float(inside[ok[:, j], j].mean()) if ok[:, j].any() else None for j, a in enumerate(("main", "upper", "lower"))},
                **{f"mean_width_{a}": float((high - low)[ok[:, j], j].mean()) if ok[:, j].any() else None for j, a in enumerate(("main", "upper", "lower"))},
                "n_images": int(ok.all(1).sum()),
            }
        return out

    def write(self, engine: Engine | None = None) -> None:
        summary = self.summary()
        rows = summary["table"]
        with atomic_write(self.output_dir / f"{self.name}.csv", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        with atomic_write(self.output_dir / f"{self.name}.json") as f:
            json.dump(summary, f, indent=1, default=float)
        self._plot(rows)
        if self.cobb:
            self._write_cobb()
        if engine is not None:
            engine.state.interactive_summary = summary  # type: ignore[attr-defined]
        u = self.unit
        self.logger.info(
            "interactive MRE (%s) by clicks: model %s | manual %s",
            u,
            ", ".join(f"{r['clicks']}: {r['mre_model']:.3f}" for r in rows),
            ", ".join(f"{r['clicks']}: {r['mre_manual']:.3f}" for r in rows),
        )

    def _plot(self, rows: Sequence[Mapping[str, Any]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        clicks = [r["clicks"] for r in rows]
        fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
        ax.plot(clicks, [r["mre_model"] for r in rows], "o-", label="model revision")
        ax.plot(clicks, [r["mre_manual"] for r in rows], "s--", label="manual revision")
        if "mre_model_confident" in rows[0]:
            ax.plot(clicks, [r["mre_model_confident"] for r in rows], "^-", label="model, least confident first")
            ax.plot(clicks, [r["mre_manual_confident"] for r in rows], "v:", label="manual, least confident first")
        if "mre_model_region" in rows[0]:
            ax.plot(clicks, [r["mre_model_region"] for r in rows], "s-", label="model, largest region first")
            ax.plot(clicks, [r["mre_manual_region"] for r in rows], "d:", label="manual, largest region first")
        ax.set_xlabel("number of user clicks")
        ax.set_ylabel(f"mean radial error ({self.unit})")
        ax.set_xticks(clicks)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(self.output_dir / f"{self.name}.png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)

    def _write_cobb(self) -> None:
        names = ("main", "upper", "lower")
        last = self.records[0]["cobb_model"].shape[0] - 1
        intervals = all("cobb_interval" in r for r in self.records)
        sources = ("gt", "pred", f"clicks{last}", "given") + (("pred_low", "pred_high") if intervals else ())
        fields = ["image"] + [f"{src}_{a}" for src in sources for a in names]
        with atomic_write(self.output_dir / "cobb.csv", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(fields)
            for r in self.records:
                given = r["cobb_given"] if r["cobb_given"] is not None and r["cobb_given"].size == 3 else np.full(3, np.nan)
                values = np.concatenate([r["cobb_gt"], r["cobb_model"][0], r["cobb_model"][last], given,
                                         *([r["cobb_interval"][0], r["cobb_interval"][1]] if intervals else [])])
                writer.writerow([r["image"]] + ["" if not np.isfinite(v) else f"{v:.4f}" for v in values])
