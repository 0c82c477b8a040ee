"""What the bundle configs call besides components: where a bundle lives, which landmarks its datalist has, and the
record a trained model carries of its own configuration (:class:`ModelConfig`).

The bundles share one skeleton, ``bundles/common/configs/*.json``, that their configs pull in with MONAI macros
(``"%bundles/common/configs/train.json#network"``). MONAI resolves such paths against the working directory, so
``python -m monai.bundle`` runs from the repository root; :func:`read_config` reads a bundle's configs from anywhere
(tests, the MONAI Label app) by making those paths absolute.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_ext.data.datalist import read_datalist
from monai_ext.errors import LandmarkDataError
from monai_ext.networks.base import _plain, network_definition
from monai_ext.utils import atomic_write

__all__ = [
    "REPO_ROOT",
    "ModelConfig",
    "ModelConfigMismatch",
    "absolute_macros",
    "bundle_folders",
    "config_files",
    "training_stages",
    "datalist_header",
    "concat",
    "device_recipe",
    "merged",
    "read_config",
    "resolve_bundle_root",
]

#: the repository holding ``bundles/`` (the skeleton's macro paths are relative to it)
REPO_ROOT = Path(__file__).resolve().parent.parent
_REPO_BUNDLES = REPO_ROOT / "bundles"


def resolve_bundle_root(name: str) -> str:
    """The folder of bundle ``name``, wherever the command is run from.

    In order: the bundle folder of the ``--config_file`` given to ``python -m monai.bundle`` (so a bundle
    copied elsewhere, e.g. into a MONAI Label app, finds itself), the current directory when it is a bundle
    named ``name`` (model-zoo style ``cd bundle && python -m monai.bundle run``), else ``bundles/<name>``
    of this repository. An explicit ``--bundle_root`` override always wins over all of these.
    """
    argv = sys.argv
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value:
            first = value.strip("[]'\" ").split(",")[0].strip("'\" ")
            configs = Path(first).resolve().parent
            if configs.name == "configs" and (configs / "metadata.json").is_file():
                return str(configs.parent)
    cwd = Path.cwd()
    if cwd.name == name and (cwd / "configs" / "metadata.json").is_file():
        return str(cwd)
    return str(_REPO_BUNDLES / name)


def datalist_header(path: str | os.PathLike) -> dict[str, Any]:
    """``landmarks`` (names), ``num_landmarks``, ``flip_pairs``, ``spacing_mode`` and ``unit`` (``"mm"``, or ``"px"``
    for ``spacing_mode: "pixel"``) of a datalist, without its entries."""
    data = read_datalist(path)
    names = data.get("landmarks")
    if not names:
        raise LandmarkDataError(f"{path}: the datalist has no 'landmarks' list of names")
    return {
        "landmarks": [str(n) for n in names],
        "num_landmarks": len(names),
        "flip_pairs": [[int(i) for i in p] for p in data.get("flip_pairs", []) or []],
        "spacing_mode": data.get("spacing_mode", "image"),
        "unit": "px" if data.get("spacing_mode") == "pixel" else "mm",
    }


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``: how a bundle extends a dict of the skeleton that it pulls in with a macro,
    e.g. ``"model_values": {"_target_": "monai_ext.bundle.merged", "base": "%<skeleton>#model_values", "extra": {...}}``."""
    return {**base, **extra}


def concat(lists: Sequence[Sequence[Any]]) -> list[Any]:
    """The items of ``lists`` in order: how a bundle adds to a list of the skeleton, e.g. a flip in front of the
    shared augmentation: ``{"_target_": "monai_ext.bundle.concat", "lists": [[flip], "%<skeleton>#augmentation"]}``."""
    return [item for part in lists for item in part]


