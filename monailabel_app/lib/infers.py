"""The landmark inference tasks: MONAI Label :class:`BundleInferTask` s over a landmark bundle's ``inference.json``
whose result JSON carries the points, and whose optional label image has a small disc per landmark.
:class:`InteractiveLandmarkInferTask` serves a bundle that takes user clicks (``bundles/interactive_kp``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.utils.others.generic import strtobool

from lib.landmarks import clicks_by_index, disc_label, landmark_result, write_label
from monai_ext.errors import LandmarkDataError

__all__ = ["InteractiveLandmarkInferTask", "LandmarkInferTask", "takes_clicks"]

#: HTTP status of a request that cannot be processed as given (bad clicks, spacing or image): the error names it
BAD_REQUEST_STATUS = 422


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def takes_clicks(path: str | os.PathLike) -> bool:
    """Whether the bundle at ``path`` takes user clicks: its inference config has a ``clicks`` entry (the clicks
    per image that its preprocessing turns into hint channels, as in ``bundles/interactive_kp``)."""
    for name in BundleConstants().configs():
        config = Path(path) / "configs" / name
        if config.is_file():
            return "clicks" in ConfigParser.load_config_file(str(config))
    return False


class LandmarkInferTask(BundleInferTask):
    """Run a landmark bundle (``configs/inference.json``: ``network_def``, ``preprocessing`` loading the file,
    ``postprocessing`` ending with ``LandmarksToOriginald``; ``models/model.pt``) on one image.

    The result JSON is :func:`lib.landmarks.landmark_result`: ``{"landmarks": [{"name", "x", "y", "confidence",
    "x_mm", "y_mm"}], "spacing", "unit", "image_size", ...}`` in the original image's pixels. With the request
    option ``landmark_label`` (default true) a label image is written too: value ``k + 1`` in a disc of
    ``label_radius`` pixels around landmark ``k``, as ``result_extension`` (``.nii.gz`` default, or ``.png``).
    The request option ``spacing`` ``[sx, sy]`` (mm/pixel) overrides the file's spacing.
    """

    def __init__(
        self,
        path: str,
        conf: dict[str, str],
        label_radius: float = 3.0,
        type: str | InferType = InferType.SEGMENTATION,
        **kwargs: Any,
    ):
        super().__init__(path, conf, type=type, add_post_restore=False, load_strict=True, **kwargs)
        if not self.valid:
            return
        if "landmark_names" in self.bundle_config:
            names = [str(n) for n in self.bundle_config.get_parsed_content("landmark_names")]
        else:  # the channel names of the bundle's metadata
            names = [str(n) for n in sorted(self.labels, key=self.labels.get)]
        self.landmark_names = names
        self.labels = {n: k + 1 for k, n in enumerate(names)}  # label values of the disc image
        self._config.update({"landmark_label": True, "label_radius": float(label_radius), "result_extension": ".nii.gz"})

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[Any, dict[str, Any]]:
        """Run one request; a request that cannot be processed as given (:class:`LandmarkDataError`: bad clicks,
        spacing or image) is answered with HTTP 422 and the error's message, naming the image and what is wrong."""
        try:
            return super().__call__(self.prepare_request(request), callbacks)
        except LandmarkDataError as e:
            raise HTTPException(status_code=BAD_REQUEST_STATUS, detail=str(e)) from e

    def prepare_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request as the bundle takes it. This task takes no clicks: a request with clicks is an error (they
        would be ignored silently)."""
        if request.get("clicks"):
            name = request.get("model") or os.path.basename(self.bundle_path)
            raise LandmarkDataError(f"{request.get('image', '')}: model {name!r} takes no clicks "
                                    f"(interactive models have type 'deepedit' in /info/)")
        return request

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


class InteractiveLandmarkInferTask(LandmarkInferTask):
    """:class:`LandmarkInferTask` for a bundle that takes user clicks (:func:`takes_clicks`); type ``deepedit`` in
    ``/info/`` (automatic without clicks, refined with them).

    The request's ``clicks`` ``[{"landmark": k or name, "x": px, "y": px}, ...]`` (original image pixels, or that
    list as JSON text) go to the bundle's preprocessing, whose
    :class:`~monai_ext.transforms.ClicksToHintsd` checks them and maps them into the network's pixels as hint
    channels; its postprocessing places the clicked landmarks at their clicks (``enforce_clicks``). Landmark names
    are resolved here (:func:`lib.landmarks.clicks_by_index`). The result JSON is the landmark result plus
    ``"clicked"`` per landmark and ``"clicks"``: ``[{"index", "name", "x", "y"}]``, the clicks applied.

    Args:
        hint_key: the ``hint_key`` of the bundle's ``ClicksToHintsd``; it leaves the parsed clicks (original
            pixels) in ``hint_key + "_original"``.
    """

    def __init__(self, path: str, conf: dict[str, str], hint_key: str = "hint_landmarks", **kwargs: Any):
        super().__init__(path, conf, type=InferType.DEEPEDIT, **kwargs)
        self.hint_key = hint_key
        if self.valid:
            self.description = f"{self.description} (interactive: clicks [{{landmark, x, y}}] refine the landmarks)"

    def prepare_request(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("clicks") is None:
            return request
        return {**request, "clicks": clicks_by_index(request["clicks"], self.landmark_names,
                                                      str(request.get("image", "")))}

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        name, result = super().writer(data, extension, dtype)
        key = self.hint_key + "_original"
        if key not in data:
            raise RuntimeError(f"{self.bundle_path}: its preprocessing left no '{key}' "
                               f"(expected a ClicksToHintsd with hint_key '{self.hint_key}')")
        clicks = _numpy(data[key]).astype(np.float64).reshape(-1, 2)
        clicked = np.isfinite(clicks).all(-1)
        for entry in result["landmarks"]:
            entry["clicked"] = bool(clicked[entry["index"]])
        result["clicks"] = [
            {"index": int(k), "name": self.landmark_names[k], "x": float(clicks[k, 0]), "y": float(clicks[k, 1])}
            for k in np.flatnonzero(clicked)
        ]
        return name, result
