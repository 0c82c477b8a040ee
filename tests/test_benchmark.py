"""Benchmark harness: the measurement pieces on a plain ignite engine with a fake clock, then
``scripts/benchmark.py run`` on the SCN bundle (quick.json, 2 epochs, a tiny DICOM datalist) and ``report``."""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from monai_ext.benchmark import (
    FinalValidation,
    IterationTimer,
    PeakMemoryMonitor,
    StopAfterMinutes,
    ValidationHistory,
    config_names,
    count_images,
    detection_rate_curve,
    latency_stats,
    machine_info,
    release_workers,
)
from monai_ext.bundle import config_files
from monai_ext.data.synthetic import write_dicom

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmark_script", REPO / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class TimedLoader:
    """A sized re-iterable of ``n`` batches of ``batch`` images; each fetch advances the clock by ``fetch_s``
    (the first fetch of the whole run by ``first_fetch_s``)."""

    def __init__(self, clock: FakeClock, n: int, batch: int, fetch_s: float, first_fetch_s: float):
        self.clock, self.n, self.batch, self.fetch_s, self.first_fetch_s = clock, n, batch, fetch_s, first_fetch_s
        self.fetches = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            self.clock.t += self.first_fetch_s if self.fetches == 0 else self.fetch_s
            self.fetches += 1
            yield {"image": torch.zeros(self.batch, 1, 4, 4)}


def _engine(clock: FakeClock, compute_s: float) -> Engine:
    def step(engine, batch):
        clock.t += compute_s

    return Engine(step)


def test_iteration_timer_splits_wait_and_compute_and_skips_the_first_epoch():
    clock = FakeClock()
    engine = _engine(clock, compute_s=3.0)
    timer = IterationTimer(clock=clock)
    timer.attach(engine)
    engine.run(TimedLoader(clock, n=3, batch=2, fetch_s=1.0, first_fetch_s=9.0), max_epochs=3)

    assert len(timer.steps) == 9
    assert [s.images for s in timer.steps] == [2] * 9
    assert timer.steps[0].wait_s == pytest.approx(9.0) and timer.steps[0].compute_s == pytest.approx(3.0)
    summary = timer.summary()
    assert summary["steady_epochs"] == [2, 3]
    assert summary["images"] == 12 and summary["steps"] == 6
    assert summary["images_per_s"] == pytest.approx(12 / 24)  # 6 steps of 1 s wait + 3 s compute
    assert summary["data_wait_fraction"] == pytest.approx(0.25)
    first = summary["per_epoch"][0]
    assert first["epoch"] == 1 and first["seconds"] == pytest.approx(9 + 3 + 2 * 4)
    assert timer.summary(skip_first_epoch=False)["images"] == 18


def test_iteration_timer_single_epoch_is_its_own_steady_state():
    clock = FakeClock()
    engine = _engine(clock, compute_s=1.0)
    timer = IterationTimer(clock=clock)
    timer.attach(engine)
    engine.run(TimedLoader(clock, n=2, batch=1, fetch_s=1.0, first_fetch_s=1.0), max_epochs=1)
    summary = timer.summary()
    assert summary["steady_epochs"] == [1]
    assert summary["data_wait_fraction"] == pytest.approx(0.5)


def test_stop_after_minutes_ends_at_an_epoch_boundary():
    clock = FakeClock()
    engine = _engine(clock, compute_s=20.0)  # 3 iterations: 60 s per epoch
    StopAfterMinutes(1.5, clock=clock).attach(engine)
    engine.run(TimedLoader(clock, n=3, batch=1, fetch_s=0.0, first_fetch_s=0.0), max_epochs=10)
    assert engine.state.epoch == 2 and engine.state.iteration == 6
    with pytest.raises(ValueError, match="positive"):
        StopAfterMinutes(0)