def device_recipe(recipes: Mapping[str, Mapping[str, Any]], recipe: str, device: Any, bundle: str = "") -> dict[str, Any]:
    """The values of the training recipe ``recipe`` from ``recipes`` (name -> values).

    ``recipe="auto"`` chooses by ``device``: ``"paper"`` (the authors' recipe) on a CUDA device, ``"cpu"`` otherwise.
    When the CPU stands in for a GPU-sized recipe, a warning says so and how to override it (``--recipe paper``), so
    that a run's log always tells which recipe it trained. Values a config sets directly (an overlay such as
    ``cpu.json``) take precedence over the recipe's, because the ids that read a recipe value are replaced.

    Raises:
        ValueError: ``recipe`` is neither ``"auto"`` nor a name in ``recipes``.
    """
    import logging

    name = str(recipe)
    if name == "auto":
        name = "paper" if torch.device(device).type == "cuda" else "cpu"
        if name == "cpu" and "paper" in recipes:
            logging.getLogger("monai_ext.bundle").warning(
                f"{bundle or 'bundle'}: no CUDA device, so training uses the 'cpu' recipe ({_short(dict(recipes['cpu']), 300)}) "
                f"instead of the authors' GPU-sized 'paper' recipe ({_short(dict(recipes['paper']), 300)}); "
                "--recipe paper trains the authors' recipe anyway."
            )
    if name not in recipes:
        raise ValueError(f"device_recipe: unknown recipe {recipe!r}; expected 'auto' or one of {sorted(recipes)}.")
    return dict(recipes[name])


class ModelConfigMismatch(ValueError):
    """An explicit setting contradicts the configuration a model was trained with; the message lists each one."""


