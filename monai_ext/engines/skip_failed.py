"""An evaluator iteration that runs only the items that could be loaded (see :mod:`monai_ext.data.dataset`)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from ignite.engine import Engine

from monai_ext.data.dataset import FAILED_ITEMS_KEY

__all__ = ["skip_failed_items"]


def skip_failed_items(engine: Engine, batchdata: Any) -> Any:
    """``iteration_update`` of a MONAI workflow (e.g. ``SupervisedEvaluator``) fed by
    :func:`~monai_ext.data.dataset.collate_failed_items`.

    Moves ``batchdata[FAILED_ITEMS_KEY]`` (``[{"image", "error", "position"}]``) to
    ``engine.state.failed_items`` (set at every iteration, ``[]`` when none failed), then runs the engine's
    own iteration (``engine._iteration``: prepare batch, network, postprocessing) on the good items. A batch
    with no good item runs nothing: its output is ``[]`` and only the failures are reported.
    """
    failed: list = []
    if isinstance(batchdata, MutableMapping):
        failed = list(batchdata.pop(FAILED_ITEMS_KEY, None) or [])
    engine.state.failed_items = failed
    if isinstance(batchdata, MutableMapping) and not batchdata:
        return []
    return engine._iteration(engine, batchdata)
