"""K-fold cross-validation of a bundle: train it on every fold datalist, one fold after the other, and pool the
test errors of all folds into one report.

Usage::

    # the fold datalists: K disjoint test sections covering every image once (Payer et al.'s hand protocol: 3 folds)
    python scripts/prepare_datalist.py shared --dataset hand_xray --folds 3
    # train + evaluate every fold (scripts/benchmark.py ``run``), then pool
    python scripts/cross_validate.py run --bundle scn --datalists "data/hand_xray/datalist_fold*.json" \\
        --config cpu --out runs/cv/scn-hand [--minutes M] [--epochs N] [--overrides '{"spatial_size": [128, 128]}']
    # pool the finished folds again (no training), e.g. with other SDR radii
    python scripts/cross_validate.py report --out runs/cv/scn-hand [--radii 2,2.5,3,4,10]

Each fold is one :func:`benchmark.run` (in-process training of every training run of the bundle, checkpoint chosen
on the fold's ``validation`` section, then ``run evaluating`` of the best checkpoint on its ``test`` section) with
``<out>/fold<k>/`` as its work folder: ``benchmark.json`` (the run's record: settings, timings, machine),
``models/``, ``eval/evaluation/predictions.json`` (the test predictions) and ``fold.json``, written last, which
marks the fold finished. The pooling pairs every fold's test predictions with its datalist's ground truth
(:func:`evaluate_predictions.prediction_errors`: the datalist's spacing, its reference distance or the images',
else pixels) and summarises all of them together (:func:`monai_ext.metrics.distances.summarize_errors`):

* ``<out>/pooled.json``: overall summary (MRE, SD, median, SDR, per landmark), per fold, per image, outliers,
  machine, command, dates and each fold's training settings;
* ``<out>/report.md``: the same as tables;
* ``<out>/pooled/``: ``summary.json``, ``per_landmark.csv`` and ``errors.csv`` (one row per image and landmark),
  as ``scripts/evaluate_predictions.py --out_dir`` writes them.

Every figure is on test images only, each scored once, by the model of the fold that held it out. A rerun of
``run`` with the same ``--out`` and arguments keeps the finished folds and trains the others (an interrupted fold
is trained again from the start); other arguments are an error unless ``--retrain True``. Files are written
atomically.
"""

from __future__ import annotations

import datetime
import glob
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import fire
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from monai_ext.data.datalist import validate_datalist  # noqa: E402
from monai_ext.metrics.distances import radius_key, summarize_errors  # noqa: E402
from monai_ext.utils import as_flag, atomic_write  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent
SCHEMA = "monai_ext.cross_validate/1"
PLAN = "plan.json"
DONE = "fold.json"
#: SDR radii of the overall table (mm, or px for a datalist in pixels) and of the per-landmark table
RADII = (2.0, 2.5, 3.0, 4.0, 10.0)
LANDMARK_RADII = (2.0, 4.0)
WORST = 10


def _script(name: str) -> ModuleType:
    """A sibling script as a module (``scripts/`` is not a package)."""
    module_name = f"_scripts_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def _write_json(path: Path, doc: Any) -> None:
    with atomic_write(path) as f:
        json.dump(_script("evaluate_predictions")._jsonable(doc), f, indent=1, allow_nan=False)
        f.write("\n")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable: {e}") from e


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------
# folds
# ----------------------------------------------------------------------------------------------


