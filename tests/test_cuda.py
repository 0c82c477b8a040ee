"""CUDA paths: skipped without a GPU (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.

Decoding and mapping back give the same points from CUDA heatmaps as from CPU ones (points always come back on
the CPU), the batch affine + elastic augmentation warps and moves landmarks on CUDA as on the CPU, and the scn fast
path (bf16 autocast, channels_last, cudnn benchmark, batch affine + elastic and heatmaps on the GPU) trains,
validates, and infers the same landmarks on the GPU as on the CPU from the same checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_workflow import bundle_workflow
from monai.handlers import from_engine

from monai_ext.data import LoadRadiographd
from monai_ext.data.datalist import load_datalist
from monai_ext.data.synthetic import generate_dataset
from monai_ext.transforms import DecodeHeatmapd, FitToShaped, LandmarksToOriginald

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SCN = Path(__file__).resolve().parents[1] / "bundles" / "scn"


def test_decoding_and_mapping_back_from_cuda_heatmaps(tmp_path: Path):
    datalist = generate_dataset("hand", tmp_path / "data", n_train=1, n_val=0, n_test=0)
    item = load_datalist(datalist, "training")[0]
    d = FitToShaped(keys="image", spatial_size=(96, 128))(LoadRadiographd(keys="image")(dict(item)))
    size = d["image"].shape[1:]
    points = torch.tensor([[10.3, 20.7], [50.0, 64.2], [80.6, 100.1]], dtype=torch.float64)
    grid_x, grid_y = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    heatmaps = torch.stack([torch.exp(-((grid_x - x) ** 2 + (grid_y - y) ** 2) / 8.0) for x, y in points]).float()
    decode = [DecodeHeatmapd(keys="pred", method="quadratic"), LandmarksToOriginald(keys="pred_landmarks")]
    results = {}
    for device in ("cpu", "cuda"):
        out = {"image": d["image"].to(device), "pred": heatmaps.to(device)}
        for t in decode:
            out = t(out)
        assert out["pred_landmarks"].device.type == "cpu" and out["pred_confidence"].device.type == "cpu"
        results[device] = out["pred_landmarks"]
    torch.testing.assert_close(results["cuda"], results["cpu"], atol=1e-3, rtol=0)


def test_batch_affine_elastic_on_cuda_matches_cpu():
    from monai_ext.transforms.batch_elastic import BatchRandAffineElastic

    aug = BatchRandAffineElastic(rotate_range=0.3, scale_range=0.1, translate_range=4.0, flip_prob=0.5,
                                 flip_pairs=[[0, 1]], elastic_prob=1.0, elastic_magnitude=2.0, seed=1)
    images = torch.rand(4, 1, 64, 80)
    points = torch.stack([10 + 40 * torch.rand(4, 3), 10 + 60 * torch.rand(4, 3)], -1)
    aug.randomize(4, (64, 80))  # drawn on the CPU, applied on both devices
    cpu = aug.apply(images, points, aug.matrix, aug.flipped, aug.field)
    gpu = aug.apply(images.cuda(), points.cuda(), aug.matrix.cuda(), aug.flipped.cuda(), aug.field.cuda())
    assert gpu[0].is_cuda and gpu[1].is_cuda
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], atol=1e-3, rtol=0, equal_nan=True)
    out, moved = aug(images.cuda(), points.cuda())  # drawn on the GPU with its own generator
    assert out.is_cuda and aug.field.is_cuda and moved.shape == (4, 3, 2)


def test_scn_fast_path_trains_on_cuda_and_infers_like_cpu(tmp_path: Path):
    benchmark, deterministic = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        wf = bundle_workflow(SCN, ["train.json"], "training", tmp_path, amp=True, channels_last=True,
                             cudnn_benchmark=True, augment_on_device=True, batch_size=2, max_epochs=2)
        parser = wf.parser
        assert parser.get_parsed_content("device").type == "cuda"
        trainer = parser.get_parsed_content("train#trainer")
        assert trainer.amp and torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        wf.run()
        wf.finalize()
        assert math.isfinite(float(from_engine(["loss"], first=True)(trainer.state.output)))
        assert parser.get_parsed_content("validate#evaluator").state.metrics["val_mre"] > 0
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic

    points = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"infer_{device}"
        wf = bundle_workflow(SCN, ["inference.json"], "inference", tmp_path, output_dir=str(out),
                             device=f"$torch.device('{device}')", num_overlays=0)
        wf.run()
        wf.finalize()
        doc = json.loads((out / "inference" / "predictions.json").read_text())
        assert doc["predictions"] and all(r["error"] is None for r in doc["predictions"])
        points[device] = np.array([[[p["x"], p["y"]] for p in r["landmarks"]] for r in doc["predictions"]])
    np.testing.assert_allclose(points["cuda"], points["cpu"], atol=0.05)
