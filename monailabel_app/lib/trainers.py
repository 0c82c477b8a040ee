"""The landmark training task: MONAI Label's :class:`BundleTrainTask` fed with the datastore's labelled images,
their landmarks read from the labels (disc label images from :class:`~lib.infers.LandmarkInferTask`, edited or
not, or JSON point files), running the bundle's own ``configs/train.json``."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import monai.bundle
import numpy as np
from monai.bundle import ConfigParser
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask

from lib.infers import single_stage
from lib.landmarks import read_landmark_label
from monai_ext.bundle import REPO_ROOT, ModelConfig, config_files, read_config
from monai_ext.errors import LandmarkDataError

logger = logging.getLogger(__name__)

__all__ = ["LandmarkTrainConstants", "LandmarkTrainTask", "TRACKING_SETTINGS", "train_config"]

#: the project's MLflow settings (params, losses, metrics, checkpoint), used when a request asks for "mlflow"
TRACKING_SETTINGS = REPO_ROOT / "bundles" / "tracking_mlflow.json"


def train_config(path: str | os.PathLike) -> ConfigParser:
    """The training config of the bundle at ``path`` (its ``configs/train.json``, which pulls the shared skeleton in
    with ``%bundles/common/...`` macros), readable from any working directory (:func:`monai_ext.bundle.read_config`),
    ``bundle_root`` = ``path``."""
    return read_config(config_files(path, "train"), bundle_root=str(path))


class LandmarkTrainConstants(BundleConstants):
    """The ids MONAI Label's bundle training sets, where a landmark bundle has them: the trainer and the datasets are
    macros into the shared skeleton, so the epochs are the top-level ``max_epochs`` and the data go on the ``train``
    and ``validate`` shells (``train#datalist``, ``validate#datalist``). There are no multi-GPU overlays: the
    multi-GPU run uses ``train.json`` itself (:meth:`LandmarkTrainTask.run_multi_gpu`)."""

    def key_train_trainer_max_epochs(self) -> str:
        return "max_epochs"

    def key_train_dataset_data(self) -> str:
        return "train#datalist"

    def key_validate_dataset_data(self) -> str:
        return "validate#datalist"

    def multi_gpu_configs(self) -> list[str]:
        return list(self.configs())


class LandmarkTrainTask(BundleTrainTask):
    """Train a landmark bundle (``configs/train.json``) on the datastore: every image with a final label becomes
    ``{"image", "landmarks": [[x, y] or None] * K}``, split into training/validation by the request's ``val_split``;
    the rest is MONAI Label's bundle training (``max_epochs``, ``pretrained``, ``device``, ``multi_gpu``; ``tracking``
    "mlflow" uses the project's settings ``bundles/tracking_mlflow.json`` when present). The best model replaces
    ``models/model.pt`` (with its record, as any training of the bundle writes it).

    The served model (``models/model.pt``) decides what the labels mean: the landmark names and their order are its
    record's ``header`` (the labels were made with them), else the bundle's configured datalist's. With ``pretrained``
    (default) training continues the served model: network and the values it depends on (``spatial_size``, ...) come
    from its record, so its weights fit, and are loaded strictly; without, a new model is trained from ``train.json``.
    """

    def __init__(self, path: str, conf: dict[str, str], const: BundleConstants | None = None, load_strict: bool = True,
                 **kwargs: Any):
        #: why the bundle cannot be trained here (None when it can)
        self.error: str | None = None
        try:
            single_stage(path)
        except ValueError as e:
            self.valid = False
            self.error = f"{path}: not trained here ({e})"
            logger.warning(self.error)
            return
        super().__init__(path, conf, const=const or LandmarkTrainConstants(), load_strict=load_strict, **kwargs)

    def _model_file(self, name: str | None = None) -> Path:
        return Path(self.bundle_path) / "models" / (name or self.const.model_pytorch())

    def served_model_config(self) -> ModelConfig | None:
        """The record of the served model (``models/model.pt``), or None without one."""
        path = self._model_file()
        return ModelConfig.load(path) if path.is_file() else None

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        """:func:`train_config` (not MONAI Label's single file), with the served model's landmark ``header`` (and the
        datalist it was trained on, when that is still there) when it has one."""
        parser = train_config(path)
        try:
            record = self.served_model_config()
        except LandmarkDataError as e:
            logger.warning(f"{e}: landmark names from the bundle's configured datalist")
            return parser
        if record is not None and record.get("header") is not None:
            parser["header"] = record["header"]
            datalist = record.get("datalist")
            if isinstance(datalist, str) and Path(datalist).is_file():
                parser["datalist"] = datalist
        return parser

    def landmark_names(self) -> list[str]:
        """The names, in order, of the landmarks that the labels hold (``header``)."""
        return [str(n) for n in self.bundle_config.get_parsed_content("header")["landmarks"]]

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        self.bundle_config = self._load_bundle_config(self.bundle_path, self.bundle_config_path)  # the model may be new
        self._default_device = copy.deepcopy(self.bundle_config.get(self.const.key_device()))
        if request.get("pretrained", True):
            self._continue_served_model(request)
        return super().__call__(request, datastore)

    def _continue_served_model(self, request: Mapping[str, Any]) -> None:
        """Train the served model's network, with the values its weights depend on, from its record."""
        name = request.get("model_filename") or self.const.model_pytorch()
        if not self._model_file(name if isinstance(name, str) else name[0]).is_file():
            return  # nothing to start from: a new model (MONAI Label adds no checkpoint loader either)
        record = ModelConfig.load(self._model_file())
        self.bundle_config[self.const.key_network_def()] = record.config["network_def"]
        for key, value in record.config.get("values", {}).items():
            self.bundle_config[key] = value
        logger.info(f"Continuing the trained model of {self._model_file()}: network and "
                    f"{sorted(record.config.get('values', {}))} from its record")

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
        """Start from ``model_pytorch`` (its ``"model"`` weights) when ``pretrained``: MONAI Label's loader, mapped
        to the training device. (MONAI Label 0.8.5 itself fails on ``pretrained=False``: ``os.path.exists(None)``.)"""
        if not pretrained or not os.path.exists(model_pytorch):
            return
        if any(isinstance(h, Mapping) and h.get("_target_") == "CheckpointLoader" for h in train_handlers):
            return
        logger.info(f"Add Checkpoint Loader for Path: {model_pytorch}")
        train_handlers.insert(0, {
            "_target_": "CheckpointLoader",
            "load_path": model_pytorch,
            "load_dict": {self.model_dict_key: f"@{self.const.key_network()}"},
            "strict": self.load_strict,
            "map_location": f"@{self.const.key_device()}",
        })

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        if str(overrides.get(self.const.key_tracking(), "")).lower() == "mlflow" and TRACKING_SETTINGS.is_file():
            overrides[self.const.key_tracking()] = str(TRACKING_SETTINGS)
        return overrides

    @contextmanager
    def _config_file(self, config: Mapping[str, Any]) -> Iterator[str]:
        """``config`` with its macros resolved (the skeleton's pieces copied in: the file stands alone, whatever the
        working directory of the run) written to a temporary ``train.json`` for one run (removed afterwards)."""
        parser = ConfigParser({k: copy.deepcopy(v) for k, v in config.items() if k != "_meta_"})
        parser.resolve_macro_and_relative_ids()
        with tempfile.TemporaryDirectory(prefix=f"monailabel_{os.path.basename(self.bundle_path)}_") as tmp:
            path = os.path.join(tmp, "train.json")
            ConfigParser.export_config_file(parser.get(), path, indent=1)
            yield path

    def _logging_file(self) -> str | bool:
        path = Path(self.bundle_path) / "configs" / "logging.conf"
        return str(path) if path.is_file() else False

    def run_single_gpu(self, request: dict[str, Any], overrides: dict[str, Any]) -> None:
        """Run the training in this process. MONAI Label would run ``configs/train.json`` itself, whose
        ``%bundles/common/...`` macros MONAI resolves against the server's working directory; this runs the composed
        config instead (:func:`train_config`: the macros absolute, plus the served model's record), written to a
        temporary file for the run, so the server trains from any directory and never writes into the bundle's
        configs. ``overrides`` (epochs, datalists, device, checkpoint loader, ...) are MONAI Label's."""
        with self._config_file(self.bundle_config.config) as config_file:
            monai.bundle.run(
                run_id=request.get("run_id", "run"),
                init_id="initialize",
                final_id="finalize",
                meta_file=self.bundle_metadata_path,
                config_file=config_file,
                logging_file=self._logging_file(),
                **overrides,
            )

    def run_multi_gpu(self, request: dict[str, Any], cmd: list[str], env: dict[str, str]) -> None:
        """Run the training under ``torchrun`` on ``train.json`` alone: under torchrun every workflow of the bundles
        runs distributed by itself (``monai_ext.utils.distributed_launch``), there is no ``multi_gpu_train.json``
        overlay to merge. MONAI Label's ``cmd`` (and the ``configs/monailabel_train.json`` it wrote for it) are
        replaced by the composed config with MONAI Label's overrides, from a temporary file, each rank on its own
        device (the bundle's ``device``, not the request's); the server's Python runs ``torch.distributed.run``.
        A failed run is an error."""
        (Path(self.bundle_path) / "configs" / "monailabel_train.json").unlink(missing_ok=True)
        config = copy.deepcopy(self.bundle_config.config)  # MONAI Label has set its overrides in it
        config[self.const.key_device()] = self._default_device
        tracking = config.pop(self.const.key_tracking(), None)
        nproc = next((a for a in cmd if a.startswith("--nproc_per_node=")), "--nproc_per_node=1")
        with self._config_file(config) as config_file:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", nproc,
                       "-m", "monai.bundle", "run", request.get("run_id", "run"),
                       "--meta_file", self.bundle_metadata_path, "--config_file", config_file]
            logging_file = self._logging_file()
            if logging_file:
                command += ["--logging_file", logging_file]
            if tracking and str(tracking).lower() != "none":
                command += ["--tracking", str(tracking)]
            logger.info(f"RUNNING COMMAND:: {command}")
            returncode = subprocess.run(command, env=env).returncode
        if returncode:
            raise RuntimeError(f"{self.bundle_path}: multi-GPU training failed (exit status {returncode}): {command}")
