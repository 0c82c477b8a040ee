"""scripts/kneel_comparison.py end to end on tiny synthetic knees: every arm is trained and evaluated, and the
report has a finite error per arm and ROI group."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kneel_comparison", REPO / "scripts" / "kneel_comparison.py")
kneel_comparison = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kneel_comparison)


@pytest.mark.slow
def test_comparison_runs_every_arm(tmp_path: Path):
    report = kneel_comparison.compare(out_dir=str(tmp_path / "cmp"), n_train=4, n_val=2, n_test=2, epochs=1, size=32,
                                      base_width=4, depth=2, batch_size=2, val_interval=1, scratch=True, num_workers=1)
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["results"] == report["results"]
    assert report["settings"]["num_workers"] == 1 and report["settings"]["section"] == "test"
    arms = report["results"]
    # single stage, stage 1 alone, two stage (transfer) with/without refinement, stage 2 from scratch (both)
    assert len(arms) == 6 and "stage 1 alone (its ROI centres)" in arms
    # each arm is a bundle root of its own: the two-stage arm trained both runs (train.json, then stage2.json); the
    # scratch arm only stage 2 (--init_from_stage1 false), evaluated end to end with the two-stage arm's stage 1
    cmp = tmp_path / "cmp"
    assert (cmp / "two_stage" / "models" / "model.pt").is_file()
    assert (cmp / "two_stage" / "models" / "stage2" / "model.pt").is_file()
    assert (cmp / "two_stage_scratch" / "models" / "stage2" / "model.pt").is_file()
    assert not (cmp / "two_stage_scratch" / "models" / "model.pt").exists()
    assert not (cmp / "single" / "models" / "stage2").exists()
    assert (cmp / "two_stage_scratch" / "test_refine0" / "groups.json").is_file()
    for arm, parts in arms.items():
        # per-knee rows, except for stage 1 alone, whose outputs are the two knee centres
        assert "all" in parts and (bool(set(parts) - {"all"}) != arm.startswith("stage 1")), f"{arm}: {set(parts)}"
        for row in parts.values():
            assert math.isfinite(row["mre"]) and row["mre"] > 0
