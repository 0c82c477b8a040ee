"""KNEEL end-to-end inference over images of different sizes: a batch keeps each original image as a list
(``collate_failed_items(list_keys=...)``) and predicts the same points as one image at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bundle_workflow import bundle_workflow, train_bundle

REPO = Path(__file__).resolve().parents[1]
KNEEL = REPO / "bundles" / "kneel"


def _points(folder: Path) -> dict[str, np.ndarray]:
    doc = json.loads((folder / "predictions.json").read_text())
    assert all(r["error"] is None for r in doc["predictions"])
    return {Path(r["image"]).name: np.array([[p["x"], p["y"]] for p in r["landmarks"]], float) for r in doc["predictions"]}


@pytest.mark.slow
def test_batched_two_stage_inference_matches_one_image_at_a_time(tmp_path: Path):
    train_bundle(KNEEL, tmp_path)
    images = json.loads((tmp_path / "data" / "datalist.json").read_text())["test"][:5]
    files = [str(tmp_path / "data" / item["image"]) for item in images]
    from monai_ext.data.readers import LoadRadiographd

    shapes = {tuple(LoadRadiographd(keys="image")({"image": f})["image"].shape) for f in files}
    assert len(shapes) > 1, "the test needs originals of different sizes"
    predictions = {}
    for batch in (1, 3):
        out = tmp_path / f"batch{batch}"
        wf = bundle_workflow(KNEEL, ["inference.json"], "inference", tmp_path, input=files, output_dir=str(out),
                             num_overlays=0, **{"dataloader#batch_size": batch})
        wf.run()
        wf.finalize()
        predictions[batch] = _points(out / "inference")
    assert sorted(predictions[1]) == sorted(predictions[3]) == sorted(Path(f).name for f in files)
    for name, points in predictions[1].items():
        np.testing.assert_allclose(predictions[3][name], points, atol=1e-3)
