"""The landmark inference tasks: MONAI Label :class:`BundleInferTask` s over a landmark bundle's trained model
(``models/model.pt`` and the inference config composed for it) whose result JSON carries the points, and whose
optional label image has a small disc per landmark. :class:`InteractiveLandmarkInferTask` serves a bundle that takes
user clicks (``bundles/interactive_kp``)."""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.utils.others.generic import name_to_device, strtobool

from lib.landmarks import clicks_by_index, disc_label, landmark_result, write_label
from monai_ext.bundle import config_files, read_config, training_stages
from monai_ext.errors import LandmarkDataError
from monai_ext.uncertainty import ConformalRegiond

__all__ = [
    "BundleError",
    "InteractiveLandmarkInferTask",
    "LandmarkInferConstants",
    "LandmarkInferTask",
    "inference_config",
    "single_stage",
    "takes_clicks",
]

#: postprocessing output key -> result field of a calibrated model's conformal region (per landmark)
REGION_FIELDS = {"pred_region": "region", "pred_region_mm": "region_mm", "pred_review": "review"}

logger = logging.getLogger(__name__)

#: HTTP status of a request that cannot be processed as given (bad clicks, spacing, image or option): the error names it
BAD_REQUEST_STATUS = 422
#: HTTP status of a served model that cannot answer (its weights or config fail): the error names the bundle and why
MODEL_ERROR_STATUS = 500
#: label image formats of :func:`lib.landmarks.write_label`
LABEL_EXTENSIONS = (".nii.gz", ".nii", ".png")


