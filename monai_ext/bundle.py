"""Helpers that bundle configs call: where the bundle lives, which landmarks its datalist has."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from monai_ext.data.datalist import read_datalist

__all__ = ["resolve_bundle_root", "datalist_header"]

_REPO_BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


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


def datalist_header(path: str) -> dict[str, Any]:
    """``landmarks`` (names), ``flip_pairs`` and ``spacing_mode`` of a datalist, without the entries."""
    data = read_datalist(path)
    names = data.get("landmarks")
    if not names:
        raise ValueError(f"{path}: the datalist has no 'landmarks' list of names")
    return {
        "landmarks": list(names),
        "num_landmarks": len(names),
        "flip_pairs": [list(p) for p in data.get("flip_pairs", []) or []],
        "spacing_mode": data.get("spacing_mode", "image"),
        "unit": "px" if data.get("spacing_mode") == "pixel" else "mm",
    }
