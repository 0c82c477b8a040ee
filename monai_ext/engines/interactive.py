"""Interactive keypoint estimation (Kim et al., "Morphology-Aware Interactive Keypoint Estimation", MICCAI 2022):
network inputs with user hints, and the simulated-user evaluation protocol of the paper's Fig. 4.

* :class:`PrepareInteractiveBatch` builds the network input ``cat([image, hint maps (K), previous prediction (K,
  optional)])`` from a batch (``hint_landmarks`` in the image's pixels; none = no click) and the training target
  ``(heatmaps, mask, landmarks)`` of :class:`~monai_ext.losses.morphology.MorphologyAwareHeatmapLoss`.
* :func:`click_protocol`: from the 0-click prediction, a simulated user clicks, each round, the landmark with the
  largest current error (ties: the lowest index); the click is the ground truth. "Model revision" gives every click
  so far to the network as hints; "manual revision" only moves the clicked landmarks to their clicks.
* :class:`InteractiveKeypointEvaluator` runs the protocol on every image of a MONAI evaluation and puts both curves
  in the engine output; :class:`~monai_ext.handlers.interactive.InteractiveCurveWriter` writes the table (CSV/JSON)
  and plot (PNG) of the mean radial error (and, for spines, the Cobb-angle SMAPE) against the number of clicks.

The training inferer (:class:`~monai_ext.inferers.hints.IterativeHintInferer`) and handlers
(:class:`~monai_ext.handlers.interactive.LossTermsToOutput`,
:class:`~monai_ext.handlers.interactive.InteractiveCurveWriter`) of this workflow live with the other inferers and
handlers.

Errors are those of :mod:`monai_ext.metrics.distances` in ORIGINAL image pixels (``unit="px"``) or mm.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.engines import PrepareBatch, SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SimpleInferer
from monai.utils import CommonKeys, convert_to_tensor, ensure_tuple

from monai_ext.decoding import decode_heatmaps
from monai_ext.metrics.distances import radial_errors_tensor
from monai_ext.engines.prepare_batch import to_device
from monai_ext.utils import as_flag
from monai_ext.transforms.array import points_to_mm, points_to_original
from monai_ext.transforms.hints import encode_hints
from monai_ext.uncertainty.spread import HeatmapSpreadd, heatmap_spread

__all__ = [
    "as_flag",
    "interactive_inputs",
    "PrepareInteractiveBatch",
    "select_worst_landmark",
    "CLICK_ORDERS",
    "click_protocol",
    "InteractiveKeypointEvaluator",
]


def _nan_points(b: int, k: int, device=None) -> torch.Tensor:
    return torch.full((b, k, 2), float("nan"), device=device)


def interactive_inputs(
    image: torch.Tensor, hints: torch.Tensor | None, num_landmarks: int, sigma: float, previous: torch.Tensor | bool | None = None
) -> torch.Tensor:
    """``cat([image (B, C, *S), hint maps (B, K, *S), previous (B, K, *S)])`` along the channels.

    ``hints``: ``(B, K, 2)`` clicked points in the image's pixels (``NaN``/``None`` = no click). ``previous``: the
    previous sigmoid heatmaps, ``True`` for zeros (no previous prediction yet), ``None``/``False`` to leave the
    channels out. A MetaTensor image keeps its metadata.
    """
    b, spatial = image.shape[0], tuple(image.shape[2:])
    if hints is None:
        hints = _nan_points(b, num_landmarks, image.device)
    hints = convert_to_tensor(hints, track_meta=False).to(device=image.device, dtype=torch.float32)
    if hints.shape != (b, num_landmarks, 2):
        raise ValueError(f"hints must be (B, K, 2) = ({b}, {num_landmarks}, 2), got {tuple(hints.shape)}")
    parts = [image, encode_hints(hints, spatial, sigma).to(image.dtype)]
    if previous is True:
        parts.append(torch.zeros((b, num_landmarks, *spatial), dtype=image.dtype, device=image.device))
    elif isinstance(previous, torch.Tensor):
        parts.append(convert_to_tensor(previous, track_meta=False).to(device=image.device, dtype=image.dtype))
    return torch.cat(parts, dim=1)


class PrepareInteractiveBatch(PrepareBatch):
    """``(inputs, target)`` for interactive keypoint networks.

    ``inputs`` is :func:`interactive_inputs` of the batch image (a MetaTensor, so post-processing can map
    predictions back through its affine), its ``hint_key`` clicks (absent: no click) and, with
    ``previous_prediction``, ``K`` zero channels for the previous prediction. ``target`` is ``(heatmaps, mask,
    landmarks)`` when the batch has heatmaps (training), else the landmarks (or ``None``). With ``iterative`` (and a
    training batch), the clicks and landmarks also go to the inferer as keyword arguments ``hints``/``landmarks``
    (:class:`~monai_ext.inferers.hints.IterativeHintInferer` adds clicks to them).
    """

    def __init__(
        self,
        num_landmarks: int,
        hint_sigma: float,
        previous_prediction: bool = False,
        iterative: bool = False,
        image_key: str = CommonKeys.IMAGE,
        hint_key: str = "hint_landmarks",
        heatmap_key: str = "heatmap",
        mask_key: str = "landmark_mask",
        landmark_key: str = "landmarks",
    ):
        self.num_landmarks = int(num_landmarks)
        self.hint_sigma = float(hint_sigma)
        self.previous_prediction = as_flag(previous_prediction, "previous_prediction")
        self.iterative = as_flag(iterative, "iterative")
        if self.iterative and not self.previous_prediction:
            raise ValueError("PrepareInteractiveBatch: iterative training needs the previous-prediction channels.")
        self.image_key, self.hint_key = image_key, hint_key
        self.heatmap_key, self.mask_key, self.landmark_key = heatmap_key, mask_key, landmark_key

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, Any]:
        move = functools.partial(to_device, device=device, non_blocking=non_blocking, **kwargs)

        image = move(batchdata[self.image_key])
        inputs = interactive_inputs(
            image, move(batchdata.get(self.hint_key)), self.num_landmarks, self.hint_sigma, self.previous_prediction or None
        )
        if self.heatmap_key in batchdata:
            landmarks = move(batchdata[self.landmark_key])
            target = (move(batchdata[self.heatmap_key]), move(batchdata[self.mask_key]), landmarks)
            if self.iterative:
                b = inputs.shape[0]
                hints = batchdata.get(self.hint_key)
                hints = _nan_points(b, self.num_landmarks, inputs.device) if hints is None else move(hints)
                mask = move(batchdata[self.mask_key]) > 0
                gt = torch.where(mask.unsqueeze(-1), convert_to_tensor(landmarks, track_meta=False).float(), float("nan"))
                return inputs, target, (), {"hints": convert_to_tensor(hints, track_meta=False), "landmarks": gt}
            return inputs, target
        return inputs, move(batchdata.get(self.landmark_key))


def select_worst_landmark(errors: torch.Tensor, clicked: torch.Tensor) -> torch.Tensor:
    """Index ``(B,)`` of the landmark with the largest error among those not clicked yet and with a finite error
    (``+inf``, a failed prediction, is the worst); ties go to the lowest index; ``-1`` when none is left.

    Args:
        errors: ``(B, K)`` current errors, ``NaN`` where the ground truth is missing.
        clicked: ``(B, K)`` bool, landmarks already clicked.
    """
    e = errors.to(torch.float64).clone()
    e[clicked | torch.isnan(e)] = -1.0
    worst = e.argmax(dim=1)  # first maximum
    none_left = (e.max(dim=1).values < 0)
    return torch.where(none_left, torch.full_like(worst, -1), worst)


CLICK_ORDERS = ("worst", "least_confident", "largest_region")


def click_protocol(
    predict: Callable[[torch.Tensor, int], torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    initial: torch.Tensor,
    gt: torch.Tensor,
    num_clicks: int,
    spacing: torch.Tensor | None = None,
    enforce_clicks: bool = True,
    order: str = "worst",
    initial_confidence: torch.Tensor | None = None,
    initial_spread: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Simulated-user revision of a prediction, for model and for manual revision.

    Args:
        predict: ``predict(clicked, round)`` -> points ``(B, K, 2)`` (same frame as ``gt``), ``(points,
            confidence (B, K))`` or ``(points, confidence, spread (B, K))``, given the bool mask ``(B, K)`` of the
            landmarks clicked so far (their clicks are their ground truth); it is called once per round
            ``1..num_clicks``.
        initial: the 0-click prediction ``(B, K, 2)``.
        gt: ground truth ``(B, K, 2)``, ``NaN`` where missing (never clicked).
        num_clicks: rounds ``R``.
        spacing: ``(B, 2)`` mm/pixel for errors in mm, ``None`` for pixels.
        enforce_clicks: in model revision, clicked landmarks are set to their clicks (the user placed them).
        order: which landmark the user clicks next: ``"worst"`` (the paper's oracle: the largest current error) or
            ``"least_confident"`` (the lowest heatmap confidence of the current prediction, no ground truth needed
            to choose; manual revision keeps the 0-click confidences) or ``"largest_region"`` (the widest predicted
            heatmap, :func:`~monai_ext.uncertainty.heatmap_spread`: the largest adaptive conformal region, whose
            radius is a calibrated multiple of the spread; no ground truth needed). Landmarks missing in ``gt`` are
            never clicked.
        initial_confidence: ``(B, K)`` confidences of ``initial`` (needed for ``"least_confident"``).
        initial_spread: ``(B, K)`` heatmap spreads of ``initial`` (needed for ``"largest_region"``).

    Returns:
        ``model``/``manual`` points ``(B, R + 1, K, 2)``, ``errors_model``/``errors_manual`` ``(B, R + 1, K)`` and
        ``clicks_model``/``clicks_manual`` ``(B, R)`` (clicked landmark per round, ``-1`` when none was left).
    """
    if order not in CLICK_ORDERS:
        raise ValueError(f"click_protocol: order must be one of {CLICK_ORDERS}, got {order!r}.")
    if order == "least_confident" and initial_confidence is None:
        raise ValueError("click_protocol: the least_confident order needs initial_confidence.")
    if order == "largest_region" and initial_spread is None:
        raise ValueError("click_protocol: the largest_region order needs initial_spread.")
    b, k = gt.shape[:2]
    gt = gt.to(torch.float64)

    def errors(points: torch.Tensor) -> torch.Tensor:
        return radial_errors_tensor(points, gt, spacing)

    def priority(err: torch.Tensor, conf: torch.Tensor | None, spread: torch.Tensor | None) -> torch.Tensor:
        if order == "worst":
            return err
        # > 0 so that select_worst_landmark's "none left" sentinel stays below
        if order == "largest_region":  # the widest heatmap first
            return torch.where(torch.isnan(err), err, 1.0 + torch.nan_to_num(spread.to(err), nan=0.0).clamp(min=0.0))
        return torch.where(torch.isnan(err), err, 2.0 - conf.to(err).clamp(max=1.0))  # lower confidence first

    model = [initial.to(torch.float64)]
    manual = [initial.to(torch.float64)]
    err_model, err_manual = [errors(model[0])], [errors(manual[0])]
    conf_model = conf_manual = initial_confidence
    spread_model = spread_manual = initial_spread
    clicked_model = torch.zeros((b, k), dtype=torch.bool, device=gt.device)
    clicked_manual = torch.zeros_like(clicked_model)
    clicks_model, clicks_manual = [], []
    rows = torch.arange(b, device=gt.device)
    for r in range(1, int(num_clicks) + 1):
        # model revision: every click so far goes to the network
        worst = select_worst_landmark(priority(err_model[-1], conf_model, spread_model), clicked_model)
        ok = worst >= 0
        clicked_model[rows[ok], worst[ok]] = True
        out = predict(clicked_model.clone(), r)
        if isinstance(out, tuple) and len(out) == 3:
            pts, conf_model, spread_model = out
        else:
            pts, conf_model = out if isinstance(out, tuple) else (out, conf_model)
        pts = pts.to(torch.float64)
        if enforce_clicks:
            pts = torch.where(clicked_model.unsqueeze(-1), gt, pts)
        model.append(pts)
        err_model.append(errors(pts))
        clicks_model.append(worst)
        # manual revision: only the clicked landmark moves
        worst = select_worst_landmark(priority(err_manual[-1], conf_manual, spread_manual), clicked_manual)
        ok = worst >= 0
        clicked_manual[rows[ok], worst[ok]] = True
        pts = torch.where(clicked_manual.unsqueeze(-1), gt, manual[-1])
        manual.append(pts)
        err_manual.append(errors(pts))
        clicks_manual.append(worst)
    empty = torch.zeros((b, 0), dtype=torch.long, device=gt.device)
    return {
        "model": torch.stack(model, 1),
        "manual": torch.stack(manual, 1),
        "errors_model": torch.stack(err_model, 1),
        "errors_manual": torch.stack(err_manual, 1),
        "clicks_model": torch.stack(clicks_model, 1) if clicks_model else empty,
        "clicks_manual": torch.stack(clicks_manual, 1) if clicks_manual else empty,
    }


