"""MONAI Label app serving the landmark bundles of this repository (``bundles/*``) from their folders, offline.

    python -m monailabel.main start_server --app monailabel_app --studies /path/to/images \
        --conf models scn --conf zoo_source local --conf sam2 false --host 127.0.0.1 --port 8000

``--conf bundles_dir DIR`` serves the bundles of another folder (default: ``bundles/`` next to this app);
``--conf models a,b`` picks some of them (default: every bundle, i.e. folder with ``configs/train.json`` and
``configs/metadata.json``); a bundle's trained model (``models/model.pt``) is served for inference, and every bundle
can be trained; ``--conf skip_trainers true`` serves inference only. A bundle whose inference composition takes
``clicks`` (``interactive_kp``'s ``clicks.json``) is served as an interactive model (type ``deepedit``); bundles
trained in several stages (``kneel``) are not served. The server may run from any working directory. See README.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import monai_ext
from monai_ext.bundle import bundle_folders
from monailabel.datastore.local import LocalDatastore
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

from lib.infers import InteractiveLandmarkInferTask, LandmarkInferTask, takes_clicks
from lib.trainers import LandmarkTrainTask

logger = logging.getLogger(__name__)

#: image files of a local studies folder: MONAI Label's defaults plus the radiograph formats
IMAGE_EXTENSIONS = ["*.dcm", "*.jpeg"]


def find_bundles(bundles_dir: str | os.PathLike, names: str | None = None) -> dict[str, str]:
    """``{name: folder}`` of the bundles to serve: ``names`` (comma-separated; all when empty or ``"all"``) among the
    bundles of ``bundles_dir`` (:func:`monai_ext.bundle.bundle_folders`: folders with ``configs/train.json`` and
    ``configs/metadata.json``; the shared ``common`` configs are not one). A name that is not there is an error naming
    the folder."""
    root = Path(bundles_dir).resolve()
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder of bundles")
    available = {p.name: str(p) for p in bundle_folders(root)}
    wanted = [n.strip() for n in (names or "").split(",") if n.strip()]
    if not wanted or wanted == ["all"]:
        return available
    missing = [n for n in wanted if n not in available]
    if missing:
        raise ValueError(f"{root}: no bundle {missing} with configs/train.json and configs/metadata.json "
                         f"(found {sorted(available)})")
    return {n: available[n] for n in wanted}


class LandmarkApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.bundles_dir = conf.get("bundles_dir") or str(Path(app_dir).resolve().parent / "bundles")
        self.models = find_bundles(self.bundles_dir, conf.get("models"))
        logger.info(f"Landmark bundles from {self.bundles_dir}: {list(self.models)}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Landmark localization (monai_ext bundles)",
            description="Anatomical landmarks in 2D radiographs: points in original pixels and mm, disc labels",
            version=monai_ext.__version__,
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        extensions = list(dict.fromkeys([*settings.MONAI_LABEL_DATASTORE_FILE_EXT, *IMAGE_EXTENSIONS]))
        return LocalDatastore(
            self.studies,
            extensions=extensions,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.models.items():
            # a bundle taking clicks (interactive_kp) is one interactive model: automatic without clicks
            task_class = InteractiveLandmarkInferTask if takes_clicks(path) else LandmarkInferTask
            task = task_class(path, self.conf)
            if task.is_valid():
                logger.info(f"+++ Adding Inferer:: {name} => {path}")
                infers[name] = task
            else:  # no trained model yet, or one that does not load
                logger.warning(f"--- No Inferer:: {task.error}")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name, path in self.models.items():
            task = LandmarkTrainTask(path, self.conf)
            if task.is_valid():
                logger.info(f"+++ Adding Trainer:: {name} => {path}")
                trainers[name] = task
            else:
                logger.warning(f"--- No Trainer:: {task.error or path}")
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}
