"""Training borders look like test borders: in every bundle's training pipeline (each training stage, per-sample and
on-device augmentation) the pixels a rotation brings in from outside the image equal the value the deterministic
preprocessing (the fit into ``spatial_size``) gives to the outside of the image."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandAffined
from PIL import Image

from conftest import BUNDLES, BUNDLE_IDS, synthetic_kind
from monai_ext.bundle import config_files, read_config, training_stages
from monai_ext.transforms import ApplyWithLandmarksd, BatchRandAffineElastic, RandLandmarkElasticd, RandRoiCropsd
from monai_ext.transforms.dictionary import RandLandmarkFlipd

SPATIAL = (RandAffined, ApplyWithLandmarksd, RandLandmarkElasticd, RandRoiCropsd, RandLandmarkFlipd)
STAGES = [(b, s) for b in BUNDLES for s in training_stages(b)]
STAGE_IDS = [f"{b.name}-{s or 'train'}" for b, s in STAGES]


@pytest.fixture(scope="module")
def off_centre_datalist(tmp_path_factory) -> dict[str, Path]:
    """Per synthetic kind: a datalist of one bright, narrow image (so the fit pads left and right) with the kind's
    landmark names, all landmarks in the image."""
    from monai_ext.data import synthetic

    out = {}
    root = tmp_path_factory.mktemp("padding")
    for kind in sorted({synthetic_kind(b) for b in BUNDLES}):
        spec = synthetic.PHANTOMS[kind]
        names = list(spec.landmarks)
        folder = root / kind
        folder.mkdir()
        rng = np.random.default_rng(0)
        h, w = 240, 100
        Image.fromarray(rng.integers(60, 250, (h, w), dtype=np.uint8)).save(folder / "img.png")
        pts = [[float(10 + (i * 7) % (w - 20)), float(20 + (i * 13) % (h - 40))] for i in range(len(names))]
        entry = {"image": "img.png", "landmarks": pts, "spacing": [0.5, 0.5]}
        doc = {"name": f"padding_{kind}", "landmarks": names, "flip_pairs": [list(p) for p in spec.flip_pairs], "unit": "mm", "spacing_mode": "datalist",
               "training": [entry], "validation": [entry]}
        (folder / "datalist.json").write_text(json.dumps(doc))
        out[kind] = folder / "datalist.json"
    return out


def _pipeline(bundle: Path, stage: str | None, datalist: Path, tmp_path: Path):
    files = config_files(bundle, "train", stage=stage)
    # keep_aspect: a bundle that stretches to spatial_size (interactive_kp on the spine) pads nothing in the fit; with
    # the aspect kept, the narrow test image shows the fit's outside value, which its augmentation must match
    parser = read_config(files, datalist=str(datalist), bundle_root=str(tmp_path), keep_aspect=True)
    return parser.get_parsed_content("load_transforms"), parser.get_parsed_content("augmentation")


def _force_rotation(transforms, angle: float):
    """The spatial transforms of ``transforms`` with the random affine fixed to a rotation by ``angle`` (no scale,
    shift or flip); intensity transforms (which change the border value as they change the image) left out."""
    out = []
    for t in transforms:
        if not isinstance(t, SPATIAL):
            continue
        inner = t.transform if isinstance(t, ApplyWithLandmarksd) else t
        if isinstance(inner, RandAffined):
            inner.prob = 1.0
            grid = inner.rand_affine.rand_affine_grid
            grid.rotate_range = ((angle, angle),)
            grid.scale_range = ((0.0, 0.0),) * 2
            grid.translate_range = ((0.0, 0.0),) * 2
        if isinstance(t, RandLandmarkFlipd):
            continue
        out.append(t)
    return out


def _outside_value(load, sample: dict) -> float:
    """What the deterministic preprocessing puts outside the image: the fitted image's left-border value (the test
    image is narrow, so the fit pads its sides)."""
    fitted = Compose(load)(dict(sample))
    column = fitted["image"][0, 0, :]  # x = 0, every row
    assert torch.allclose(column, column[0]), "the fit should pad the narrow image's left side"
    return float(column[0])


@pytest.mark.parametrize("bundle,stage", STAGES, ids=STAGE_IDS)
def test_a_rotated_training_sample_is_padded_like_the_fit(bundle, stage, off_centre_datalist, tmp_path):
    datalist = off_centre_datalist[synthetic_kind(bundle)]
    entry = json.loads(datalist.read_text())["training"][0]
    sample = {"image": str(datalist.parent / entry["image"]), "landmarks": entry["landmarks"], "spacing": entry["spacing"]}
    load, augmentation = _pipeline(bundle, stage, datalist, tmp_path)
    # KNEEL stage 2 crops ROIs from the unfitted image: its outside is the intensity window's darkest value
    stage1_load = _pipeline(bundle, None, datalist, tmp_path)[0]
    outside = _outside_value(stage1_load, sample)
    spatial = _force_rotation(augmentation, math.pi / 4)
    chain = Compose([*load, *spatial]).set_random_state(seed=3)
    out = chain(dict(sample))
    img = out[0]["image"] if isinstance(out, list) else out["image"]
    # a 45° rotation about the centre brings every corner in from outside the (fitted) image
    corners = torch.stack([img[0, 0, 0], img[0, 0, -1], img[0, -1, 0], img[0, -1, -1]])
    assert torch.allclose(corners, torch.full_like(corners, outside), atol=1e-5), (
        f"{bundle.name} {stage or 'train.json'}: rotated corners {corners.tolist()}, the fit pads with {outside}")


@pytest.mark.parametrize("bundle", [b for b in BUNDLES if training_stages(b) == [None]], ids=lambda b: b.name)
def test_on_device_augmentation_pads_like_the_fit(bundle, off_centre_datalist, tmp_path):
    datalist = off_centre_datalist[synthetic_kind(bundle)]
    entry = json.loads(datalist.read_text())["training"][0]
    sample = {"image": str(datalist.parent / entry["image"]), "landmarks": entry["landmarks"], "spacing": entry["spacing"]}
    load, augmentation = _pipeline(bundle, None, datalist, tmp_path)
    outside = _outside_value(load, sample)
    fitted = Compose(load)(dict(sample))
    batch_aug = BatchRandAffineElastic.from_augmentation(augmentation, seed=0, rotate_range=0.0, scale_range=0.0,
                                                         translate_range=0.0, flip_prob=0.0, elastic_prob=0.0)
    images = fitted["image"].as_tensor()[None].float()
    batch_aug.randomize(1, images.shape[2:])
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    centre = (torch.tensor(images.shape[2:], dtype=torch.float64) - 1) / 2
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    matrix = torch.eye(3, dtype=torch.float64)[None].clone()
    matrix[0, :2, :2] = rot
    matrix[0, :2, 2] = centre - rot @ centre
    warped, _ = batch_aug.apply(images, None, matrix)
    corners = torch.stack([warped[0, 0, 0, 0], warped[0, 0, 0, -1], warped[0, 0, -1, 0], warped[0, 0, -1, -1]])
    assert torch.allclose(corners, torch.full_like(corners, outside), atol=1e-5), (
        f"{bundle.name} on-device: rotated corners {corners.tolist()}, the fit pads with {outside}")


def test_the_fit_pads_with_the_darkest_value_whatever_the_stored_range(tmp_path):
    """A radiograph whose modality LUT gives negative values (e.g. RescaleIntercept -100): the fit's border is the
    intensity window's darkest value (-1), as for an image stored from 0, not the value a raw 0 maps to."""
    import nibabel as nib

    from monai_ext.bundle import read_config

    rng = np.random.default_rng(0)
    arr = rng.uniform(-100.0, 50.0, (100, 240)).astype(np.float32)  # (x, y): narrow, so the fit pads x
    nib.save(nib.Nifti1Image(arr, np.diag([0.5, 0.5, 1.0, 1.0])), str(tmp_path / "neg.nii.gz"))
    scn = next(b for b in BUNDLES if b.name == "scn")
    parser = read_config(config_files(scn, "train"), bundle_root=str(tmp_path))
    load = [t for t in parser.get_parsed_content("load_transforms") if "Landmarks" not in type(t).__name__]
    low = parser.get_parsed_content("intensity_range")[0]
    img = Compose(load)({"image": str(tmp_path / "neg.nii.gz")})["image"]
    assert torch.allclose(img[0, 0, :], torch.full_like(img[0, 0, :], low)), img[0, 0, :5]
