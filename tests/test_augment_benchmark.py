"""scripts/augment_benchmark.py: the scn training config's per-sample and batch augmentation, off and on the device."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("augment_benchmark", REPO / "scripts" / "augment_benchmark.py")
augment_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(augment_benchmark)


def test_times_where_the_augmentation_runs(tmp_path: Path):
    # the skeleton's augmentation and per-sample heatmaps (the baseline bundle; SCN builds its targets in its loss)
    out = tmp_path / "augment.json"
    record = augment_benchmark.run(bundle="unet_heatmap", repeats=3, batch_size=2, overrides='{"spatial_size": [32, 40]}',
                                   out=str(out))
    assert json.loads(out.read_text())["bundle"] == "unet_heatmap"
    cpu, device = record["settings"]["per_sample"], record["settings"]["augment_on_device"]
    assert cpu["spatial_size"] == [32, 40] and "batch" not in cpu
    assert {"ApplyWithLandmarksd", "RandLandmarkElasticd", "GenerateLandmarkHeatmapd"} <= set(cpu["per_sample"])
    # on the device, the workers keep only the intensity jitter; the affine + elastic run on the batch
    assert not {"ApplyWithLandmarksd", "RandLandmarkElasticd", "GenerateLandmarkHeatmapd"} & set(device["per_sample"])
    assert "RandScaleIntensityd" in device["per_sample"] and device["batch"] == "BatchRandAffineElastic"
    assert cpu["per_sample_ms"]["n"] == 3 and device["batch_ms"]["n"] == 1 and device["batch_ms"]["median_ms"] > 0
