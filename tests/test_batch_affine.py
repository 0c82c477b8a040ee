"""BatchRandAffine: batch-level random affine on the batch's device, landmarks moved by the same matrices
(pixel-centre convention, (C, W, H) layout: checked on non-square images), its checkpointable random state,
and its wiring into PrepareLandmarkBatch and the scn training configs (augment_on_device, resume checkpoint,
a seed per rank under DDP)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_workflow import bundle_workflow
from ignite.handlers import Checkpoint
from monai.bundle import ConfigParser
from monai.handlers import from_engine

from monai_ext.data.synthetic import generate_dataset
from monai_ext.engines.prepare_batch import PrepareLandmarkBatch
from monai_ext.transforms.batch_affine import BatchRandAffine

PLAIN = Path(__file__).resolve().parents[1] / "bundles" / "unet_heatmap"
BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "scn"
SHAPE = (64, 80)  # (W, H): x has 64 pixels, y has 80


def _blobs(points: torch.Tensor, shape=SHAPE, sigma: float = 2.0) -> torch.Tensor:
    """``(B, K, W, H)``: channel ``k`` of sample ``b`` is a Gaussian blob centred at ``points[b, k]`` = ``(x, y)``."""
    x = torch.arange(shape[0], dtype=torch.float64)[:, None]
    y = torch.arange(shape[1], dtype=torch.float64)[None, :]
    px, py = points[..., 0, None, None].double(), points[..., 1, None, None].double()
    return torch.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma**2)).float()


def _centroids(images: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre ``(x, y)`` of every channel: ``(B, C, 2)``."""
    w = images.double().clamp_min(0)
    x = torch.arange(images.shape[2], dtype=torch.float64)[:, None]
    y = torch.arange(images.shape[3], dtype=torch.float64)[None, :]
    total = w.sum((2, 3))
    return torch.stack([(w * x).sum((2, 3)) / total, (w * y).sum((2, 3)) / total], -1)


def _points(batch: int = 4, k: int = 3, seed: int = 0) -> torch.Tensor:
    """Sub-pixel points within 12 px of the image centre (they stay well inside under the test's transforms)."""
    rng = np.random.default_rng(seed)
    centre = np.array([(s - 1) / 2 for s in SHAPE])
    return torch.as_tensor(centre + rng.uniform(-12, 12, (batch, k, 2)), dtype=torch.float32)


def test_identity_parameters_keep_image_and_landmarks():
    images = torch.rand(4, 2, *SHAPE)
    points = _points()
    points[1, 2] = math.nan
    out, moved = BatchRandAffine()(images, points)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    torch.testing.assert_close(moved, points, atol=1e-5, rtol=0, equal_nan=True)
    assert moved.dtype == points.dtype and out.shape == images.shape


