"""Early stopping on the validation metric, as a handler of the trainer (Kim et al.'s official training stops when the
validation MRE has not improved for ``patience`` validations)."""

from __future__ import annotations

from collections.abc import Callable

from ignite.engine import Engine
from monai.handlers import EarlyStopHandler

__all__ = ["EarlyStopOnValidation"]


class EarlyStopOnValidation:
    """MONAI's ``EarlyStopHandler`` on ``evaluator`` that stops the trainer this handler is attached to.

    In a bundle config, the trainer's handler list refers to the evaluator already (``ValidationHandler``); an
    ``EarlyStopHandler`` in the evaluator's list would have to refer back to the trainer, a reference cycle the
    config parser rejects. Attached to the trainer, this handler closes the loop at run time.

    Args:
        evaluator: the validation engine whose completed runs are scored.
        patience: validations without improvement before the trainer stops (an improvement resets it).
        score_function: ``score(evaluator) -> float``, higher is better
            (:func:`monai_ext.metrics.key_metric_score`).
        min_delta: the smallest increase of the score that counts as an improvement.
    """

    def __init__(self, evaluator: Engine, patience: int, score_function: Callable[[Engine], float], min_delta: float = 0.0):
        if int(patience) < 1:
            raise ValueError(f"EarlyStopOnValidation: patience must be >= 1, got {patience}.")
        self.evaluator = evaluator
        self.patience = int(patience)
        self.score_function = score_function
        self.min_delta = float(min_delta)

    def attach(self, engine: Engine) -> None:
        EarlyStopHandler(self.patience, self.score_function, trainer=engine, min_delta=self.min_delta).attach(self.evaluator)
