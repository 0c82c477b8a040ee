"""TimeBudget: whole epochs while the next one fits the wall-clock budget, the learning rate decayed by the time
used, resumable; on a plain ignite engine with a fake clock, then wired into the SCN bundle (``max_minutes``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bundle_workflow import bundle_workflow
from ignite.engine import Engine, Events

from monai_ext.handlers import TimeBudget

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "scn"


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _engine(clock: FakeClock, step_s: float, lrs: list[float], optimizer: torch.optim.Optimizer) -> Engine:
    def step(engine, batch):
        lrs.append(optimizer.param_groups[0]["lr"])
        clock.t += step_s

    return Engine(step)


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_stops_after_the_last_epoch_that_fits_and_decays_the_learning_rate_by_time():
    clock, lrs, opt = FakeClock(), [], _optimizer(1.0)
    engine = _engine(clock, 10.0, lrs, opt)  # 4 iterations x 10 s: 40 s per epoch
    budget = TimeBudget(minutes=2.5, optimizer=opt, end_factor=0.1, clock=clock)  # 150 s
    budget.attach(engine)
    engine.run(range(4), max_epochs=100)
    # after epoch 3 (120 s) another 40 s epoch would end at 160 s > 150 s
    assert engine.state.epoch == 3 and clock.t == 120.0
    assert budget.elapsed() == pytest.approx(120.0)
    expected = [1.0 - 0.9 * (10.0 * i / 150.0) for i in range(12)]  # lr set before each iteration
    assert lrs == pytest.approx(expected)


def test_validation_time_counts_and_max_epochs_still_ends_the_run():
    clock, lrs, opt = FakeClock(), [], _optimizer()
    engine = _engine(clock, 10.0, lrs, opt)
    budget = TimeBudget(minutes=2.5, clock=clock)  # no optimizer: only stops, lr untouched
    budget.attach(engine)

    @engine.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        clock.t += 20.0  # 40 s training + 20 s validation per epoch

    engine.run(range(4), max_epochs=100)
    assert engine.state.epoch == 2 and clock.t == 120.0  # a third epoch would end at 180 s
    assert set(lrs) == {1.0}
    clock2 = FakeClock()
    engine2 = _engine(clock2, 1.0, [], opt)
    TimeBudget(minutes=10, clock=clock2).attach(engine2)
    engine2.run(range(2), max_epochs=3)
    assert engine2.state.epoch == 3


def test_resume_continues_the_budget_and_the_schedule():
    clock, lrs, opt = FakeClock(), [], _optimizer(2.0)
    engine = _engine(clock, 10.0, lrs, opt)
    budget = TimeBudget(minutes=2.5, optimizer=opt, end_factor=0.0, clock=clock)
    budget.attach(engine)
    engine.run(range(4), max_epochs=1)  # interrupted after 40 s
    state = budget.state_dict()
    assert state == {"used_s": pytest.approx(40.0), "base_lrs": [2.0]}

    opt2, lrs2 = _optimizer(0.123), []  # the resumed optimizer's own lr is not the schedule's base
    clock2 = FakeClock()
    engine2 = _engine(clock2, 10.0, lrs2, opt2)
    resumed = TimeBudget(minutes=2.5, optimizer=opt2, end_factor=0.0, clock=clock2)
    resumed.attach(engine2)
    resumed.load_state_dict(state)
    engine2.run(range(4), max_epochs=100)
    # 40 s used before: one more 40 s epoch fits (ends at 80 s of 150 s), a third (120 s) too, a fourth would not
    assert engine2.state.epoch == 2 and resumed.elapsed() == pytest.approx(120.0)
    assert lrs2[0] == pytest.approx(2.0 * (1.0 - 40.0 / 150.0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="minutes"):
        TimeBudget(0)
    with pytest.raises(ValueError, match="end_factor"):
        TimeBudget(1, end_factor=-0.5)


def test_scn_cpu_recipe_max_minutes_replaces_the_epoch_schedule_and_is_checkpointed(tmp_path: Path):
    wf = bundle_workflow(BUNDLE, ["train.json", "cpu.json"], "training", tmp_path, max_epochs=50, max_minutes=0.01, batch_size=2)
    budget = wf.parser.get_parsed_content("train#parts#time_budget")
    assert isinstance(budget, TimeBudget) and budget.budget_s == pytest.approx(0.6) and budget.end_factor == 0.1
    trainer = wf.parser.get_parsed_content("train#trainer")
    optimizer = wf.parser.get_parsed_content("optimizer")
    lr0 = optimizer.param_groups[0]["lr"]
    wf.run()
    wf.finalize()
    assert 1 <= trainer.state.epoch < 50  # stopped by the budget, whole epochs
    assert optimizer.param_groups[0]["lr"] < lr0  # decayed by the time used, not reset by an epoch scheduler
    saved = torch.load(tmp_path / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert saved["time_budget"]["used_s"] > 0.6 * 0.5 and saved["time_budget"]["base_lrs"] == [lr0]
    assert (tmp_path / "models" / "model.pt").is_file()
    # without max_minutes: no budget, the epoch-indexed LinearLR
    wf2 = bundle_workflow(BUNDLE, ["train.json"], "training", tmp_path / "plain", max_epochs=1)
    assert wf2.parser.get_parsed_content("train#parts#time_budget") is None
    assert "time_budget" not in wf2.parser.get_parsed_content("train#parts#checkpoint")
