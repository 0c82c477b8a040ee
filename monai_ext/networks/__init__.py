"""Networks of the methods; each records its construction arguments (:mod:`monai_ext.networks.base`)."""

from monai.networks import nets as _monai_nets

from monai_ext.networks.base import network_definition, record_arguments
from monai_ext.networks.discriminators import ConfidenceDiscriminator, PoseDiscriminator
from monai_ext.networks.hourglass import StackedHourglass
from monai_ext.networks.kneel import KneelHourglass
from monai_ext.networks.scn import SpatialConfigurationNet
from monai_ext.networks.hrnet import HRNet, HintSEGate, load_backbone_weights, with_backbone_weights


@record_arguments
class BasicUNet(_monai_nets.BasicUNet):
    """MONAI's ``BasicUNet`` (``(B, C_in, *S) -> (B, C_out, *S)``), unchanged, recording its construction arguments so
    that a bundle built on it describes its trained model (the ``unet_heatmap`` baseline bundle)."""
