"""Ignite metrics over landmark radial errors, for ``key_metric`` / ``additional_metrics`` of MONAI workflows.

The metrics read, per image, the predicted points ``pred_landmarks`` ``(K, 2)`` and the ground truth
``landmarks`` ``(K, 2)``, both in ORIGINAL image pixels, and the pixel spacing ``spacing`` ``(2,)`` mm/pixel.
MONAI's post-processing keeps batch keys it did not change in ``engine.state.batch`` (only new or model
output keys go to ``engine.state.output``), so :class:`LandmarkMetric` looks a key up in the output first
and falls back to the batch.

Bundle config example::

    "key_metric": {"val_mre": {"_target_": "monai_ext.metrics.ignite.MeanRadialError"}},
    "additional_metrics": {"val_sdr2": {"_target_": "monai_ext.metrics.ignite.SuccessfulDetectionRate", "radius": 2}},
    "metric_cmp_fn": "$monai_ext.metrics.ignite.lower_is_better"
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import IgniteMetricHandler
from monai.utils import convert_to_tensor

from monai_ext.metrics.cumulative import LandmarkDistanceMetric
from monai_ext.metrics.distances import DEFAULT_RADII, radius_key

__all__ = [
    "PCK",
    "LandmarkMetric",
    "MeanRadialError",
    "SuccessfulDetectionRate",
    "landmark_metrics",
    "landmark_output_transform",
    "lower_is_better",
]


def _to_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return convert_to_tensor(value, track_meta=False)
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def landmark_output_transform(
    output: Any, pred_key: str = "pred_landmarks", gt_key: str = "landmarks", spacing_key: str = "spacing"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(pred (B, K, 2), gt (B, K, 2), spacing (B, 2) or None)`` from a list of per-image dicts or a batch dict.

    ``spacing`` is None when no image has ``spacing_key``; some images with and some without is an error.
    Use ``functools.partial`` for other key names.
    """
    if isinstance(output, Mapping):
        missing = [k for k in (pred_key, gt_key) if k not in output]
        if missing:
            raise KeyError(f"landmark metric: keys {missing} not in the engine output (keys: {sorted(output)}).")
        spacing = output.get(spacing_key)
        spacing = None if spacing is None else _to_tensor(spacing)
        return _to_tensor(output[pred_key]), _to_tensor(output[gt_key]), spacing
    if isinstance(output, Sequence) and output and all(isinstance(o, Mapping) for o in output):
        preds, gts, spacings = [], [], []
        for i, item in enumerate(output):
            missing = [k for k in (pred_key, gt_key) if k not in item]
            if missing:
                raise KeyError(f"landmark metric: keys {missing} not in engine output item {i} (keys: {sorted(item)}).")
            preds.append(_to_tensor(item[pred_key]))
            gts.append(_to_tensor(item[gt_key]))
            spacings.append(item.get(spacing_key))
        if all(s is None for s in spacings):
            spacing = None
        elif any(s is None for s in spacings):
            raise ValueError(f"landmark metric: {spacing_key!r} is given for some images of the batch but not all.")
        else:
            spacing = torch.stack([_to_tensor(s).to(torch.float64).reshape(-1) for s in spacings])
        pred = torch.stack([p.to(torch.float64) for p in preds])
        return pred, torch.stack([g.to(torch.float64) for g in gts]), spacing
    raise TypeError(
        f"landmark metric: expected the engine output as a dict or a list of dicts, got {type(output).__name__}."
    )


def _merge_batch(output: Any, batch: Any) -> Any:
    """``output`` with the keys it lacks taken from ``batch`` (per image for lists of dicts)."""
    if isinstance(output, Mapping) and isinstance(batch, Mapping):
        return {**batch, **output}
    if (
        isinstance(output, Sequence)
        and isinstance(batch, Sequence)
        and len(output) == len(batch)
        and all(isinstance(o, Mapping) for o in output)
        and all(isinstance(b, Mapping) for b in batch)
    ):
        return [{**b, **o} for o, b in zip(output, batch)]
    return output


