"""The random number generators' state as a checkpoint entry, so that a resumed run draws what it would have."""

from __future__ import annotations

import logging
import random
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["RNGState"]

_LEAVES = (str, bytes, int, float, bool, type(None), type, types.ModuleType, types.FunctionType, types.MethodType,
           logging.Logger, torch.Tensor, np.ndarray, torch.nn.Module, torch.optim.Optimizer)
_MAX_DEPTH = 16


def _encode_numpy(state: tuple) -> dict[str, Any]:
    """numpy's ``get_state()`` tuple as tensors and numbers."""
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _decode_numpy(state: Mapping[str, Any]) -> tuple:
    keys = np.asarray(torch.as_tensor(state["keys"]).cpu().numpy(), dtype=np.uint32)
    return state["name"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"])


def _random_states(root: Any, prefix: str) -> Iterator[tuple[str, np.random.RandomState]]:
    """``(path, RandomState)`` of every ``np.random.RandomState`` reachable from ``root`` through instance
    attributes, lists and tuples (how MONAI's ``set_rnd`` finds the randomizable transforms), each once."""
    seen: set[int] = set()
    stack: list[tuple[str, Any, int]] = [(prefix, root, 0)]
    while stack:
        path, obj, depth = stack.pop()
        if id(obj) in seen or depth > _MAX_DEPTH or isinstance(obj, _LEAVES) or isinstance(obj, Mapping):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.random.RandomState):
            yield path, obj
            continue
        if isinstance(obj, (list, tuple)):
            children = [(f"{path}.{i}", v, depth + 1) for i, v in enumerate(obj)]
        elif hasattr(obj, "__dict__"):
            children = [(f"{path}.{k}", v, depth + 1) for k, v in vars(obj).items() if not k.startswith("__")]
        else:
            continue
        stack.extend(reversed(children))


class RNGState:
    """``state_dict``-able random state for ``CheckpointSaver``/``CheckpointLoader``: torch's CPU generator
    (and every CUDA device's), numpy's global generator, python's ``random``, and the ``np.random.RandomState``
    (``R``) of every randomizable MONAI transform reachable from ``objects`` (e.g. the training dataset; used
    when the DataLoader has no workers, otherwise the workers are re-seeded from torch's generator each epoch).

    The state dict holds tensors and numbers only, so it loads with ``torch.load(weights_only=True)``.

    Args:
        objects: objects whose transforms' random states are saved too (e.g. ``[train_dataset]``).
    """

    def __init__(self, objects: Sequence[Any] = ()):
        self.objects = list(objects)
        self.logger = logging.getLogger(__name__)

    def _transform_states(self) -> dict[str, np.random.RandomState]:
        found: dict[str, np.random.RandomState] = {}
        for i, obj in enumerate(self.objects):
            found.update(_random_states(obj, f"objects.{i}"))
        return found

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _encode_numpy(np.random.get_state()),
            "random": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next},
            "transforms": {path: _encode_numpy(rs.get_state()) for path, rs in self._transform_states().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(torch.as_tensor(state["torch"]).cpu())
        cuda = [torch.as_tensor(s).cpu() for s in state.get("cuda", [])]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        elif cuda or torch.cuda.is_available():
            self.logger.warning(f"CUDA random state not restored: saved for {len(cuda)} device(s), "
                                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} now")
        np.random.set_state(_decode_numpy(state["numpy"]))
        r = state["random"]
        internal = tuple(int(v) for v in torch.as_tensor(r["internal"]).tolist())
        random.setstate((int(r["version"]), internal, r["gauss_next"]))
        saved = dict(state.get("transforms", {}))
        current = self._transform_states()
        for path, rs in current.items():
            if path in saved:
                rs.set_state(_decode_numpy(saved[path]))
        unmatched = sorted(set(saved) ^ set(current))
        if unmatched:
            self.logger.warning(f"random state of {len(unmatched)} transform(s) not restored (pipeline changed?): "
                                f"{unmatched[:5]}")