def test_validation_history_records_training_time_without_validation():
    clock = FakeClock()
    trainer = _engine(clock, compute_s=1.0)
    evaluator = Engine(lambda engine, batch: None)
    history = ValidationHistory(clock=clock)
    history.attach(trainer, evaluator)

    @evaluator.on(Events.STARTED)
    def _validation_takes_time(engine):
        clock.t += 0.5

    @evaluator.on(Events.EPOCH_COMPLETED)  # as ignite metrics do, before COMPLETED
    def _metric(engine):
        engine.state.metrics = {"val_mre": 10.0 / trainer.state.epoch, "label": "not a number"}

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: evaluator.run([0]))
    trainer.run([0, 1], max_epochs=2)  # 2 iterations of 1 s per epoch, then 0.5 s of validation
    assert [(h["epoch"], h["iteration"]) for h in history.records] == [(1, 2), (2, 4)]
    assert [h["wall_s"] for h in history.records] == pytest.approx([2.5, 5.0])
    assert [h["train_s"] for h in history.records] == pytest.approx([2.0, 4.0])
    assert history.records[1]["metrics"] == {"val_mre": 5.0}
    text = benchmark.time_to_accuracy({"training": {"validation_history": history.records},
                                       "validation": {"key_metric": "val_mre", "unit": "mm"}})
    assert text == "val_mre 5.00 mm after 0.0833 min; best 5.00 mm at 0.0833 min (2 validations)"


@pytest.mark.parametrize("every, epochs, expected", [(2, 3, [2, 3]), (1, 2, [1, 2]), (2, 4, [2, 4])])
def test_final_validation_scores_the_last_epoch_once(every: int, epochs: int, expected: list[int]):
    clock = FakeClock()
    trainer = _engine(clock, compute_s=1.0)

    class Validator(Engine):
        def run(self, global_epoch: int = 1):  # MONAI evaluators take the trainer's epoch
            self.global_epochs.append(global_epoch)
            return super().run([0])

    validator = Validator(lambda engine, batch: None)
    validator.global_epochs = []
    history = ValidationHistory(clock=clock)
    history.attach(trainer, validator)
    FinalValidation(validator, history).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=every), lambda engine: validator.run(engine.state.epoch))
    trainer.run([0], max_epochs=epochs)
    assert [h["epoch"] for h in history.records] == expected == validator.global_epochs


def test_release_workers_ends_persistent_workers():
    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2, num_workers=1, persistent_workers=True)
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    workers = list(loader._iterator._workers)
    assert workers and all(w.is_alive() for w in workers)  # kept between epochs
    release_workers(loader, None)
    assert loader._iterator is None and not any(w.is_alive() for w in workers)
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]  # the loader still works (new workers)
    release_workers(loader)


def test_count_images():
    assert count_images({"image": torch.zeros(3, 1, 8, 8), "landmarks": torch.zeros(3, 2, 2)}) == 3
    assert count_images({"pred": torch.zeros(5, 2)}) == 5
    assert count_images([{"image": 0}, {"image": 1}]) == 2
    assert count_images(torch.zeros(4, 1)) == 4
    assert count_images(None) == 0


