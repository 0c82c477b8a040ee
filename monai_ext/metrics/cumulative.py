"""MONAI cumulative metric over landmark radial errors (MRE, median, SDR/PCK, ...), DDP-ready."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from monai_ext.metrics.distances import DEFAULT_RADII, parse_statistic, radial_errors_tensor, select_statistic

__all__ = ["LandmarkDistanceMetric"]


def _stack(data: Any, what: str) -> torch.Tensor | None:
    """A batch-first tensor from a tensor, an array, or a list of per-image items (None stays None)."""
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (list, tuple)):
        if any(d is None for d in data):
            raise ValueError(f"{what}: some images have no value; give it for every image of the batch or for none.")
        items = [d if isinstance(d, torch.Tensor) else torch.as_tensor(np.asarray(d, dtype=np.float64)) for d in data]
        return torch.stack([i.to(device=items[0].device, dtype=torch.float64) for i in items])
    return torch.as_tensor(np.asarray(data, dtype=np.float64))


class LandmarkDistanceMetric(CumulativeIterationMetric):
    """Accumulate per-image landmark radial errors and reduce them to a statistic of
    :func:`monai_ext.metrics.distances.summarize_errors`.

    Each call adds the errors ``(B, K)`` of a batch to the buffer (NaN for missing ground truth, +inf for a
    NaN prediction: see :mod:`monai_ext.metrics.distances`); under DDP :meth:`aggregate` gathers the buffers
    of every rank, as MONAI's metrics do.

    .. code-block:: python

        metric = LandmarkDistanceMetric(reduction="mre")
        for batch in loader:
            metric(y_pred=pred_points, y=batch["landmarks"], spacing=batch["spacing"])
        mre = metric.aggregate()                 # float, mm
        sdr2 = metric.aggregate("sdr@2")         # % within 2 mm
        summary = metric.aggregate("summary")    # the full dict
        metric.reset()

    Args:
        reduction: default statistic of :meth:`aggregate`: ``"mre"``, ``"std"``, ``"median"``, ``"max"``,
            ``"sdr@<r>"`` / ``"pck@<r>"`` (% of points within ``r``), ``"n_failed"``, ``"n_outliers"``, ...,
            ``"summary"`` (the whole dict) or ``"none"`` (the ``(N, K)`` error tensor).
        radii: SDR radii of the summary dict, in ``unit``.
        outlier_radius: errors above it are outliers.
        landmark_names: K names for the per-landmark part of the summary.
        unit: ``"mm"`` (spacing given to every call) or ``"px"`` (spacing ignored).
    """

    def __init__(
        self,
        reduction: str = "mre",
        radii: Sequence[float] = DEFAULT_RADII,
        outlier_radius: float = 10.0,
        landmark_names: Sequence[str] | None = None,
        unit: str = "mm",
    ) -> None:
        super().__init__()
        if unit not in ("mm", "px"):
            raise ValueError(f"unit must be 'mm' or 'px', got {unit!r}.")
        if reduction != "none":
            parse_statistic(reduction, unit)
        self.reduction = reduction
        self.radii = tuple(float(r) for r in radii)
        self.outlier_radius = float(outlier_radius)
        self.landmark_names = None if landmark_names is None else [str(n) for n in landmark_names]
        self.unit = unit

    def __call__(self, y_pred: Any, y: Any = None, spacing: Any = None) -> torch.Tensor:  # type: ignore[override]
        """Add a batch.

        Args:
            y_pred: predicted points ``(B, K, 2)`` in pixels, or a list of ``(K, 2)``.
            y: ground-truth points, same form, NaN where missing.
            spacing: ``(B, 2)`` (or a list of ``(2,)``) mm/pixel; required when ``unit="mm"``, ignored for ``"px"``.

        Returns:
            the batch errors ``(B, K)``.
        """
        pred, gt = _stack(y_pred, "y_pred"), _stack(y, "y")
        if pred is None or gt is None:
            raise ValueError("LandmarkDistanceMetric needs both y_pred and y.")
        if self.unit == "mm" and spacing is None:
            raise ValueError("spacing (mm/pixel) is required for errors in mm; use unit='px' for pixel errors.")
        sp = _stack(spacing, "spacing") if self.unit == "mm" else None
        return super().__call__(y_pred=pred, y=gt, spacing=sp)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, spacing: torch.Tensor | None = None
    ) -> torch.Tensor:
        if y_pred.ndim != 3 or y is None or y.shape != y_pred.shape:
            raise ValueError(
                f"y_pred and y must both be (B, K, D) points, got {tuple(y_pred.shape)} and "
                f"{None if y is None else tuple(y.shape)}."
            )
        return radial_errors_tensor(y_pred, y, spacing)

    def aggregate(self, reduction: str | None = None) -> Any:  # type: ignore[override]
        """The statistic ``reduction`` (default: the constructor's) over every accumulated image.

        Returns a float (an int for counts), the summary dict for ``"summary"``, or the ``(N, K)`` errors
        for ``"none"``.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("LandmarkDistanceMetric has no data to aggregate: call it on at least one batch first.")
        reduction = reduction or self.reduction
        if reduction == "none":
            return data
        return select_statistic(
            data.cpu().numpy(), reduction, self.radii, self.outlier_radius, self.landmark_names, self.unit
        )
