"""Two-stage ROI geometry: group centres, the mirror permutation, ROI crops that map back to the original pixels,
and the end-to-end two-stage inferer on a synthetic image with known landmarks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ext.data.readers import spacing_affine
from monai_ext.inferers import TwoStageInferer
from monai_ext.transforms import (
    LandmarkGroupCentresd,
    LandmarkGroups,
    RandRoiCropsd,
    ResampleToSpacingd,
    RoiCropsd,
    RoiResample,
    move_points,
    points_to_original,
)

NAN = float("nan")
# two "knees" of two landmarks each: the left one (2, 3) is the mirror image of the right one (0, 1) about x = 99.5;
# in each knee the first landmark is above (smaller y) the second one.
POINTS = torch.tensor([[40.3, 50.2], [60.7, 70.9], [158.7, 50.2], [138.3, 70.9]], dtype=torch.float64)
SPACING = (1.2, 1.3)


def _groups() -> LandmarkGroups:
    return LandmarkGroups([[0, 1], [2, 3]], flip=[False, True], flip_pairs=[[0, 2], [1, 3]], names=["R", "L"])


def _image(points: torch.Tensor = POINTS, shape=(200, 120), sigma: float = 1.5) -> MetaTensor:
    """A blob per landmark, in an image with spacing SPACING and the reader's meta (original_affine, spacing)."""
    u = torch.arange(shape[0], dtype=torch.float64)[:, None]
    v = torch.arange(shape[1], dtype=torch.float64)[None]
    img = sum(torch.exp(-((u - p[0]) ** 2 + (v - p[1]) ** 2) / (2 * sigma**2)) for p in points)
    affine = spacing_affine(SPACING)
    meta = {"original_affine": affine.clone(), "spacing": np.asarray(SPACING)}
    return MetaTensor(img[None].float(), affine=affine, meta=meta)


def _centroids(images: torch.Tensor) -> torch.Tensor:
    """Intensity centroids ``(..., 2)`` in pixels of ``(..., W, H)`` images: an exact 'predictor' of one blob."""
    w = torch.as_tensor(images, dtype=torch.float64)
    u = torch.arange(w.shape[-2], dtype=torch.float64)[:, None]
    v = torch.arange(w.shape[-1], dtype=torch.float64)[None]
    total = w.sum((-2, -1))
    return torch.stack([(w * u).sum((-2, -1)) / total, (w * v).sum((-2, -1)) / total], -1)


