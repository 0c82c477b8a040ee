"""A datalist with no validation images (e.g. a fold of --n_val 0): the bundle keeps its last weights as
models/model.pt (nothing to choose a checkpoint on), so evaluation on the test section works; with validation images the
trainer gets no such saver (the best-metric checkpoint is the model)."""

from __future__ import annotations

import json
from pathlib import Path

from bundle_workflow import bundle_workflow

from conftest import BUNDLES
from monai_ext.data.synthetic import generate_dataset

SCN = next(b for b in BUNDLES if b.name == "scn")


def test_without_validation_the_last_weights_are_the_model(tmp_path: Path):
    datalist = generate_dataset("hand", tmp_path / "data", n_train=4, n_val=2, n_test=2)
    doc = json.loads(datalist.read_text())
    doc["validation"] = []
    datalist.write_text(json.dumps(doc))
    wf = bundle_workflow(SCN, ["train.json"], "training", tmp_path, max_epochs=1, batch_size=2)
    assert wf.parser.get_parsed_content("train#parts#final_saver") is not None
    wf.run()
    wf.finalize()
    model = tmp_path / "models" / "model.pt"
    assert model.is_file()
    ev = bundle_workflow(SCN, ["evaluate.json"], "evaluating", tmp_path)
    assert ev.parser.get_parsed_content("eval_section") == "test"
    ev.run()
    ev.finalize()
    summary = json.loads((tmp_path / "eval" / "evaluation" / "summary.json").read_text())
    assert summary["n_images"] == 2


def test_with_validation_no_final_saver(tmp_path: Path):
    generate_dataset("hand", tmp_path / "data", n_train=2, n_val=1, n_test=1)
    wf = bundle_workflow(SCN, ["train.json"], "training", tmp_path, max_epochs=1)
    assert wf.parser.get_parsed_content("train#parts#final_saver") is None
