"""Pick the final prediction of a multi-output network (e.g. the last stack of a stacked hourglass).

A network returning a list of outputs (one per stack, the last being the prediction) puts that list under
``pred`` in MONAI evaluators. Batch decollation keeps the list per image: ``decollate_batch`` turns
``{"pred": [(B, K, h, w), ...]}`` into ``B`` items ``{"pred": [(K, h, w), ...]}``. Without decollation the list
holds batched tensors. :class:`SelectLast` takes the last element in both cases; a tensor passes unchanged, so the
same post-processing serves single-output networks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["SelectLast", "SelectLastd"]


class SelectLast(Transform):
    """``list``/``tuple`` of outputs -> its last element; anything else (a tensor) is returned unchanged."""

    def __call__(self, data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            if len(data) == 0:
                raise ValueError("SelectLast: got an empty list of network outputs.")
            return data[-1]
        return data


class SelectLastd(MapTransform):
    """Dictionary version of :class:`SelectLast`: ``d[key]`` becomes the last of its outputs for each key."""

    def __init__(self, keys: KeysCollection = "pred", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = SelectLast()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.op(d[key])
            except ValueError as e:
                raise ValueError(f"SelectLastd: key {key!r}: {e}") from e
        return d
