"""The landmark training task: MONAI Label's :class:`BundleTrainTask` fed with the datastore's labelled images,
their landmarks read from the labels (disc label images from :class:`~lib.infers.LandmarkInferTask`, edited or
not, or JSON point files)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

from lib.landmarks import read_landmark_label

logger = logging.getLogger(__name__)

__all__ = ["LandmarkTrainTask", "TRACKING_SETTINGS"]

#: the project's MLflow settings (params, losses, metrics, checkpoint), used when a request asks for "mlflow"
TRACKING_SETTINGS = Path(__file__).resolve().parents[2] / "bundles" / "tracking_mlflow.json"


class LandmarkTrainTask(BundleTrainTask):
    """Train a landmark bundle (``configs/train.json``) on the datastore: every image with a final label becomes
    ``{"image", "landmarks": [[x, y] or None] * K}`` (K and the order from the bundle's ``landmark_names``),
    split into training/validation by the request's ``val_split``; the rest is MONAI Label's bundle training
    (``max_epochs``, ``pretrained`` from ``models/model.pt``, ``device``; ``tracking`` "mlflow" uses the
    project's settings ``bundles/tracking_mlflow.json`` when present)."""

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any):
        super().__init__(path, conf, **kwargs)

    def landmark_names(self) -> list[str]:
        return [str(n) for n in self.bundle_config.get_parsed_content("landmark_names")]

    def _fetch_datalist(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        names = self.landmark_names()
        items = []
        for d in datastore.datalist():
            points = read_landmark_label(d["label"], names)
            if np.isnan(points).all():
                logger.warning(f"{d['label']}: no landmark in the label; image {d['image']} skipped")
                continue
            items.append({"image": d["image"],
                          "landmarks": [None if np.isnan(p).any() else [float(p[0]), float(p[1])] for p in points]})
        logger.info(f"{len(items)} labelled images with landmarks for {os.path.basename(self.bundle_path)}")
        return items

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        if pretrained:  # MONAI Label 0.8.5 fails on pretrained=False (os.path.exists(None))
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        if str(overrides.get(self.const.key_tracking(), "")).lower() == "mlflow" and TRACKING_SETTINGS.is_file():
            overrides[self.const.key_tracking()] = str(TRACKING_SETTINGS)
        return overrides
