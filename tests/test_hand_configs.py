"""The bundles' hand-set configs (``configs/hand.json`` of kneel, interactive_kp and adv_posenet) merge after
train.json and train, evaluate and infer end to end; here on the synthetic hand phantom (37 landmarks, like the hand
set)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bundle_workflow import bundle_workflow, train_bundle

REPO = Path(__file__).resolve().parents[1]


def _run(bundle: Path, configs: list[str], run_id: str, tmp: Path, **overrides):
    wf = bundle_workflow(bundle, configs, run_id, tmp, synthetic_kind="hand", **overrides)
    wf.run()
    wf.finalize()
    return wf


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kneel", "interactive_kp", "adv_posenet"])
def test_hand_config_trains_evaluates_and_infers(name: str, tmp_path: Path):
    bundle = REPO / "bundles" / name
    hand = json.loads((bundle / "configs" / "hand.json").read_text())
    # quick.json (merged last) shrinks the networks; hand.json's 40 mm KNEEL ROIs at quick's 2 mm would be 20 px,
    # not a multiple of the quick hourglass's 32: 1.25 mm gives 32 px
    small = {"roi_spacing": 1.25} if name == "kneel" else {}
    train_bundle(bundle, tmp_path, ("hand.json",), synthetic_kind="hand", **small)
    wf = bundle_workflow(bundle, ["train.json", "hand.json"], "training", tmp_path, synthetic_kind="hand", **small)
    parser = wf.parser
    assert parser.get_parsed_content("header")["num_landmarks"] == 37
    if name == "kneel":
        groups = parser.get_parsed_content("groups")
        # one ROI per landmark, one stage-2 output per landmark
        assert parser.get_parsed_content("roi_groups") == [[k] for k in range(37)] and groups.num_groups == 37
        assert hand["roi_slots"] == "landmarks" and groups.group_size == 37 and groups.owned(5) == [5]
        assert (tmp_path / "models" / "stage2" / "model.pt").is_file()
    elif name == "adv_posenet":
        assert parser.get_parsed_content("optimizer").param_groups[0]["lr"] == hand["learning_rate"] == 1e-3
        assert parser.get_parsed_content("loss").spatial_reduction == "sum"  # the default now (train.json)
    else:
        pairs = parser.get_parsed_content("morphology_pairs")
        assert len(pairs) == 30 and parser.get_parsed_content("loss").morphology.pairs.shape[0] == 30
    assert (tmp_path / "models" / "model.pt").is_file()
    # evaluation and inference repeat nothing of the training: the models' records give sizes, spacings and names
    _run(bundle, ["hand.json", "evaluate.json"], "evaluating", tmp_path)
    summary = json.loads((tmp_path / "eval" / "evaluation" / "summary.json").read_text())
    assert summary["n_images"] > 0 and summary["n_landmarks"] == 37
    files = [str(tmp_path / "data" / i["image"]) for i in json.loads((tmp_path / "data" / "datalist.json").read_text())["test"][:2]]
    _run(bundle, ["hand.json", "inference.json"], "inference", tmp_path, input=files, output_dir=str(tmp_path / "pred"))
    doc = json.loads((tmp_path / "pred" / "inference" / "predictions.json").read_text())
    assert len(doc["predictions"]) == 2 and all(r["error"] is None for r in doc["predictions"])
    assert all(np.isfinite([p["x"] for p in r["landmarks"]]).all() for r in doc["predictions"])
