"""Landmark transforms, MONAI style: array versions in ``array``, dictionary versions in ``dictionary``."""

from monai_ext.transforms.array import (
    FitToShape,
    GenerateLandmarkHeatmap,
    LandmarkFlip,
    LandmarksOutsideToNaN,
    MatchHistogram,
    RandLandmarkElastic,
    move_points,
    outside_to_nan,
    points_to_mm,
    points_to_original,
)
from monai_ext.transforms.dictionary import (
    ApplyWithLandmarksd,
    DecodeHeatmapd,
    EnsureLandmarksd,
    FitToShaped,
    GenerateLandmarkHeatmapd,
    LandmarksOutsideToNaNd,
    LandmarksToOriginald,
    MatchHistogramd,
    RandLandmarkElasticd,
    RandLandmarkFlipd,
)
from monai_ext.transforms.mix import Mixup, mixup_loss, two_pass_mixup_loss
from monai_ext.transforms.select import SelectLast, SelectLastd
from monai_ext.transforms.hints import (
    AppendHintMapsd,
    ApplyClicksd,
    ClicksToHintsd,
    RandClickSimulationd,
    attach_clicks,
    click_count_probabilities,
    kim2022_click_count_probabilities,
    encode_hints,
    parse_clicks,
)
from monai_ext.transforms.batch_affine import BatchRandAffine
from monai_ext.transforms.batch_elastic import (
    BatchRandAffineElastic,
    evaluation_transforms,
    per_sample_augmentation,
    targets_on_device,
)
from monai_ext.transforms.occlusion import (
    BlobOcclusion,
    BorderCrop,
    OcclusionSubset,
    RandLandmarkOcclusion,
    RandLandmarkOcclusiond,
    insert_occlusion,
)
from monai_ext.transforms.roi import (
    LandmarkGroupCentresd,
    LandmarkGroups,
    RandRoiCropsd,
    ResampleToSpacingd,
    RoiCropsd,
    RoiResample,
    roi_affine,
)