class ModelConfig:
    """The configuration a trained model was trained with, stored with its weights.

    Training puts one in ``models/model.pt`` beside the network's state (``{"model": ..., "model_config": ...}``:
    written in the same file, so weights and description never disagree) and a readable copy in
    ``models/model_config.json``. Evaluation, inference, export and MONAI Label rebuild the network from it and
    take the values the model depends on from it, so nothing given at training has to be repeated.

    Three parts:

    * ``network_def``: the MONAI component that builds the network (:func:`~monai_ext.networks.network_definition`).
    * ``values``: what the weights depend on (landmark header, input size, intensity handling, decoding, ...): the
      configs of a trained model read these back, and :meth:`check` makes a different explicit setting an error.
    * ``defaults``: what a trained model suggests but a user may change (the datalist it was trained on).

    Args:
        network: the trained network (wrappers such as DDP are looked through).
        values: ``{config id: value}``, JSON types.
        defaults: ``{config id: value}``, JSON types.
        bundle: name of the bundle that trained it (informative).
    """

    key = "model_config"
    json_name = "model_config.json"

    def __init__(
        self,
        network: torch.nn.Module | None = None,
        values: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        bundle: str | None = None,
    ) -> None:
        self.source = "<training>"
        self.config: dict[str, Any] = {
            "bundle": bundle,
            "network_def": None if network is None else network_definition(network),
            "values": _plain(dict(values or {}), "values"),
            "defaults": _plain(dict(defaults or {}), "defaults"),
        }

    # ignite/MONAI checkpoint protocol: the record travels in the checkpoint files
    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.config = copy.deepcopy(dict(state))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelConfig:
        """The record in checkpoint ``path`` (``models/model.pt``). A missing file or a checkpoint without a record
        is an error naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no trained model there (train the bundle first, or give --ckpt_path)")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            raise LandmarkDataError(f"{path}: not a readable checkpoint ({e})") from e
        state = checkpoint.get(cls.key) if isinstance(checkpoint, Mapping) else None
        if state is None:
            raise LandmarkDataError(
                f"{path}: the checkpoint holds no '{cls.key}' (it was written before trained models described "
                "themselves, or by another tool); train it again with the bundle's train.json"
            )
        record = cls()
        record.load_state_dict(state)
        record.source = str(path)
        return record

    def write_json(self, path: str | os.PathLike) -> None:
        """Write the readable copy (atomically; rank 0 only in a distributed run)."""
        from monai_ext.utils import rank

        if rank() > 0:
            return
        with atomic_write(path) as f:
            json.dump(self.config, f, indent=2)
            f.write("\n")

    def network(self, **options: Any) -> torch.nn.Module:
        """A new, untrained instance of the recorded network; ``options`` change arguments that do not change its
        weights (e.g. ``final_only=True``: a stacked hourglass returning its last stack only)."""
        from monai.bundle import ConfigParser

        definition = self.config.get("network_def")
        if not definition:
            raise LandmarkDataError(f"{self.source}: the model config records no network")
        return ConfigParser({"network_def": {**copy.deepcopy(definition), **options}}).get_parsed_content("network_def")

    def __getitem__(self, key: str) -> Any:
        for part in ("values", "defaults"):
            if key in self.config.get(part, {}):
                return copy.deepcopy(self.config[part][key])
        raise KeyError(f"{self.source}: the model config has no {key!r} (it has {sorted(self.keys())})")

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self) -> list[str]:
        return [*self.config.get("values", {}), *self.config.get("defaults", {})]

    def check(
        self, current: Mapping[str, Any],
        advice: str = "drop these overrides: the trained model's own values are used without them",
    ) -> None:
        """Raise :class:`ModelConfigMismatch` listing every id of ``current`` whose value differs from the recorded
        one (``values`` only; ids the record does not have are not checked), followed by ``advice``."""
        recorded = self.config.get("values", {})
        problems = []
        for key, value in current.items():
            if key in recorded and _plain(value, key) != recorded[key]:
                problems.append(f"  - {key}: trained with {_short(recorded[key])}, given {_short(_plain(value, key))}")
        if problems:
            raise ModelConfigMismatch(
                f"{self.source}: the configuration differs from the one the model was trained with:\n"
                + "\n".join(problems)
                + f"\n({advice})"
            )


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def absolute_macros(config: Any, root: str | os.PathLike = REPO_ROOT) -> Any:
    """``config`` with the file part of every ``"%path.json#id"`` macro made absolute against ``root`` when it is not
    a file relative to the working directory (so a bundle's configs can be read from any directory)."""
    from monai.bundle import ConfigParser

    if isinstance(config, dict):
        return {k: absolute_macros(v, root) for k, v in config.items()}
    if isinstance(config, list):
        return [absolute_macros(v, root) for v in config]
    if isinstance(config, str) and config.startswith("%"):
        path, ids = ConfigParser.split_path_id(config[1:])
        if path and not Path(path).is_absolute() and not Path(path).is_file() and (Path(root) / path).is_file():
            return "%" + str(Path(root) / path) + ("#" + ids if ids else "")
    return config


def read_config(files: str | os.PathLike | Sequence[str | os.PathLike], **overrides: Any):
    """A MONAI ``ConfigParser`` of ``files`` (merged in order) and ``overrides``, readable from any working directory
    (:func:`absolute_macros`), not yet parsed."""
    from monai.bundle import ConfigParser

    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    content = ConfigParser.load_config_files([str(f) for f in files])
    parser = ConfigParser(absolute_macros(content))
    parser.update(absolute_macros(overrides))
    return parser


#: the workflows of a bundle and the configs they merge: training is the bundle's own ``train.json`` (plus a stage
#: overlay); evaluation and inference of a trained model merge the shared ``evaluate.json`` / ``inference.json`` and
#: the overlays the bundle names for them in its ``model_overlays``
WORKFLOWS = ("train", "evaluate", "inference")


def bundle_folders(root: str | os.PathLike = _REPO_BUNDLES) -> list[Path]:
    """The bundles under ``root``: folders with ``configs/train.json`` and ``configs/metadata.json`` (the skeleton,
    ``common``, has no metadata and is not one)."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if (p / "configs" / "train.json").is_file() and (p / "configs" / "metadata.json").is_file())


def _common_configs(bundle: Path) -> Path:
    beside = bundle.parent / "common" / "configs"
    return beside if beside.is_dir() else _REPO_BUNDLES / "common" / "configs"


def _own_config(bundle: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(bundle) / "configs" / "train.json").read_text())


def training_stages(bundle: str | os.PathLike) -> list[str | None]:
    """The training runs of a bundle in order: ``None`` for ``train.json`` itself, then each overlay named in its
    ``training_stages`` (KNEEL: ``["stage2.json"]``, trained after stage 1 and initialised from it)."""
    stages = _own_config(bundle).get("training_stages", [])
    return [None, *stages]


def config_files(
    bundle: str | os.PathLike,
    workflow: str = "train",
    variants: Sequence[str] = (),
    stage: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The config files of a bundle's ``workflow`` in merge order: ``configs/train.json``, the bundle's ``variants``
    (e.g. ``["hand.json"]`` or ``["quick.json"]``), then for ``"train"`` the ``stage`` overlay; for ``"evaluate"`` and
    ``"inference"`` the shared ``bundles/common/configs/{evaluate,inference}.json`` and the overlays that the bundle's
    ``train.json`` names for the workflow in ``model_overlays`` (KNEEL's two stages, interactive_kp's clicks); last the
    bundle's ``extra`` overlays (e.g. ``["evaluate_occlusion.json"]``). A trained model's record overrides what the
    variants set for the model (:class:`ModelConfig`)."""
    if workflow not in WORKFLOWS:
        raise ValueError(f"workflow must be one of {WORKFLOWS}, got {workflow!r}")
    configs = Path(bundle) / "configs"
    files = [configs / "train.json", *(configs / v for v in variants)]
    if workflow == "train":
        files += [configs / stage] if stage else []
    else:
        files.append(_common_configs(Path(bundle)) / f"{workflow}.json")
        files += [configs / f for f in _own_config(bundle).get("model_overlays", {}).get(workflow, [])]
    files += [configs / f for f in extra]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{bundle}: missing config file(s) {missing}")
    return [str(f) for f in files]


# --- the skeleton's include block -------------------------------------------------------------------------------------

#: the shared training skeleton, as a bundle's macros name it (repository-relative: MONAI resolves it from the cwd)
SKELETON = "bundles/common/configs/train.json"
#: ids a bundle copies rather than pulls: MONAI's tracking builds a path from the config text of ``output_dir``
COPIED_IDS = ("output_dir",)


def skeleton_ids(skeleton: str | os.PathLike = REPO_ROOT / SKELETON) -> dict[str, Any]:
    """The skeleton's top-level ids and their configs, in order (``train``/``validate`` are shells of children)."""
    return json.loads(Path(skeleton).read_text())


def include_block(own: Sequence[str] = (), skeleton: str | os.PathLike = REPO_ROOT / SKELETON) -> dict[str, Any]:
    """The ids a bundle's ``train.json`` pulls from the skeleton, as MONAI macros, leaving out those in ``own`` (the ids
    the bundle writes itself). ``train`` and ``validate`` are literal shells whose children are macros (and whose
    ``handlers`` are empty lists: MONAI's tracking appends to them), so overlays and the command line can set their
    children."""
    block: dict[str, Any] = {}
    for key, value in skeleton_ids(skeleton).items():
        if key in own:
            continue
        if key in ("train", "validate"):
            block[key] = {c: [] if c == "handlers" else f"%{SKELETON}#{key}#{c}" for c in value}
        elif key in COPIED_IDS:
            block[key] = value
        else:
            block[key] = f"%{SKELETON}#{key}"
    return block


def missing_includes(bundle: str | os.PathLike) -> list[str]:
    """Skeleton ids (and ``train``/``validate`` children) that a bundle's ``train.json`` neither pulls in nor writes:
    each one is a line to add (:func:`include_block` gives it)."""
    own = _own_config(bundle)
    missing = []
    for key, value in skeleton_ids().items():
        if key not in own:
            missing.append(key)
        elif key in ("train", "validate") and isinstance(own[key], dict):
            missing += [f"{key}#{c}" for c in value if c not in own[key]]
    return missing
