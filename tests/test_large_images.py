"""A very large radiograph (10k x 10k pixels) loads and is fitted to the network size with its landmarks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from monai_ext.data import LoadRadiographd
from monai_ext.transforms import FitToShaped, points_to_original


@pytest.mark.slow
def test_10k_by_10k_image_loads_and_landmarks_follow(tmp_path):
    size = 10_000
    ramp = (np.arange(size, dtype=np.uint16) * 65535 // (size - 1)).astype(np.uint16)
    raster = np.broadcast_to(ramp[None, :], (size, size)).copy()  # brightness grows with x
    raster[7000:7100, 2500:2600] = 0  # a dark square whose centre is at x = 2549.5, y = 7049.5
    path = tmp_path / "huge.png"
    Image.fromarray(raster).save(path)
    del raster
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        d = LoadRadiographd(keys="image")({"image": str(path), "spacing": [0.05, 0.05], "landmarks": torch.tensor([[2549.5, 7049.5]])})
    assert tuple(d["image"].shape) == (1, size, size)
    d = FitToShaped("image", (256, 256))(d)
    x, y = d["landmarks"][0].tolist()
    assert d["image"][0, round(x), round(y)] < 0.5 * d["image"][0, round(x) + 6, round(y)]  # on the dark square
    np.testing.assert_allclose(points_to_original(d["landmarks"], d["image"]).numpy(), [[2549.5, 7049.5]], atol=1e-3)
