"""KNEEL training resumes where it stopped: stage 1 and stage 2 each keep their own resume checkpoint
(``checkpoint.pt``, ``checkpoint_stage2.pt``: model, optimiser, scheduler, random state), and a run interrupted in
stage 2 continues there with the losses of the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
from bundle_workflow import bundle_workflow
from ignite.engine import Events

from monai_ext.handlers import loss_from_output

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "kneel"


def _losses(tmp: Path, data: Path, stop_stage2_after_epoch: int | None = None, **overrides) -> dict[str, list[float]]:
    wf = bundle_workflow(BUNDLE, ["train.json"], "training", tmp, max_epochs=2, dataset_dir=str(data), **overrides)
    losses: dict[str, list[float]] = {"stage1": [], "stage2": []}
    for stage, engine_id in (("stage1", "train#trainer"), ("stage2", "stage2#train#trainer")):
        trainer = wf.parser.get_parsed_content(engine_id)
        trainer.add_event_handler(Events.ITERATION_COMPLETED,
                                  lambda e, s=stage: losses[s].append(float(loss_from_output(e.state.output))))
    if stop_stage2_after_epoch is not None:
        wf.parser.get_parsed_content("stage2#train#trainer").add_event_handler(
            Events.EPOCH_COMPLETED(once=stop_stage2_after_epoch), lambda e: e.terminate())
    wf.run()
    wf.finalize()
    return losses


@pytest.mark.slow
def test_interrupted_stage2_resumes_with_the_uninterrupted_losses(tmp_path: Path):
    data = tmp_path / "data"
    full = _losses(tmp_path / "full", data)
    head = _losses(tmp_path / "split", data, stop_stage2_after_epoch=1)
    assert (tmp_path / "split" / "models" / "checkpoint.pt").is_file()
    assert (tmp_path / "split" / "models" / "checkpoint_stage2.pt").is_file()
    tail = _losses(tmp_path / "split", data, resume=True)
    n1, n2 = len(full["stage1"]), len(full["stage2"])
    assert n1 > 0 and n2 > 0 and n2 % 2 == 0
    assert head["stage1"] == full["stage1"]
    assert head["stage2"] == full["stage2"][: n2 // 2]
    assert tail["stage1"] == [], "the completed stage 1 trained again"
    assert tail["stage2"] == pytest.approx(full["stage2"][n2 // 2:], rel=1e-5), "stage 2 did not continue where it stopped"