def test_latency_stats_and_detection_rate_curve():
    stats = latency_stats([k / 1000 for k in range(1, 101)])
    assert stats["n"] == 100
    assert stats["median_ms"] == pytest.approx(50.5)
    assert stats["p95_ms"] == pytest.approx(95.05)
    assert stats["min_ms"] == pytest.approx(1.0) and stats["max_ms"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        latency_stats([])
    # NaN (no ground truth) excluded, +inf (failed prediction) is a miss
    rates = detection_rate_curve(torch.tensor([[1.0, math.nan], [math.inf, 3.0]]), [0.0, 1.0, 3.0, 10.0])
    np.testing.assert_allclose(rates, [0.0, 100 / 3, 200 / 3, 200 / 3])
    assert all(math.isnan(r) for r in detection_rate_curve(np.full((2, 2), np.nan), [1.0, 2.0]))


def test_peak_memory_monitor_sees_an_allocation():
    with PeakMemoryMonitor(interval=0.01) as monitor:
        before = monitor.peak_rss
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, touched
    assert block.sum() > 0
    result = monitor.result()
    assert result["peak_rss_mb"] * 2**20 >= before + 32 * 2**20
    assert result["peak_rss_with_children_mb"] >= result["peak_rss_mb"]


def test_machine_info_fields():
    info = machine_info("cpu")
    for key in ("cpu_model", "cpu_count_logical", "torch", "monai", "device", "date", "git_commit"):
        assert key in info
    assert info["device"] == "cpu" and info["cpu_count_logical"] >= 1
    datetime.datetime.fromisoformat(info["date"])


def test_run_rejects_bad_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="--epochs"):
        benchmark.run(bundle="scn", out=str(tmp_path / "x.json"))
    with pytest.raises(ValueError, match="never go into"):
        benchmark.run(bundle="scn", epochs=1, workdir=str(REPO / "bundles" / "scn" / "bench"),
                      out=str(tmp_path / "x.json"))
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        benchmark.run(bundle="no_such_bundle", epochs=1)
    with pytest.raises(ValueError, match="JSON object"):
        benchmark.run(bundle="scn", epochs=1, overrides="[1, 2]")
    with pytest.raises(ValueError, match="--latency_devices"):
        benchmark.run(bundle="scn", epochs=1, latency_devices="tpu", out=str(tmp_path / "x.json"))
    # override ids that no workflow of the bundle can take: named, with what to override instead, before training
    former = r"train#dataloader#batch_size: an id of the former config layout: override batch_size"
    with pytest.raises(ValueError, match=former):
        benchmark.run(bundle="scn", epochs=1, overrides='{"train#dataloader#batch_size": 2}', out=str(tmp_path / "x.json"))
    with pytest.raises(ValueError, match=r"'train#parts' is pulled in with a macro"):
        benchmark.run(bundle="scn", epochs=1, overrides='{"train#parts#dataloader#batch_size": 2}',
                      out=str(tmp_path / "x.json"))
    with pytest.raises(ValueError, match="no_such_id: not an id of these configs"):
        benchmark.run(bundle="scn", epochs=1, overrides='{"no_such_id": 2}', out=str(tmp_path / "x.json"))
    # KNEEL's stage 2 sets its own input size (its ROIs) and batch: an override would replace them in stage 2 too
    with pytest.raises(ValueError, match=r"\['spatial_size', 'batch_size'\]: kneel's stage2.json sets these"):
        benchmark.run(bundle="kneel", epochs=1, overrides='{"spatial_size": [64, 64], "batch_size": 2}',
                      out=str(tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists()


def test_overrides_plan_splits_training_from_run_level_ids():
    """Evaluation and inference get run-level ids only: the trained model's record sets the model's values (a
    contradicting override would be a ModelConfigMismatch), the training recipe does not apply."""
    scn = benchmark._bundle_dir("scn")
    user = {"spatial_size": [32, 32], "network_def#local_filters": 8, "learning_rate": 0.1, "num_workers": 2,
            "amp": True, "decode_size": None, "dataloader#num_workers": 1}
    plan = benchmark._plan_overrides(scn, benchmark._extra_configs(scn, "quick"), user)
    assert plan["evaluate"] == {"num_workers": 2, "amp": True}
    assert plan["inference"] == {"num_workers": 2, "amp": True, "decode_size": None, "dataloader#num_workers": 1}
    assert plan["training"] == {k: user[k] for k in ("spatial_size", "network_def#local_filters", "learning_rate",
                                                     "num_workers", "amp")}
    assert plan["training_only"] == {"spatial_size": "the trained model's record sets it",
                                     "network_def#local_filters": "the trained model's record sets it",
                                     "learning_rate": "a training setting"}
    kneel = benchmark._bundle_dir("kneel")
    plan = benchmark._plan_overrides(kneel, [], {"roi_size_mm": [96, 96], "images_per_batch": 4, "num_workers": 1})
    assert plan["evaluate"] == plan["inference"] == {"num_workers": 1}
    assert plan["training_only"] == {"roi_size_mm": "the trained model's record sets it",
                                     "images_per_batch": "a training setting"}


def test_overrides_from_the_command_line_keep_json_null():
    import fire

    parsed = fire.Fire(lambda overrides=None: overrides, command=["--overrides", '{"decode_size": null, "amp": true}'])
    assert parsed == {"decode_size": "null", "amp": "true"}  # fire reads JSON's bare words as strings
    assert benchmark._parse_overrides(parsed) == {"decode_size": None, "amp": "true"}  # as_flag reads "true"
    assert benchmark._parse_overrides('{"decode_size": null, "size": [1, 2]}') == {"decode_size": None, "size": [1, 2]}


def _tiny_datalist(folder: Path) -> Path:
    """4 / 2 / 2 small DICOMs (spacing 0.5 x 0.4 mm) with 3 bright-blob landmarks each."""
    rng = np.random.default_rng(0)
    h, w, k = 40, 48, 3
    yy, xx = np.mgrid[0:h, 0:w]
    doc = {"name": "tiny_blobs", "landmarks": [f"L{i}" for i in range(k)], "spacing_mode": "image"}
    for split, n in (("training", 4), ("validation", 2), ("test", 2)):
        doc[split] = []
        for i in range(n):
            points = np.stack([rng.uniform(8, w - 8, k), rng.uniform(8, h - 8, k)], axis=1)
            raster = 0.1 * rng.random((h, w))
            for x, y in points:
                raster += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
            name = f"images/{split}_{i}.dcm"
            write_dicom(folder / name, np.clip(raster, 0, 1), (0.5, 0.4))
            doc[split].append({"image": name, "landmarks": points.tolist()})
    path = folder / "datalist.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    datalist = _tiny_datalist(root / "data")
    out = benchmark.run(
        bundle="scn",
        datalist=str(datalist),
        epochs=2,
        config="quick",
        overrides='{"spatial_size": [32, 32]}',
        out=str(root / "runs" / "tiny_scn.json"),
        workdir=str(root / "work"),
        latency_images=2,
        warmup=1,
        batch_size=1,
    )
    return Path(out)


def _strict_json(path: Path) -> dict:
    def no_constant(name):
        raise AssertionError(f"{path}: non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=no_constant)


@pytest.mark.slow
def test_run_records_every_field(bench_run: Path):
    doc = _strict_json(bench_run)
    assert doc["schema"] == benchmark.SCHEMA and doc["name"] == "tiny_scn" and doc["bundle"] == "scn"
    assert "--epochs 2" in doc["command"] and "--config quick" in doc["command"]
    datetime.datetime.fromisoformat(doc["date"])
    m = doc["machine"]
    assert m["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu") and m["torch"] == torch.__version__
    assert doc["dataset"] == {"name": "tiny_blobs", "datalist": str(bench_run.parent.parent / "data" / "datalist.json"),
                              "num_landmarks": 3, "n_training": 4, "n_validation": 2, "n_test": 2}
    s = doc["settings"]
    assert s["spatial_size"] == [32, 32] and s["max_epochs"] == 2 and s["overrides"] == {"spatial_size": [32, 32]}
    assert s["configs"] == ["bundles/scn/configs/train.json", "bundles/scn/configs/quick.json"]
    assert s["batch_size"] == 4 and s["num_workers"] == 0  # quick.json
    # the model's input size is the trained model's record: evaluation and inference read it, not the override
    assert s["evaluation_overrides"] == s["inference_overrides"] == {}
    assert s["training_only_overrides"] == {"spatial_size": "the trained model's record sets it"}

    tr = doc["training"]
    assert tr["epochs_run"] == 2 and tr["steady_epochs"] == [2] and len(tr["per_epoch"]) == 2
    assert tr["images"] == 4 and tr["images_per_s"] > 0 and tr["wall_s"] > tr["seconds"] > 0
    assert 0 <= tr["data_wait_fraction"] <= 1
    assert len(tr["validation_s"]) == 2 and all(t > 0 for t in tr["validation_s"])
    assert tr["peak_rss_mb"] > 0 and tr["peak_rss_with_children_mb"] >= tr["peak_rss_mb"]
    assert (tr["peak_gpu_allocated_mb"] is not None) == torch.cuda.is_available()
    history = tr["validation_history"]  # quick.json validates every epoch: one record per epoch
    assert [h["epoch"] for h in history] == [1, 2] and [h["iteration"] for h in history] == [1, 2]  # 4 images, batch 4
    assert 0 < history[0]["wall_s"] < history[1]["wall_s"] and all(0 < h["train_s"] < h["wall_s"] for h in history)
    assert history[-1]["metrics"]["val_mre"] == pytest.approx(doc["validation"]["metrics"]["val_mre"])

    val = doc["validation"]
    assert val["key_metric"] == "val_mre" and val["metric_kind"] == "sdr" and val["unit"] == "mm"
    radii = [2, 2.5, 3, 4, 10, 20]
    assert set(val["metrics"]) == {"val_mre"} | {f"val_sdr{r:g}" for r in radii}
    summary = val["summary"]
    assert summary["mre"] == pytest.approx(val["metrics"]["val_mre"]) and summary["mre"] > 0
    assert list(summary["sdr"]) == [f"{r:g}" for r in radii]
    assert [e["name"] for e in summary["per_landmark"]] == ["L0", "L1", "L2"]
    assert summary["n_images"] == 2 and val["best_metric_epoch"] in (1, 2)
    curve = val["curve"]
    assert len(curve["radii"]) == len(curve["rate"]) == benchmark.CURVE_POINTS
    assert curve["radii"][-1] == pytest.approx(20) and np.all(np.diff(curve["rate"]) >= 0)
    for r in radii:  # the curve and the evaluator agree at the reported radii
        i = int(np.argmin(np.abs(np.array(curve["radii"]) - r)))
        if abs(curve["radii"][i] - r) < 1e-9:
            assert curve["rate"][i] == pytest.approx(summary["sdr"][f"{r:g}"])

    inf = doc["inference"]
    devices = {"cpu"} | ({"cuda"} if torch.cuda.is_available() else set())
    assert set(inf["latency"]) == devices
    for lat in inf["latency"].values():
        assert lat["n"] == 2 and len(lat["images_ms"]) == 2 and len(lat["warmup_ms"]) == 1 and lat["failed"] == 0
        assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p95_ms"] <= lat["max_ms"]
        # the two parts of the timed step (their medians need not add up to the step's median, only bound it)
        parts = (lat["load_preprocess_median_ms"], lat["network_decode_median_ms"])
        assert all(p > 0 for p in parts) and max(parts) <= lat["max_ms"] and sum(parts) >= lat["min_ms"]
    thr = inf["throughput"]
    assert thr["images"] == 2 and thr["batch_size"] == 1 and thr["failed"] == 0
    assert thr["images_per_s"] > 0 and thr["steady_images_per_s"] > 0 and thr["first_batch_s"] > 0
    assert 0 <= thr["data_wait_fraction"] <= 1


@pytest.mark.slow
def test_report_writes_table_row_and_plots(bench_run: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "tiny_scn.json").write_text(bench_run.read_text())
    (runs / "datalist.json").write_text(json.dumps({"name": "not a run", "training": []}))  # ignored
    out = Path(benchmark.report(runs=str(runs), out=str(tmp_path / "docs" / "benchmarks.md")))
    text = out.read_text()
    lines = text.splitlines()
    header = "| " + " | ".join(benchmark.TABLE_HEADER) + " |"
    assert header in lines
    rows = [line for line in lines if line.startswith("| tiny_scn |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split(" | ")]
    assert len(cells) == len(benchmark.TABLE_HEADER)
    assert cells[1:5] == ["scn", "tiny_blobs", "32×32", "2"]
    assert cells[10].startswith("SDR@2/4/10 mm:") and "cpu " in cells[11]
    assert "from 1 run file(s)" in text
    links = [line.split("](", 1)[1].rstrip(")") for line in lines if line.startswith("![")]
    assert sorted(links) == ["benchmarks/tiny_scn_detection.png", "benchmarks/tiny_scn_landmarks.png",
                             "benchmarks/tiny_scn_time.png"]
    assert "- time to accuracy (validation during training): val_mre " in text and "(2 validations)" in text
    assert "- latency split (median): cpu " in text and " ms network + decode + map back" in text
    for link in links:
        assert (out.parent / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_note_is_shown_by_the_report_and_can_be_removed(bench_run: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    runs.mkdir()
    run = runs / "tiny_scn.json"
    run.write_text(bench_run.read_text())
    measured = json.loads(run.read_text())
    benchmark.main(["note", str(run), "accuracy predates commit abc"])
    doc = json.loads(run.read_text())
    assert doc.pop("note") == "accuracy predates commit abc" and doc == measured
    text = Path(benchmark.report(runs=str(runs), out=str(tmp_path / "b.md"))).read_text()
    assert "| tiny_scn (see note) |" in text and "- **note**: accuracy predates commit abc" in text
    benchmark.note(str(run), "")
    assert json.loads(run.read_text()) == measured
    (runs / "other.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="not a benchmark run file"):
        benchmark.note(str(runs / "other.json"), "x")


def test_report_without_runs_says_so(tmp_path: Path):
    (tmp_path / "runs").mkdir()
    out = Path(benchmark.report(runs=str(tmp_path / "runs"), out=str(tmp_path / "benchmarks.md")))
    text = out.read_text()
    assert "No benchmark run recorded yet" in text and "| run |" not in text


@pytest.mark.slow
def test_run_evaluates_the_best_checkpoint(bench_run: Path):
    """run evaluating with model.pt on the datalist's test split (it has one): the record the report shows."""
    doc = _strict_json(bench_run)
    ev = doc["evaluation"]
    # train.json + quick.json + the trained-model overlays (monai_ext.bundle.config_files), as recorded
    assert ev["configs"] == config_names(config_files(REPO / "bundles" / "scn", "evaluate", ["quick.json"]))
    assert ev["configs"][:2] == doc["settings"]["configs"] and ev["section"] == "test"
    assert ev["key_metric"] == "val_mre" and ev["summary"]["n_images"] == doc["dataset"]["n_test"] == 2
    assert ev["wall_s"] > 0 and [e["name"] for e in ev["summary"]["per_landmark"]] == ["L0", "L1", "L2"]
    assert ev["clicks"] is None and doc["training"]["stages"] == {}
    assert "--evaluate" not in doc["command"]


@pytest.mark.slow
def test_run_two_stage_kneel_times_both_stages_and_evaluates_end_to_end(tmp_path: Path):
    # val_interval 3 > 1 epoch: neither training run validates while training; the harness validates both after
    # their last epoch, so both best checkpoints exist for the evaluation and inference
    out = benchmark.run(bundle="kneel", epochs=1, config="quick", out=str(tmp_path / "kneel.json"),
                        overrides='{"val_interval": 3}', workdir=str(tmp_path / "work"), latency_images=1, warmup=0,
                        batch_size=3, eval_section="validation")
    doc = _strict_json(Path(out))
    assert doc["settings"]["spatial_size"] == [64, 64] and doc["settings"]["roi_size"] == [64, 64]  # quick.json
    stage2 = doc["training"]["stages"]["stage2.json"]  # the second training run: train.json + quick + stage2.json
    assert stage2["configs"][-1] == "bundles/kneel/configs/stage2.json"
    assert stage2["epochs_run"] == 1 and stage2["images"] > doc["training"]["images"]  # ROIs: 2 knees per image
    assert doc["training"]["wall_s"] > stage2["wall_s"] > 0  # both training runs
    assert (tmp_path / "work" / "models" / "model.pt").is_file()
    assert (tmp_path / "work" / "models" / "stage2" / "model.pt").is_file()
    ev = doc["evaluation"]
    assert ev["configs"] == config_names(config_files(REPO / "bundles" / "kneel", "evaluate", ["quick.json"]))
    assert ev["section"] == "validation"  # --eval_section
    assert ev["summary"]["n_images"] == doc["dataset"]["n_validation"]
    # every landmark, not the stage-1 ROI centres that the training validation scores
    assert len(ev["summary"]["per_landmark"]) == doc["dataset"]["num_landmarks"] == 16
    assert ev["summary"]["per_landmark"][0]["name"] == "femur_lat_margin_R"
    assert len(doc["validation"]["summary"]["per_landmark"]) == 2
    # inference loaded both checkpoints of this run (models/model.pt + models/stage2/model.pt) and batched
    # originals of any size
    assert doc["inference"]["throughput"]["failed"] == 0 and doc["inference"]["throughput"]["batch_size"] == 3
    assert doc["inference"]["latency"]["cpu"]["failed"] == 0


@pytest.mark.slow
def test_run_interactive_records_mre_vs_clicks_and_the_report_plots_it(tmp_path: Path):
    out = benchmark.run(bundle="interactive_kp", epochs=1, config="quick", out=str(tmp_path / "runs" / "ikp.json"),
                        workdir=str(tmp_path / "work"), latency_images=1, warmup=0, batch_size=2, section="validation")
    doc = _strict_json(Path(out))
    clicks = doc["evaluation"]["clicks"]
    section = doc["evaluation"]["section"]  # the datalist's test split when it has one
    assert section == ("test" if doc["dataset"]["n_test"] else "validation")
    assert clicks["unit"] == "mm" and clicks["n_images"] == doc["dataset"][f"n_{section}"]
    rows = clicks["table"]
    assert [r["clicks"] for r in rows] == list(range(6))  # its click protocol overlay: 0..5 clicks
    assert rows[0]["mre_model"] == pytest.approx(doc["evaluation"]["summary"]["mre"])  # 0 clicks = automatic
    assert rows[-1]["mre_model"] < rows[0]["mre_model"]  # clicked landmarks are enforced: the error drops
    assert all(r["smape_model"] is not None for r in rows)  # 68 landmarks: Cobb angles
    report = Path(benchmark.report(runs=str(tmp_path / "runs"), out=str(tmp_path / "docs" / "benchmarks.md")))
    text = report.read_text()
    assert "![ikp: MRE vs clicks](benchmarks/ikp_clicks.png)" in text
    assert "- MRE vs clicks 0..5 (model revision, mm): " in text and "Cobb-angle SMAPE" in text
    assert (report.parent / "benchmarks" / "ikp_clicks.png").read_bytes()[:4] == b"\x89PNG"
