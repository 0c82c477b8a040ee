"""Early stopping on the validation metric (Kim et al.'s official training: patience 50 validations), wired from the
trainer's handler list so a bundle config has no trainer <-> evaluator reference cycle."""

from __future__ import annotations

import pytest
from ignite.engine import Engine, Events

from monai_ext.handlers import EarlyStopOnValidation
from monai_ext.metrics import key_metric_score
from monai_ext.metrics.ignite import LandmarkMetric


def _engines(values: list[float]) -> tuple[Engine, Engine]:
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)  # where ignite metrics complete, before the early-stop check
    def _metric(engine: Engine) -> None:
        engine.state.metrics["val_mre"] = values[min(trainer.state.epoch, len(values)) - 1]

    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    return trainer, evaluator


def test_stops_after_patience_validations_without_improvement():
    mre = LandmarkMetric(statistic="mre", unit="px")
    score = key_metric_score({"val_mre": mre})
    trainer, evaluator = _engines([5.0, 4.0, 4.5, 4.2, 4.1, 3.0, 2.0])
    EarlyStopOnValidation(evaluator, patience=3, score_function=score).attach(trainer)
    trainer.run([0], max_epochs=20)
    # best 4.0 at epoch 2; epochs 3, 4, 5 do not improve on it: stopped after epoch 5 (3.0 never seen)
    assert trainer.state.epoch == 5


def test_score_sign_follows_the_metric_and_bad_arguments_raise():
    evaluator = Engine(lambda e, b: None)
    evaluator.state.metrics = {"val_mre": 2.5, "val_sdr2": 80.0}
    assert key_metric_score({"val_mre": LandmarkMetric(statistic="mre", unit="px")})(evaluator) == -2.5
    assert key_metric_score({"val_sdr2": LandmarkMetric(statistic="sdr@2", unit="px")})(evaluator) == 80.0
    with pytest.raises(ValueError, match="one-entry"):
        key_metric_score({})
    with pytest.raises(ValueError, match="patience"):
        EarlyStopOnValidation(evaluator, patience=0, score_function=lambda e: 0.0)