class BundleError(RuntimeError):
    """A served bundle cannot answer (its trained model does not load, or its config fails): not the request's fault.
    The message names the bundle and what failed."""


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _describe(error: BaseException, limit: int = 1500) -> str:
    """``error`` and its root cause in one line (MONAI's config errors wrap the one that matters)."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = f"{type(error).__name__}: {error}"
    if root is not error:
        text += f" (caused by {type(root).__name__}: {root})"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _data_error(error: BaseException) -> LandmarkDataError | None:
    """The :class:`LandmarkDataError` that ``error`` is or was raised from (MONAI wraps transform errors), if any."""
    while error is not None:
        if isinstance(error, LandmarkDataError):
            return error
        error = error.__cause__
    return None


def inference_config(path: str | os.PathLike) -> ConfigParser:
    """The config that serves the trained model of the bundle at ``path``: its inference composition
    (:func:`monai_ext.bundle.config_files` ``(path, "inference")``: ``train.json``, the shared
    ``bundles/common/configs/inference.json`` and the inference overlays that ``train.json`` names in
    ``model_overlays``), readable from any working directory (:func:`monai_ext.bundle.read_config`), ``bundle_root`` =
    ``path``. Its ``network_def``, ``header`` and the values the model depends on come from the model's own record in
    ``models/model.pt``."""
    return read_config(config_files(path, "inference"), bundle_root=str(path))


def takes_clicks(path: str | os.PathLike) -> bool:
    """Whether the bundle at ``path`` takes user clicks: its inference composition (:func:`inference_config`, with the
    inference overlays its ``train.json`` names in ``model_overlays``) has a ``clicks`` id (the clicks per image that
    its preprocessing turns into hint channels, as ``bundles/interactive_kp``'s ``clicks.json``). False when the
    composition cannot be read (the task then says why)."""
    try:
        return "clicks" in inference_config(path).config
    except (OSError, ValueError):
        return False


def single_stage(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` for a bundle trained in several stages (``training_stages``, KNEEL): MONAI Label loads
    one model, ``models/model.pt``, and trains one stage."""
    stages = training_stages(path)
    if len(stages) > 1:
        raise ValueError(f"a bundle trained in {len(stages)} stages ({stages[1:]} after train.json) is not served by "
                         "MONAI Label yet (it loads and trains one model); use python -m monai.bundle")


class LandmarkInferConstants(BundleConstants):
    """Where MONAI Label finds a landmark bundle's config: every bundle has ``configs/train.json``, and the inference
    config is composed from it (:func:`inference_config`), so that is the file MONAI Label checks for."""

    def configs(self) -> list[str]:
        return ["train.json"]


class LandmarkInferTask(BundleInferTask):
    """Run the trained model of a landmark bundle (``models/model.pt``: weights under ``"model"``, the model's record
    under ``"model_config"``) on one image, with the bundle's inference config (:func:`inference_config`):
    ``preprocessing`` loading the file, the network that the record describes, ``inferer``, ``postprocessing`` ending
    with ``LandmarksToOriginald``. The landmark names are the record's (``header``), whatever the bundle's configured
    datalist says. When ``models/model.pt`` is replaced (e.g. by training), the next request reloads the record.

    The result JSON is :func:`lib.landmarks.landmark_result`: ``{"landmarks": [{"name", "x", "y", "confidence",
    "x_mm", "y_mm"}], "spacing", "unit", "image_size", ...}`` in the original image's pixels. With the request
    option ``landmark_label`` (default true) a label image is written too: value ``k + 1`` in a disc of
    ``label_radius`` pixels around landmark ``k``, as ``result_extension`` (``.nii.gz`` default, or ``.png``).
    The request option ``spacing`` ``[sx, sy]`` (mm/pixel) overrides the file's spacing.

    A request that cannot be processed as given is answered with HTTP 422 naming the image and the problem; a model
    that cannot answer (weights that do not fit its network, a failing config) with HTTP 500 naming the bundle and the
    error. A bundle whose model or config fails at start, or that is trained in several stages (:func:`single_stage`),
    is not served (:attr:`error` says why; it is logged).
    """

    def __init__(
        self,
        path: str,
        conf: dict[str, str],
        label_radius: float = 3.0,
        type: str | InferType = InferType.SEGMENTATION,
        const: BundleConstants | None = None,
        **kwargs: Any,
    ):
        #: why the bundle is not served (None when it is)
        self.error: str | None = None
        self.landmark_names: list[str] = []
        self._model_stamp: int | None = None
        try:
            single_stage(path)
            super().__init__(path, conf, const=const or LandmarkInferConstants(), type=type, add_post_restore=False,
                             load_strict=True, **kwargs)
            if self.valid:
                self._read_header()
        except Exception as e:  # noqa: BLE001 - one bundle that fails is reported and skipped, the others are served
            self.valid = False
            self.error = f"{path}: not served ({_describe(e)})"
            logger.error(self.error)
            if path in sys.path:  # BundleInferTask leaves it there when it fails
                sys.path.remove(path)
            return
        if not self.valid:
            self.error = f"{path}: not served (no trained model models/{self.const.model_pytorch()})"
            return
        self._config.update({"landmark_label": True, "label_radius": float(label_radius), "result_extension": ".nii.gz"})

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        """The composed inference config (:func:`inference_config`), not MONAI Label's single ``config`` file."""
        return inference_config(path)

    def _model_file(self) -> Path:
        return Path(self.bundle_path) / "models" / self.const.model_pytorch()

    def _stamp(self) -> int | None:
        try:
            return self._model_file().stat().st_mtime_ns
        except OSError:
            return None

    def _read_header(self) -> None:
        """Landmark names (and the label values of the disc image) from the model's record: ``header``."""
        header = self.bundle_config.get_parsed_content("header")
        self.landmark_names = [str(n) for n in header["landmarks"]]
        self.labels = {n: k + 1 for k, n in enumerate(self.landmark_names)}
        self._model_stamp = self._stamp()

    def _reload_if_changed(self) -> None:
        """Re-read the config, network and landmark names when ``models/model.pt`` was replaced since they were read
        (a new model may have another network or landmarks)."""
        if self._stamp() == self._model_stamp:
            return
        logger.info(f"{self._model_file()} changed: reloading its configuration")
        try:
            self.bundle_config = self._load_bundle_config(self.bundle_path, self.bundle_config_path)
            self.bundle_config.config["use_click"] = self.type == InferType.DEEPEDIT
            self.network = self.bundle_config.get_parsed_content(self.const.key_network_def(), instantiate=True)
            self._read_header()
        except Exception as e:  # noqa: BLE001 - reported to the client
            raise BundleError(f"{self.bundle_path}: its model {self._model_file()} changed and cannot be loaded "
                              f"({_describe(e)})") from e
        self.clear_cache()

    @contextmanager
    def _bundle_step(self, step: str) -> Iterator[None]:
        """Report a failure of the bundle's config in ``step`` as :class:`BundleError` (data errors pass)."""
        try:
            yield
        except Exception as e:
            if isinstance(e, (BundleError, HTTPException)) or _data_error(e) is not None:
                raise
            if self.bundle_path in sys.path:  # MONAI Label's steps leave it there when they fail
                sys.path.remove(self.bundle_path)
            raise BundleError(f"{self.bundle_path}: its config fails in '{step}' ({_describe(e)})") from e

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[Any, dict[str, Any]]:
        """Run one request. One that cannot be processed as given (:class:`LandmarkDataError`: bad clicks, spacing,
        image or option) is answered with HTTP 422 and the error's message, naming the image and what is wrong; a
        model that cannot answer (:class:`BundleError`) with HTTP 500 and what failed."""
        try:
            self._reload_if_changed()
            return super().__call__(self.prepare_request(self.check_options(request)), callbacks)
        except HTTPException:
            raise
        except BundleError as e:
            logger.error(str(e))
            raise HTTPException(status_code=MODEL_ERROR_STATUS, detail=str(e)) from e
        except Exception as e:
            found = _data_error(e)
            if found is None:
                raise
            raise HTTPException(status_code=BAD_REQUEST_STATUS, detail=str(found)) from e

    def check_options(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request, after checking the options this task reads (``device``, ``landmark_label``, ``label_radius``,
        ``label_region``, ``region_coverage``, ``result_extension``): a bad one is a :class:`LandmarkDataError` naming the image, the option and the value."""
        where = f"{request.get('image', '')}: "
        if request.get("device"):
            try:
                device = torch.device(name_to_device(request["device"]))
            except (RuntimeError, TypeError, ValueError) as e:
                raise LandmarkDataError(f"{where}device {request['device']!r} is not a device ({e})") from None
            if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
                raise LandmarkDataError(f"{where}device {request['device']!r}: this server has "
                                        f"{torch.cuda.device_count()} CUDA device(s)")
        if "landmark_label" in request:
            try:
                strtobool(str(request["landmark_label"]))
            except ValueError:
                raise LandmarkDataError(f"{where}landmark_label must be true or false, "
                                        f"got {request['landmark_label']!r}") from None
        if "label_radius" in request:
            try:
                radius = float(request["label_radius"])
            except (TypeError, ValueError):
                radius = math.nan
            if not (math.isfinite(radius) and radius > 0):
                raise LandmarkDataError(f"{where}label_radius must be a positive number of pixels, "
                                        f"got {request['label_radius']!r}")
        if "label_region" in request:
            try:
                strtobool(str(request["label_region"]))
            except ValueError:
                raise LandmarkDataError(f"{where}label_region must be true or false, got {request['label_region']!r}") from None
        if "region_coverage" in request:
            try:
                coverage = float(request["region_coverage"])
            except (TypeError, ValueError):
                coverage = math.nan
            if not 0.0 < coverage < 1.0:
                raise LandmarkDataError(f"{where}region_coverage must be a probability in (0, 1), "
                                        f"got {request['region_coverage']!r}")
        extension = request.get("result_extension")
        if extension is not None and str(extension).lower() not in LABEL_EXTENSIONS:
            raise LandmarkDataError(f"{where}result_extension must be one of {list(LABEL_EXTENSIONS)}, "
                                    f"got {extension!r}")
        return request

    def prepare_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request as the bundle takes it. This task takes no clicks: a request with clicks is an error (they
        would be ignored silently)."""
        if request.get("clicks"):
            name = request.get("model") or os.path.basename(self.bundle_path)
            raise LandmarkDataError(f"{request.get('image', '')}: model {name!r} takes no clicks "
                                    f"(interactive models have type 'deepedit' in /info/)")
        return request

    def pre_transforms(self, data: Any = None) -> list:
        with self._bundle_step("preprocessing"):
            return super().pre_transforms(data)

    def inferer(self, data: Any = None) -> Any:
        with self._bundle_step("inferer"):
            return super().inferer(data)

    def post_transforms(self, data: Any = None) -> list:
        with self._bundle_step("postprocessing"):
            return super().post_transforms(data)

    def _get_network(self, device: Any, data: Any) -> Any:
        """MONAI Label's loading of ``models/model.pt`` (the state dict under ``"model"``, strictly); a checkpoint
        that does not load is a :class:`BundleError` naming it and why (e.g. the keys or shapes that do not fit)."""
        try:
            return super()._get_network(device, data)
        except Exception as e:  # noqa: BLE001 - the request was checked: this is the model's fault
            raise BundleError(f"{self.bundle_path}: its model {self.get_path()} does not load on {device} "
                              f"({_describe(e)})") from e

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        image = data[self.input_key]
        meta = getattr(image, "meta", {}) or {}
        points = _numpy(data["pred_landmarks"]).astype(np.float64)
        confidence = data.get("pred_confidence")
        spacing = _numpy(meta["spacing"]).astype(np.float64) if meta.get("spacing") is not None else None
        size = [int(s) for s in _numpy(meta["original_spatial_shape"])]
        if len(points) != len(self.landmark_names):
            raise BundleError(f"{self.bundle_path}: the model predicts {len(points)} landmarks, "
                              f"its record names {len(self.landmark_names)}.")
        regions = self._regions(data)
        result = landmark_result(points, None if confidence is None else _numpy(confidence), self.landmark_names,
                                 spacing, str(meta.get("spacing_source", "")), size,
                                 per_landmark={f: _numpy(regions[k]) for k, f in REGION_FIELDS.items() if k in regions})
        if not strtobool(str(data.get("landmark_label", True))):
            return None, result
        ext = extension or data.get("result_extension") or ".nii.gz"
        radius: Any = float(data.get("label_radius", 3.0))
        if strtobool(str(data.get("label_region", False))) and "pred_region" in regions:  # draw each region's disc
            radius = np.where(np.isfinite(_numpy(regions["pred_region"])), _numpy(regions["pred_region"]), radius)
        label = disc_label(points, size, radius)
        fd, name = tempfile.mkstemp(suffix=ext)
        os.close(fd)
        write_label(label, name, spacing=spacing)
        return name, result


    def _regions(self, data: dict[str, Any]) -> dict[str, Any]:
        """The conformal region and review flag of each landmark when the model has a calibration
        (``models/conformal.json``, ``scripts/calibrate_regions.py``): the keys of ``REGION_FIELDS``; else ``{}``."""
        calibration = self._model_file().parent / "conformal.json"
        if not calibration.is_file():
            return {}
        try:
            regions = ConformalRegiond(calibration=calibration, coverage=float(data.get("region_coverage", 0.9)),
                                       ref_key=self.input_key)
        except ValueError as e:  # e.g. no calibration at the requested coverage: the request's fault
            raise LandmarkDataError(f"{data.get('image', '')}: {e}") from None
        return regions(data)


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
            raise BundleError(f"{self.bundle_path}: its preprocessing left no '{key}' "
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
