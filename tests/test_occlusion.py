"""Synthetic occlusions (blob over a landmark, cropped field of view), the occluded/visible metric subsets, the
bundle's evaluate_occlusion.json (after its evaluation composition, with a trained model's record) and the occlusion
study script end to end on tiny data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ext.bundle import config_files, read_config
from monai_ext.data.readers import spacing_affine
from monai_ext.transforms.occlusion import (
    BlobOcclusion,
    BorderCrop,
    OcclusionSubset,
    RandLandmarkOcclusion,
    RandLandmarkOcclusiond,
    blob_weights,
    insert_occlusion,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "adv_posenet"


def _image(w: int = 64, h: int = 96, spacing=(2.0, 2.0), seed: int = 0, name: str | None = None) -> MetaTensor:
    rng = np.random.default_rng(seed)
    arr = rng.uniform(0.0, 100.0, size=(1, w, h)).astype(np.float32)
    meta = {"filename_or_obj": name} if name else {}
    return MetaTensor(torch.from_numpy(arr), affine=spacing_affine(spacing), meta=meta)


LANDMARKS = torch.tensor([[10.0, 10.0], [32.0, 48.0], [33.0, 50.0], [50.0, 90.0], [float("nan"), float("nan")]])


# ------------------------------------------------------------------------------------------------
# blob
# ------------------------------------------------------------------------------------------------


def test_blob_weights_shape_and_profile():
    w = blob_weights((40, 60), (20.0, 30.0), (5.0, 10.0), edge=0.5)
    assert w.shape == (40, 60) and w.dtype == np.float32
    assert w[20, 30] == 1.0 and w[24, 30] == 1.0 and w[20, 39] == 1.0  # inside the ellipse
    assert 0.0 < w[26, 30] < 1.0  # on the rim (rho = 1.2 of 1.5)
    assert w[28, 30] == 0.0 and w[20, 46] == 0.0  # beyond the rim
    np.testing.assert_array_equal(w[1:, 1:], w[1:, 1:][::-1, ::-1])  # point-symmetric about the centre (20, 30)
    hard = blob_weights((40, 60), (20.0, 30.0), (5.0, 10.0), edge=0.0)
    assert set(np.unique(hard)) == {0.0, 1.0}


def test_blob_is_bright_centred_on_the_landmark_and_flags_covered_landmarks():
    img = _image()
    occ = RandLandmarkOcclusion(mode="blob", landmark_index=1, size=(8.0, 12.0), size_unit="mm", edge=0.25)
    out, occluded = occ(img, LANDMARKS)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)
    assert occ.drawn["landmark"] == 1
    value = float(np.percentile(img.numpy(), 99.9))
    diff = (out - img).as_tensor()[0].numpy()
    # semi-axes 4 x 6 pixels at 2 mm/pixel: uniform bright value inside, brighter than 99 % of the image
    x, y = np.meshgrid(np.arange(64), np.arange(96), indexing="ij")
    inside = ((x - 32) / 4.0) ** 2 + ((y - 48) / 6.0) ** 2 <= 1.0
    np.testing.assert_allclose(out.as_tensor()[0].numpy()[inside], value, rtol=1e-6)
    assert value > np.percentile(img.numpy(), 99)
    # centred on the landmark: the painted change is symmetric about (32, 48)
    changed = np.abs(diff) > 1e-4
    assert changed[32, 48] and not changed[32 + 7, 48] and not changed[32, 48 + 10]
    assert changed.any(0).nonzero()[0].min() + changed.any(0).nonzero()[0].max() == 2 * 48
    assert changed.any(1).nonzero()[0].min() + changed.any(1).nonzero()[0].max() == 2 * 32
    np.testing.assert_array_equal(diff[~changed], 0.0)  # untouched elsewhere
    # landmarks 1 and 2 (1 px and 2 px away) are under the blob, the others (and the missing one) are not
    assert occluded.dtype == torch.bool and occluded.tolist() == [False, True, True, False, False]


def test_blob_size_as_fraction_and_absolute_intensity():
    img = _image()
    out, occluded = BlobOcclusion(size=(0.1, 0.1), size_unit="fraction", edge=0.0, intensity=1000.0)(
        img, (32.0, 48.0), LANDMARKS
    )
    arr = out.as_tensor()[0].numpy()
    painted = arr == 1000.0
    # semi-axes 6.4 x 9.6 pixels
    assert painted[32 - 6, 48] and not painted[32 - 7, 48] and painted[32, 48 + 9] and not painted[32, 48 + 10]
    assert occluded.tolist() == [False, True, True, False, False]
    with pytest.raises(ValueError, match="spacing"):
        BlobOcclusion(size=10.0)(torch.zeros(1, 8, 8), (4.0, 4.0))  # mm without a spacing


def test_blob_never_targets_a_missing_landmark():
    img = _image()
    occ = RandLandmarkOcclusion(mode="blob", landmark_index=[4, 3]).set_random_state(0)
    for _ in range(10):
        _, occluded = occ(img, LANDMARKS)
        assert occ.drawn["landmark"] == 3 and occluded[3] and not occluded[4]
    none = torch.full((3, 2), float("nan"))
    out, occluded = occ(img, none)
    assert out is img and occluded.tolist() == [False] * 3


# ------------------------------------------------------------------------------------------------
# crop
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "side, band, flags",
    [
        ("left", (slice(0, 16), slice(None)), [True, False, False, False, False]),
        ("right", (slice(48, 64), slice(None)), [False, False, False, True, False]),
        ("top", (slice(None), slice(0, 24)), [True, False, False, False, False]),
        ("bottom", (slice(None), slice(72, 96)), [False, False, False, True, False]),
    ],
)
def test_crop_removes_the_band_and_flags_the_landmarks_in_it(side, band, flags):
    img = _image()
    out, occluded = BorderCrop(fraction=0.25, side=side)(img, LANDMARKS)
    arr, orig = out.as_tensor()[0].numpy(), img.as_tensor()[0].numpy()
    removed = np.zeros(arr.shape, dtype=bool)
    removed[band] = True
    np.testing.assert_array_equal(arr[removed], orig.min())
    np.testing.assert_array_equal(arr[~removed], orig[~removed])
    assert occluded.tolist() == flags
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)


def test_crop_band_edges_and_background():
    # a landmark on the last removed pixel is occluded, one on the first kept pixel is not
    pts = torch.tensor([[15.4, 5.0], [15.6, 5.0]])
    _, occluded = BorderCrop(0.25, "left")(_image(), pts)
    assert occluded.tolist() == [True, False]
    out, _ = BorderCrop(0.25, "right", background=-7.0)(_image(), pts)
    assert (out[0, 48:] == -7.0).all() and (out[0, :48] != -7.0).all()
    with pytest.raises(ValueError, match="side"):
        BorderCrop(0.2, "middle")
    with pytest.raises(ValueError, match="fraction"):
        BorderCrop(1.0, "top")


def test_random_crop_draws_side_and_fraction_in_range():
    occ = RandLandmarkOcclusion(mode="crop", fraction=(0.1, 0.3), sides=["top", "bottom"]).set_random_state(3)
    sides = set()
    for _ in range(20):
        out, _ = occ(_image(), LANDMARKS)
        drawn = occ.drawn
        sides.add(drawn["side"])
        assert 0.1 <= drawn["fraction"] <= 0.3
        n = int(round(drawn["fraction"] * 96))
        band = out[0, :, :n] if drawn["side"] == "top" else out[0, :, 96 - n:]
        assert (band == band.min()).all()
    assert sides == {"top", "bottom"}


# ------------------------------------------------------------------------------------------------
# dictionary transform: landmarks unchanged, flags, determinism
# ------------------------------------------------------------------------------------------------


def _items(n: int = 6) -> list[dict]:
    return [{"image": _image(seed=i, name=f"/data/img_{i}.dcm"), "landmarks": LANDMARKS.clone()} for i in range(n)]


@pytest.mark.parametrize("mode", ["blob", "crop", "none"])
def test_dictionary_keeps_landmarks_and_writes_flags(mode):
    t = RandLandmarkOcclusiond(keys="image", landmark_key="landmarks", mode=mode, sides=["left", "top"], seed=1)
    item = _items(1)[0]
    out = t(item)
    torch.testing.assert_close(out["landmarks"], LANDMARKS, equal_nan=True)
    assert out["occluded"].shape == (5,) and out["occluded"].dtype == torch.bool
    assert out["image"] is not item["image"] or mode == "none"
    if mode == "none":
        assert not out["occluded"].any() and torch.equal(out["image"], item["image"])
    else:
        assert out["occluded"].any()  # a blob always covers its landmark; left/top 20 % hold landmark 0
        assert not torch.equal(out["image"], item["image"])
    assert torch.equal(item["image"], _items(1)[0]["image"]), "the input image was modified in place"


def test_dictionary_blob_needs_landmarks_crop_does_not():
    item = {"image": _image(name="/data/x.dcm")}
    with pytest.raises(Exception, match="x.dcm"):
        RandLandmarkOcclusiond(mode="blob")(item)
    out = RandLandmarkOcclusiond(mode="crop")(item)
    assert "occluded" not in out and not torch.equal(out["image"], item["image"])


def _run(t: RandLandmarkOcclusiond, items: list[dict]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {i["image"].meta["filename_or_obj"]: (o["image"].as_tensor(), o["occluded"]) for i in items for o in [t(i)]}


@pytest.mark.parametrize("mode", ["blob", "crop"])
def test_deterministic_given_the_seed_whatever_the_order(mode):
    items = _items()
    kwargs = {"mode": mode, "fraction": (0.1, 0.4)}
    first = _run(RandLandmarkOcclusiond(seed=5, **kwargs), items)
    again = _run(RandLandmarkOcclusiond(seed=5, **kwargs).set_random_state(123), items[::-1])  # workers re-seed
    other = _run(RandLandmarkOcclusiond(seed=6, **kwargs), items)
    for name, (img, occ) in first.items():
        assert torch.equal(img, again[name][0]) and torch.equal(occ, again[name][1])
    assert any(not torch.equal(img, other[name][0]) for name, (img, _) in first.items())
    # without per-image seeding the sequence is fixed by the seed (and depends on the order)
    seq = [RandLandmarkOcclusiond(seed=5, per_image=False, **kwargs) for _ in range(2)]
    for item in items:
        a, b = seq[0](item), seq[1](item)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["occluded"], b["occluded"])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="mode"):
        RandLandmarkOcclusion(mode="smudge")
    with pytest.raises(ValueError, match="size"):
        BlobOcclusion(size=(0.0, 3.0))
    with pytest.raises(ValueError, match="fraction"):
        RandLandmarkOcclusion(mode="crop", fraction=(0.3, 0.1))


# ------------------------------------------------------------------------------------------------
# metric subsets and pipeline insertion
# ------------------------------------------------------------------------------------------------


def test_occlusion_subset_masks_the_other_landmarks():
    pred = torch.zeros(3, 2)
    gt = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    occluded = torch.tensor([True, False, True])
    items = [{"pred_landmarks": pred, "landmarks": gt, "occluded": occluded, "spacing": torch.ones(2)}] * 2
    p, g, s = OcclusionSubset("occluded")(items)
    assert p.shape == g.shape == (2, 3, 2) and s.shape == (2, 2)
    assert torch.isnan(g[:, 1]).all() and torch.equal(g[:, [0, 2]], gt[[0, 2]].expand(2, 2, 2).double())
    _, g, _ = OcclusionSubset("visible")(items)
    assert torch.isnan(g[:, [0, 2]]).all() and torch.equal(g[:, 1], gt[1].expand(2, 2).double())
    batch = {"pred_landmarks": pred[None], "landmarks": gt[None], "occluded": occluded[None]}
    _, g, s = OcclusionSubset("occluded")(batch)
    assert s is None and torch.isnan(g[0, 1]).all() and not torch.isnan(g[0, 0]).any()
    with pytest.raises(KeyError, match="occluded"):
        OcclusionSubset()([{"pred_landmarks": pred, "landmarks": gt}])
    with pytest.raises(ValueError):
        OcclusionSubset("hidden")


def test_insert_occlusion_goes_before_the_fitting_step():
    from monai_ext.transforms import EnsureLandmarksd, FitToShaped

    occ = RandLandmarkOcclusiond(mode="crop")
    first, fit = EnsureLandmarksd(), FitToShaped(spatial_size=(8, 8))
    assert insert_occlusion([first, fit, "norm"], occ) == [first, occ, fit, "norm"]
    with pytest.raises(ValueError, match="FitToShaped"):
        insert_occlusion([first], occ)


def _untrained_checkpoint(path: Path, datalist: Path, seed: int) -> Path:
    """An untrained quick.json generator saved as training saves ``models/model.pt``: weights and the record of its
    configuration (network, landmark header, input size, ...), which the evaluation composition reads."""
    parser = read_config(config_files(BUNDLE, "train", ["quick.json"]), bundle_root=str(path.parent),
                         datalist=str(datalist))
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network")
    record = parser.get_parsed_content("model_config")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict(), "model_config": record.state_dict()}, path)
    return path


def test_evaluate_occlusion_config_wires_the_transform_metrics_and_writers(tmp_path):
    from monai_ext.data.synthetic import generate_dataset

    datalist = generate_dataset("limbs", tmp_path / "data", n_train=1, n_val=1, n_test=1)  # a fresh clone has no data
    ckpt = _untrained_checkpoint(tmp_path / "models" / "model.pt", datalist, seed=0)
    files = config_files(BUNDLE, "evaluate", extra=["evaluate_occlusion.json"])
    parser = read_config(files, bundle_root=str(tmp_path), ckpt_path=str(ckpt), datalist=str(datalist),
                         occlusion="crop")
    names = [type(t).__name__ for t in parser.get_parsed_content("validate#parts#dataset#transform").transforms]
    assert names[names.index("RandLandmarkOcclusiond") + 1] == "FitToShaped"
    assert names.index("RandLandmarkOcclusiond") < names.index("ScaleIntensityRangePercentilesd")
    assert parser.get_parsed_content("occlusion_transform").mode == "crop"
    assert parser.get_parsed_content("eval_dir").endswith("evaluation_occlusion_crop")
    metrics = parser.get_parsed_content("validate#parts#additional_metrics")
    assert {f"val_{m}_{s}" for m in ("pck10", "pck20", "mre") for s in ("occluded", "visible")} <= set(metrics)


# ------------------------------------------------------------------------------------------------
# the study script, end to end on tiny data with two untrained tiny generators
# ------------------------------------------------------------------------------------------------


def _load_script():
    spec = importlib.util.spec_from_file_location("occlusion_study", REPO / "scripts" / "occlusion_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_occlusion_study_end_to_end(tmp_path: Path):
    from monai_ext.data.synthetic import generate_dataset

    datalist = generate_dataset("limbs", tmp_path / "data", n_train=1, n_val=1, n_test=3)
    quick = str(BUNDLE / "configs" / "quick.json")
    ckpts = {name: _untrained_checkpoint(tmp_path / name / "models" / "model.pt", datalist, seed)
             for name, seed in (("adversarial", 0), ("supervised", 1))}
    study = _load_script()
    # the checkpoints' records set the generator: a network override is refused before anything runs
    with pytest.raises(ValueError, match="network_def#num_stacks: the trained model's record sets it"):
        study.occlusion_study(datalist=str(datalist), adversarial_ckpt=str(ckpts["adversarial"]),
                              supervised_ckpt=str(ckpts["supervised"]), output_dir=str(tmp_path / "study"),
                              **{"network_def#num_stacks": 1})
    assert not (tmp_path / "study").exists()

    report = study.occlusion_study(
        datalist=str(datalist), adversarial_ckpt=str(ckpts["adversarial"]), supervised_ckpt=str(ckpts["supervised"]),
        output_dir=str(tmp_path / "study"), section="test", configs=[quick],
    )
    out = tmp_path / "study"
    saved = json.loads((out / "occlusion_study.json").read_text())
    table = (out / "occlusion_study.md").read_text()
    results = saved["results"]
    assert set(results) == {"adversarial", "supervised"}
    for model in results:
        assert set(results[model]) == {"none", "blob", "crop"}
        none, blob, crop = (results[model][c] for c in ("none", "blob", "crop"))
        assert none["n_points"] == blob["n_points"] == crop["n_points"] == 3 * 6
        assert none["n_occluded"] == 0 and none["metrics"]["val_mre_occluded"] is None  # NaN -> null
        assert blob["n_occluded"] >= 3  # every image has its blob over a landmark
        assert crop["n_occluded"] > 0  # top/bottom 20 %: femoral heads or ankles
        for condition in ("blob", "crop"):
            assert 0.0 <= blob["metrics"]["val_pck10_occluded"] <= 100.0
            assert (out / model / condition / "occluded" / "summary.json").is_file()
            assert (out / model / condition / "visible" / "summary.json").is_file()
            assert len(list((out / model / condition / "inputs").glob("input_*.png"))) == 3
        assert (out / model / "none" / "predictions.json").is_file()
    # both checkpoints were used (different untrained weights, different errors); the same occlusions for both
    assert results["adversarial"]["none"]["metrics"]["val_mre"] != results["supervised"]["none"]["metrics"]["val_mre"]
    for condition in ("blob", "crop"):
        assert results["adversarial"][condition]["n_occluded"] == results["supervised"][condition]["n_occluded"]
    assert report["results"]["adversarial"]["none"]["n_points"] == 18
    assert "### All landmarks" in table and "### Occluded landmarks" in table
    assert "PCK@10 mm adversarial" in table and "MRE (mm) supervised" in table
    rows = [line for line in table.splitlines() if line.startswith(("| none", "| blob", "| crop"))]
    assert len(rows) == 6
