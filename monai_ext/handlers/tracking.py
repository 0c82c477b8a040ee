"""MLflow tracking of the landmark bundles: the handler and helpers that ``bundles/tracking_mlflow.json`` wires.

``python -m monai.bundle run training --config_file ... --tracking bundles/tracking_mlflow.json`` adds a
:class:`LandmarkMLFlowHandler` to the trainer (parameters, per-iteration losses, learning rate, the executed config
and the best checkpoint), to the validator (per-epoch metrics, in the trainer's run) and to the evaluator of an
evaluation or inference run (its own run: metrics, predictions, overlays, summaries).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import monai
import torch
from monai.handlers import MLFlowHandler

__all__ = ["LandmarkMLFlowHandler", "bundle_info", "scalars_from_output", "timestamped_name"]

logger = logging.getLogger(__name__)


def bundle_info(bundle_root: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """What identifies a bundle in a tracked run: ``{"bundle": <folder name>, "bundle_version", "bundle_title",
    "monai_version"}``, from ``metadata`` (the parsed ``configs/metadata.json``, in a config ``@_meta_``) or, when it
    is None, from ``<bundle_root>/configs/metadata.json``."""
    root = Path(bundle_root)
    if metadata is None:
        meta_file = root / "configs" / "metadata.json"
        try:
            metadata = json.loads(meta_file.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{meta_file}: cannot read the bundle metadata ({e}).") from e
    return {
        "bundle": root.resolve().name,
        "bundle_version": str(metadata.get("version", "")),
        "bundle_title": str(metadata.get("name", "")),
        "monai_version": monai.__version__,
    }


def timestamped_name(prefix: str) -> str:
    """``<prefix>_<YYYYmmdd_HHMMSS>``: a run name shared by the handlers of one workflow (its trainer and validator)
    and distinct from earlier runs, so a run left unfinished by a crash is never continued by mistake."""
    return f"{prefix}_{time.strftime('%Y%m%d_%H%M%S')}"


def scalars_from_output(output: Any, prefix: str = "train_") -> dict[str, float]:
    """Every scalar of a trainer's ``engine.state.output`` as ``{prefix + key: value}``, e.g. ``{"train_loss": 0.3}``
    (SCN), or the loss terms ``train_mse``, ``train_adv_P``, ... of the adversarial trainer.

    ``output`` is a dict (``decollate=False``) or a list of per-item dicts (decollated: the scalars are replicated
    into every item, the first one is read); 0-dim tensors and Python numbers are scalars, everything else is skipped.

    Not ``monai.handlers.from_engine``: that reads keys named in advance and returns their values as a tuple, while
    ``MLFlowHandler`` needs a ``{name: value}`` dict of every loss term, and the terms differ between trainers.
    """
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        output = output[0]
    if not isinstance(output, Mapping):
        raise TypeError(f"expected the trainer output as a dict or a list of dicts, got {type(output).__name__}.")
    scalars: dict[str, float] = {}
    for key, value in output.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1 and value.ndim == 0:
            scalars[f"{prefix}{key}"] = float(value.detach().float().cpu())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[f"{prefix}{key}"] = float(value)
    return scalars


class LandmarkMLFlowHandler(MLFlowHandler):
    """MONAI's :class:`~monai.handlers.MLFlowHandler` with run tags and artifacts that keep their folders.

    Args:
        tags: run tags set when the engine starts (e.g. :func:`bundle_info`).
        artifacts: files and folders logged when the engine completes: a file at the artifact root, a folder
            with its whole tree under its own name (``evaluation/overlays/0000_x.png``); a missing path is
            logged as a warning, not an error (e.g. no checkpoint when training stopped before validating).
        args, kwargs: as :class:`~monai.handlers.MLFlowHandler`. Handlers sharing a ``run_name`` log into one
            run (the validator into its trainer's run); :func:`timestamped_name` gives each workflow its own.
    """

    def __init__(
        self,
        *args: Any,
        tags: Mapping[str, Any] | None = None,
        artifacts: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, artifacts=None, **kwargs)
        self.tags = dict(tags or {})
        if artifacts is None:
            self.artifacts = ()
        elif isinstance(artifacts, (str, os.PathLike)):
            self.artifacts = (artifacts,)
        else:
            self.artifacts = tuple(artifacts)

    def start(self, engine: Any) -> None:
        super().start(engine)
        if self.tags and self.cur_run is not None:
            from mlflow.entities import RunTag

            tags = [RunTag(str(k), str(v)) for k, v in self.tags.items()]
            self.client.log_batch(run_id=self.cur_run.info.run_id, metrics=[], params=[], tags=tags)

    def complete(self) -> None:
        if not self.artifacts or self.cur_run is None:
            return
        run_id = self.cur_run.info.run_id
        for item in self.artifacts:
            if not item:
                continue
            path = Path(item)
            if path.is_file():
                self.client.log_artifact(run_id, str(path))
            elif path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
            else:
                logger.warning(f"MLflow: artifact {path} does not exist, not logged.")
