"""Performance switches of every bundle's training (the skeleton's amp, compile, channels_last, cudnn_benchmark,
pin_memory, heatmaps_on_device): off by default; with the switches on a 1-epoch CPU training on 2 images runs
(compiled, with dynamo's eager backend, for scn only: compiling the others takes long on a CPU, their test checks that
every engine compiles the network); batch-level heatmap targets equal the per-sample ones."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_workflow import bundle_workflow, workflow_files
from conftest import BUNDLE_IDS, BUNDLES, synthetic_kind
from monai.bundle import ConfigParser
from monai.handlers import from_engine

from monai_ext.data.synthetic import generate_dataset
from monai_ext.engines.prepare_batch import PrepareLandmarkBatch, batch_heatmaps, to_channels_last
from monai_ext.transforms import GenerateLandmarkHeatmapd

from monai_ext.bundle import read_config, training_stages

ROOT = Path(__file__).resolve().parents[1] / "bundles"


def _channels_last(module: torch.nn.Module) -> bool:
    convs = [p for p in module.parameters() if p.dim() == 4 and p.shape[-1] * p.shape[-2] > 1]
    return bool(convs) and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def _parsers(bundle: str, tmp_path: Path, **overrides) -> list[ConfigParser]:
    """The training config of every stage (quick.json, the dataset in tmp_path/data) with ``overrides``."""
    b = ROOT / bundle
    return [read_config(workflow_files(b, ["train.json"], stage), bundle_root=str(tmp_path),
                        dataset_dir=str(tmp_path / "data"), **{"init_from_stage1": False} if stage else {}, **overrides)
            for stage in training_stages(b)]


@pytest.mark.parametrize("bundle", BUNDLE_IDS)
def test_switches_are_off_by_default(bundle: str, tmp_path: Path):
    generate_dataset(synthetic_kind(ROOT / bundle), tmp_path / "data", n_train=1, n_val=1, n_test=0)
    for parser in _parsers(bundle, tmp_path):
        parser.resolve_macro_and_relative_ids()  # the skeleton's defaults as written
        assert [parser[k] for k in ("amp", "compile", "channels_last", "cudnn_benchmark")] == [False] * 4
        assert "initialize_workflow(@seed, @cudnn_benchmark" in parser["initialize"][0]
        assert not _channels_last(parser.get_parsed_content("network"))
        trainer = parser.get_parsed_content("train#trainer")
        assert not trainer.amp and not getattr(trainer, "compile", False) and getattr(trainer, "scaler", None) is None
        assert trainer.data_loader.pin_memory == torch.cuda.is_available()
        assert parser["heatmaps_on_device"] is False and parser["augment_on_device"] is False
        if "heatmap" in parser.get_parsed_content("target_transforms")[1].__class__.__name__.lower():
            assert "heatmap" in trainer.data_loader.dataset[0]  # heatmap bundles build them per sample


def _engines(parser: ConfigParser) -> tuple[list, list, list]:
    """``(trainers, evaluators, networks)`` of a training config."""
    return ([parser.get_parsed_content("train#trainer")], [parser.get_parsed_content("validate#evaluator")],
            [parser.get_parsed_content("network")])


@pytest.mark.parametrize("bundle", BUNDLE_IDS)
def test_compile_switch_reaches_every_engine(bundle: str, tmp_path: Path):
    generate_dataset(synthetic_kind(ROOT / bundle), tmp_path / "data", n_train=1, n_val=1, n_test=0)
    for parser in _parsers(bundle, tmp_path, compile={"mode": "reduce-overhead"}):
        trainers, evaluators, networks = _engines(parser)
        # MONAI's engines compile (the adversarial trainer updates three networks itself: not compiled)
        engines = [(e, n) for e, n in zip(trainers + evaluators, networks + networks) if hasattr(e, "compile")]
        assert evaluators[0] in [e for e, _ in engines]
        for engine, network in engines:
            assert engine.compile and engine.network._orig_mod is network  # torch.compile'd by MONAI, lazily
            assert engine.network._orig_mod is not engine.network and not _channels_last(network)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["scn", "kneel", "interactive_kp"])
def test_switches_on_train_one_epoch_on_cpu(bundle: str, tmp_path: Path):
    generate_dataset(synthetic_kind(ROOT / bundle), tmp_path / "data", n_train=2, n_val=1, n_test=0)
    # eager: dynamo without inductor's C++ build
    extra = {"heatmaps_on_device": "true", "compile": {"backend": "eager"}} if bundle == "scn" else {}
    benchmark, deterministic = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        wf = bundle_workflow(
            ROOT / bundle, ["train.json"], "training", tmp_path, amp=True,
            channels_last="true", cudnn_benchmark="True", **extra,  # strings as the command line gives
            **{"images_per_batch" if bundle == "kneel" else "batch_size": 2},
        )
        assert torch.backends.cudnn.benchmark is True  # set after set_determinism turned it off
        assert torch.backends.cudnn.deterministic is False  # the fastest algorithm need not be a deterministic one
        parser = wf.parser
        trainers, evaluators, networks = _engines(parser)
        # MONAI's amp is CUDA autocast only: on the CPU the switch resolves to off instead of a no-op autocast
        assert trainers[0].amp is torch.cuda.is_available()
        assert trainers[0].amp_kwargs["dtype"] in (torch.bfloat16, torch.float16)
        for engine, network in zip(trainers + evaluators, networks + networks):
            assert engine.compile == (bundle == "scn") and getattr(engine.network, "_orig_mod", engine.network) is network
            assert engine.amp is torch.cuda.is_available()
            assert engine.data_loader.pin_memory == torch.cuda.is_available()
        assert all(_channels_last(n) for n in networks)
        prepare = trainers[0].prepare_batch
        prepare = getattr(prepare, "prepare_batch", prepare)  # kneel's mixup wraps it
        if isinstance(prepare, PrepareLandmarkBatch):
            batch = next(iter(trainers[0].data_loader))
            image, target = prepare(batch, torch.device("cpu"))
            assert image.is_contiguous(memory_format=torch.channels_last)
            if prepare.heatmap_sigma is not None:  # heatmaps built on the device (SCN's are built inside its loss)
                _assert_targets_match_per_sample(batch, image, target, parser)
        wf.run()
        wf.finalize()
        for trainer in trainers:
            assert trainer.state.iteration >= 1 and math.isfinite(float(from_engine(["loss"], first=True)(trainer.state.output)))
        assert (tmp_path / "models" / "model.pt").is_file()
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic


def _assert_targets_match_per_sample(batch: dict, image: torch.Tensor, target, parser: ConfigParser) -> None:
    """heatmaps_on_device: the pipeline leaves the heatmaps out, the batch-level ones are the per-sample ones."""
    assert "heatmap" not in batch and "landmark_mask" not in batch
    heatmap, mask = target
    per_sample = GenerateLandmarkHeatmapd(
        keys="landmarks", sigma=parser.get_parsed_content("heatmap_sigma"),
        amplitude=parser.get_parsed_content("heatmap_amplitude"),
    )
    for i in range(image.shape[0]):
        ref = per_sample({"image": image[i], "landmarks": batch["landmarks"][i]})
        torch.testing.assert_close(heatmap[i], ref["heatmap"], atol=1e-5, rtol=0)
        torch.testing.assert_close(mask[i], ref["landmark_mask"])


def test_batch_heatmaps_equal_the_per_sample_targets():
    rng = np.random.default_rng(0)
    points = torch.as_tensor(rng.uniform(-3, 40, (3, 5, 2)), dtype=torch.float32)  # sub-pixel, some outside
    points[0, 1] = math.nan
    points[2, 4] = math.nan
    image = torch.zeros(1, 37, 29)
    for sigma, amplitude, normalize in ((2.0, 100.0, False), ([1.0, 1.5, 2.0, 3.0, 4.0], 1.0, False), (2.5, 1.0, True)):
        heatmap, mask = batch_heatmaps(points, image.shape[1:], sigma, amplitude, normalize)
        assert heatmap.shape == (3, 5, 37, 29) and heatmap.dtype == torch.float32 and mask.shape == (3, 5)
        per_sample = GenerateLandmarkHeatmapd(keys="landmarks", sigma=sigma, amplitude=amplitude, normalize=normalize)
        for i in range(3):
            ref = per_sample({"image": image, "landmarks": points[i]})
            torch.testing.assert_close(heatmap[i], ref["heatmap"], atol=1e-5, rtol=0)
            torch.testing.assert_close(mask[i], ref["landmark_mask"])
        assert mask[0, 1] == 0 and mask[2, 4] == 0 and float(mask.sum()) == 13
        assert not heatmap[0, 1].any() and not heatmap[2, 4].any() and heatmap[0, 0].max() > 0


def test_prepare_batch_builds_heatmaps_from_the_batch_landmarks_on_the_device():
    points = torch.tensor([[[3.0, 4.5], [math.nan, math.nan]], [[10.2, 1.0], [6.0, 6.0]]])
    batch = {"image": torch.rand(2, 1, 16, 12), "landmarks": points}
    image, (heatmap, mask) = PrepareLandmarkBatch(heatmap_sigma=1.5, heatmap_amplitude=100.0)(batch, torch.device("cpu"))
    expected = batch_heatmaps(points, (16, 12), 1.5, 100.0)
    torch.testing.assert_close(heatmap, expected[0])
    torch.testing.assert_close(mask, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert float(heatmap[0, 0].max()) == pytest.approx(100.0 * math.exp(-0.25 / (2 * 1.5**2)))  # (3, 4.5): 0.5 px off
    given = {**batch, "heatmap": torch.ones(2, 2, 16, 12), "landmark_mask": torch.ones(2, 2)}
    _, (kept, _) = PrepareLandmarkBatch(heatmap_sigma=1.5)(given, torch.device("cpu"))
    assert torch.equal(kept, given["heatmap"])  # the batch's own heatmaps win
    _, target = PrepareLandmarkBatch()(batch, torch.device("cpu"))
    assert target is batch["landmarks"]  # no sigma: evaluation target, the landmarks
    with pytest.raises(KeyError, match="landmarks"):
        PrepareLandmarkBatch(heatmap_sigma=1.5)({"image": batch["image"]}, torch.device("cpu"))


def test_channels_last_changes_strides_only():
    x = torch.rand(2, 3, 8, 6)
    y = to_channels_last(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, y)
    assert to_channels_last(torch.rand(1, 2, 4, 4, 4)).is_contiguous(memory_format=torch.channels_last_3d)
    flat = torch.rand(2, 3)
    assert to_channels_last(flat) is flat
    image, _ = PrepareLandmarkBatch(channels_last=True)({"image": x}, torch.device("cpu"))
    assert image.is_contiguous(memory_format=torch.channels_last) and torch.equal(image, x)


def test_default_num_workers_follows_the_machine(monkeypatch):
    from monai_ext.utils import default_num_workers, usable_cores

    assert default_num_workers(cuda=True, cores=16) == 12  # the H100 machine: 12 workers measured
    assert default_num_workers(cuda=True, cores=64) == 12 and default_num_workers(cuda=True, cores=64, cap=32) == 32
    assert default_num_workers(cuda=True, cores=3) == 2
    assert default_num_workers(cuda=False, cores=2) == 2 and default_num_workers(cuda=False, cores=1) == 1
    assert default_num_workers(cuda=False, cores=32) == 2
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_num_workers() == min(2, usable_cores())
    # every bundle's training takes its default from here
    for bundle in BUNDLES:
        parser = read_config(bundle / "configs" / "train.json")
        parser.resolve_macro_and_relative_ids()
        assert parser["num_workers"] == "$monai_ext.utils.default_num_workers()", bundle.name
