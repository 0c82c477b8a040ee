"""scripts/prepare_datalist.py on tiny generated files: dicom_folder, images_folder, shared, bad-row reports,
training/validation/test splits and K-fold datalists."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_ext.data.datalist import load_datalist, validate_datalist
from monai_ext.data.readers import LoadRadiographd
from monai_ext.data.synthetic import write_dicom, write_nifti
from monai_ext.errors import DatalistValidationError, LandmarkDataError

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("prepare_datalist", REPO / "scripts" / "prepare_datalist.py")
prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)

K = 3


def _raster(seed: int, h: int = 20, w: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w))


def _dicoms(folder: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        rel = f"sub/img{i}.dcm" if i % 2 else f"img{i}.dcm"
        write_dicom(folder / rel, _raster(i), (0.2, 0.3))
        names.append(rel)
    return names


def _points(i: int) -> list[list[float]]:
    return [[1.0 + i, 2.0], [3.5, 4.0 + i], [10.0, 12.0]]


def _csv(path: Path, rows: list[list], header: bool = True) -> Path:
    lines = ["image," + ",".join(f"x{k},y{k}" for k in range(K))] if header else []
    lines += [",".join("" if v is None else str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_dicom_folder_from_csv(tmp_path):
    folder = tmp_path / "dicoms"
    images = _dicoms(folder, 10)
    rows = [[img, *np.ravel(_points(i)).tolist()] for i, img in enumerate(images)]
    rows[3][3:5] = [None, None]  # landmark 1 of image 3 missing
    points = _csv(tmp_path / "points.csv", rows)
    out = tmp_path / "lists" / "datalist.json"
    result = prep.dicom_folder(str(folder), str(points), str(out), landmarks="p,q,r", val_fraction=0.2, seed=1)
    assert result == str(out)
    doc = json.loads(out.read_text())
    assert doc["landmarks"] == ["p", "q", "r"]
    assert doc["spacing_mode"] == "image"
    # 20 % test by default, validation as asked; split sizes and seed recorded
    assert len(doc["training"]) == 6 and len(doc["validation"]) == 2 and len(doc["test"]) == 2
    assert doc["split_sizes"] == {"training": 6, "validation": 2, "test": 2} and doc["split_seed"] == 1
    listed = [e["image"] for e in doc["training"] + doc["validation"] + doc["test"]]
    assert all(p.startswith("../dicoms/") for p in listed)  # relative to the datalist folder, not copied
    assert sorted(listed) == sorted(f"../dicoms/{img}" for img in images)
    assert not (tmp_path / "lists" / "dicoms").exists()

    items = {Path(it["image"]).relative_to(folder.resolve()).as_posix(): it
             for s in ("training", "validation", "test")
             for it in load_datalist(out, s, landmark_names=["p", "q", "r"])}
    for i, img in enumerate(images):
        expected = np.asarray(_points(i), dtype=np.float32)
        if i == 3:
            expected[1] = np.nan
        np.testing.assert_array_equal(items[img]["landmarks"], expected)
    loaded = LoadRadiographd(require_spacing=True)(items[images[1]])
    assert loaded["image"].meta["spacing_source"] == "PixelSpacing"
    np.testing.assert_allclose(loaded["spacing"].numpy(), [0.2, 0.3])

    # the split is seeded: same seed same split, another seed another split
    out2 = tmp_path / "lists" / "again.json"
    prep.dicom_folder(str(folder), str(points), str(out2), landmarks="p,q,r", val_fraction=0.2, seed=1)
    assert json.loads(out2.read_text())["validation"] == doc["validation"]
    splits = set()
    for seed in range(6):
        prep.dicom_folder(str(folder), str(points), str(out2), val_fraction=0.2, seed=seed)
        splits.add(tuple(e["image"] for e in json.loads(out2.read_text())["validation"]))
    assert len(splits) > 1


def test_dicom_folder_from_json_and_headerless_csv(tmp_path):
    folder = tmp_path / "dicoms"
    images = _dicoms(folder, 4)
    pts = {img: _points(i) for i, img in enumerate(images)}
    pts[images[0]][2] = None
    (tmp_path / "points.json").write_text(json.dumps(pts))
    out = prep.dicom_folder(str(folder), str(tmp_path / "points.json"), str(tmp_path / "a.json"), val_fraction=0.25)
    doc = json.loads(Path(out).read_text())
    assert doc["landmarks"] == ["L0", "L1", "L2"]
    assert len(doc["training"]) == 2 and len(doc["validation"]) == 1 and len(doc["test"]) == 1
    entry = next(e for e in doc["training"] + doc["validation"] + doc["test"] if e["image"].endswith(images[0]))
    assert entry["landmarks"][2] is None

    rows = [[img, *np.ravel(_points(i)).tolist()] for i, img in enumerate(images)]
    csv_path = _csv(tmp_path / "noheader.csv", rows, header=False)
    out = prep.dicom_folder(str(folder), str(csv_path), str(tmp_path / "b.json"), landmarks=["p", "q", "r"])
    assert json.loads(Path(out).read_text())["landmarks"] == ["p", "q", "r"]

    # a spreadsheet export with a byte-order mark still has its header recognised
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + _csv(tmp_path / "plain.csv", rows[:1]).read_bytes())
    out = prep.dicom_folder(str(folder), str(bom), str(tmp_path / "c.json"), val_fraction=0)
    assert len(json.loads(Path(out).read_text())["training"]) == 1


def test_dicom_folder_bad_rows_all_reported(tmp_path):
    folder = tmp_path / "dicoms"
    images = _dicoms(folder, 4)
    good = np.ravel(_points(0)).tolist()
    rows = [
        [images[0], *good],  # line 2: fine
        [images[1], *good[:-1]],  # line 3: 5 values
        [images[2], good[0], "abc", *good[2:]],  # line 4: non-numeric
        [images[0], *good],  # line 5: duplicate of line 2
        ["nothere.dcm", *good],  # line 6: missing file
        [images[3], "", 3.0, *good[2:]],  # line 7: only one coordinate of point 0
    ]
    points = _csv(tmp_path / "points.csv", rows)
    out = tmp_path / "datalist.json"
    with pytest.raises(DatalistValidationError) as info:
        prep.dicom_folder(str(folder), str(points), str(out))
    err = info.value
    assert err.source == str(points)
    assert str(err).startswith(str(points))
    problems = err.problems
    assert len(problems) == 5, problems
    expect = [
        ("line 3", images[1], "5 coordinate values, expected 6"),
        ("line 4", images[2], "non-numeric"),
        ("line 5", images[0], "image listed twice (also line 2)"),
        ("line 6", "nothere.dcm", "image file does not exist"),
        ("line 7", images[3], "point 0: only one coordinate"),
    ]
    for (line, image, reason), problem in zip(expect, problems):
        assert problem.startswith(f"{line} {image}:") and reason in problem, problem
    assert not out.exists()


def test_dicom_folder_bad_json_and_names(tmp_path):
    folder = tmp_path / "dicoms"
    images = _dicoms(folder, 3)
    pts = {
        images[0]: _points(0),
        images[1]: _points(1)[:2],  # too few points
        images[2]: [[1, 2], [3, "x"], [5, 6]],  # non-numeric
        "gone.dcm": _points(0),  # missing file
    }
    (tmp_path / "p.json").write_text(json.dumps(pts))
    with pytest.raises(DatalistValidationError) as info:
        prep.dicom_folder(str(folder), str(tmp_path / "p.json"), str(tmp_path / "d.json"))
    assert len(info.value.problems) == 3
    assert any(images[1] in p and "2 points, expected 3" in p for p in info.value.problems)
    assert any(images[2] in p and "point 1" in p for p in info.value.problems)
    assert any("gone.dcm" in p and "does not exist" in p for p in info.value.problems)

    good = _csv(tmp_path / "ok.csv", [[img, *np.ravel(_points(i)).tolist()] for i, img in enumerate(images)])
    with pytest.raises(LandmarkDataError, match="ok.csv: header has 3 points"):
        prep.dicom_folder(str(folder), str(good), str(tmp_path / "d.json"), landmarks="a,b")


def test_dicom_folder_requires_dicom_spacing(tmp_path):
    folder = tmp_path / "dicoms"
    images = _dicoms(folder, 2)
    write_dicom(folder / "nospacing.dcm", _raster(5), None)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / "photo.png")
    images += ["nospacing.dcm", "photo.png"]
    points = _csv(tmp_path / "p.csv", [[img, *np.ravel(_points(i)).tolist()] for i, img in enumerate(images)])
    with pytest.raises(DatalistValidationError) as info:
        prep.dicom_folder(str(folder), str(points), str(tmp_path / "d.json"))
    problems = info.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("nospacing.dcm: no PixelSpacing")
    assert problems[1].startswith("photo.png: not a readable DICOM")
    out = prep.dicom_folder(str(folder), str(points), str(tmp_path / "d.json"), require_spacing=False, val_fraction=0,
                            n_test=0)
    doc = json.loads(Path(out).read_text())
    assert len(doc["training"]) == 4 and doc["validation"] == [] and "test" not in doc


def test_images_folder(tmp_path):
    folder = tmp_path / "incoming"
    write_dicom(folder / "a.dcm", _raster(0), (0.2, 0.2))
    write_dicom(folder / "b_no_suffix", _raster(1), (0.2, 0.2))
    write_nifti(folder / "c.nii.gz", _raster(2), (0.1, 0.1))
    Image.fromarray((_raster(3) * 255).astype(np.uint8)).save(folder / "d.png")
    (folder / "deep").mkdir()
    Image.fromarray((_raster(4) * 255).astype(np.uint8)).save(folder / "deep" / "e.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "README").write_text("no suffix, not DICOM")
    (folder / ".hidden.png").write_bytes(b"")

    out = tmp_path / "infer" / "datalist.json"
    prep.images_folder(str(folder), str(out))
    doc = json.loads(out.read_text())
    assert set(doc) == {"name", "spacing_mode", "test"}
    names = ("a.dcm", "b_no_suffix", "c.nii.gz", "d.png")  # sorted; .txt, README and hidden files skipped
    assert [e["image"] for e in doc["test"]] == [f"../incoming/{n}" for n in names]
    assert all(set(e) == {"image"} for e in doc["test"])
    items = load_datalist(out, "test")
    loaded = [LoadRadiographd()(it)["image"] for it in items]
    assert [tuple(img.shape) for img in loaded] == [(1, 24, 20)] * 4

    prep.images_folder(str(folder), str(out), pattern="**/*.jpg")
    assert [e["image"] for e in json.loads(out.read_text())["test"]] == ["../incoming/deep/e.jpg"]

    with pytest.raises(LandmarkDataError, match="incoming: no images matching '\\*.bmp'"):
        prep.images_folder(str(folder), str(out), pattern="*.bmp")
    with pytest.raises(LandmarkDataError, match="nowhere: image folder does not exist"):
        prep.images_folder(str(tmp_path / "nowhere"), str(out))


def _fake_shared(root: Path, dataset: str, n: int) -> None:
    """A tiny stand-in for ../shared/data/<dataset> (the real one is tested in test_realdata_smoke)."""
    folder = root / dataset
    k = 37 if dataset == "hand_xray" else 68
    rng = np.random.default_rng(0)
    header = ["image"] + [f"{a}{i}" for i in range(k) for a in "xy"]
    if dataset == "spine_aasce":
        header += ["cobb_main", "cobb_upper", "cobb_lower"]
    lines = [",".join(header)]
    for i in range(n):
        rel = f"images/{i:03d}.jpg"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / rel)
        pts = rng.uniform(0, 1000, (k, 2))
        if dataset == "hand_xray":
            pts[1], pts[5] = (100.0, 500.0), (100.0 + 300.0 + i, 500.0)  # wrist width 300 + i px
        extra = [30.0 + i, 10.0, 5.0] if dataset == "spine_aasce" else []
        lines.append(",".join([rel, *(f"{v:.2f}" for v in pts.ravel()), *(str(v) for v in extra)]))
    (folder / "landmarks.csv").write_text("\n".join(lines) + "\n")


def test_shared_hand_layout(tmp_path):
    _fake_shared(tmp_path / "shared", "hand_xray", 12)
    out = tmp_path / "repo" / "data" / "hand_xray" / "datalist.json"
    prep.shared("hand_xray", data_root=str(tmp_path / "shared"), out=str(out), n_val=3, seed=0)
    doc = json.loads(out.read_text())
    assert doc["spacing_mode"] == "reference_distance"
    assert doc["reference"] == {"landmarks": [1, 5], "distance_mm": 50.0}
    assert doc["landmarks"] == [f"L{i}" for i in range(37)]
    assert doc["flip_pairs"] == []
    assert len(doc["training"]) == 7 and len(doc["validation"]) == 3 and len(doc["test"]) == 2
    for e in doc["training"] + doc["validation"] + doc["test"]:
        i = int(Path(e["image"]).stem)
        assert e["image"] == f"../../../shared/hand_xray/images/{i:03d}.jpg"
        assert e["spacing"] == pytest.approx([50.0 / (300 + i)] * 2)
    prep.shared("hand_xray", data_root=str(tmp_path / "shared"), out=str(out), val_fraction=0.25)
    assert len(json.loads(out.read_text())["validation"]) == 3


def test_shared_spine_layout(tmp_path):
    _fake_shared(tmp_path / "shared", "spine_aasce", 5)
    out = tmp_path / "spine.json"
    prep.shared("spine_aasce", data_root=str(tmp_path / "shared"), out=str(out), n_val=1)
    doc = json.loads(out.read_text())
    assert doc["spacing_mode"] == "pixel"
    assert len(doc["landmarks"]) == 68
    assert doc["landmarks"][:5] == ["T1_TL", "T1_TR", "T1_BL", "T1_BR", "T2_TL"]
    assert doc["landmarks"][-1] == "L5_BR"
    assert [4, 5] in doc["flip_pairs"] and [6, 7] in doc["flip_pairs"] and len(doc["flip_pairs"]) == 34
    assert [len(doc[s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    for e in doc["training"] + doc["validation"] + doc["test"]:
        i = int(Path(e["image"]).stem)
        assert e["cobb"] == [30.0 + i, 10.0, 5.0]
        assert "spacing" not in e
        assert len(e["landmarks"]) == 68


def test_shared_missing_dataset(tmp_path):
    with pytest.raises(LandmarkDataError, match="landmarks.csv: shared dataset not found"):
        prep.shared("hand_xray", data_root=str(tmp_path), out=str(tmp_path / "d.json"))
    with pytest.raises(ValueError, match="dataset must be one of"):
        prep.shared("knees", data_root=str(tmp_path))


def test_split_indices():
    train, val = prep.split_indices(112, 21, seed=0)
    assert len(train) == 91 and len(val) == 21 and sorted(train + val) == list(range(112))
    assert prep.split_indices(112, 21, seed=0) == (train, val)
    assert prep.split_indices(112, 21, seed=1) != (train, val)
    with pytest.raises(ValueError):
        prep.split_indices(3, 4)


def test_cli_commands(tmp_path, capsys):
    folder = tmp_path / "imgs"
    images = _dicoms(folder, 2)
    points = _csv(tmp_path / "p.csv", [[img, *np.ravel(_points(i)).tolist()] for i, img in enumerate(images)])
    out = tmp_path / "d.json"
    argv = ["dicom_folder", "--folder", str(folder), "--points", str(points), "--out", str(out), "--landmarks", "p,q,r",
            "--n_test", "0"]
    assert prep.main(argv) == str(out)
    doc = json.loads(out.read_text())
    assert doc["landmarks"] == ["p", "q", "r"] and len(doc["training"]) == len(doc["validation"]) == 1
    assert "test" not in doc  # --n_test 0: no test section
    # two images cannot hold a training, a validation and a test image
    with pytest.raises(ValueError, match="2 images: 1 test \\+ 1 validation leave 0 for training"):
        prep.main(argv[:-2])
    assert prep.main(["images_folder", "--folder", str(folder), "--out", str(out), "--pattern", "**/*.dcm"]) == str(out)
    assert [e["image"] for e in json.loads(out.read_text())["test"]] == ["imgs/img0.dcm", "imgs/sub/img1.dcm"]
    assert str(out) in capsys.readouterr().out


# ---------------------------------------------------------------- training / validation / test and K folds


def test_split_sections_disjoint_seeded_and_test_independent_of_validation():
    train, val, test = prep.split_sections(112, 11, 22, seed=0)
    assert (len(train), len(val), len(test)) == (79, 11, 22)
    assert sorted(train + val + test) == list(range(112))  # disjoint and complete
    assert prep.split_sections(112, 11, 22, seed=0) == (train, val, test)
    assert prep.split_sections(112, 11, 22, seed=1)[2] != test
    # the test images are drawn first: another validation size keeps the same test section
    assert prep.split_sections(112, 30, 22, seed=0)[2] == test
    # without a test section the split is split_indices'
    assert prep.split_sections(112, 21, 0, seed=3)[:2] == prep.split_indices(112, 21, seed=3)
    with pytest.raises(ValueError, match="n_val must be in 0..10"):
        prep.split_sections(12, 11, 2)


@pytest.mark.parametrize("n, folds", [(112, 3), (10, 2), (7, 3), (5, 5)])
def test_fold_sections_partition_every_image_once(n, folds):
    sections = prep.fold_sections(n, folds, n_val=1 if n - -(-n // folds) > 1 else 0, seed=4)
    assert len(sections) == folds
    tests = [test for _, _, test in sections]
    assert sorted(i for t in tests for i in t) == list(range(n))  # every image in exactly one test part
    assert max(map(len, tests)) - min(map(len, tests)) <= 1  # near-equal parts
    for train, val, test in sections:
        assert not set(test) & (set(train) | set(val)) and not set(train) & set(val)
        assert sorted(train + val + test) == list(range(n)) and len(train) >= 1
    assert prep.fold_sections(n, folds, 0, seed=4)[0][2] == tests[0]  # the test parts do not depend on n_val


def test_fold_sections_seeded():
    assert prep.fold_sections(40, 3, 4, seed=7) == prep.fold_sections(40, 3, 4, seed=7)
    assert prep.fold_indices(40, 3, seed=7) != prep.fold_indices(40, 3, seed=8)


def test_shared_defaults_write_three_sections(tmp_path):
    _fake_shared(tmp_path / "shared", "hand_xray", 40)
    out = tmp_path / "data" / "hand_xray" / "datalist.json"
    prep.shared("hand_xray", data_root=str(tmp_path / "shared"), out=str(out))
    doc = validate_datalist(out, [f"L{i}" for i in range(37)])
    # 10 % validation, 20 % test (11 and 22 of the real set's 112 images)
    assert doc["split_sizes"] == {"training": 28, "validation": 4, "test": 8} and doc["split_seed"] == 0
    images = [[e["image"] for e in doc[s]] for s in ("training", "validation", "test")]
    assert [len(i) for i in images] == [28, 4, 8]
    assert len({i for part in images for i in part}) == 40  # disjoint
    assert "fold" not in doc and "folds" not in doc
    again = out.with_name("again.json")  # same folder: same relative paths
    prep.shared("hand_xray", data_root=str(tmp_path / "shared"), out=str(again))
    assert [e["image"] for e in json.loads(again.read_text())["test"]] == images[2]


def test_shared_folds(tmp_path):
    _fake_shared(tmp_path / "shared", "hand_xray", 14)
    out = tmp_path / "data" / "datalist.json"
    paths = prep.shared("hand_xray", data_root=str(tmp_path / "shared"), out=str(out), folds=3, n_val=2, seed=5)
    assert paths == [str(tmp_path / "data" / f"datalist_fold{k}.json") for k in range(3)]
    assert not out.exists()
    docs = [validate_datalist(p, [f"L{i}" for i in range(37)]) for p in paths]  # the new keys validate
    tests = [{e["image"] for e in d["test"]} for d in docs]
    assert sorted(len(t) for t in tests) == [4, 5, 5]
    assert set.union(*tests) == {f"../shared/hand_xray/images/{i:03d}.jpg" for i in range(14)}
    assert sum(len(t) for t in tests) == 14  # every image in exactly one test section
    for k, (doc, test) in enumerate(zip(docs, tests)):
        assert doc["fold"] == k and doc["folds"] == 3 and doc["split_seed"] == 5
        others = {e["image"] for s in ("training", "validation") for e in doc[s]}
        assert not others & test and len(others) == 14 - len(test) and len(doc["validation"]) == 2
        assert doc["split_sizes"] == {"training": 12 - len(test), "validation": 2, "test": len(test)}
        assert all("spacing" in e for e in doc["test"])
        assert len(load_datalist(paths[k], "test")) == len(test)
    # same seed, same folds; another seed, other folds
    again = prep.shared("hand_xray", data_root=str(tmp_path / "shared"), out=str(tmp_path / "data" / "b.json"), folds=3,
                        n_val=2, seed=5)
    assert [json.loads(Path(p).read_text())["test"] for p in again] == [d["test"] for d in docs]
    other = prep.shared("hand_xray", data_root=str(tmp_path / "shared"), out=str(tmp_path / "data" / "c.json"), folds=3,
                        n_val=2, seed=6)
    assert [json.loads(Path(p).read_text())["test"] for p in other] != [d["test"] for d in docs]


def test_dicom_folder_folds_without_validation(tmp_path, capsys):
    folder = tmp_path / "dicoms"
    images = _dicoms(folder, 5)
    points = _csv(tmp_path / "p.csv", [[img, *np.ravel(_points(i)).tolist()] for i, img in enumerate(images)])
    argv = ["dicom_folder", "--folder", str(folder), "--points", str(points), "--out", str(tmp_path / "cv.json"),
            "--folds", "2", "--n_val", "0"]
    paths = prep.main(argv)
    assert paths == [str(tmp_path / "cv_fold0.json"), str(tmp_path / "cv_fold1.json")]
    docs = [json.loads(Path(p).read_text()) for p in paths]
    assert [len(d["test"]) for d in docs] == [3, 2] and all(d["validation"] == [] for d in docs)
    assert sorted(e["image"] for d in docs for e in d["test"]) == sorted(f"dicoms/{i}" for i in images)
    assert "empty 'validation' section" in capsys.readouterr().err  # the bundles cannot select a checkpoint


def test_split_argument_errors(tmp_path):
    _fake_shared(tmp_path / "shared", "hand_xray", 6)
    root, out = str(tmp_path / "shared"), str(tmp_path / "d.json")
    cases = [
        ({"folds": 1}, "--folds must be an integer >= 2"),
        ({"folds": 2.5}, "--folds must be an integer >= 2"),
        ({"folds": 7}, "--folds 7: more folds than images \\(6\\)"),
        ({"folds": 3, "n_test": 1}, "--folds sets the test sections"),
        ({"folds": 2, "n_val": 3}, "n_val must be in 0..2"),
        ({"n_val": 2, "val_fraction": 0.1}, "give --n_val or --val_fraction, not both"),
        ({"n_test": -1}, "--n_test must be a non-negative integer"),
        ({"test_fraction": 1.0}, "--test_fraction must be a number in \\[0, 1\\)"),
        ({"n_val": 3, "n_test": 3}, "6 images: 3 test \\+ 3 validation leave 0 for training"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            prep.shared("hand_xray", data_root=root, out=out, **kwargs)
    assert not Path(out).exists()
    # argument errors come before any file is read
    with pytest.raises(ValueError, match="--folds must be"):
        prep.dicom_folder(str(tmp_path / "nowhere"), str(tmp_path / "none.csv"), out, folds=0)
