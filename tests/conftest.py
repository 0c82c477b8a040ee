"""Shared test setup: every bundle under ``bundles/`` and the facts the tests read from its own files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from monai_ext.bundle import bundle_folders

REPO = Path(__file__).resolve().parents[1]
#: every bundle (a folder with configs/train.json and configs/metadata.json): a new one is tested with no test edit
BUNDLES = bundle_folders(REPO / "bundles")
BUNDLE_IDS = [b.name for b in BUNDLES]


def train_config(bundle: Path) -> dict:
    """The bundle's own ``configs/train.json`` as written (its macros into the skeleton unresolved)."""
    return json.loads((bundle / "configs" / "train.json").read_text())


def resolved_config(files: list[str]) -> dict:
    """The merged config of ``files`` with the skeleton's macros resolved (what MONAI parses)."""
    from monai_ext.bundle import read_config

    parser = read_config(files)
    parser.resolve_macro_and_relative_ids()
    return parser.get()


def synthetic_kind(bundle: Path) -> str:
    """The synthetic phantom a bundle trains on by default (its ``synthetic_kind``)."""
    return train_config(bundle)["synthetic_kind"]


def network_format(bundle: Path) -> dict:
    """``network_data_format`` of the bundle's metadata: input/output channels and spatial shapes."""
    return json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]


@pytest.fixture(autouse=True, scope="session")
def _repository_root():
    """The bundles reference the shared skeleton by repository-relative paths (MONAI resolves ``%file`` macros against
    the working directory): run every test from the repository root."""
    old = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(old)
