"""Build a bundle workflow in-process for tests: the bundle's configs + its quick.json, outputs in a temp dir."""

from __future__ import annotations

from pathlib import Path

from monai.bundle import ConfigWorkflow


def bundle_workflow(bundle: Path, configs: list[str], run_id: str, tmp: Path, **overrides) -> ConfigWorkflow:
    """An initialised ``ConfigWorkflow`` of ``bundle`` running ``run_id`` with ``configs`` + ``quick.json``;
    checkpoints, outputs and the synthetic dataset go under ``tmp`` (``overrides`` may move any of them)."""
    files = [str(bundle / "configs" / c) for c in configs] + [str(bundle / "configs" / "quick.json")]
    wf = ConfigWorkflow(
        config_file=files,
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="train" if run_id.startswith("training") else "infer",
        run_id=run_id,
        bundle_root=str(bundle),
        **{
            "ckpt_dir": str(tmp / "models"),
            "ckpt_path": str(tmp / "models" / "model.pt"),
            "output_dir": str(tmp / "eval"),
            "dataset_dir": str(tmp / "data"),
            **overrides,
        },
    )
    wf.initialize()
    return wf
