"""Networks of the four methods."""

from monai_ext.networks.discriminators import ConfidenceDiscriminator, PoseDiscriminator
from monai_ext.networks.hourglass import StackedHourglass
from monai_ext.networks.kneel import KneelHourglass
from monai_ext.networks.scn import SpatialConfigurationNet
from monai_ext.networks.hrnet import HRNet