def _natural(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def expand_datalists(datalists: str | Sequence[str]) -> list[Path]:
    """``--datalists``: a glob (``"data/hand/datalist_fold*.json"``), comma-separated paths or globs, or a list;
    resolved, without duplicates, in natural order (``fold10`` after ``fold9``)."""
    items = datalists.split(",") if isinstance(datalists, str) else [str(d) for d in datalists]
    paths: list[Path] = []
    for item in (i.strip() for i in items if str(i).strip()):
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise FileNotFoundError(f"--datalists {item!r}: no file matches")
        for m in matches:
            p = Path(m).resolve()
            if not p.is_file():
                raise FileNotFoundError(f"--datalists: {m} does not exist")
            if p not in paths:
                paths.append(p)
    return sorted(paths, key=_natural)


def check_folds(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Check that ``paths`` are the datalists of one cross-validation and return one record per fold
    ``{"fold", "datalist", "n_training", "n_validation", "n_test"}``, by fold.

    Every datalist must be valid (:func:`~monai_ext.data.datalist.validate_datalist`: no image in two sections)
    with training, validation (the bundles choose their checkpoint on it) and test images; all must have the same
    landmarks and spacing mode; the test sections must be disjoint. A datalist's recorded ``fold`` names its fold
    (else its position), and a recorded ``folds`` must equal the number of datalists. Every problem is listed.
    """
    if len(paths) < 2:
        raise ValueError(f"a cross-validation needs at least 2 fold datalists, got {len(paths)}: "
                         f"{[str(p) for p in paths]} (write them with prepare_datalist.py ... --folds K)")
    problems: list[str] = []
    folds, tests = [], []
    first: dict[str, Any] | None = None
    for position, path in enumerate(paths):
        doc = validate_datalist(path, check_files=True)
        sizes = {s: len(doc.get(s) or []) for s in ("training", "validation", "test")}
        for section, size in sizes.items():
            if not size:
                why = {"training": "nothing to train on",
                       "validation": "the bundles choose their checkpoint (models/model.pt) on validation and save "
                                     "none without it; write the folds with --n_val > 0",
                       "test": "nothing to score"}[section]
                problems.append(f"{path}: empty or no '{section}' section ({why})")
        if first is None:
            first = doc
        else:
            for key in ("landmarks", "spacing_mode"):
                if doc.get(key) != first.get(key):
                    problems.append(f"{path}: '{key}' differs from {paths[0]}'s")
        recorded = doc.get("folds")
        if recorded is not None and recorded != len(paths):
            problems.append(f"{path}: written as one of {recorded} folds, but {len(paths)} datalists are given")
        fold = doc.get("fold", position)
        if not isinstance(fold, int) or isinstance(fold, bool) or fold < 0:
            problems.append(f"{path}: 'fold' must be a non-negative integer, got {fold!r}")
            fold = position
        folds.append({"fold": fold, "datalist": str(path), **{f"n_{s}": n for s, n in sizes.items()}})
        base = path.parent
        tests.append({str((base / e["image"]).resolve()) for e in doc.get("test") or []})
    seen: dict[int, str] = {}
    for record in folds:
        if record["fold"] in seen:
            problems.append(f"{record['datalist']}: fold {record['fold']} again (also {seen[record['fold']]})")
        seen.setdefault(record["fold"], record["datalist"])
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            shared = tests[i] & tests[j]
            if shared:
                problems.append(f"{paths[i]} and {paths[j]}: {len(shared)} test image(s) in both, "
                                f"e.g. {sorted(shared)[0]}")
    if problems:
        raise ValueError("the fold datalists are not one cross-validation:\n" + "\n".join(f"  - {p}" for p in problems))
    return sorted(folds, key=lambda r: r["fold"])


# ----------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------


def _command(**kwargs: Any) -> str:
    parts = ["python", "scripts/cross_validate.py", "run"]
    for k, v in kwargs.items():
        if v is None or v == {} or v == "" or v is False:
            continue
        text = json.dumps(v) if isinstance(v, (dict, list, tuple)) else str(v)
        parts += [f"--{k}", shlex.quote(text)]
    return " ".join(parts)


def _clear(fold_dir: Path) -> None:
    """Remove what a fold's benchmark run writes (an unfinished or retrained fold starts clean: a stale
    ``models/model.pt`` must never stand in for a checkpoint this run did not save)."""
    for name in ("models", "eval", "inference", "data"):
        shutil.rmtree(fold_dir / name, ignore_errors=True)
    for name in (DONE, "benchmark.json"):
        (fold_dir / name).unlink(missing_ok=True)


def run(
    bundle: str = "scn",
    datalists: Any = None,
    out: str | None = None,
    config: Any = None,
    epochs: int | None = None,
    minutes: float | None = None,
    overrides: Any = None,
    batch_size: int = 8,
    retrain: bool = False,
    radii: Any = RADII,
    outlier_radius: float = 10.0,
) -> str:
    """Train and evaluate ``bundle`` on every fold datalist, one after the other, then pool (:func:`report`).

    Args:
        bundle: a bundle name under ``bundles/`` or a bundle folder.
        datalists: the fold datalists: a glob, comma-separated paths/globs or a list (see :func:`check_folds`).
        out: the cross-validation folder (``fold<k>/`` per fold, ``pooled.json``, ``report.md``).
        config: variants merged after the bundle's train.json (``cpu``, ``quick``: ``configs/<name>.json``).
        epochs / minutes: training length of each fold (per training run; see ``scripts/benchmark.py``).
        overrides: config ids to override, a JSON object (as ``scripts/benchmark.py run --overrides``).
        batch_size: batch size of the benchmark's inference throughput run (timing only).
        retrain: train every fold again, even finished ones or ones trained with other arguments.
        radii / outlier_radius: SDR radii and the outlier threshold of the report (mm, or px).

    Returns:
        the path of ``pooled.json``.
    """
    bench = _script("benchmark")
    if out is None:
        raise ValueError("give --out: the folder of this cross-validation (e.g. runs/cv/scn-hand)")
    if datalists is None:
        raise ValueError('give --datalists, e.g. "data/hand_xray/datalist_fold*.json" '
                         "(python scripts/prepare_datalist.py shared --dataset hand_xray --folds 3)")
    if epochs is None and minutes is None:
        raise ValueError("give --epochs N and/or --minutes M: how long to train each fold")
    retrain = as_flag(retrain, "retrain")
    radii, outlier_radius = _floats(radii), float(outlier_radius)  # bad values fail before any training
    folds = check_folds(expand_datalists(datalists))
    bundle_dir = bench._bundle_dir(bundle)
    extra = bench._extra_configs(bundle_dir, config)  # a missing --config fails here, before any training
    user = bench._parse_overrides(overrides)
    config_text = ",".join(Path(f).stem for f in extra) or None
    request = {"bundle": bundle_dir.name, "config": config_text, "epochs": epochs, "minutes": minutes,
               "overrides": user}
    command = _command(bundle=bundle, datalists=datalists if isinstance(datalists, str) else ",".join(datalists),
                       config=config_text, epochs=epochs, minutes=minutes, overrides=user, out=out,
                       batch_size=None if int(batch_size) == 8 else batch_size, retrain=retrain)
    out_dir = Path(out).resolve()
    plan = {"schema": SCHEMA, "request": request,
            "folds": [{"fold": f["fold"], "datalist": f["datalist"]} for f in folds]}
    plan_path = out_dir / PLAN
    created = None
    if plan_path.is_file() and not retrain:
        old = _read_json(plan_path)
        if {k: old.get(k) for k in ("request", "folds")} != {k: plan[k] for k in ("request", "folds")}:
            raise ValueError(f"{out_dir} holds a cross-validation with other arguments or folds ({plan_path}); "
                             "give another --out, or --retrain True to train every fold again")
        created = old.get("created")
    _write_json(plan_path, {**plan, "command": command, "created": created or _now()})

    for f in folds:
        fold_dir = out_dir / f"fold{f['fold']}"
        done = fold_dir / DONE
        if done.is_file() and not retrain:
            marker = _read_json(done)
            if marker.get("request") == request and marker.get("datalist") == f["datalist"]:
                print(f"fold {f['fold']}: finished before ({done}), kept")
                continue
            print(f"fold {f['fold']}: {done} is from other arguments (an interrupted --retrain?): training again")
        _clear(fold_dir)
        print(f"fold {f['fold']}: training {bundle_dir.name} on {f['datalist']}")
        record = bench.run(bundle=bundle, datalist=f["datalist"], epochs=epochs, minutes=minutes,
                           overrides=user, config=extra or None, out=str(fold_dir / "benchmark.json"),
                           workdir=str(fold_dir), latency_images=1, warmup=0, batch_size=batch_size,
                           eval_section="test")
        _write_json(done, {"schema": SCHEMA, "fold": f["fold"], "datalist": f["datalist"], "request": request,
                           "benchmark": record, "predictions": str(_predictions(fold_dir)), "finished": _now()})
    return _report(out_dir, radii, outlier_radius, pooled_by=command)


def _predictions(fold_dir: Path) -> Path:
    """Where the fold's ``run evaluating`` wrote its predictions (``bundles/common/configs/evaluate.json``:
    ``<output_dir>/evaluation``, the benchmark's ``output_dir`` being ``<workdir>/eval``)."""
    return fold_dir / "eval" / "evaluation" / "predictions.json"


# ----------------------------------------------------------------------------------------------
# pooling and report
# ----------------------------------------------------------------------------------------------


def _floats(value: Any) -> list[float]:
    return _script("evaluate_predictions")._floats(value)


def pool(folds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every fold's test errors: ``folds`` ``[{"fold", "datalist", "predictions"}]`` ->
    ``{"errors": (N, K), "images": N, "fold_of": N, "unit", "landmark_names", "evaluations": per fold}``.

    Errors follow :func:`evaluate_predictions.prediction_errors` (test section, images without a prediction
    counted as failed); an image in two folds' test sections, or folds of different units or landmarks, are errors.
    """
    ep = _script("evaluate_predictions")
    errors, images, fold_of, evaluations = [], [], [], []
    unit = names = None
    for f in folds:
        result = ep.prediction_errors(str(f["predictions"]), str(f["datalist"]), section="test", missing="fail")
        if unit is not None and (result.unit != unit or result.landmark_names != names):
            raise ValueError(f"fold {f['fold']}: errors in {result.unit} with landmarks {result.landmark_names}, "
                             f"the first fold's in {unit} with {names}")
        unit, names = result.unit, result.landmark_names
        errors.append(result.errors)
        images += result.images
        fold_of += [f["fold"]] * len(result.images)
        evaluations.append(result.evaluation)
    twice = sorted(i for i, n in Counter(images).items() if n > 1)
    if twice:
        raise ValueError(f"{len(twice)} image(s) in the test section of several folds, e.g. {twice[0]}")
    return {"errors": np.concatenate(errors, axis=0), "images": images, "fold_of": fold_of, "unit": unit,
            "landmark_names": names, "evaluations": evaluations}


def _image_rows(errors: np.ndarray, images: Sequence[str], fold_of: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for image, fold, row in zip(images, fold_of, errors):
        finite = row[np.isfinite(row)]
        rows.append({"image": image, "fold": fold, "mre": float(finite.mean()) if finite.size else math.nan,
                     "max": float(finite.max()) if finite.size else math.nan,
                     "n_failed": int(np.isposinf(row).sum()), "n_missing_gt": int(np.isnan(row).sum())})
    return rows


def _outliers(errors: np.ndarray, images: Sequence[str], fold_of: Sequence[int], names: Sequence[str],
              radius: float) -> dict[str, Any]:
    """Points with error above ``radius`` (failed ones included): their count and the ``WORST`` largest."""
    i, k = np.nonzero(np.nan_to_num(errors, nan=-1.0) > radius)
    order = np.argsort(-errors[i, k], kind="stable")[:WORST]
    worst = [{"image": images[i[j]], "fold": fold_of[i[j]], "index": int(k[j]), "landmark": names[k[j]],
              "error": float(errors[i[j], k[j]]), "failed": bool(np.isposinf(errors[i[j], k[j]]))} for j in order]
    return {"radius": float(radius), "count": int(len(i)), "n_points": int(np.count_nonzero(~np.isnan(errors))),
            "worst": worst}


def _fold_record(f: Mapping[str, Any], errors: np.ndarray, evaluation: Mapping[str, Any], radii: list[float],
                 outlier_radius: float, unit: str) -> dict[str, Any]:
    bench = _read_json(Path(f["benchmark"])) if Path(f["benchmark"]).is_file() else {}
    s = summarize_errors(errors, radii, outlier_radius, None, unit)
    val = bench.get("validation") or {}
    ev = bench.get("evaluation") or {}
    return {
        "fold": f["fold"],
        "datalist": f["datalist"],
        "workdir": str(Path(f["predictions"]).parents[2]),
        "predictions": str(f["predictions"]),
        "n_images": s["n_images"],
        **{k: (bench.get("dataset") or {}).get(k) for k in ("n_training", "n_validation", "n_test")},
        **{k: s[k] for k in ("mre", "std", "median", "max", "n_points", "n_failed", "n_outliers", "sdr")},
        "spacing_mode": evaluation["spacing_mode"],
        "unmatched_predictions": len(evaluation["unmatched_predictions"]),
        "images_without_prediction": len(evaluation["unmatched_ground_truth"]),
        "bundle_evaluation": {"section": ev.get("section"),
                              "mre": ((ev.get("summary") or {}).get("mre") if ev.get("summary") else None)},
        "selection": {"key_metric": val.get("key_metric"), "best_metric": val.get("best_metric"),
                      "best_metric_epoch": val.get("best_metric_epoch"), "section": "validation"},
        "training": {"date": bench.get("date"), "command": bench.get("command"), "settings": bench.get("settings"),
                     "epochs_run": (bench.get("training") or {}).get("epochs_run"),
                     "wall_s": (bench.get("training") or {}).get("wall_s")},
        "machine": bench.get("machine"),
    }


def report(out: str, radii: Any = RADII, outlier_radius: float = 10.0) -> str:
    """Pool the finished folds of the cross-validation folder ``out`` (no training) into ``pooled.json``,
    ``report.md`` and ``pooled/``; every fold of its ``plan.json`` must be finished. Returns ``pooled.json``.

    Args:
        out: the folder of a ``run``.
        radii / outlier_radius: SDR radii and the outlier threshold (mm, or px for datalists in pixels).
    """
    command = f"python scripts/cross_validate.py report --out {shlex.quote(str(out))}"
    if _floats(radii) != list(RADII):
        command += f" --radii {','.join(radius_key(r) for r in _floats(radii))}"
    if float(outlier_radius) != 10.0:
        command += f" --outlier_radius {float(outlier_radius):g}"
    return _report(Path(out).resolve(), _floats(radii), float(outlier_radius), pooled_by=command)


def _report(out_dir: Path, radii: list[float], outlier_radius: float, pooled_by: str) -> str:
    """:func:`report` of the folder ``out_dir``, recording ``pooled_by`` as the command that pooled."""
    plan_path = out_dir / PLAN
    if not plan_path.is_file():
        raise FileNotFoundError(f"{plan_path}: not a cross-validation folder (run `cross_validate.py run` first)")
    plan = _read_json(plan_path)
    folds, missing = [], []
    for f in plan["folds"]:
        fold_dir = out_dir / f"fold{f['fold']}"
        if not (fold_dir / DONE).is_file():
            missing.append(f["fold"])
            continue
        folds.append({**f, "predictions": _predictions(fold_dir), "benchmark": fold_dir / "benchmark.json"})
    if missing:
        raise ValueError(f"{out_dir}: fold(s) {missing} not finished; rerun the `run` command of {plan_path} "
                         "(finished folds are kept)")
    pooled = pool(folds)
    errors, images, fold_of, unit = pooled["errors"], pooled["images"], pooled["fold_of"], pooled["unit"]
    names = pooled["landmark_names"] or [f"landmark_{k}" for k in range(errors.shape[1])]
    all_radii = sorted(set(radii) | set(LANDMARK_RADII))
    summary = summarize_errors(errors, all_radii, outlier_radius, names, unit)
    per_fold = []
    for f, ev in zip(folds, pooled["evaluations"]):
        rows = np.asarray([r == f["fold"] for r in fold_of])
        per_fold.append(_fold_record(f, errors[rows], ev, all_radii, outlier_radius, unit))
    doc = {
        "schema": SCHEMA,
        "section": "test",
        "bundle": plan["request"]["bundle"],
        "dataset": _read_json(Path(folds[0]["datalist"])).get("name"),
        "request": plan["request"],
        "command": plan.get("command"),
        "pooled_by": pooled_by,
        "date": _now(),
        "n_folds": len(folds),
        "n_images": len(images),
        "unit": unit,
        "radii": radii,
        "summary": summary,
        "per_fold": per_fold,
        "outliers": _outliers(errors, images, fold_of, names, outlier_radius),
        "per_image": _image_rows(errors, images, fold_of),
        "machines": _machines(per_fold),
    }
    _script("evaluate_predictions")._write_reports(out_dir / "pooled", summary, errors, list(images))
    _write_json(out_dir / "pooled.json", doc)
    with atomic_write(out_dir / "report.md") as f:
        f.write(markdown(doc))
    print(f"pooled {len(images)} test images of {len(folds)} folds: MRE {summary['mre']:.3f} {unit}; "
          f"wrote {out_dir / 'pooled.json'} and {out_dir / 'report.md'}")
    return str(out_dir / "pooled.json")


def _machines(per_fold: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct machines the folds trained on (CPU, cores, memory, GPU, library versions), with their folds."""
    keys = ("cpu_model", "cpu_count_logical", "cpu_affinity", "memory_total_gb", "gpu", "torch", "monai", "python",
            "git_commit", "git_dirty")
    machines: list[dict[str, Any]] = []
    for f in per_fold:
        m = {k: (f.get("machine") or {}).get(k) for k in keys}
        match = next((x for x in machines if {k: x[k] for k in keys} == m), None)
        if match is None:
            machines.append({**m, "folds": [f["fold"]]})
        else:
            match["folds"].append(f["fold"])
    return machines


# ----------------------------------------------------------------------------------------------
# markdown
# ----------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "failed"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _short(images: Sequence[str]) -> tuple[str, dict[str, str]]:
    """Image paths relative to their common folder (the report's tables), and that folder."""
    if not images:
        return "", {}
    folder = os.path.commonpath([os.path.dirname(i) for i in images]) if len(images) > 1 else os.path.dirname(images[0])
    return folder, {i: os.path.relpath(i, folder) for i in images}


def _settings_line(t: Mapping[str, Any]) -> str:
    s = t.get("settings") or {}
    parts = [f"configs {', '.join(s.get('configs') or [])}"]
    for key in ("overrides", "spatial_size", "batch_size", "max_epochs", "minutes", "val_interval", "device"):
        if s.get(key) not in (None, {}, []):
            parts.append(f"{key} {json.dumps(s[key])}")
    parts.append(f"epochs run {t.get('epochs_run')} in {_num((t.get('wall_s') or 0) / 60.0, 1)} min; {t.get('date')}")
    return "; ".join(parts)


def markdown(doc: Mapping[str, Any]) -> str:
    """``report.md`` of a ``pooled.json`` document."""
    s, u = doc["summary"], doc["unit"]
    radii = [radius_key(r) for r in doc["radii"]]
    folder, short = _short([r["image"] for r in doc["per_image"]])
    dataset = doc.get("dataset") or Path(doc["per_fold"][0]["datalist"]).parent.name
    spacing_mode = doc["per_fold"][0]["spacing_mode"]
    lines = [
        f"# Cross-validation: {doc['bundle']} on {dataset}, {doc['n_folds']} folds, {doc['n_images']} test images",
        "",
        "All figures are on the **test** sections only: every image is scored once, by the model of the fold that held "
        "it out (it was neither trained on nor used to choose that model's checkpoint, which each fold selects on its "
        f"own validation section). Errors in {u}"
        + (" (the datalists have no pixel spacing)." if u == "px" else f" (spacing: {spacing_mode})."),
        "",
        *_table(
            ["images", "folds", "points", f"MRE ± SD ({u})", f"median ({u})", *[f"SDR@{r} {u}" for r in radii],
             "failed", f"outliers > {doc['outliers']['radius']:g} {u}"],
            [[doc["n_images"], doc["n_folds"], s["n_points"], f"{_num(s['mre'])} ± {_num(s['std'])}",
              _num(s["median"]), *[f"{_num(s['sdr'][r])} %" for r in radii], s["n_failed"], doc["outliers"]["count"]]],
        ),
        "",
        "## Per fold",
        "",
        *_table(
            ["fold", "datalist", "training", "validation", "test", f"test MRE ({u})", f"test median ({u})",
             "best validation (epoch)", "epochs", "training min"],
            [[f["fold"], Path(f["datalist"]).name, f["n_training"], f["n_validation"], f["n_images"], _num(f["mre"]),
              _num(f["median"]), f"{_num(f['selection']['best_metric'])} ({f['selection']['best_metric_epoch']})",
              f["training"]["epochs_run"], _num((f["training"]["wall_s"] or 0) / 60.0, 1)] for f in doc["per_fold"]],
        ),
        "",
        "## Per landmark",
        "",
        *_table(
            ["landmark", "n", f"MRE ({u})", f"median ({u})", *[f"SDR@{radius_key(r)} {u}" for r in LANDMARK_RADII]],
            [[e["name"], e["n"], _num(e["mre"]), _num(e["median"]),
              *[f"{_num(e['sdr'][radius_key(r)])} %" for r in LANDMARK_RADII]] for e in s["per_landmark"]],
        ),
        "",
        f"## Outliers (error > {doc['outliers']['radius']:g} {u})",
        "",
        f"{doc['outliers']['count']} of {doc['outliers']['n_points']} points"
        + (f"; the worst {len(doc['outliers']['worst'])}:" if doc["outliers"]["worst"] else "."),
        "",
    ]
    if doc["outliers"]["worst"]:
        lines += _table(["image", "fold", "landmark", f"error ({u})"],
                        [[short[w["image"]], w["fold"], w["landmark"], "failed" if w["failed"] else _num(w["error"])]
                         for w in doc["outliers"]["worst"]])
        lines.append("")
    lines += [
        "## Per image",
        "",
        f"Images relative to `{folder}`.",
        "",
        *_table(["image", "fold", f"MRE ({u})", f"max ({u})", "failed points"],
                [[short[r["image"]], r["fold"], _num(r["mre"]), _num(r["max"]), r["n_failed"]]
                 for r in doc["per_image"]]),
        "",
        "## Run",
        "",
        f"- command: `{doc['command']}`",
        f"- pooled: {doc['date']} by `{doc['pooled_by']}`",
    ]
    for m in doc["machines"]:
        lines.append(
            f"- machine (folds {', '.join(map(str, m['folds']))}): {m['cpu_model']}, {m['cpu_count_logical']} logical "
            f"cores ({m['cpu_affinity']} usable), {_num(m['memory_total_gb'], 0)} GB, GPU {m['gpu'] or 'none'}; "
            f"torch {m['torch']}, monai {m['monai']}, python {m['python']}; git {m['git_commit']}"
            + (" (uncommitted changes)" if m["git_dirty"] else "")
        )
    lines += ["", "Training of each fold (checkpoint chosen on its validation section):", ""]
    lines += [f"- fold {f['fold']}: {_settings_line(f['training'])}" for f in doc["per_fold"]]
    return "\n".join(lines) + "\n"


COMMANDS = {"run": run, "report": report}


def main(argv: Sequence[str] | None = None) -> Any:
    """Command line entry point: ``argv`` (default ``sys.argv[1:]``) names a command and its flags."""
    return fire.Fire(COMMANDS, command=None if argv is None else list(argv), name="cross_validate")


if __name__ == "__main__":
    main()
