"""KNEEL's per-group report (Tiulpin et al., "KNEEL: Knee Anatomical Landmark Localization Using Hourglass
Networks", ICCV Workshops 2019): recall within radii and MRE per landmark group."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from monai_ext.metrics.distances import format_summary, summarize_errors
from monai_ext.transforms.roi import LandmarkGroups
from monai_ext.utils import atomic_write

__all__ = ["LandmarkGroupSummaryWriter"]

logger = logging.getLogger(__name__)


class LandmarkGroupSummaryWriter:
    """Write KNEEL's per-group report: for each landmark group, MRE and recall (%) within ``radii`` from the per-image
    errors of a landmark metric (``engine.state.metric_details[metric_name]``, ``(N, K)`` in ``unit``; stored by
    :class:`~monai_ext.metrics.ignite.LandmarkMetric` with ``save_details=True``).

    Writes ``<output_dir>/groups.json`` (``{group name: summary of summarize_errors}``) when the run completes and
    logs each group's summary.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        metric_name: str,
        groups: LandmarkGroups,
        landmark_names: Sequence[str] | None = None,
        radii: Sequence[float] = (1, 1.5, 2, 2.5, 3, 3.5, 4, 5),
        unit: str = "mm",
        outlier_radius: float = 10.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metric_name = metric_name
        self.groups = groups
        self.landmark_names = list(landmark_names) if landmark_names is not None else None
        self.radii = [float(r) for r in radii]
        self.unit = unit
        self.outlier_radius = float(outlier_radius)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def summaries(self, errors: torch.Tensor) -> dict[str, dict]:
        """``{group name: summary}`` of ``(N, K)`` errors."""
        errs = torch.as_tensor(errors).detach().cpu().double().numpy()
        out = {}
        for name, group in zip(self.groups.names, self.groups.groups):
            names = [self.landmark_names[i] for i in group] if self.landmark_names is not None else None
            out[name] = summarize_errors(errs[:, group], self.radii, self.outlier_radius, names, self.unit)
        return out

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
        if details is None:
            raise KeyError(f"no per-image errors for metric {self.metric_name!r}: is it a LandmarkMetric with save_details?")
        summaries = self.summaries(details)
        with atomic_write(self.output_dir / "groups.json") as f:
            json.dump(summaries, f, indent=1, default=float)
        for name, summary in summaries.items():
            logger.info(f"landmark group {name}:\n{format_summary(summary)}")
