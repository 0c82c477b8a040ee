"""Build a bundle workflow in-process for tests: the bundle's configs + its quick.json, outputs in a temp dir."""

from __future__ import annotations

from pathlib import Path

from monai.bundle import ConfigWorkflow

from monai_ext.bundle import config_files

#: config names that select a workflow rather than a variant
_WORKFLOW_FILES = {"train.json": "train", "evaluate.json": "evaluate", "inference.json": "inference"}


def workflow_files(bundle: Path, configs: list[str], stage: str | None = None, quick: bool = True) -> list[str]:
    """The files of a workflow named the short way: ``["train.json"]``, ``["train.json", "cpu.json"]``,
    ``["inference.json"]`` (evaluation and inference: the shared overlay and the bundle's own), ``["hand.json",
    "inference.json"]``; the bundle's ``quick.json`` goes right after its variants (before a trained model's record,
    which then overrides it)."""
    workflows = [_WORKFLOW_FILES[c] for c in configs if c in _WORKFLOW_FILES and c != "train.json"]
    variants = [c for c in configs if c not in _WORKFLOW_FILES] + (["quick.json"] if quick else [])
    return config_files(bundle, workflows[0] if workflows else "train", variants, stage)


def bundle_workflow(bundle: Path, configs: list[str], run_id: str, tmp: Path, stage: str | None = None,
                    quick: bool = True, **overrides) -> ConfigWorkflow:
    """An initialised ``ConfigWorkflow`` of ``bundle`` running ``run_id`` with ``configs`` (:func:`workflow_files`);
    models under ``tmp/models`` (the bundle root is ``tmp``), outputs under ``tmp/eval``, the synthetic dataset in
    ``tmp/data`` (``overrides`` may move any of them)."""
    wf = ConfigWorkflow(
        config_file=workflow_files(bundle, configs, stage, quick),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="train" if run_id.startswith("training") else "infer",
        run_id=run_id,
        **{"bundle_root": str(tmp), "output_dir": str(tmp / "eval"), "dataset_dir": str(tmp / "data"), **overrides},
    )
    wf.initialize()
    return wf


def train_bundle(bundle: Path, tmp: Path, configs: tuple[str, ...] = (), **overrides) -> None:
    """Train every stage of ``bundle`` (``monai_ext.bundle.training_stages``) with its quick.json into ``tmp``."""
    from monai_ext.bundle import training_stages

    for stage in training_stages(bundle):
        wf = bundle_workflow(bundle, ["train.json", *configs], "training", tmp, stage=stage, **overrides)
        wf.run()
        wf.finalize()


def save_untrained_model(bundle: Path, tmp: Path, configs: tuple[str, ...] = (), stage: str | None = None,
                         **overrides) -> Path:
    """Write ``tmp/models[/stage2]/model.pt`` as training writes it (the network's state dict and its record), with the
    untrained weights of the quick configuration: for tests of evaluation and inference that need no trained model."""
    import torch

    from monai_ext.bundle import read_config

    files = workflow_files(bundle, ["train.json", *configs], stage)
    parser = read_config(files, **{"bundle_root": str(tmp), "dataset_dir": str(tmp / "data"), **overrides})
    if stage:
        parser["init_from_stage1"] = False
    network, record = parser.get_parsed_content("network"), parser.get_parsed_content("model_config")
    path = Path(parser.get_parsed_content("ckpt_dir")) / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict(), "model_config": record.state_dict()}, path)
    return path
