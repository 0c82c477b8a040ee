"""Overlay pictures of a heatmap workflow while it runs: the network input with its predicted heatmaps and landmarks.

:class:`TrainingOverlayWriter` draws, every ``interval`` iterations, the first images of the current batch as one
PNG (the seed's ``trainingImages/``): the input image (channel 0, percentile window), the predicted heatmaps (last
stack, their maximum over landmarks in red), the decoded landmarks (red, numbered) and the ground truth (green)
linked by yellow error lines. It reads ``engine.state.output``, which every heatmap trainer fills alike:

* :class:`~monai_ext.engines.adversarial.AdversarialPoseTrainer`: ``image``, ``label`` (target heatmaps at the
  output size), ``mask`` ``(B, K)`` and ``pred`` (last stack);
* MONAI's ``SupervisedTrainer``: ``image``, ``label`` (the target, or ``(heatmaps, mask)`` from
  :class:`~monai_ext.engines.prepare_batch.PrepareLandmarkBatch`) and ``pred`` (a tensor or a list of stacks);
* an evaluator: ``label`` holds ground-truth points, usually in the ORIGINAL image's pixels (``gt_space="original"``).

A batch dict (``decollate=False``) or the decollated list of per-image dicts are both accepted. While an MLflow run
is open, each PNG is also logged as an artifact under ``artifact_path``: the run of the engine's MONAI
``MLFlowHandler`` (``--tracking``), else MLflow's active run; the writer never starts a run itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from PIL import Image

from monai_ext.transforms.array import move_points
from monai_ext.transforms.dictionary import DecodeHeatmapd
from monai_ext.transforms.select import SelectLast
from monai_ext.utils import atomic_path
from monai_ext.visualize import draw_landmarks, to_display

__all__ = ["TrainingOverlayWriter", "find_mlflow_run"]

logger = logging.getLogger(__name__)

_HEAT_COLOUR = np.asarray([255.0, 32.0, 0.0])


def _tensor(x: Any) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def find_mlflow_run(engine: Engine) -> tuple[Any, str] | None:
    """``(client, run_id)`` of the open MLflow run of ``engine``: that of a MONAI ``MLFlowHandler`` attached to it
    (MONAI's handler logs through a client, not MLflow's active run), else ``mlflow.active_run()``; None without one.
    """
    try:
        from monai.handlers import MLFlowHandler
    except ImportError:  # MONAI without ignite/mlflow support
        MLFlowHandler = None  # noqa: N806
    if MLFlowHandler is not None:
        for handlers in getattr(engine, "_event_handlers", {}).values():
            for entry in handlers:
                func = getattr(entry[0], "__wrapped__", entry[0])
                owner = getattr(func, "__self__", None)
                if isinstance(owner, MLFlowHandler) and getattr(owner, "cur_run", None) is not None:
                    return owner.client, owner.cur_run.info.run_id
    try:
        import mlflow
    except ImportError:
        return None
    run = mlflow.active_run()
    return (mlflow.MlflowClient(), run.info.run_id) if run is not None else None


class TrainingOverlayWriter:
    """Every ``interval`` iterations write ``<output_dir>/<prefix>_<iteration:07d>.png``: the first ``num_images``
    images of the batch side by side, each with its predicted heatmaps and landmarks (see the module docstring).

    Args:
        output_dir: folder of the PNGs (written atomically).
        interval: iterations between two pictures; 0 disables the writer (nothing is attached).
        num_images: images of the batch drawn per picture.
        max_files: stop after this many pictures (0: no limit), e.g. for an evaluator with ``interval=1``.
        image_key, pred_key, label_key, mask_key: keys of the engine output; ``pred`` may be a list of stacks (the
            last is drawn); ``label`` heatmaps, ``(heatmaps, mask)`` or points ``(K, 2)``; missing keys are skipped.
        gt_space: pixels of ground-truth points: ``"image"`` (the network input's) or ``"original"`` (the loaded
            file's; mapped through the image's ``meta["original_affine"]`` and affine).
        decode_method: heatmap decoding (:func:`~monai_ext.decoding.decode_heatmaps`).
        heatmap_alpha: opacity of the heatmap overlay at its maximum.
        min_size: pictures are enlarged (nearest neighbour) so that each panel is at least this many pixels high.
        prefix: file name prefix.
        artifact_path: folder of the MLflow artifacts; None: never log to MLflow.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        interval: int = 50,
        num_images: int = 4,
        max_files: int = 0,
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str | None = "label",
        mask_key: str | None = "mask",
        gt_space: str = "image",
        decode_method: str = "argmax",
        heatmap_alpha: float = 0.6,
        min_size: int = 256,
        prefix: str = "iteration",
        artifact_path: str | None = "training_images",
    ):
        if interval < 0 or num_images < 1 or max_files < 0:
            raise ValueError(
                f"need interval >= 0, num_images >= 1, max_files >= 0; got {interval}, {num_images}, {max_files}."
            )
        if gt_space not in ("image", "original"):
            raise ValueError(f"gt_space must be 'image' or 'original', got {gt_space!r}.")
        self.output_dir = Path(output_dir)
        self.interval = int(interval)
        self.num_images = int(num_images)
        self.max_files = int(max_files)
        self.image_key, self.pred_key, self.label_key, self.mask_key = image_key, pred_key, label_key, mask_key
        self.gt_space = gt_space
        self.decoder = DecodeHeatmapd(keys="heatmap", ref_key="image", output_key="points", method=decode_method)
        self.heatmap_alpha = float(heatmap_alpha)
        self.min_size = int(min_size)
        self.prefix = prefix
        self.artifact_path = artifact_path
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        if self.interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    # ---------------------------------------------------------------------------------------------------------
    def _items(self, output: Any) -> list[dict[str, Any]]:
        """Per-image dicts ``{image, pred, label, mask}`` of the first ``num_images`` images of the output."""
        keys = [k for k in (self.image_key, self.pred_key, self.label_key, self.mask_key) if k is not None]
        if isinstance(output, Mapping):
            if self.image_key not in output:
                raise KeyError(
                    f"TrainingOverlayWriter: no {self.image_key!r} in the engine output (keys {sorted(output)})."
                )
            n = int(output[self.image_key].shape[0])

            def pick(v: Any, i: int) -> Any:
                if isinstance(v, (list, tuple)):
                    return [pick(u, i) for u in v]
                return v[i] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n else None

            batch = {k: output.get(k) for k in keys}
            if batch.get(self.pred_key) is not None:
                batch[self.pred_key] = SelectLast()(batch[self.pred_key])
            return [{k: pick(v, i) for k, v in batch.items()} for i in range(min(n, self.num_images))]
        if isinstance(output, Sequence) and output and all(isinstance(o, Mapping) for o in output):
            return [{k: o.get(k) for k in keys} for o in list(output)[: self.num_images]]
        raise TypeError(
            f"TrainingOverlayWriter: expected a dict or a list of dicts as output, got {type(output).__name__}."
        )

    def _decode(self, heatmaps: torch.Tensor, image: torch.Tensor) -> np.ndarray:
        """Heatmaps ``(K, *spatial)`` -> points ``(K, 2)`` in the pixels of ``image`` ``(C, *spatial)``."""
        out = self.decoder({"heatmap": _tensor(heatmaps).detach().float().cpu(), "image": image})
        return out["points"].numpy().astype(np.float64)

    def _ground_truth(self, item: Mapping[str, Any], image: Any) -> np.ndarray | None:
        label = item.get(self.label_key) if self.label_key else None
        mask = item.get(self.mask_key) if self.mask_key else None
        if isinstance(label, (list, tuple)) and len(label) == 2:  # (heatmaps, mask) of PrepareLandmarkBatch
            label, mask = label
        if label is None:
            return None
        label = _tensor(label).detach().float().cpu()
        if label.ndim == image.ndim:  # heatmaps
            points = self._decode(label, image)
            if mask is None:
                visible = (label.flatten(1).amax(1) > 0).numpy()
            else:
                visible = _tensor(mask).cpu().numpy().reshape(-1) > 0
            points[~visible] = np.nan
            return points
        points = label.reshape(-1, 2).to(torch.float64)
        if self.gt_space == "original":
            meta = getattr(image, "meta", None) or {}
            if "original_affine" not in meta or not hasattr(image, "affine"):
                return None
            points = move_points(points, meta["original_affine"], image.affine)
        return points.numpy()

    def _panel(self, item: Mapping[str, Any]) -> Image.Image:
        image = item[self.image_key]
        if not isinstance(image, torch.Tensor):
            image = torch.as_tensor(np.asarray(image))
        image = image.detach().cpu()
        picture = to_display(_tensor(image)[0].float().numpy())
        pred = item.get(self.pred_key)
        points = None
        if pred is not None:
            pred = _tensor(SelectLast()(pred)).detach().float().cpu()
            points = self._decode(pred, image)
            heat = pred.clamp(min=0).amax(0)[None, None]
            heat = F.interpolate(heat, size=tuple(image.shape[1:]), mode="bilinear")[0, 0]
            heat = (heat / heat.max().clamp(min=1e-8)).numpy().T[..., None] * self.heatmap_alpha  # (H, W, 1)
            rgb = np.asarray(picture, dtype=np.float64) * (1.0 - heat) + _HEAT_COLOUR * heat
            picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        gt = self._ground_truth(item, image)
        zoom = max(1, int(np.ceil(self.min_size / max(picture.height, 1))))
        if zoom > 1:  # enlarge before drawing so that the markers stay crisp; points scale with the pixel centres
            picture = picture.resize((picture.width * zoom, picture.height * zoom), Image.NEAREST)
            scale = lambda p: None if p is None else (p + 0.5) * zoom - 0.5  # noqa: E731
            points, gt = scale(points), scale(gt)
        return draw_landmarks(picture, points, gt)

    def picture(self, output: Any) -> Image.Image:
        """The PNG's picture for an engine output: the panels side by side, 4 pixels apart."""
        panels = [self._panel(item) for item in self._items(output)]
        gap = 4
        width = sum(p.width for p in panels) + gap * (len(panels) - 1)
        canvas = Image.new("RGB", (width, max(p.height for p in panels)))
        x = 0
        for p in panels:
            canvas.paste(p, (x, 0))
            x += p.width + gap
        return canvas

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0 or (self.max_files and len(self.written) >= self.max_files):
            return
        if engine.state.output is None:
            return
        path = self.output_dir / f"{self.prefix}_{engine.state.iteration:07d}.png"
        picture = self.picture(engine.state.output)
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        self.written.append(path)
        if self.artifact_path is None:
            return
        run = find_mlflow_run(engine)
        if run is None:
            return
        client, run_id = run
        try:
            client.log_artifact(run_id, str(path), self.artifact_path)
        except Exception as e:  # an unreachable tracking server must not stop the training
            logger.warning(f"MLflow: could not log {path} to run {run_id}: {e}")