def test_landmarks_follow_the_warped_image():
    points = _points()
    images = _blobs(points)  # one blob per landmark channel
    aug = BatchRandAffine(rotate_range=0.6, scale_range=0.2, translate_range=(6.0, 4.0), seed=3)
    out, moved = aug(images, points)
    matrix = aug.matrix
    # the draws are strong and differ per sample (rotation up to ~34 degrees, anisotropic scale)
    angles = torch.atan2(matrix[:, 1, 0], matrix[:, 0, 0])
    assert angles.abs().max() > 0.2 and len(set(angles.tolist())) == 4
    assert torch.isfinite(moved).all()
    found = _centroids(out)
    assert (found - moved.double()).norm(dim=-1).max() < 0.05, (found, moved)  # measured ~1e-3 px
    flat = out.flatten(2).argmax(-1)
    peaks = torch.stack([flat // SHAPE[1], flat % SHAPE[1]], -1).double()
    assert (peaks - moved.double()).abs().max() <= 1.0  # the brightest pixel is a neighbour of the moved point
    # the same matrix maps the input blob centres: moved = M @ p
    ref = points.double() @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 2]
    torch.testing.assert_close(moved.double(), ref, atol=1e-4, rtol=0)


def test_flip_mirrors_x_and_swaps_the_pairs():
    images = torch.rand(2, 1, *SHAPE)
    points = torch.tensor([[[3.0, 5.0], [60.5, 70.25], [20.0, 40.0]]]).repeat(2, 1, 1)
    aug = BatchRandAffine(flip_prob=1.0, flip_pairs=[[0, 1]])
    out, moved = aug(images, points)
    assert aug.flipped.all()
    torch.testing.assert_close(out, images.flip(2), atol=1e-5, rtol=0)  # x (dim 0 of (C, W, H)) mirrored
    expected = torch.tensor([[63 - 60.5, 70.25], [63 - 3.0, 5.0], [63 - 20.0, 40.0]])  # 0 <-> 1 swapped, x -> W-1-x
    torch.testing.assert_close(moved, expected.expand(2, -1, -1), atol=1e-5, rtol=0)
    unflipped, _ = BatchRandAffine(flip_prob=0.0, flip_pairs=[[0, 1]])(images, points)
    torch.testing.assert_close(unflipped, images, atol=1e-5, rtol=0)


def test_points_pushed_outside_become_nan_and_nan_stays_nan():
    aug = BatchRandAffine()
    images = torch.rand(2, 1, *SHAPE)
    points = torch.tensor([[[2.0, 10.0], [50.0, 10.0], [math.nan, math.nan]], [[2.0, 79.0], [30.0, 40.0], [5.0, 5.0]]])
    shift = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    shift[0, 0, 2] = 13.0  # sample 0: x + 13, the point at x = 50 lands at 63 (last column), inside
    shift[1, 1, 2] = 0.6  # sample 1: y + 0.6, the point at y = 79 lands at 79.6 > 79.5, outside
    out, moved = aug.apply(images, points, shift)
    assert torch.isnan(moved[0, 2]).all() and torch.isnan(moved[1, 0]).all()
    torch.testing.assert_close(moved[0, :2], torch.tensor([[15.0, 10.0], [63.0, 10.0]]))
    torch.testing.assert_close(moved[1, 1:], torch.tensor([[30.0, 40.6], [5.0, 5.6]]))
    torch.testing.assert_close(out[0, :, 13:], images[0, :, :-13], atol=1e-5, rtol=0)  # whole-pixel shift along x
    assert not out[0, :, :13].any()  # zeros padding
    # random draws: a point is NaN exactly when M @ p leaves the image
    rand = BatchRandAffine(rotate_range=0.3, scale_range=0.1, translate_range=30.0, seed=1)
    corners = torch.tensor([[0.0, 0.0], [63.0, 0.0], [0.0, 79.0], [63.0, 79.0], [31.5, 39.5]]).expand(8, -1, -1)
    _, moved = rand(torch.zeros(8, 1, *SHAPE), corners)
    m = rand.matrix
    ref = corners.double() @ m[:, :2, :2].transpose(1, 2) + m[:, None, :2, 2]
    inside = ((ref >= -0.5) & (ref <= torch.tensor([63.5, 79.5], dtype=torch.float64))).all(-1)
    assert torch.equal(torch.isfinite(moved).all(-1), inside) and (~inside).any() and inside[:, 4].all()


def test_deterministic_given_the_seed():
    images, points = torch.rand(3, 1, *SHAPE), _points(3)
    kw = dict(rotate_range=0.25, scale_range=0.15, translate_range=5.0, flip_prob=0.5, flip_pairs=[[0, 1]])
    a = BatchRandAffine(seed=7, **kw)
    first = [a(images, points) for _ in range(2)]
    assert not torch.equal(first[0][0], first[1][0])  # successive batches differ
    b = BatchRandAffine(seed=7, **kw)
    for out, moved in first:
        out_b, moved_b = b(images, points)
        assert torch.equal(out, out_b) and torch.equal(moved, moved_b)
    a.set_random_state(7)
    assert torch.equal(a(images, points)[0], first[0][0])
    assert not torch.equal(BatchRandAffine(seed=8, **kw)(images, points)[0], first[0][0])


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_continues_the_draws(device: str, tmp_path: Path):
    images, points = torch.rand(3, 1, *SHAPE, device=device), _points(3).to(device)
    kw = dict(rotate_range=0.25, scale_range=0.15, translate_range=5.0, flip_prob=0.5, flip_pairs=[[0, 1]])
    saved = BatchRandAffine(seed=11, **kw)
    for _ in range(3):
        saved(images, points)
    state = saved.state_dict()
    assert state["seed"] == 11 and set(state["generators"]) == {str(torch.device(device))}
    torch.save({"aug": state}, tmp_path / "checkpoint.pt")
    twin = [saved(images, points) + (saved.matrix.clone(), saved.flipped.clone()) for _ in range(2)]  # uninterrupted

    loaded = BatchRandAffine(seed=0, **kw)  # another seed, and generators already used: both are replaced
    loaded(images, points)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", map_location=device, weights_only=True)
    Checkpoint.load_objects(to_load={"aug": loaded}, checkpoint=checkpoint)  # what CheckpointLoader calls
    assert loaded.seed == 11
    for out, moved, matrix, flipped in twin:
        out_l, moved_l = loaded(images, points)
        assert torch.equal(loaded.matrix, matrix) and torch.equal(loaded.flipped, flipped)
        assert torch.equal(out_l, out) and torch.equal(moved_l, moved)
    fresh = BatchRandAffine(seed=11, **kw)
    fresh(images, points)
    assert not torch.equal(fresh.matrix, twin[0][2])  # the restored stream is not the seed's start
    # the state is a snapshot: drawing after state_dict() does not change it
    again = BatchRandAffine(**kw)
    again.load_state_dict(state)
    again(images, points)
    assert torch.equal(again.matrix, twin[0][2])


def test_load_state_dict_skips_missing_devices():
    aug = BatchRandAffine(rotate_range=0.3, seed=4)
    aug(torch.rand(2, 1, *SHAPE))
    state = aug.state_dict()
    missing = f"cuda:{torch.cuda.device_count()}"  # one index past the last GPU: never available
    state["generators"][missing] = state["generators"]["cpu"].clone()
    aug(torch.rand(2, 1, *SHAPE))
    expected = aug.matrix
    loaded = BatchRandAffine(rotate_range=0.3)
    with pytest.warns(UserWarning, match=missing):
        loaded.load_state_dict(state)
    assert set(loaded.state_dict()["generators"]) == {"cpu"}
    loaded(torch.rand(2, 1, *SHAPE))
    assert torch.equal(loaded.matrix, expected)
    with pytest.raises(KeyError, match="seed"):
        loaded.load_state_dict({"generators": {}})


def _scn_parser(tmp_path: Path, configs: tuple[str, ...] = ("train.json", "quick.json"), **overrides) -> ConfigParser:
    if not (tmp_path / "data" / "datalist.json").is_file():
        generate_dataset("hand", tmp_path / "data", n_train=1, n_val=1, n_test=0)
    from monai_ext.bundle import read_config

    return read_config([str(BUNDLE / "configs" / f) for f in configs], dataset_dir=str(tmp_path / "data"), **overrides)


def test_scn_checkpoint_has_the_augmentation_only_when_on(tmp_path: Path):
    on = _scn_parser(tmp_path, augment_on_device="true")
    objects = on.get_parsed_content("train#parts#checkpoint")
    assert objects["batch_augmentation"] is on.get_parsed_content("prepare_batch").augment
    assert isinstance(objects["batch_augmentation"], BatchRandAffine)
    # SCN's own entry (its learnable sigmas, "loss") is kept next to the skeleton's
    assert set(objects) == {"model", "optimizer", "lr_scheduler", "loss", "rng", "batch_augmentation"}
    off = _scn_parser(tmp_path, augment_on_device=False)
    assert set(off.get_parsed_content("train#parts#checkpoint")) == {"model", "optimizer", "lr_scheduler", "loss", "rng"}


def test_scn_multi_gpu_seeds_the_augmentation_per_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import monai_ext.utils

    seeds = []
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun launch: the workflows run distributed by themselves
    for rank in (0, 1):
        monkeypatch.setattr(monai_ext.utils, "rank", lambda rank=rank: rank)
        parser = _scn_parser(tmp_path, augment_on_device=True, seed=5)
        seeds.append(parser.get_parsed_content("train#parts#batch_augmentation").seed)
        parser["network"] = "$@network_def"  # no DDP wrapper without a process group
        # only rank 0 saves: a resumed run restarts each rank from its own seed rather than from rank 0's stream
        assert "batch_augmentation" not in parser.get_parsed_content("train#parts#checkpoint")
    assert seeds == [5, 6]
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(monai_ext.utils, "rank", lambda: 0)
    single = _scn_parser(tmp_path, augment_on_device=True, seed=5)
    assert single.get_parsed_content("train#parts#batch_augmentation").seed == 5


def test_prepare_batch_builds_heatmaps_at_the_moved_landmarks():
    points = _points(4, 2)
    points[2, 1] = math.nan
    batch = {"image": torch.rand(4, 1, *SHAPE), "landmarks": points}
    aug = BatchRandAffine(rotate_range=0.5, scale_range=0.15, translate_range=5.0, flip_prob=0.5, flip_pairs=[[0, 1]], seed=2)
    prepare = PrepareLandmarkBatch(heatmap_sigma=1.5, heatmap_amplitude=100.0, augment=aug)
    image, (heatmap, mask) = prepare(batch, torch.device("cpu"))
    assert image.shape == (4, 1, *SHAPE) and heatmap.shape == (4, 2, *SHAPE)
    assert not torch.allclose(image, batch["image"])
    moved = batch["landmarks"].double() @ aug.matrix[:, :2, :2].transpose(1, 2) + aug.matrix[:, None, :2, 2]
    moved = torch.where(aug.flipped[:, None, None], moved[:, [1, 0]], moved)
    torch.testing.assert_close(mask, torch.isfinite(moved).all(-1).float())
    assert float(mask.sum()) == 7 and not heatmap[mask == 0].any()
    valid = mask.bool()
    # the quadratic-refined peak of every valid heatmap is the moved landmark
    flat = heatmap.flatten(2).argmax(-1)
    peaks = torch.stack([flat // SHAPE[1], flat % SHAPE[1]], -1).double()
    assert (peaks - moved)[valid].abs().max() <= 0.5 + 1e-6
    found = _centroids(heatmap)
    assert (found - moved)[valid].norm(dim=-1).max() < 0.05
    # precomputed heatmaps cannot follow the warp
    with pytest.raises(ValueError, match="heatmap"):
        prepare({**batch, "heatmap": torch.ones(4, 2, *SHAPE), "landmark_mask": torch.ones(4, 2)}, torch.device("cpu"))
    with pytest.raises(KeyError, match="landmarks"):
        prepare({"image": batch["image"]}, torch.device("cpu"))


@pytest.mark.slow
def test_augment_on_device_switch_trains_one_iteration(tmp_path: Path):
    # the skeleton's augmentation and fixed-sigma targets (the baseline bundle; SCN's own recipe is checked below)
    wf = bundle_workflow(PLAIN, ["train.json"], "training", tmp_path, max_epochs=1, batch_size=2,
                         augment_on_device="true")
    parser = wf.parser
    names = [type(t).__name__ for t in parser.get_parsed_content("train#parts#dataset#transform").transforms]
    assert "ApplyWithLandmarksd" not in names and "GenerateLandmarkHeatmapd" not in names
    assert "RandLandmarkElasticd" not in names and "RandScaleIntensityd" in names  # elastic: on the device too
    trainer = parser.get_parsed_content("train#trainer")
    prepare = trainer.prepare_batch
    aug = prepare.augment
    assert isinstance(aug, BatchRandAffine) and prepare.heatmap_sigma == parser.get_parsed_content("heatmap_sigma")
    size = parser.get_parsed_content("spatial_size")
    assert aug.rotate_range == 0.25 and aug.scale_range == (0.15, 0.15)
    assert aug.translate_range == pytest.approx(tuple(s * 0.08 for s in size))
    assert parser.get_parsed_content("validate#prepare_batch").augment is None
    wf.run()
    wf.finalize()
    assert trainer.state.iteration >= 1 and math.isfinite(float(from_engine(["loss"], first=True)(trainer.state.output)))
    assert (tmp_path / "models" / "model.pt").is_file()

    off = bundle_workflow(BUNDLE, ["train.json"], "training", tmp_path / "off", max_epochs=1)
    names = [type(t).__name__ for t in off.parser.get_parsed_content("train#parts#dataset#transform").transforms]
    assert "ApplyWithLandmarksd" in names and off.parser.get_parsed_content("prepare_batch").augment is None


def test_scn_augment_on_device_takes_payers_affine_and_elastic(tmp_path: Path):
    parser = _scn_parser(tmp_path, augment_on_device="true")
    per_sample = parser.get_parsed_content("train#parts#dataset#transform").transforms
    wrapped = [type(t.transform).__name__ for t in per_sample if type(t).__name__ == "ApplyWithLandmarksd"]
    assert wrapped == ["RandZoomd"]  # the uniform scale stays per sample; the affine and elastic run on the device
    assert "RandLandmarkElasticd" not in [type(t).__name__ for t in per_sample]
    aug = parser.get_parsed_content("prepare_batch").augment
    assert aug.rotate_range == 0.25 and aug.scale_range == (0.2, 0.2) and aug.pad_value == -1.0
    assert aug.elastic_prob == 1.0 and aug.elastic_control_points == 3
