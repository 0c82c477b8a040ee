"""Ignite/MONAI handlers of the landmark workflows."""

from monai_ext.handlers.early_stop import EarlyStopOnValidation
from monai_ext.handlers.gradient_clipping import GradientNormClipping
from monai_ext.handlers.groups import LandmarkGroupSummaryWriter
from monai_ext.handlers.interactive import InteractiveCurveWriter, LossTermsToOutput
from monai_ext.handlers.model_selection import RestartModelSelection
from monai_ext.handlers.nan_guard import StopOnNonFiniteLoss
from monai_ext.handlers.time_budget import TimeBudget
from monai_ext.handlers.training_overlays import TrainingOverlayWriter
from monai_ext.handlers.writers import LandmarkMetricsWriter, LandmarkPredictionWriter


def attach_on_main_process(engine, *handlers) -> None:
    """Attach ``handlers`` to ``engine`` in the process that writes files (rank 0 of a distributed run, the only process
    otherwise). A bundle's ``training`` step attaches the evaluator's best-checkpoint saver this way: an evaluation on
    the same evaluator leaves it out, and every rank builds it (ignite's checkpointing synchronises the ranks when it
    is created) but only one writes."""
    from monai_ext.utils import rank

    if rank() == 0:
        for handler in handlers:
            if handler is not None:  # a handler a config leaves out (e.g. no final-weights saver when validating)
                handler.attach(engine)
