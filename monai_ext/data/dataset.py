"""Inference over many files that keeps going past a bad one.

:class:`SkipFailedDataset` turns a :class:`~monai_ext.errors.LandmarkDataError` raised while loading an item
(corrupt, truncated or tiny file, DICOM without pixel data, NaN pixels, ...) into a :class:`FailedItem`;
:func:`collate_failed_items` collates the good items of a batch as usual and carries the failed ones beside
them under :data:`FAILED_ITEMS_KEY`; :func:`monai_ext.engines.skip_failed.skip_failed_items` (the
evaluator's ``iteration_update``) runs the network on the good items only and hands the failures to the
writers (:class:`~monai_ext.handlers.writers.LandmarkPredictionWriter` records them as error entries).
Works with DataLoader workers and any batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monai.data import Dataset, list_data_collate

from monai_ext.errors import LandmarkDataError

__all__ = ["FAILED_ITEMS_KEY", "FailedItem", "SkipFailedDataset", "collate_failed_items", "find_landmark_error"]

FAILED_ITEMS_KEY = "failed_items"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailedItem:
    """An item that could not be loaded: its image path and the error message (which names the file)."""

    image: str
    error: str


def find_landmark_error(exc: BaseException) -> LandmarkDataError | None:
    """The :class:`LandmarkDataError` behind ``exc`` (MONAI's ``Compose`` re-raises transform errors as
    ``RuntimeError("applying transform ...")`` chained to the original), or None when there is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, LandmarkDataError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class SkipFailedDataset(Dataset):
    """MONAI :class:`~monai.data.Dataset` whose items that fail with a :class:`LandmarkDataError` become
    :class:`FailedItem` (logged as a warning) instead of stopping the run; any other error still propagates.

    Args:
        data: items ``[{"image": path, ...}, ...]`` (e.g. :func:`~monai_ext.data.datalist.list_images`).
        transform: the preprocessing (typically starting with ``LoadRadiographd``).
        image_key: the key of the image path, reported in the :class:`FailedItem`.
    """

    def __init__(self, data: Sequence, transform: Callable | None = None, image_key: str = "image"):
        super().__init__(data=data, transform=transform)
        self.image_key = image_key

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as e:
            error = find_landmark_error(e)
            if error is None:
                raise
            item = self.data[index]
            image = item.get(self.image_key, f"item {index}") if isinstance(item, Mapping) else item
            logger.warning(f"skipped: {error}")
            return FailedItem(str(image), str(error))


def collate_failed_items(batch: Sequence[Any], list_keys: Sequence[str] = ("image_original",)) -> dict[str, Any]:
    """Collate the good items (dicts) with MONAI's ``list_data_collate``; the :class:`FailedItem` ones go to
    ``out[FAILED_ITEMS_KEY]`` as ``[{"image", "error", "position"}]`` (``position`` = index in ``batch``, so
    the input order can be restored). A batch without a good item is ``{FAILED_ITEMS_KEY: [...]}`` only.

    ``list_keys``: keys whose values are not stacked but kept as a list, one per good item; by default the original
    images (``image_original``, kept by a two-stage pipeline such as KNEEL's), which differ in size."""
    good = [item for item in batch if not isinstance(item, FailedItem)]
    failed = [
        {"image": item.image, "error": item.error, "position": i}
        for i, item in enumerate(batch)
        if isinstance(item, FailedItem)
    ]
    kept = {k: [item[k] for item in good if k in item] for k in list_keys}
    good = [{k: v for k, v in item.items() if k not in kept} if isinstance(item, dict) else item for item in good]
    out = list_data_collate(good) if good else {}
    if not isinstance(out, dict):
        raise TypeError(f"collate_failed_items needs dictionary items, got {type(good[0]).__name__}")
    out.update({k: v for k, v in kept.items() if v})
    out[FAILED_ITEMS_KEY] = failed
    return out