class InteractiveKeypointEvaluator(SupervisedEvaluator):
    """MONAI evaluator running the click protocol (:func:`click_protocol`) on every image.

    The batch needs ``image`` (preprocessed MetaTensor), ``landmarks`` (ground truth moved with the image by the
    preprocessing, e.g. ``FitToShaped``: the network's pixels, as the bundle's evaluation pipeline gives them; errors
    are measured after mapping them back to the original pixels) and ``spacing``. Each round builds the network input with
    :func:`interactive_inputs` (clicks mapped into the network's pixels with ``move_points``), applies a sigmoid,
    decodes (``decode_method``, default argmax + local soft-argmax) and maps the points back with
    ``points_to_original``.

    The engine output per image holds ``pred`` (0-click heatmaps), ``pred_landmarks`` / ``pred_landmarks_mm`` /
    ``pred_confidence`` (0-click, original pixels: what the standard landmark metrics and writers read) and
    ``interactive``: the :func:`click_protocol` result plus ``gt`` and ``image_height`` (original pixels).
    No ``postprocessing`` or ``prepare_batch`` is needed: the evaluator builds the inputs and decodes itself.

    Args:
        num_landmarks, hint_sigma: as the network was trained.
        num_clicks: rounds (the paper shows 0..5; up to 10 is typical).
        unit: ``"px"`` (errors in original pixels) or ``"mm"`` (with each image's spacing).
        previous_prediction: the network has previous-prediction channels; each round gets the previous round's
            sigmoid heatmaps of the model-revision curve on the clicked channels only, zeros elsewhere (official
            ``use_prev_heatmap_only_for_hint_index``).
        enforce_clicks: see :func:`click_protocol`.
        click_orders: the orders of :func:`click_protocol` to run; the first gives the main ``interactive`` result,
            the others go in it under their names (``interactive["least_confident"]``).
        decode_method, decode_window: :func:`~monai_ext.decoding.decode_heatmaps` arguments.
        Other arguments: :class:`monai.engines.SupervisedEvaluator`.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: torch.nn.Module,
        num_landmarks: int,
        hint_sigma: float,
        num_clicks: int = 5,
        unit: str = "px",
        previous_prediction: bool = False,
        enforce_clicks: bool = True,
        decode_method: str = "local_soft_argmax",
        decode_window: int = 5,
        click_orders: Sequence[str] = ("worst", "least_confident", "largest_region"),
        image_key: str = CommonKeys.IMAGE,
        landmark_key: str = "landmarks",
        spacing_key: str = "spacing",
        inferer: Inferer | None = None,
        **kwargs: Any,
    ) -> None:
        if unit not in ("px", "mm"):
            raise ValueError(f"InteractiveKeypointEvaluator: unit must be 'px' or 'mm', got {unit!r}")
        if int(num_clicks) < 0:
            raise ValueError(f"InteractiveKeypointEvaluator: num_clicks must be >= 0, got {num_clicks}")
        super().__init__(device=torch.device(device), val_data_loader=val_data_loader, network=network,
                         inferer=inferer or SimpleInferer(), **kwargs)
        self.num_landmarks = int(num_landmarks)
        self.hint_sigma = float(hint_sigma)
        self.num_clicks = int(num_clicks)
        self.unit = unit
        self.previous_prediction = as_flag(previous_prediction, "previous_prediction")
        self.enforce_clicks = as_flag(enforce_clicks, "enforce_clicks")
        self.decode_method = decode_method
        self.decode_window = int(decode_window)
        self.click_orders = [str(o) for o in ensure_tuple(click_orders)]
        if not self.click_orders or any(o not in CLICK_ORDERS for o in self.click_orders):
            raise ValueError(f"InteractiveKeypointEvaluator: click_orders must be among {CLICK_ORDERS}, got {click_orders}.")
        self.image_key, self.landmark_key, self.spacing_key = image_key, landmark_key, spacing_key

    def _forward(self, engine: SupervisedEvaluator, image: torch.Tensor, hints: torch.Tensor, previous) -> torch.Tensor:
        inputs = interactive_inputs(image, hints, self.num_landmarks, self.hint_sigma, previous)
        with engine.mode(engine.network):
            logits = engine.inferer(inputs, engine.network)
        return torch.sigmoid(convert_to_tensor(logits, track_meta=False).float())

    def _decode(self, heat: torch.Tensor, images: list[MetaTensor]) -> tuple[torch.Tensor, ...]:
        """Sigmoid heatmaps -> (network-pixel points, original-pixel points, confidence, spread in heatmap pixels)."""
        coords, conf = decode_heatmaps(heat, method=self.decode_method, window=self.decode_window)
        spread = heatmap_spread(heat, coords)
        ref = torch.as_tensor(images[0].shape[1:], dtype=torch.float64, device=coords.device)
        stride = ref / torch.as_tensor(heat.shape[2:], dtype=torch.float64, device=coords.device)
        net = (coords.to(torch.float64) + 0.5) * stride - 0.5
        orig = torch.stack([points_to_original(net[i].cpu(), img) for i, img in enumerate(images)]).to(net.device)
        return net, orig, conf, spread

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image = batchdata[self.image_key].to(engine.state.device)
        images = decollate_batch(batchdata[self.image_key], detach=True)
        b, k = image.shape[0], self.num_landmarks
        gt_net = convert_to_tensor(batchdata[self.landmark_key], track_meta=False).to(torch.float64).cpu()
        if gt_net.shape != (b, k, 2):
            raise ValueError(f"InteractiveKeypointEvaluator: ground truth must be (B, {k}, 2), got {tuple(gt_net.shape)}")
        spacing = convert_to_tensor(batchdata[self.spacing_key], track_meta=False).to(torch.float64).cpu().reshape(b, 2)
        # the preprocessing moved the landmarks with the image (network pixels): the clicks are those points, the
        # errors are measured in the original pixels
        gt = torch.stack([points_to_original(gt_net[i], img).to(torch.float64) for i, img in enumerate(images)])
        heights = torch.as_tensor([float(np.asarray(img.meta["original_spatial_shape"]).reshape(-1)[1]) for img in images])

        previous = True if self.previous_prediction else None
        heat0 = self._forward(engine, image, None, previous)
        net0, pts0, conf0, spread0 = self._decode(heat0, images)
        spreads = [HeatmapSpreadd()({"pred": heat0[i], "image": img, "pred_landmarks": net0[i].cpu()}) for i, img in enumerate(images)]

        def run(order: str) -> dict[str, torch.Tensor]:
            state = {"previous": heat0}

            def predict(clicked: torch.Tensor, _round: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                hints = torch.where(clicked.unsqueeze(-1), gt_net, torch.full_like(gt_net, float("nan")))
                prev = None
                if self.previous_prediction:
                    keep = clicked.to(state["previous"].device).view(*clicked.shape, *([1] * (heat0.ndim - 2)))
                    prev = state["previous"] * keep
                heat = self._forward(engine, image, hints.to(engine.state.device), prev)
                state["previous"] = heat
                _, pts, conf, spread = self._decode(heat, images)
                return pts.cpu(), conf.cpu(), spread.cpu()

            return click_protocol(
                predict, pts0.cpu(), gt, self.num_clicks, spacing if self.unit == "mm" else None, self.enforce_clicks,
                order=order, initial_confidence=conf0.cpu(), initial_spread=spread0.cpu(),
            )

        result = run(self.click_orders[0])
        for order in self.click_orders[1:]:
            result[order] = run(order)
        result.update(gt=gt, image_height=heights)
        engine.state.output = {
            CommonKeys.IMAGE: image,
            CommonKeys.PRED: heat0,
            "pred_landmarks": pts0.to(torch.float32).cpu(),
            "pred_landmarks_mm": torch.stack([points_to_mm(pts0[i].cpu(), spacing[i]) for i in range(b)]).to(torch.float32),
            "pred_confidence": conf0.to(torch.float32).cpu(),
            "pred_spread": torch.stack([sp["pred_spread"] for sp in spreads]),  # 0-click heatmap spread, original px
            "pred_spread_mm": torch.stack([sp["pred_spread_mm"] for sp in spreads]),
            "landmarks": gt.to(torch.float32),  # original pixels, as the standard metrics and writers expect
            "landmarks_mm": torch.stack([points_to_mm(gt[i], spacing[i]) for i in range(b)]).to(torch.float32),
            "interactive": result,
        }
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
