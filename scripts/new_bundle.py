"""Create a landmark bundle on the shared skeleton (``bundles/common/configs/train.json``), or list what the skeleton
has that existing bundles do not pull in yet.

    python scripts/new_bundle.py create my_unet --network '{"_target_": "monai_ext.networks.BasicUNet",
        "spatial_dims": 2, "in_channels": 1, "out_channels": "$@header[\\'num_landmarks\\']"}' --synthetic_kind hand
    python scripts/new_bundle.py check          # every bundle's missing skeleton ids (none: exit 0)

``create`` writes ``bundles/<name>/``: ``configs/train.json`` (the skeleton's include block, one macro per shared id,
then the method: synthetic phantom, recipe, network), ``configs/metadata.json`` (``network_data_format`` from the
default phantom's landmarks), ``configs/quick.json`` (a 1-epoch smoke variant), ``configs/logging.conf``,
``docs/README.md`` and ``LICENSE``. The bundle then trains with ``python -m monai.bundle run training --config_file
bundles/<name>/configs/train.json`` and is picked up by the tests of every bundle. Edit its train.json to change what
the method changes (loss, augmentation, trainer, ...): write the id yourself instead of its macro.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import fire

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from monai_ext.bundle import bundle_folders, include_block, missing_includes  # noqa: E402
from monai_ext.data.synthetic import PHANTOMS, generate_dataset  # noqa: E402
from monai_ext.utils import atomic_write  # noqa: E402

RECIPE = {"spatial_size": [128, 128], "batch_size": 4, "learning_rate": 0.001, "max_epochs": 50,
          "heatmap_sigma": 2.0, "heatmap_amplitude": 100.0}


def _flat(obj: Any) -> bool:
    values = obj.values() if isinstance(obj, dict) else obj
    return all(not isinstance(v, (dict, list)) or (isinstance(v, list) and _flat(v)) for v in values)


def _dump(obj: Any, indent: int = 0) -> str:
    """JSON with one entry per line and flat values (an include shell, a network definition, a channel list) on one
    line (the bundles' style)."""
    pad = " " * 4 * (indent + 1)
    if isinstance(obj, dict) and (indent == 0 or not _flat(obj)):
        items = [f"{pad}{json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * 4 * indent + "}"
    return json.dumps(obj)


def _write(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def _landmark_names(kind: str, work: Path) -> list[str]:
    datalist = generate_dataset(kind, work, n_train=1, n_val=0, n_test=0)
    return list(json.loads(Path(datalist).read_text())["landmarks"])


def create(
    name: str,
    network: Any = None,
    synthetic_kind: str = "hand",
    out: str = str(REPO / "bundles"),
    recipe: Any = None,
    description: str = "",
    force: bool = False,
) -> str:
    """Create bundle ``name`` in ``out`` (default ``bundles/``). ``network``: its ``network_def`` (a JSON string or a
    dict; default MONAI's BasicUNet); ``recipe``: values replacing the defaults (spatial size, batch, learning rate,
    epochs, heatmap sigma and peak). Returns the bundle folder."""
    if synthetic_kind not in PHANTOMS:
        raise ValueError(f"synthetic_kind must be one of {sorted(PHANTOMS)}, got {synthetic_kind!r}")
    root = Path(out) / name
    if root.exists() and not force:
        raise FileExistsError(f"{root} exists (force=True overwrites its generated files)")
    network = json.loads(network) if isinstance(network, str) else network
    network = network or {"_target_": "monai_ext.networks.BasicUNet", "spatial_dims": 2, "in_channels": 1,
                          "out_channels": "$@header['num_landmarks']", "features": [32, 32, 64, 128, 256, 32]}
    recipe = {**RECIPE, **(json.loads(recipe) if isinstance(recipe, str) else recipe or {})}
    train = {"bundle_root": f"$monai_ext.bundle.resolve_bundle_root('{name}')", **include_block(),
             "synthetic_kind": synthetic_kind, **recipe, "network_def": network}
    _write(root / "configs" / "train.json", _dump(train) + "\n")

    names = _landmark_names(synthetic_kind, root / "data" / f"synthetic_{synthetic_kind}")
    size = recipe["spatial_size"]
    meta = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": "created from the shared skeleton (scripts/new_bundle.py)"},
        "monai_version": "1.6.1", "pytorch_version": "2.14.1", "numpy_version": "1.26.4",
        "required_packages_version": {"monai_ext": "0.1.0"},
        "name": name,
        "task": "Anatomical landmark localization in 2D radiographs by heatmap regression",
        "description": description or f"{name}: a heatmap-regression bundle on the shared landmark skeleton.",
        "authors": "monai_ext landmark toolkit contributors",
        "copyright": "Copyright (c) monai_ext landmark toolkit contributors",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "XR", "num_channels": 1,
                                 "spatial_shape": size, "dtype": "float32", "value_range": [-1, 1],
                                 "is_patch_data": False, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "heatmap", "format": "heatmap", "modality": "none",
                                 "num_channels": len(names), "spatial_shape": size, "dtype": "float32",
                                 "value_range": [0, recipe["heatmap_amplitude"]], "is_patch_data": False,
                                 "channel_def": {str(i): n for i, n in enumerate(names)}}},
        },
    }
    _write(root / "configs" / "metadata.json", _dump(meta) + "\n")
    quick = {"_comment": "A small, fast variant for CPU smoke runs and tests: merge after train.json.",
             "max_epochs": 1, "spatial_size": [64, 64], "num_workers": 0}
    _write(root / "configs" / "quick.json", _dump(quick) + "\n")
    shutil.copyfile(REPO / "bundles" / "common" / "configs" / "logging.conf", root / "configs" / "logging.conf")
    shutil.copyfile(REPO / "LICENSE", root / "LICENSE")
    if not (root / "docs" / "README.md").exists():
        _write(root / "docs" / "README.md", f"# {name}\n\n{meta['description']}\n")
    shutil.rmtree(root / "data", ignore_errors=True)  # the phantom only gave the landmark names
    return str(root)


def check(root: str = str(REPO / "bundles")) -> dict[str, list[str]]:
    """Every bundle's skeleton ids that its train.json lacks (``{}`` when all are complete; exit code 1 otherwise)."""
    missing = {b.name: m for b in bundle_folders(root) if (m := missing_includes(b))}
    if missing:
        print(json.dumps(missing, indent=2))
        print("add these lines to each train.json (monai_ext.bundle.include_block() prints them)", file=sys.stderr)
        sys.exit(1)
    return missing


if __name__ == "__main__":
    fire.Fire({"create": create, "check": check})
