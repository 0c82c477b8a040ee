"""Datalist JSON: round trip (null <-> NaN), every problem reported at once, relative paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from monai_ext.data.datalist import (
    landmarks_to_json,
    load_datalist,
    read_datalist,
    validate_datalist,
    write_datalist,
)
from monai_ext.errors import DatalistValidationError, LandmarkDataError

NAMES = ["a", "b", "c"]


def _touch(folder: Path, *names: str) -> None:
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _datalist(**sections) -> dict:
    return {"name": "t", "landmarks": NAMES, "flip_pairs": [[0, 2]], "spacing_mode": "datalist", **sections}


def test_round_trip_null_nan(tmp_path):
    _touch(tmp_path, "images/0.png", "images/1.png", "images/2.png")
    pts = np.array([[1.5, 2.0], [np.nan, np.nan], [3.0, 4.25]], dtype=np.float32)
    doc = _datalist(
        training=[{"image": "images/0.png", "landmarks": pts, "spacing": np.array([0.1, 0.2])}],
        validation=[{"image": "images/1.png", "landmarks": [[0.0, 0.0], None, [None, None]], "cobb": [1.0, 2.0, 3.0]}],
        test=[{"image": "images/2.png"}],
    )
    path = write_datalist(tmp_path / "datalist.json", doc)
    raw = json.loads(path.read_text())
    assert raw["training"][0]["landmarks"] == [[1.5, 2.0], None, [3.0, 4.25]]  # NaN written as null
    assert raw["training"][0]["spacing"] == [0.1, 0.2]
    assert raw["validation"][0]["landmarks"] == [[0.0, 0.0], None, None]

    train = load_datalist(path, "training", landmark_names=NAMES)
    assert len(train) == 1
    assert train[0]["landmarks"].dtype == np.float32 and train[0]["landmarks"].shape == (3, 2)
    np.testing.assert_array_equal(train[0]["landmarks"], pts)  # NaN == NaN for assert_array_equal
    assert train[0]["spacing"].dtype == np.float64
    np.testing.assert_array_equal(train[0]["spacing"], [0.1, 0.2])

    val = load_datalist(path, "validation")
    assert np.isnan(val[0]["landmarks"][1:]).all() and not np.isnan(val[0]["landmarks"][0]).any()
    assert "spacing" not in val[0]
    assert val[0]["cobb"] == [1.0, 2.0, 3.0]  # other keys kept as is

    test = load_datalist(path, "test")
    assert "landmarks" not in test[0]

    # writing what was loaded gives the same file content
    again = write_datalist(tmp_path / "again.json", {**read_datalist(path)})
    assert json.loads(again.read_text()) == raw


def test_landmarks_to_json():
    assert landmarks_to_json(np.array([[1, 2], [np.nan, np.nan], [np.nan, 3]])) == [[1.0, 2.0], None, None]


def test_every_problem_listed_at_once(tmp_path):
    _touch(tmp_path, "images/ok.png", "images/dup.png", "images/bad.png")
    doc = {
        "name": "t",
        "landmarks": ["a", "b", "c"],
        "spacing_mode": "datalist",
        "training": [
            {"image": "images/ok.png", "landmarks": [[0, 0], [1, 1], [2, 2]]},
            {"image": "images/bad.png", "landmarks": [[0, 0], [1, 1]]},  # wrong count
            {"image": "images/missing.png", "landmarks": [[0, 0], [1, 1], [2, 2]]},  # missing file
            {"image": "images/dup.png", "landmarks": [[0, 0], ["x", 1], [2, 2]]},  # non-numeric
        ],
        "validation": [
            {"image": "images/dup.png", "landmarks": [[0, 0], [1, 1], [2, 2]]},  # duplicate
        ],
    }
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DatalistValidationError) as info:
        validate_datalist(path, landmark_names=["p", "q", "r"])
    err = info.value
    assert err.source == str(path)
    assert len(err.problems) == 5, err.problems
    text = str(err)
    assert text.startswith(str(path))
    assert "5 problem(s)" in text
    expect = [
        "landmark names disagree with the bundle",
        "training[1] images/bad.png: 2 landmarks, expected 3",
        "training[2] images/missing.png: image file does not exist",
        "training[3] images/dup.png: landmark 1 is not a point",
        "validation[0] images/dup.png: image listed twice (also training[3])",
    ]
    for e in expect:
        assert any(e in p for p in err.problems), (e, err.problems)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"image": "i.png", "landmarks": [[0, 0], [1, None], [2, 2]]}, "landmark 1 is not a point"),
        ({"image": "i.png", "landmarks": [[0, 0], [1, float("inf")], [2, 2]]}, "landmark 1 is not a point"),
        ({"image": "i.png", "landmarks": [[0, 0], [1, 2, 3], [2, 2]]}, "landmark 1 is not a point"),
        ({"image": "i.png", "landmarks": "0,0"}, "must be a list"),
        ({"image": "i.png", "landmarks": [[0, 0]] * 3, "spacing": [0.1, -1]}, "'spacing' must be two positive"),
        ({"image": "i.png", "landmarks": [[0, 0]] * 3, "spacing": [0.1]}, "'spacing' must be two positive"),
        ({"image": "i.png"}, "no 'landmarks'"),
        ({"landmarks": [[0, 0]] * 3}, "missing 'image'"),
        ("i.png", "entry must be an object"),
    ],
)
def test_entry_problems(tmp_path, entry, message):
    _touch(tmp_path, "i.png")
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_datalist(training=[entry]), allow_nan=True))
    with pytest.raises(DatalistValidationError, match=message):
        validate_datalist(path)


def test_test_section_needs_no_landmarks(tmp_path):
    _touch(tmp_path, "i.png")
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"name": "t", "test": [{"image": "i.png"}]}))
    assert validate_datalist(path)["test"] == [{"image": "i.png"}]


def test_datalist_level_problems(tmp_path):
    path = tmp_path / "d.json"
    doc = {"landmarks": ["a", "b"], "spacing_mode": "inches", "flip_pairs": [[0, 5]], "training": {}}
    path.write_text(json.dumps(doc))
    with pytest.raises(DatalistValidationError) as info:
        validate_datalist(path)
    problems = info.value.problems
    assert len(problems) == 3
    assert any("'spacing_mode' must be one of" in p for p in problems)
    assert any("flip pair (0, 5) is outside 0..1" in p for p in problems)
    assert any("'training' must be a list" in p for p in problems)


def test_relative_paths_resolve_against_datalist_folder(tmp_path, monkeypatch):
    _touch(tmp_path, "data/images/a.png", "elsewhere/b.png")
    absolute = str((tmp_path / "elsewhere/b.png").resolve())
    path = tmp_path / "data" / "lists" / "d.json"
    write_datalist(
        path,
        _datalist(training=[
            {"image": "../images/a.png", "landmarks": [[0, 0]] * 3},
            {"image": absolute, "landmarks": [[0, 0]] * 3},
        ]),
    )
    monkeypatch.chdir(tmp_path / "elsewhere")  # the working directory plays no part
    items = load_datalist(path)
    assert items[0]["image"] == str((tmp_path / "data/images/a.png").resolve())
    assert Path(items[0]["image"]).is_absolute()
    assert items[1]["image"] == absolute


def test_duplicate_detected_through_different_relative_spellings(tmp_path):
    _touch(tmp_path, "images/a.png")
    path = tmp_path / "d.json"
    write_datalist(
        path,
        _datalist(training=[{"image": "images/a.png", "landmarks": [[0, 0]] * 3}],
                  validation=[{"image": "images/../images/a.png", "landmarks": [[0, 0]] * 3}]),
    )
    with pytest.raises(DatalistValidationError, match="listed twice"):
        validate_datalist(path)


def test_check_files_false_skips_missing_files(tmp_path):
    path = write_datalist(tmp_path / "d.json", _datalist(training=[{"image": "gone.png", "landmarks": [[0, 0]] * 3}]))
    with pytest.raises(DatalistValidationError, match="gone.png: image file does not exist"):
        validate_datalist(path)
    assert validate_datalist(path, check_files=False)["training"][0]["image"] == "gone.png"


def test_unreadable_datalists_name_the_file(tmp_path):
    with pytest.raises(LandmarkDataError, match="nothere.json: datalist file does not exist"):
        read_datalist(tmp_path / "nothere.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": [')
    with pytest.raises(LandmarkDataError, match="bad.json: not valid JSON"):
        load_datalist(bad)
    arr = tmp_path / "arr.json"
    arr.write_text("[]")
    with pytest.raises(LandmarkDataError, match="arr.json: a datalist must be a JSON object"):
        read_datalist(arr)


def test_load_missing_section(tmp_path):
    _touch(tmp_path, "i.png")
    path = write_datalist(tmp_path / "d.json", _datalist(training=[{"image": "i.png", "landmarks": [[0, 0]] * 3}]))
    with pytest.raises(LandmarkDataError, match="d.json: no 'validation' section"):
        load_datalist(path, "validation")


def test_write_is_atomic(tmp_path):
    path = write_datalist(tmp_path / "d.json", _datalist(training=[]))
    before = path.read_text()
    with pytest.raises(ValueError):  # strict JSON: a NaN outside 'landmarks' cannot be written
        write_datalist(path, _datalist(training=[{"image": "i.png", "cobb": [math.nan]}]))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]  # no temporary file left behind