def test_group_centres_and_missing_groups():
    groups = LandmarkGroups([[0, 1], [2, 3]])
    pts = torch.tensor([[0.0, 0.0], [2.0, 4.0], [NAN, NAN], [NAN, NAN]])
    centres = groups.centres(pts)
    torch.testing.assert_close(centres[0], torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.isnan(centres[1]).all()  # the whole group missing
    pts[2] = torch.tensor([10.0, 10.0])  # one of two present: the centre is the present one
    torch.testing.assert_close(groups.centres(pts)[1], torch.tensor([10.0, 10.0], dtype=torch.float64))
    out = LandmarkGroupCentresd("landmarks", groups)({"landmarks": pts})
    assert out["landmarks"].shape == (2, 2) and out["landmarks"].dtype == torch.float32


def test_flip_permutation_applied_and_undone():
    names = [f"{p}_{s}" for s in "RL" for p in ("a", "b", "c")]
    # the left group is listed in another order than the right one: the permutation comes from flip_pairs
    groups = LandmarkGroups([[0, 1, 2], [5, 3, 4]], flip=[False, True], flip_pairs=[[0, 3], [1, 4], [2, 5]])
    assert groups.indices(0) == [0, 1, 2]
    assert groups.indices(1) == [3, 4, 5]  # slot j of the mirrored ROI holds the partner of the reference's j
    assert groups.slot_names(names) == ["a_R", "b_R", "c_R"]
    pts = torch.arange(12, dtype=torch.float64).reshape(6, 2)
    per_roi = [groups.gather(pts, g) for g in range(2)]
    torch.testing.assert_close(per_roi[1], pts[[3, 4, 5]])
    torch.testing.assert_close(groups.scatter(per_roi), pts)  # undone
    # unflipped groups are aligned position by position
    plain = LandmarkGroups([[0, 1, 2], [5, 3, 4]])
    assert plain.indices(1) == [5, 3, 4]


def test_bad_groups():
    with pytest.raises(ValueError, match="same size"):
        LandmarkGroups([[0, 1], [2]])
    with pytest.raises(ValueError, match="no flip pair"):
        LandmarkGroups([[0, 1], [2, 3]], flip=[False, True])
    with pytest.raises(ValueError, match="not its landmarks"):
        LandmarkGroups([[0, 1], [2, 3]], flip=[False, True], flip_pairs=[[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="reference"):
        LandmarkGroups([[0, 1], [2, 3]], flip=[True, False], flip_pairs=[[0, 2], [1, 3]])


@pytest.mark.parametrize("spacing", [0.45, 2.5])  # finer and coarser (anti-aliased) than the image
@pytest.mark.parametrize("flip", [False, True])
def test_crop_predict_map_back_within_half_a_pixel(spacing, flip):
    img = _image(POINTS[:1])
    centre = POINTS[0] + torch.tensor([3.7, -2.2], dtype=torch.float64)  # off-centre ROI, sub-pixel centre
    crop = RoiResample(spacing, (48, 40))(img, centre, flip=flip)
    assert crop.shape == (1, 48, 40)
    torch.testing.assert_close(crop.affine[0, 0].abs(), torch.tensor(spacing, dtype=torch.float64))
    assert (crop.affine[0, 0] < 0) == flip
    expected_in_crop = move_points(POINTS[:1], img.affine, crop.affine)[0]
    found = _centroids(crop[0])
    assert float((found - expected_in_crop).norm()) < 0.5  # the landmark moved into the crop is where its blob is
    back = points_to_original(found[None], crop)[0]
    assert float((back - POINTS[0]).norm()) < 0.5  # original pixels
    if flip:  # mirrored: x runs the other way in the crop
        unflipped = RoiResample(spacing, (48, 40))(img, centre)
        torch.testing.assert_close(crop[0], unflipped[0].flip(0), atol=1e-4, rtol=0)


def test_resample_to_spacing_whole_image():
    img = _image()
    out = ResampleToSpacingd("image", spacing=2.0, spatial_size=(128, 64))({"image": img, "landmarks": POINTS.float()})
    assert out["image"].shape == (1, 128, 64)
    torch.testing.assert_close(out["image"].affine.diagonal()[:2], torch.tensor([2.0, 2.0], dtype=torch.float64))
    # the image centre stays in the middle of the grid
    centre = torch.tensor([[99.5, 59.5]], dtype=torch.float64)
    torch.testing.assert_close(move_points(centre, img.affine, out["image"].affine), torch.tensor([[63.5, 31.5]], dtype=torch.float64))
    torch.testing.assert_close(points_to_original(out["landmarks"], out["image"]).float(), POINTS.float(), atol=1e-4, rtol=0)


def test_roi_crops_one_sample_per_group_and_jitter():
    img = _image()
    groups = _groups()
    data = {"image": img, "landmarks": POINTS.float(), "spacing": torch.tensor(SPACING)}
    items = RoiCropsd("image", groups, spacing=0.8, spatial_size=(64, 64))(data)
    assert [d["roi"] for d in items] == [0, 1]
    for g, d in enumerate(items):
        assert d["image"].shape == (1, 64, 64) and d["landmarks"].shape == (2, 2)
        assert torch.equal(d["spacing"], data["spacing"])  # other keys are kept
        torch.testing.assert_close(points_to_original(d["landmarks"], d["image"]).float(), POINTS[groups.indices(g)].float(), atol=1e-4, rtol=0)
    # the mirrored left knee looks like the right one: same landmark positions, same pixels
    torch.testing.assert_close(items[0]["landmarks"], items[1]["landmarks"], atol=1e-3, rtol=0)
    torch.testing.assert_close(items[0]["image"], items[1]["image"], atol=1e-3, rtol=0)

    rand = RandRoiCropsd("image", groups, spacing=0.8, spatial_size=(64, 64), jitter_mm=4.0)
    rand.set_random_state(0)
    for d, ref in zip(rand(data), items):
        shift_mm = (d["landmarks"] - ref["landmarks"]).abs() * 0.8
        assert 0 < float(shift_mm.max()) <= 4.0 + 1e-3

    missing = dict(data, landmarks=torch.tensor([[1.0, 2.0], [3.0, 4.0], [NAN, NAN], [NAN, NAN]]))
    assert [d["roi"] for d in RoiCropsd("image", groups, spacing=0.8, spatial_size=(64, 64))(missing)] == [0]


class _FixedCentres(torch.nn.Module):
    """Stage-1 stand-in: returns known ROI centres (in the stage-1 input's pixels)."""

    def __init__(self, centres: torch.Tensor):
        super().__init__()
        self.register_buffer("centres", centres.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.centres[None].expand(x.shape[0], -1, -1)


class _TopBottomBlobs(torch.nn.Module):
    """Stage-2 stand-in: slot 0 = the blob in the upper half of the ROI, slot 1 = the blob in the lower half."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1]
        top, bottom = x.clone(), x.clone()
        top[..., h // 2 :] = 0
        bottom[..., : h // 2] = 0
        return _centroids(torch.cat([top, bottom], 1)).float()


@pytest.mark.parametrize("refine_steps", [0, 1])
def test_two_stage_inferer_returns_landmarks_in_order_and_in_place(refine_steps):
    original = _image()
    groups = _groups()
    stage1 = ResampleToSpacingd("image", spacing=4.0, spatial_size=(64, 32), landmark_keys=[])({"image": original})["image"]
    # stage 1 is a few mm off: the ROIs are not centred on the knees
    true_centres = move_points(groups.centres(POINTS), original.affine, stage1.affine)
    net1 = _FixedCentres(true_centres + torch.tensor([[0.8, -0.6], [-0.7, 0.5]], dtype=torch.float64))
    inferer = TwoStageInferer(_TopBottomBlobs(), groups, spacing=0.7, spatial_size=(64, 64), refine_steps=refine_steps)
    batch = MetaTensor(stage1.as_tensor()[None], affine=stage1.affine)
    pred = inferer(batch, net1, originals=[original], affines=stage1.affine[None])
    assert pred.shape == (1, 4, 2) and pred.dtype == torch.float32
    stage1_pred = MetaTensor(torch.zeros(1, 64, 32), affine=stage1.affine, meta={"original_affine": original.affine})
    in_original = points_to_original(pred[0], stage1_pred)
    # the mirrored ROI's "upper" blob (slot 0) is landmark 2, the partner of landmark 0: permutation undone
    assert float((in_original - POINTS).norm(dim=-1).max()) < 0.5
    with pytest.raises(ValueError, match="original images"):
        inferer(batch, net1)


def test_landmark_slots_one_output_per_landmark_and_roi_reads_only_its_own():
    # one ROI per landmark, the left knee's ROIs mirrored: slot j is landmark j (its partner in a mirrored ROI)
    groups = LandmarkGroups([[0], [1], [2], [3]], flip=[False, False, True, True], flip_pairs=[[0, 2], [1, 3]], slots="landmarks")
    assert groups.group_size == 4 and groups.slot_names(["a", "b", "c", "d"]) == ["a", "b", "c", "d"]
    assert groups.owned(1) == [1] and groups.owned(2) == [0]  # mirrored landmark 2 sits in landmark 0's slot
    gathered = groups.gather(POINTS, 2)
    torch.testing.assert_close(gathered[0], POINTS[2])
    assert bool(torch.isnan(gathered[1:]).all())  # the other landmarks are not this ROI's: no loss on them
    # each ROI contributes only its own landmark; the rest of its outputs is ignored
    per_roi = [torch.full((4, 2), 100.0 + g) for g in range(4)]
    out = groups.scatter(per_roi)
    torch.testing.assert_close(out[:, 0], torch.tensor([100.0, 101.0, 102.0, 103.0]))
    # groups may differ in size with landmark slots, not with group slots
    assert LandmarkGroups([[0, 1], [2]], slots="landmarks").owned(0) == [0, 1]
    with pytest.raises(ValueError, match="same size"):
        LandmarkGroups([[0, 1], [2]])
    with pytest.raises(ValueError, match="slots"):
        LandmarkGroups([[0]], slots="bogus")


def test_landmark_slot_crops_and_two_stage_inference_map_back():
    groups = LandmarkGroups([[0], [1], [2], [3]], flip=[False, False, True, True], flip_pairs=[[0, 2], [1, 3]], slots="landmarks")
    data = {"image": _image(), "landmarks": POINTS.float()}
    items = RoiCropsd("image", groups, spacing=0.5, spatial_size=(32, 32))(data)
    assert [d["roi"] for d in items] == [0, 1, 2, 3]
    for g, d in enumerate(items):
        slot = groups.owned(g)[0]
        assert int(torch.isfinite(d["landmarks"]).all(-1).sum()) == 1
        centre = (torch.tensor(d["image"].shape[1:], dtype=torch.float32) - 1) / 2  # the ROI is centred on its landmark
        torch.testing.assert_close(d["landmarks"][slot], centre, atol=1e-3, rtol=0)
    rand = RandRoiCropsd("image", groups, spacing=0.5, spatial_size=(32, 32), num_rois=2)
    rand.set_random_state(0)
    drawn = [tuple(d["roi"] for d in rand(data)) for _ in range(20)]
    assert all(len(r) == 2 and len(set(r)) == 2 for r in drawn) and len(set(drawn)) > 1
    assert [d["roi"] for d in rand.deterministic()(data)] == [0, 1, 2, 3]

    class Centroid(torch.nn.Module):  # every output slot = the blob nearest the ROI centre (a single-blob ROI)
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return _centroids(x).expand(-1, 4, -1).float()

    original = _image()
    stage1 = ResampleToSpacingd("image", spacing=4.0, spatial_size=(64, 32), landmark_keys=[])({"image": original})["image"]
    centres = move_points(POINTS, original.affine, stage1.affine) + 0.5  # stage 1 two mm off
    inferer = TwoStageInferer(Centroid(), groups, spacing=0.25, spatial_size=(32, 32), refine_steps=1)
    pred = inferer(MetaTensor(stage1.as_tensor()[None], affine=stage1.affine), _FixedCentres(centres), originals=[original], affines=stage1.affine[None])
    in_original = points_to_original(pred[0], MetaTensor(torch.zeros(1, 64, 32), affine=stage1.affine, meta={"original_affine": original.affine}))
    assert float((in_original - POINTS).norm(dim=-1).max()) < 0.5
