"""Engines (trainers, evaluators) of the landmark workflows and their batch preparation."""

from monai_ext.engines.prepare_batch import PrepareLandmarkBatch
from monai_ext.engines.skip_failed import skip_failed_items
from monai_ext.engines.adversarial import AdversarialPoseEvents, AdversarialPoseTrainer, checkpoint_objects
from monai_ext.engines.interactive import (
    InteractiveKeypointEvaluator,
    PrepareInteractiveBatch,
    click_protocol,
    select_worst_landmark,
)
from monai_ext.engines.kneel import (
    MixupTrainer,
    PrepareTwoStageBatch,
    init_from_checkpoint,
    require_checkpoints,
)
