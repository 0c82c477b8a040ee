"""Workflow pieces: batch preparation (and the adversarial trainer)."""

from monai_ext.engines.prepare_batch import PrepareLandmarkBatch
from monai_ext.engines.skip_failed import skip_failed_items
from monai_ext.engines.adversarial import AdversarialPoseEvents, AdversarialPoseTrainer, checkpoint_objects
from monai_ext.engines.interactive import (
    InteractiveCurveWriter,
    InteractiveKeypointEvaluator,
    IterativeHintInferer,
    LossTermsToOutput,
    MorphologyWarmup,
    PrepareInteractiveBatch,
    click_protocol,
    select_worst_landmark,
)
from monai_ext.engines.kneel import (
    LandmarkGroupSummaryWriter,
    MixupTrainer,
    PrepareTwoStageBatch,
    TwoStageInferer,
    init_from_checkpoint,
    require_checkpoints,
)
