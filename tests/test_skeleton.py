"""One skeleton for every bundle: each bundle's train.json pulls every shared id from ``bundles/common`` or writes it
itself, the config files are not copies of each other, and a new bundle made from the skeleton by
``scripts/new_bundle.py`` trains with nothing else."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from bundle_workflow import bundle_workflow
from conftest import BUNDLES, REPO

from monai_ext.bundle import SKELETON, include_block, missing_includes, skeleton_ids

sys.path.insert(0, str(REPO / "scripts"))
import new_bundle  # noqa: E402

CONFIGS = sorted((REPO / "bundles").glob("*/configs/*.json"))


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_every_bundle_pulls_or_writes_every_skeleton_id(bundle: Path):
    assert not missing_includes(bundle), f"{bundle.name}/configs/train.json lacks skeleton ids {missing_includes(bundle)}"
    own = json.loads((bundle / "configs" / "train.json").read_text())
    pulled = [k for k, v in own.items() if isinstance(v, str) and v.startswith(f"%{SKELETON}#")]
    assert pulled, f"{bundle.name}: pulls nothing from the skeleton"


def test_the_include_block_covers_the_skeleton_with_literal_shells():
    block = include_block()
    assert list(block) == list(skeleton_ids())
    for shell in ("train", "validate"):  # literal dicts: MONAI's tracking appends to their handler lists
        assert isinstance(block[shell], dict) and block[shell]["handlers"] == []
    assert block["output_dir"] == skeleton_ids()["output_dir"]  # copied: MONAI builds a path from its config text
    assert block["network"] == f"%{SKELETON}#network"
    assert "network_def" not in block  # the method's own


def test_no_two_config_files_are_identical_and_the_total_is_small():
    digests: dict[str, Path] = {}
    for path in CONFIGS:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest not in digests, f"{path} is a copy of {digests[digest]}"
        digests[digest] = path
    lines = sum(len(p.read_text().splitlines()) for p in CONFIGS)
    assert lines <= 2800, f"bundles/*/configs/*.json: {lines} lines"


@pytest.mark.slow
def test_a_new_bundle_from_the_skeleton_trains_one_epoch(tmp_path: Path):
    """MONAI's BasicUNet regressing heatmaps as a fifth bundle: its configs are the skeleton's include block plus a
    network, a phantom and a recipe; it trains, evaluates and infers with the shared pieces only."""
    network = {"_target_": "monai_ext.networks.BasicUNet", "spatial_dims": 2, "in_channels": 1,
               "out_channels": "$@header['num_landmarks']", "features": [8, 8, 16, 32, 64, 8]}
    root = Path(new_bundle.create("toy", json.dumps(network), "limbs", str(tmp_path / "bundles")))
    written = [p for p in (root / "configs").glob("*.json")]
    train = json.loads((root / "configs" / "train.json").read_text())
    own = {k: v for k, v in train.items() if not (isinstance(v, str) and v.startswith("%")) and k not in ("train", "validate")}
    assert set(own) - {"bundle_root", "output_dir"} == {"synthetic_kind", "spatial_size", "batch_size", "learning_rate",
                                                        "max_epochs", "heatmap_sigma", "heatmap_amplitude", "network_def"}
    assert len((root / "configs" / "train.json").read_text().splitlines()) < 60
    assert not missing_includes(root) and {p.name for p in written} == {"train.json", "metadata.json", "quick.json"}

    wf = bundle_workflow(root, ["train.json"], "training", tmp_path / "run")
    wf.run()
    wf.finalize()
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 1
    assert (tmp_path / "run" / "models" / "model.pt").is_file()
    for run_id, names in (("evaluating", ["evaluate.json"]), ("inference", ["inference.json"])):
        wf = bundle_workflow(root, names, run_id, tmp_path / "run")
        wf.run()
        wf.finalize()
    summary = json.loads((tmp_path / "run" / "eval" / "evaluation" / "summary.json").read_text())
    assert summary["n_landmarks"] == 6 and summary["n_images"] > 0
    assert (tmp_path / "run" / "eval" / "inference" / "predictions.json").is_file()


def test_the_config_file_value_of_each_workflow_on_the_command_line():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "monai_ext", "config_files", "bundles/kneel", "evaluate",
                          "--variants", "hand.json"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("['bundles/kneel/configs/train.json','bundles/kneel/configs/hand.json',"
                           "'bundles/common/configs/evaluate.json','bundles/kneel/configs/two_stage.json',"
                           "'bundles/kneel/configs/group_report.json']")
    from monai_ext.__main__ import config_files

    assert config_files("bundles/scn", "train", ["quick.json"]) == \
        "['bundles/scn/configs/train.json','bundles/scn/configs/quick.json']"
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        config_files("bundles/scn", "inference", extra="nothing.json")
