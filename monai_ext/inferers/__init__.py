"""Inferers of the landmark workflows (MONAI ``Inferer`` subclasses)."""

from monai_ext.inferers.hints import IterativeHintInferer
from monai_ext.inferers.two_stage import TwoStageInferer
