"""The landmark inference task: a MONAI Label :class:`BundleInferTask` over a landmark bundle's ``inference.json``
whose result JSON carries the points, and whose optional label image has a small disc per landmark."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.generic import strtobool

from lib.landmarks import disc_label, landmark_result, write_label

__all__ = ["LandmarkInferTask"]


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class LandmarkInferTask(BundleInferTask):
    """Run a landmark bundle (``configs/inference.json``: ``network_def``, ``preprocessing`` loading the file,
    ``postprocessing`` ending with ``LandmarksToOriginald``; ``models/model.pt``) on one image.

    The result JSON is :func:`lib.landmarks.landmark_result`: ``{"landmarks": [{"name", "x", "y", "confidence",
    "x_mm", "y_mm"}], "spacing", "unit", "image_size", ...}`` in the original image's pixels. With the request
    option ``landmark_label`` (default true) a label image is written too: value ``k + 1`` in a disc of
    ``label_radius`` pixels around landmark ``k``, as ``result_extension`` (``.nii.gz`` default, or ``.png``).
    The request option ``spacing`` ``[sx, sy]`` (mm/pixel) overrides the file's spacing.
    """

    def __init__(self, path: str, conf: dict[str, str], label_radius: float = 3.0, **kwargs: Any):
        super().__init__(path, conf, type=InferType.SEGMENTATION, add_post_restore=False, load_strict=True, **kwargs)
        if not self.valid:
            return
        if "landmark_names" in self.bundle_config:
            names = [str(n) for n in self.bundle_config.get_parsed_content("landmark_names")]
        else:  # the channel names of the bundle's metadata
            names = [str(n) for n in sorted(self.labels, key=self.labels.get)]
        self.landmark_names = names
        self.labels = {n: k + 1 for k, n in enumerate(names)}  # label values of the disc image
        self._config.update({"landmark_label": True, "label_radius": float(label_radius), "result_extension": ".nii.gz"})

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        image = data[self.input_key]
        meta = getattr(image, "meta", {}) or {}
        points = _numpy(data["pred_landmarks"]).astype(np.float64)
        confidence = data.get("pred_confidence")
        spacing = _numpy(meta["spacing"]).astype(np.float64) if meta.get("spacing") is not None else None
        size = [int(s) for s in _numpy(meta["original_spatial_shape"])]
        if len(points) != len(self.landmark_names):
            raise ValueError(f"{self.bundle_path}: the model predicts {len(points)} landmarks, "
                             f"its configs name {len(self.landmark_names)}.")
        result = landmark_result(points, None if confidence is None else _numpy(confidence), self.landmark_names,
                                 spacing, str(meta.get("spacing_source", "")), size)
        if not strtobool(str(data.get("landmark_label", True))):
            return None, result
        ext = extension or data.get("result_extension") or ".nii.gz"
        label = disc_label(points, size, float(data.get("label_radius", 3.0)))
        fd, name = tempfile.mkstemp(suffix=ext)
        os.close(fd)
        write_label(label, name, spacing=spacing)
        return name, result
