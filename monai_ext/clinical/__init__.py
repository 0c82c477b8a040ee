"""Clinical measurements from landmarks: Cobb angles of the spine."""

from monai_ext.clinical.cobb import CobbAngles, cobb_angles, is_s_shaped, smape, vertebra_angle_matrix
