"""BatchRandAffineElastic: affine + elastic deformation of a batch in one resampling, landmarks moved along
(pixel-centre convention, (C, W, H) layout on a non-square image); the same field as the per-sample
RandLandmarkElastic; and its wiring into the scn fast path (augment_on_device)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from bundle_workflow import bundle_workflow
from test_batch_affine import _blobs, _centroids

from monai_ext.transforms import RandLandmarkElastic
from monai_ext.transforms.batch_affine import BatchRandAffine
from monai_ext.transforms.batch_elastic import BatchRandAffineElastic, sample_field

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "unet_heatmap"
SHAPE = (64, 80)  # (W, H)


def _points(b: int = 4, k: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.stack([14 + 36 * torch.rand(b, k, generator=g), 16 + 48 * torch.rand(b, k, generator=g)], -1)


def test_without_deformation_it_is_the_affine():
    images, points = torch.rand(4, 2, *SHAPE), _points()
    kwargs = dict(rotate_range=0.4, scale_range=0.1, translate_range=4.0, flip_prob=0.5, flip_pairs=[[0, 1]], seed=7)
    ref_img, ref_pts = BatchRandAffine(**kwargs)(images, points)
    aug = BatchRandAffineElastic(elastic_prob=0.0, **kwargs)
    out, moved = aug(images, points)
    assert not aug.field.any()  # drawn after the affine: the affine draws are BatchRandAffine's
    torch.testing.assert_close(out, ref_img, atol=1e-4, rtol=0)
    torch.testing.assert_close(moved, ref_pts, atol=1e-4, rtol=0, equal_nan=True)


def test_landmarks_follow_the_deformed_image():
    """Warp images whose two channels are the input's x and y pixel coordinates: wherever a landmark moved to,
    the warped coordinates read back its input position (exact up to the bilinear interpolation of a smooth map)."""
    points = _points()
    x = torch.arange(SHAPE[0], dtype=torch.float32)[:, None].expand(SHAPE)
    y = torch.arange(SHAPE[1], dtype=torch.float32)[None, :].expand(SHAPE)
    coords = torch.stack([x, y])[None].expand(4, -1, -1, -1).contiguous()
    aug = BatchRandAffineElastic(rotate_range=0.3, scale_range=0.1, translate_range=3.0, elastic_prob=1.0,
                                 elastic_control_points=5, elastic_magnitude=1.5, seed=4)
    out, moved = aug(coords, points)
    assert aug.field.shape == (4, 2, *SHAPE) and aug.field.abs().amax() > 2.0  # a clearly non-affine deformation
    assert torch.isfinite(moved).all()
    read = sample_field(out, moved)  # the warped coordinate maps at the moved landmarks
    torch.testing.assert_close(read.double(), points.double(), atol=0.05, rtol=0)
    # the affine alone would put them elsewhere
    affine_only = BatchRandAffine().move_landmarks(points, aug.matrix, None, SHAPE)
    assert (affine_only - moved.double()).norm(dim=-1).max() > 0.5
    # and the blob of a landmark lands there (centroid: loose, the blob itself is deformed)
    blobs, moved_again = aug.apply(_blobs(points, SHAPE, sigma=1.5), points, aug.matrix, aug.flipped, aug.field)
    torch.testing.assert_close(moved_again, moved)
    assert (_centroids(blobs) - moved.double()).norm(dim=-1).max() < 0.35


def test_same_field_and_warp_as_the_per_sample_elastic():
    """With an identity affine, sample b is RandLandmarkElastic with the same field: same image, same points."""
    images, points = torch.rand(3, 1, *SHAPE), _points(3)
    aug = BatchRandAffineElastic(elastic_prob=1.0, elastic_control_points=6, elastic_magnitude=2.5, seed=0)
    out, moved = aug(images, points)
    cpu = RandLandmarkElastic(prob=1.0)
    for b in range(3):
        cpu._field = aug.field[b]
        torch.testing.assert_close(cpu.warp_image(images[b]), out[b], atol=1e-4, rtol=0)
        torch.testing.assert_close(cpu.move_points(points[b]), moved[b], atol=1e-3, rtol=0, equal_nan=True)


def test_missing_and_pushed_out_points_are_nan_and_draws_are_seeded():
    points = _points(2, 3)
    points[0, 1] = math.nan
    points[1, 2] = torch.tensor([0.2, 40.0])  # at the left border: a shift to the left pushes it out
    aug = BatchRandAffineElastic(translate_range=(6.0, 0.0), elastic_prob=1.0, elastic_magnitude=1.0, seed=11)
    outs = [aug(torch.zeros(2, 1, *SHAPE), points)[1] for _ in range(6)]
    assert all(torch.isnan(o[0, 1]).all() for o in outs)
    assert any(torch.isnan(o[1, 2]).all() for o in outs)
    assert all(torch.isfinite(o[0, 0]).all() for o in outs)
    a = BatchRandAffineElastic(elastic_prob=0.5, elastic_magnitude=2.0, seed=3)
    b = BatchRandAffineElastic(elastic_prob=0.5, elastic_magnitude=2.0, seed=3)
    a.randomize(8, SHAPE), b.randomize(8, SHAPE)
    assert torch.equal(a.field, b.field) and torch.equal(a.matrix, b.matrix)
    zero = (a.field.flatten(1).abs().amax(1) == 0)
    assert 0 < int(zero.sum()) < 8  # elastic_prob 0.5: some samples are not deformed
    with pytest.raises(ValueError, match="control_points"):
        BatchRandAffineElastic(elastic_control_points=1)


@pytest.mark.slow
def test_fast_path_deforms_on_the_device_and_trains(tmp_path: Path):
    # the skeleton's augmentation (the baseline bundle); SCN's: tests/test_batch_affine.py
    wf = bundle_workflow(BUNDLE, ["train.json"], "training", tmp_path, max_epochs=1, batch_size=2,
                         augment_on_device="true")
    parser = wf.parser
    names = [type(t).__name__ for t in parser.get_parsed_content("train#parts#dataset#transform").transforms]
    assert "RandLandmarkElasticd" not in names and "ApplyWithLandmarksd" not in names
    assert "RandScaleIntensityd" in names  # the intensity jitter stays per sample
    aug = parser.get_parsed_content("prepare_batch").augment
    assert isinstance(aug, BatchRandAffineElastic)
    size = parser.get_parsed_content("spatial_size")
    assert (aug.elastic_prob, aug.elastic_control_points, aug.elastic_magnitude) == (0.5, 6, size[0] / 128)
    wf.run()
    wf.finalize()
    assert (tmp_path / "models" / "model.pt").is_file()
    off = bundle_workflow(BUNDLE, ["train.json"], "training", tmp_path / "off", max_epochs=1)
    names = [type(t).__name__ for t in off.parser.get_parsed_content("train#parts#dataset#transform").transforms]
    assert "RandLandmarkElasticd" in names and off.parser.get_parsed_content("prepare_batch").augment is None
