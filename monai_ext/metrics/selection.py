"""Choosing the key metric of a MONAI evaluator by name: the metric that picks the best checkpoint.

A bundle declares every validation metric once, by name (``validate#metrics``), and a top-level ``key_metric`` names
the one that selects the best checkpoint; the evaluator's ``key_val_metric`` / ``additional_metrics``, its
``metric_cmp_fn`` and the ``CheckpointSaver``'s ``key_metric_negative_sign`` follow from it::

    "key_metric": "val_pck10",
    "validate": {
        "metrics": {"val_pck10": {...}, "val_mre": {...}},
        "key_metric": "$monai_ext.metrics.select_metrics(@validate#metrics, [@key_metric])",
        "additional_metrics": "$monai_ext.metrics.select_metrics(@validate#metrics, exclude=[@key_metric])",
        ...
        "metric_cmp_fn": "$monai_ext.metrics.key_metric_cmp_fn(@validate#key_metric)",
        ... CheckpointSaver: "key_metric_negative_sign": "$not monai_ext.metrics.higher_is_better(@validate#key_metric)"
    }
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monai.engines.utils import default_metric_cmp_fn

from monai_ext.metrics.ignite import lower_is_better

__all__ = ["higher_is_better", "key_metric_cmp_fn", "key_metric_score", "select_metrics"]


def select_metrics(
    metrics: Mapping[str, Any], names: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> dict[str, Any]:
    """The named entries of ``metrics`` (all of them when ``names`` is None), less ``exclude``, in ``metrics``' order.

    Raises:
        KeyError: a name in ``names`` or ``exclude`` that ``metrics`` does not have (the message lists those it has).
    """
    unknown = [n for n in [*(names or ()), *exclude] if n not in metrics]
    if unknown:
        raise KeyError(f"unknown metric name(s) {unknown}: this bundle's validation metrics are {list(metrics)}")
    wanted = set(metrics if names is None else names) - set(exclude)
    return {name: metric for name, metric in metrics.items() if name in wanted}


def higher_is_better(metric: Any) -> bool:
    """Whether a larger value of ``metric`` is better: its ``higher_is_better`` attribute (landmark metrics: True for
    PCK/SDR, False for errors), True for metrics without one (MONAI's convention). ``metric`` may be a one-entry
    ``{name: metric}`` dict (a ``key_val_metric``)."""
    if isinstance(metric, Mapping):
        if len(metric) != 1:
            raise ValueError(f"expected one key metric, got {list(metric)}")
        metric = next(iter(metric.values()))
    return bool(getattr(metric, "higher_is_better", True))


def key_metric_cmp_fn(metric: Any) -> Callable[[float, float], bool]:
    """The evaluator's ``metric_cmp_fn`` for ``metric`` (or a one-entry ``key_val_metric`` dict): MONAI's default
    (greater wins) when higher is better, :func:`~monai_ext.metrics.ignite.lower_is_better` otherwise."""
    return default_metric_cmp_fn if higher_is_better(metric) else lower_is_better


def key_metric_score(metric: Any) -> Callable[[Any], float]:
    """``score_function(engine)`` of MONAI's ``EarlyStopHandler`` (which keeps the highest score) for a one-entry
    ``key_val_metric`` dict: the evaluator's value of it, negated when lower is better (errors)."""
    if not isinstance(metric, Mapping) or len(metric) != 1:
        raise ValueError(f"key_metric_score: expected a one-entry key metric dict, got {metric!r}")
    name = next(iter(metric))
    sign = 1.0 if higher_is_better(metric) else -1.0

    def score(engine: Any) -> float:
        return sign * float(engine.state.metrics[name])

    return score