class LandmarkMetric(IgniteMetricHandler):
    """Ignite metric of landmark radial errors, computed by
    :class:`~monai_ext.metrics.cumulative.LandmarkDistanceMetric` (its buffers are gathered across ranks under DDP).

    Args:
        statistic: the value reported: ``"mre"``, ``"median"``, ``"std"``, ``"max"``, ``"sdr@<r>"`` or
            ``"pck@<r>"`` (% of points within ``r`` in ``unit``), ``"n_failed"``, ``"n_outliers"``, ...
        output_transform: maps the engine output (with missing keys filled from ``engine.state.batch``) to
            ``(pred, gt, spacing)``; default :func:`landmark_output_transform`.
        unit: ``"mm"`` (spacing required) or ``"px"`` (errors in original pixels; spacing ignored).
        save_details: store the per-image errors ``(N, K)`` in ``engine.state.metric_details[name]`` (the
            MONAI contract, so ``MetricsSaver`` can write them) and the full summary dict of
            :func:`~monai_ext.metrics.distances.summarize_errors` in ``engine.state.metric_summaries[name]``.
        radii, outlier_radius, landmark_names: passed to the summary.

    ``higher_is_better`` is True for ``"sdr@<r>"`` / ``"pck@<r>"`` and False for the error statistics (for
    :func:`~monai_ext.metrics.selection.key_metric_cmp_fn`).
    """

    def __init__(
        self,
        statistic: str = "mre",
        output_transform: Callable = landmark_output_transform,
        unit: str = "mm",
        save_details: bool = True,
        radii: Sequence[float] = DEFAULT_RADII,
        outlier_radius: float = 10.0,
        landmark_names: Sequence[str] | None = None,
    ) -> None:
        metric_fn = LandmarkDistanceMetric(
            reduction=statistic, radii=radii, outlier_radius=outlier_radius, landmark_names=landmark_names, unit=unit
        )
        self.statistic = statistic
        self.unit = unit
        self.higher_is_better = statistic.split("@")[0] in ("sdr", "pck")  # rates; the other statistics are errors
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)

    def iteration_completed(self, engine: Engine) -> None:
        output = _merge_batch(engine.state.output, getattr(engine.state, "batch", None))
        self.update(self._output_transform(output))

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Add a batch: ``output`` is ``(pred, gt)`` or ``(pred, gt, spacing)``."""
        if not isinstance(output, Sequence) or len(output) not in (2, 3):
            raise ValueError("landmark metric: output_transform must return (pred, gt) or (pred, gt, spacing).")
        pred, gt, spacing = (*output, None) if len(output) == 2 else output
        if self.unit == "mm" and spacing is None:
            raise ValueError(
                "landmark metric: no pixel spacing in the engine output for errors in mm; "
                "provide 'spacing' (mm/pixel) per image or use unit='px'."
            )
        self.metric_fn(y_pred=pred, y=gt, spacing=spacing)

    def compute(self) -> Any:
        if len(self.metric_fn) == 0:
            raise NotComputableError(f"{self.__class__.__name__} needs at least one batch before it can be computed.")
        summary = self.metric_fn.aggregate("summary")
        result = self.metric_fn.aggregate(self.statistic) if self.statistic != "summary" else summary
        self._is_reduced = True
        if self.save_details:
            if self._engine is None or self._name is None:
                raise RuntimeError("please call the attach() function to connect expected engine first.")
            self._engine.state.metric_details[self._name] = self.metric_fn.get_buffer()  # type: ignore[attr-defined]
            if not hasattr(self._engine.state, "metric_summaries"):
                self._engine.state.metric_summaries = {}  # type: ignore[attr-defined]
            self._engine.state.metric_summaries[self._name] = summary  # type: ignore[attr-defined]
        return result


class MeanRadialError(LandmarkMetric):
    """Mean radial error (MRE) over finite errors, in ``unit``; lower is better (see :func:`lower_is_better`)."""

    def __init__(self, output_transform: Callable = landmark_output_transform, unit: str = "mm", **kwargs: Any) -> None:
        super().__init__(statistic="mre", output_transform=output_transform, unit=unit, **kwargs)


class SuccessfulDetectionRate(LandmarkMetric):
    """SDR: % of points with ground truth whose error is within ``radius`` (in ``unit``); same number as PCK."""

    def __init__(
        self, radius: float, output_transform: Callable = landmark_output_transform, unit: str = "mm", **kwargs: Any
    ) -> None:
        super().__init__(statistic=f"sdr@{radius_key(radius)}", output_transform=output_transform, unit=unit, **kwargs)


class PCK(LandmarkMetric):
    """PCK: % of correct keypoints within ``radius`` (in ``unit``); the same number as SDR."""

    def __init__(
        self, radius: float, output_transform: Callable = landmark_output_transform, unit: str = "mm", **kwargs: Any
    ) -> None:
        super().__init__(statistic=f"pck@{radius_key(radius)}", output_transform=output_transform, unit=unit, **kwargs)


def landmark_metrics(
    unit: str = "mm", radii: Sequence[float] = DEFAULT_RADII, landmark_names: Sequence[str] | None = None
) -> dict[str, LandmarkMetric]:
    """The validation metrics of a landmark bundle by name: ``val_mre`` (:class:`MeanRadialError`, keeping the
    per-landmark details, SDR at ``radii`` and outliers for the writers) and ``val_sdr<r>``
    (:class:`SuccessfulDetectionRate`) at each radius of ``radii`` (in ``unit``)."""
    metrics: dict[str, LandmarkMetric] = {
        "val_mre": MeanRadialError(unit=unit, radii=radii, landmark_names=landmark_names)
    }
    for r in radii:
        metrics[f"val_sdr{radius_key(r)}"] = SuccessfulDetectionRate(radius=r, unit=unit, save_details=False)
    return metrics


def lower_is_better(current: float, previous: float) -> bool:
    """``metric_cmp_fn`` for error metrics (MRE): True when ``current`` beats ``previous``.

    MONAI initialises ``best_metric`` to -1, which means "no best yet" here. A NaN ``current`` never wins.
    For the best-checkpoint of ``CheckpointSaver`` use ``key_metric_negative_sign=True`` with such metrics.
    """
    if math.isnan(float(current)):
        return False
    return previous == -1 or current < previous
