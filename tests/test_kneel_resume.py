"""KNEEL training resumes where it stopped: stage 1 and stage 2 (an overlay on stage 1) each keep their own resume
checkpoint (``models/checkpoint.pt``, ``models/stage2/checkpoint.pt``: model, optimiser, scheduler, random state), and
a stage-2 run interrupted after an epoch continues there with the losses of the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
from bundle_workflow import bundle_workflow
from ignite.engine import Events
from monai.handlers import from_engine

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "kneel"


def _losses(tmp: Path, data: Path, stage: str | None, stop_after_epoch: int | None = None, **overrides) -> list[float]:
    wf = bundle_workflow(BUNDLE, ["train.json"], "training", tmp, stage=stage, max_epochs=2, dataset_dir=str(data),
                         **overrides)
    losses: list[float] = []
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(from_engine(["loss"], first=True)(e.state.output))))
    if stop_after_epoch is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda e: e.terminate())
    wf.run()
    wf.finalize()
    return losses


@pytest.mark.slow
def test_interrupted_stage2_resumes_with_the_uninterrupted_losses(tmp_path: Path):
    data = tmp_path / "data"
    full = {s: _losses(tmp_path / "full", data, stage) for s, stage in (("stage1", None), ("stage2", "stage2.json"))}
    head = {"stage1": _losses(tmp_path / "split", data, None),
            "stage2": _losses(tmp_path / "split", data, "stage2.json", stop_after_epoch=1)}
    assert (tmp_path / "split" / "models" / "checkpoint.pt").is_file()
    assert (tmp_path / "split" / "models" / "stage2" / "checkpoint.pt").is_file()
    tail = {"stage1": _losses(tmp_path / "split", data, None, resume=True),
            "stage2": _losses(tmp_path / "split", data, "stage2.json", resume=True)}
    n1, n2 = len(full["stage1"]), len(full["stage2"])
    assert n1 > 0 and n2 > 0 and n2 % 2 == 0
    assert head["stage1"] == full["stage1"]
    assert head["stage2"] == full["stage2"][: n2 // 2]
    assert tail["stage1"] == [], "the completed stage 1 trained again"
    assert tail["stage2"] == pytest.approx(full["stage2"][n2 // 2:], rel=1e-5), "stage 2 did not continue where it stopped"
