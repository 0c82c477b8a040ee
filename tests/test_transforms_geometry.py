"""Coordinates are sacred: every transform that moves the image moves the landmarks with it.

A landmark is drawn into the image as a small Gaussian blob; after each transform the blob's centroid
(the anatomy) must sit where the transformed landmark says it is, and mapping the landmark back gives
the original pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from monai.transforms import Compose, RandAffined, Resized, Spacingd, SpatialPadd

from monai_ext.data.readers import spacing_affine
from monai_ext.transforms.array import FitToShape, LandmarkFlip, RandLandmarkElastic, move_points, outside_to_nan, points_to_original
from monai_ext.transforms.dictionary import (
    ApplyWithLandmarksd,
    DecodeHeatmapd,
    FitToShaped,
    GenerateLandmarkHeatmapd,
    LandmarksOutsideToNaNd,
    LandmarksToOriginald,
    RandLandmarkElasticd,
    RandLandmarkFlipd,
)


def blob_image(points: np.ndarray, shape: tuple[int, int], spacing=(0.5, 0.3), sigma: float = 3.0) -> MetaTensor:
    """(K, W, H) image with one Gaussian blob per channel at each point; affine from spacing."""
    gx, gy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    chans = [np.exp(-((gx - x) ** 2 + (gy - y) ** 2) / (2 * sigma**2)) for x, y in points]
    img = MetaTensor(torch.tensor(np.stack(chans), dtype=torch.float32), affine=spacing_affine(spacing))
    img.meta["original_affine"] = img.affine.clone()
    img.meta["spacing"] = np.asarray(spacing)
    return img


def centroids(img: torch.Tensor, threshold: float = 0.05) -> np.ndarray:
    """Intensity centroid of each channel ``(K, 2)`` (exact for a blob moved by an affine map)."""
    arr = np.asarray(img.detach().cpu(), dtype=np.float64)
    gx, gy = np.meshgrid(np.arange(arr.shape[1]), np.arange(arr.shape[2]), indexing="ij")
    out = []
    for c in arr:
        w = np.where(c > threshold * c.max(), c, 0.0)
        out.append([(w * gx).sum() / w.sum(), (w * gy).sum() / w.sum()])
    return np.asarray(out)


POINTS = np.array([[40.3, 31.7], [75.8, 20.2], [20.0, 55.5]])
SHAPE = (120, 80)


@pytest.mark.parametrize(
    "transform",
    [
        Resized("image", (180, 130), mode="bilinear"),
        Resized("image", (60, 50), mode="area"),
        SpatialPadd("image", (140, 96)),
        Spacingd("image", pixdim=(0.4, 0.4)),
        RandAffined("image", prob=1.0, rotate_range=0.5, scale_range=0.2, translate_range=6, padding_mode="zeros"),
    ],
    ids=["resize-up", "resize-area-down", "pad", "spacing", "rand-affine"],
)
def test_monai_spatial_transforms_move_landmarks(transform):
    wrapped = ApplyWithLandmarksd(transform)
    wrapped.set_random_state(7)
    d = wrapped({"image": blob_image(POINTS, SHAPE), "landmarks": torch.tensor(POINTS, dtype=torch.float32)})
    np.testing.assert_allclose(d["landmarks"].numpy(), centroids(d["image"]), atol=0.05)
    back = points_to_original(d["landmarks"], d["image"]).numpy()
    np.testing.assert_allclose(back, POINTS, atol=1e-3)


def test_fit_to_shape_keeps_physical_aspect_and_landmarks():
    img = blob_image(POINTS, SHAPE, spacing=(0.5, 0.3))  # 60 mm x 24 mm
    out = FitToShape((64, 64), mode="bilinear")(img)
    assert tuple(out.shape[1:]) == (64, 64)
    spacing = torch.linalg.norm(out.affine[:2, :2], dim=0)
    assert float(spacing[0]) == pytest.approx(60 / 64, rel=1e-3)  # the long physical side fills W
    assert float(spacing[1]) == pytest.approx(60 / 64, rel=0.03)  # isotropic up to whole-pixel rounding
    d = FitToShaped("image", (64, 64), mode="bilinear")({"image": img, "landmarks": torch.tensor(POINTS)})
    np.testing.assert_allclose(d["landmarks"].numpy(), centroids(d["image"]), atol=0.1)
    np.testing.assert_allclose(points_to_original(d["landmarks"], d["image"]).numpy(), POINTS, atol=1e-3)


def test_fit_to_shape_stretch_fills_the_output_and_maps_landmarks_back():
    """``keep_aspect=False`` (Kim et al.'s 512 x 256 spine input): no padding, anisotropic pixels, exact landmarks."""
    img = blob_image(POINTS, SHAPE, spacing=(0.5, 0.3))
    out = FitToShape((48, 64), mode="bilinear", keep_aspect=False)(img)
    assert tuple(out.shape[1:]) == (48, 64)
    spacing = torch.linalg.norm(out.affine[:2, :2], dim=0)
    assert float(spacing[0]) == pytest.approx(SHAPE[0] * 0.5 / 48, rel=1e-6)
    assert float(spacing[1]) == pytest.approx(SHAPE[1] * 0.3 / 64, rel=1e-6)
    d = FitToShaped("image", (48, 64), mode="bilinear", keep_aspect=False)({"image": img, "landmarks": torch.tensor(POINTS)})
    np.testing.assert_allclose(d["landmarks"].numpy(), centroids(d["image"]), atol=0.15)
    np.testing.assert_allclose(points_to_original(d["landmarks"], d["image"]).numpy(), POINTS, atol=1e-3)


def test_flip_permutes_left_right_and_moves_points():
    img = blob_image(POINTS, SHAPE)
    flip = LandmarkFlip(spatial_axis=0, flip_pairs=[[0, 1]])
    out, pts = flip(img, torch.tensor(POINTS))
    # the mirrored blob of landmark 0 is now labelled landmark 1 and vice versa
    expected = np.array([[SHAPE[0] - 1 - POINTS[1, 0], POINTS[1, 1]], [SHAPE[0] - 1 - POINTS[0, 0], POINTS[0, 1]], [SHAPE[0] - 1 - POINTS[2, 0], POINTS[2, 1]]])
    np.testing.assert_allclose(pts.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(centroids(out)[[1, 0, 2]], pts.numpy(), atol=0.05)
    # and back to the original pixels (after undoing the permutation)
    np.testing.assert_allclose(points_to_original(pts, out).numpy()[[1, 0, 2]], POINTS, atol=1e-6)
    d = RandLandmarkFlipd(flip_pairs=[[0, 1]], prob=1.0)({"image": img, "landmarks": torch.tensor(POINTS)})
    np.testing.assert_allclose(d["landmarks"].numpy(), expected, atol=1e-5)


def test_elastic_moves_landmarks_with_the_anatomy():
    img = blob_image(POINTS, SHAPE, sigma=2.0)
    elastic = RandLandmarkElastic(prob=1.0, num_control_points=4, magnitude=4.0)
    elastic.set_random_state(3)
    out, pts = elastic(img, torch.tensor(POINTS, dtype=torch.float32))
    assert not np.allclose(pts.numpy(), POINTS, atol=0.5)  # it really deformed
    np.testing.assert_allclose(pts.numpy(), centroids(out, threshold=0.3), atol=0.35)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)


def test_outside_points_become_missing_not_clamped():
    pts = torch.tensor([[-0.6, 3.0], [-0.4, 3.0], [10.0, 19.6], [10.0, 19.4], [float("nan"), float("nan")]])
    out = outside_to_nan(pts, (20, 20))
    assert torch.isnan(out[0]).all() and torch.isnan(out[2]).all() and torch.isnan(out[4]).all()
    assert torch.equal(out[1], pts[1]) and torch.equal(out[3], pts[3])
    d = Compose([ApplyWithLandmarksd(Resized("image", (60, 40))), LandmarksOutsideToNaNd()])(
        {"image": blob_image(POINTS, SHAPE), "landmarks": torch.tensor([[130.0, 5.0], [10.0, 10.0]])}
    )
    assert torch.isnan(d["landmarks"][0]).all() and torch.isfinite(d["landmarks"][1]).all()


def test_heatmap_subpixel_and_missing_channel():
    img = MetaTensor(torch.zeros(1, 64, 48), affine=spacing_affine((0.2, 0.2)))
    pts = torch.tensor([[20.3, 30.7], [float("nan"), float("nan")], [63.2, 1.0]])
    d = GenerateLandmarkHeatmapd(sigma=0.5, sigma_unit="mm")({"image": img, "landmarks": pts})
    hm, mask = d["heatmap"], d["landmark_mask"]
    assert hm.shape == (3, 64, 48) and mask.tolist() == [1.0, 0.0, 1.0]
    assert float(hm[1].abs().max()) == 0.0
    # sigma 0.5 mm at 0.2 mm/px = 2.5 px; the peak is analytically at the sub-pixel point
    d2 = DecodeHeatmapd(keys="heatmap", method="quadratic")({"image": img, "heatmap": hm[[0]]})
    np.testing.assert_allclose(d2["pred_landmarks"][0].numpy(), [20.3, 30.7], atol=0.05)


def test_decode_maps_low_resolution_heatmaps_to_image_pixels():
    img = MetaTensor(torch.zeros(1, 64, 64))
    stride = 4
    x, y = 21.5, 40.25  # image pixels; on the heatmap: (h + 0.5) * 4 - 0.5 = p  ->  h = (p + 0.5) / 4 - 0.5
    hx, hy = (x + 0.5) / stride - 0.5, (y + 0.5) / stride - 0.5
    gx, gy = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    hm = torch.tensor(np.exp(-((gx - hx) ** 2 + (gy - hy) ** 2) / 2.0)[None], dtype=torch.float32)
    d = DecodeHeatmapd(method="quadratic")({"image": img, "pred": hm})
    np.testing.assert_allclose(d["pred_landmarks"][0].numpy(), [x, y], atol=0.2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    spacing=st.tuples(st.floats(0.1, 0.3), st.floats(0.1, 0.3)),
    flip=st.booleans(),
    elastic=st.booleans(),
    missing=st.booleans(),
)
def test_round_trip_load_resample_augment_decode(seed, spacing, flip, elastic, missing):
    """Property over random parameters: load → fit → random affine → (flip) → (elastic) → heatmap.

    * every landmark inside the output sits on its anatomy (the blob drawn at it) within 0.5 px;
    * points pushed out are NaN, never clamped; a NaN landmark stays NaN;
    * without the (non-invertible) elastic step, decoding the heatmap and mapping back returns the
      original pixel within 0.5 px, and the mm output is pixels × spacing.
    """
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(90, 140)), int(rng.integers(90, 140)))
    pts = np.stack([rng.uniform(25, shape[0] - 25, 3), rng.uniform(25, shape[1] - 25, 3)], -1)
    if missing:
        pts[2] = np.nan
    img = blob_image(np.nan_to_num(pts, nan=-100.0), shape, spacing=spacing, sigma=2.5)
    chain = [
        FitToShaped("image", (96, 96), mode="bilinear"),
        ApplyWithLandmarksd(RandAffined("image", prob=1.0, rotate_range=0.3, scale_range=0.15, translate_range=8, padding_mode="zeros")),
    ]
    if flip:
        chain.append(RandLandmarkFlipd(flip_pairs=[[0, 1]], prob=1.0))
    if elastic:
        chain.append(RandLandmarkElasticd(prob=1.0, num_control_points=4, magnitude=2.0))
    chain += [LandmarksOutsideToNaNd(), GenerateLandmarkHeatmapd(sigma=2.0)]
    t = Compose(chain)
    t.set_random_state(seed)
    d = t({"image": img, "landmarks": torch.tensor(pts, dtype=torch.float32)})
    lm = d["landmarks"]
    perm = [1, 0, 2] if flip else [0, 1, 2]  # landmark k now shows the anatomy of original landmark perm[k]
    inside = torch.isfinite(lm).all(-1)
    assert ((lm[inside] >= -0.5) & (lm[inside] <= 95.5)).all()
    if missing:
        assert not bool(inside[2])
    anatomy = centroids(d["image"], threshold=0.2)
    for k in range(3):
        channel_max = float(d["image"][perm[k]].max())
        if bool(inside[k]) and channel_max > 0.5:  # the blob is fully in view
            np.testing.assert_allclose(lm[k].numpy(), anatomy[perm[k]], atol=0.5)
    if elastic:
        return
    d = DecodeHeatmapd(keys="heatmap", method="quadratic")(d)
    d = LandmarksToOriginald()(d)
    decoded = d["pred_landmarks"].numpy()
    for k in range(3):
        if bool(inside[k]):
            np.testing.assert_allclose(decoded[k], pts[perm[k]], atol=0.5)
    np.testing.assert_allclose(d["pred_landmarks_mm"].numpy(), decoded * np.asarray(spacing), atol=1e-4)


def test_move_points_identity_and_nan():
    a = spacing_affine((0.5, 0.25))
    pts = torch.tensor([[1.0, 2.0], [float("nan"), float("nan")]])
    out = move_points(pts, a, a)
    assert torch.allclose(out[0], pts[0].double()) and torch.isnan(out[1]).all()
