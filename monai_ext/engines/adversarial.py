"""Adversarial PoseNet training (Chen et al., "Adversarial PoseNet", ICCV 2017) as a MONAI ``Trainer``.

Training runs in three phases, as the authors' scripts chain them (supervised warm-up of the generator, then the
discriminators pre-trained against it, then the joint adversarial phase; epochs ``1 .. supervised_epochs``, the next
``discriminator_epochs``, then the rest):

* ``"supervised"``: the generator alone with the heatmap loss (no discriminator forward);
* ``"discriminator"``: the generator frozen (``eval`` mode, no gradient), only the discriminators are updated;
* ``"adversarial"``: every part is updated, one iteration as below.

Without discriminators every epoch is supervised (the stacked-hourglass baseline). The first adversarial epoch fires
``AdversarialPoseEvents.ADVERSARIAL_STARTED`` (e.g. :class:`~monai_ext.handlers.RestartModelSelection`).

One adversarial iteration (:meth:`AdversarialPoseTrainer._iteration`):

1. generator forward ``G(x)`` (a list of heatmaps, one per hourglass stack);
2. when discriminators are given, update the pose discriminator ``P`` on the real pair ``(y, x)`` (target 1) and the
   fake pair ``(G(x).detach(), x)`` (targets ``p_fake``), then the confidence discriminator ``C`` on ``y`` (target 1)
   and ``G(x).detach()`` (targets ``c_fake``), each with its own optimiser;
3. update ``G`` with ``MSE(all stacks) + alpha * adv_C + beta * adv_P`` where ``adv_P = BCE(P(G(x), x), 1)`` and
   ``adv_C = BCE(C(G(x)), 1)``.

Decisions:

* The discriminators see the **last stack** only (the prediction); the MSE supervises every stack.
* Target heatmaps may come at the image resolution: they are block-averaged (area pooling) to the generator's output
  size inside the iteration (:func:`match_heatmap_resolution`). An integer stride is required; block averaging keeps
  the pixel-centre convention of :mod:`monai_ext.networks.hourglass` (heatmap index ``h`` = input pixel
  ``(h + 0.5) * s - 0.5``). Targets already at the output size are used as they are.
* Missing landmarks (mask 0) are excluded from the MSE, from every BCE term and get ``p_fake = c_fake = 0``; their
  target channel is zeroed (whatever it held, ``NaN`` included) before it is shown to the discriminators as "real".
  Without a mask in the batch, a landmark is visible when its target channel is not all zero.
* ``p_fake``: argmax of the generated heatmap within ``fake_threshold`` *input* pixels of the ground-truth argmax;
  ``c_fake``: peak value within ``peak_tolerance`` (relative) of the ground-truth peak at the same resolution (see
  :mod:`monai_ext.losses.adversarial`).
* Either discriminator may be ``None`` (ablations); with both ``None`` this is the supervised stacked-hourglass
  baseline: no discriminator forward at all. ``engine.state.output`` always has the keys ``"image"``, ``"label"``
  (targets at heatmap resolution), ``"mask"`` ``(B, K)``, ``"pred"`` (last stack, detached), ``"loss"`` (total
  generator loss) and ``"mse"``, ``"adv_P"``, ``"adv_C"``, ``"d_P"``, ``"d_C"``; the terms of an absent
  discriminator are 0. All losses are detached 0-dim float tensors.
* AMP: ``torch.autocast`` on the batch's device type (bfloat16 on CPU unless ``amp_kwargs`` says otherwise) and one
  ``torch.amp.GradScaler`` per optimiser, enabled on CUDA only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.engines.workflow import Workflow
from monai.transforms import Transform
from monai.utils import IgniteInfo, min_version, optional_import
from monai.utils.enums import CommonKeys as Keys
from monai_ext.engines.prepare_batch import PrepareLandmarkBatch
from monai_ext.losses.adversarial import MaskedBCEWithLogits, confidence_fake_targets, pose_fake_targets
from monai_ext.losses.heatmap import HeatmapMSELoss

if TYPE_CHECKING:
    from ignite.engine import Engine, EventEnum, Events
    from ignite.metrics import Metric
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
    Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric")
    EventEnum, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "EventEnum", as_type="base"
    )

__all__ = [
    "AdversarialPoseEvents",
    "AdversarialPoseTrainer",
    "LOSS_KEYS",
    "PHASES",
    "checkpoint_objects",
    "match_heatmap_resolution",
]

LOSS_KEYS = ("mse", "adv_P", "adv_C", "d_P", "d_C")
MASK_KEY = "mask"
#: the training phases in their order (see the module docstring)
PHASES = ("supervised", "discriminator", "adversarial")


class AdversarialPoseEvents(EventEnum):
    """Events fired by :class:`AdversarialPoseTrainer` inside an iteration (always registered).

    ``D_P_COMPLETED`` / ``D_C_COMPLETED``: after the pose / confidence discriminator's optimiser step (not fired when
    that discriminator is absent). ``G_COMPLETED``: after the generator's optimiser step (not fired in the
    discriminator phase). ``ADVERSARIAL_STARTED``: at the start of the first adversarial epoch (after
    ``EPOCH_STARTED``; never without discriminators).
    """

    D_P_COMPLETED = "d_p_completed"
    D_C_COMPLETED = "d_c_completed"
    G_COMPLETED = "g_completed"
    ADVERSARIAL_STARTED = "adversarial_started"


def match_heatmap_resolution(heatmaps: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Block-average ``heatmaps`` ``(B, K, *S)`` to ``spatial_shape`` (each ``S_d`` an integer multiple of it).

    Exact area pooling by the integer stride ``S_d / spatial_shape_d``: output index ``h`` averages input pixels
    ``h * s ... h * s + s - 1`` (centre ``(h + 0.5) * s - 0.5``). Returned unchanged when the shapes already match.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    src = tuple(int(s) for s in heatmaps.shape[2:])
    if src == spatial_shape:
        return heatmaps
    if len(src) != len(spatial_shape) or any(s < t or s % t != 0 for s, t in zip(src, spatial_shape)):
        raise ValueError(
            f"target heatmaps of spatial shape {src} cannot be block-averaged to the generator output {spatial_shape}: "
            "each size must be an integer multiple of the output size."
        )
    stride = tuple(s // t for s, t in zip(src, spatial_shape))
    pool = F.avg_pool2d if len(src) == 2 else F.avg_pool3d
    return pool(heatmaps.float(), kernel_size=stride, stride=stride)


@contextlib.contextmanager
def _frozen(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Temporarily stop gradients into the parameters of ``modules`` (inputs still get gradients)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class AdversarialPoseTrainer(Trainer):
    """Stacked-hourglass generator trained with pose and confidence discriminators (Chen et al. 2017).

    Args:
        device: device to run on.
        max_epochs: total number of epochs.
        train_data_loader: iterable of batches (dicts with ``image_key``, ``heatmap_key`` and ``mask_key``).
        generator: network ``(B, C, *S_img) -> list of (B, K, *S_img / output_stride)`` (or a single tensor).
        g_optimizer: optimiser of the generator.
        pose_discriminator: ``P(heatmaps, image, return_logits)`` -> ``(B, K)``, or ``None``.
        p_optimizer: its optimiser (required with ``pose_discriminator``).
        confidence_discriminator: ``C(heatmaps, return_logits)`` -> ``(B, K)``, or ``None``.
        c_optimizer: its optimiser (required with ``confidence_discriminator``).
        heatmap_loss: ``loss(list of predictions, target, mask)``; default :class:`HeatmapMSELoss` (summed over
            stacks, mean over pixels x visible landmarks).
        alpha: weight of the confidence adversarial term ``adv_C`` (Chen et al.: 1/220).
        beta: weight of the pose adversarial term ``adv_P`` (Chen et al.: 1/180).
        fake_threshold: ``p_fake`` distance threshold, in input (image) pixels.
        peak_tolerance: ``c_fake`` relative tolerance on the heatmap peak.
        supervised_epochs: epochs of the supervised warm-up of the generator (phase 1; the seed: 24).
        discriminator_epochs: epochs of discriminator pre-training against the frozen generator (phase 2; the seed:
            70 for the pose and 80 for the confidence discriminator).
        image_key, heatmap_key, mask_key: batch keys used by the default ``prepare_batch``.
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: ``(batchdata, device, non_blocking, **to_kwargs) -> (image, target)`` where ``target`` is the
            heatmaps ``(B, K, *S)`` or a pair ``(heatmaps, mask (B, K))``; default
            :class:`~monai_ext.engines.prepare_batch.PrepareLandmarkBatch` with the three keys.
        iteration_update, postprocessing, key_train_metric, additional_metrics, metric_cmp_fn, train_handlers,
            event_names, event_to_attr, to_kwargs: as in :class:`monai.engines.SupervisedTrainer`.
        amp: mixed precision (see the module docstring).
        decollate: decollate the batch and output after each iteration (default ``False``).
        optim_set_to_none: ``zero_grad(set_to_none=...)``.
        amp_kwargs: extra arguments of ``torch.autocast``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        generator: nn.Module,
        g_optimizer: Optimizer,
        pose_discriminator: nn.Module | None = None,
        p_optimizer: Optimizer | None = None,
        confidence_discriminator: nn.Module | None = None,
        c_optimizer: Optimizer | None = None,
        heatmap_loss: Callable | None = None,
        alpha: float = 1.0 / 220.0,
        beta: float = 1.0 / 180.0,
        fake_threshold: float = 4.0,
        peak_tolerance: float = 0.5,
        supervised_epochs: int = 0,
        discriminator_epochs: int = 0,
        image_key: str = Keys.IMAGE,
        heatmap_key: str = "heatmap",
        mask_key: str = "landmark_mask",
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        for name, net, opt in (
            ("pose_discriminator", pose_discriminator, p_optimizer),
            ("confidence_discriminator", confidence_discriminator, c_optimizer),
        ):
            if (net is None) != (opt is None):
                raise ValueError(
                    f"AdversarialPoseTrainer: {name} and its optimiser must be given together (or neither)."
                )
        if alpha < 0 or beta < 0:
            raise ValueError(f"AdversarialPoseTrainer: alpha and beta must be >= 0, got {alpha} and {beta}.")
        if fake_threshold < 0 or peak_tolerance < 0:
            raise ValueError(
                f"AdversarialPoseTrainer: fake_threshold and peak_tolerance must be >= 0, got {fake_threshold} and "
                f"{peak_tolerance}."
            )
        if int(supervised_epochs) < 0 or int(discriminator_epochs) < 0:
            raise ValueError(
                "AdversarialPoseTrainer: supervised_epochs and discriminator_epochs must be >= 0, got "
                f"{supervised_epochs} and {discriminator_epochs}."
            )
        if prepare_batch is None:
            prepare_batch = PrepareLandmarkBatch(image_key=image_key, heatmap_key=heatmap_key, mask_key=mask_key)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=None,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.register_events(*AdversarialPoseEvents)
        self.generator = generator
        self.g_optimizer = g_optimizer
        self.pose_discriminator = pose_discriminator
        self.p_optimizer = p_optimizer
        self.confidence_discriminator = confidence_discriminator
        self.c_optimizer = c_optimizer
        self.heatmap_loss = HeatmapMSELoss() if heatmap_loss is None else heatmap_loss
        self.bce = MaskedBCEWithLogits()
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.fake_threshold = float(fake_threshold)
        self.peak_tolerance = float(peak_tolerance)
        self.supervised_epochs = int(supervised_epochs)
        self.discriminator_epochs = int(discriminator_epochs)
        self.optim_set_to_none = optim_set_to_none
        self.add_event_handler(Events.EPOCH_STARTED, self._phase_started)
        scaler_on = bool(amp) and torch.device(device).type == "cuda"
        self.g_scaler = torch.amp.GradScaler("cuda", enabled=scaler_on)
        self.p_scaler = torch.amp.GradScaler("cuda", enabled=scaler_on)
        self.c_scaler = torch.amp.GradScaler("cuda", enabled=scaler_on)
        # handlers last, so that they can see every attribute above (as MONAI trainers do through Workflow)
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    def checkpoint_objects(self) -> dict[str, Any]:
        """What this trainer owns beyond the generator and its optimiser (a bundle's ``model`` / ``optimizer``):
        the discriminators and their optimisers when present, the enabled AMP grad scalers and the heatmap loss
        when it has a state. The training checkpoint handlers add these (:mod:`monai_ext.handlers.checkpoint`)."""
        objects = checkpoint_objects(self)
        for key in ("trainer", "generator", "g_optimizer"):
            objects.pop(key)
        return objects

    @property
    def adversarial(self) -> bool:
        """Whether the trainer has a discriminator (else every epoch is supervised)."""
        return self.pose_discriminator is not None or self.confidence_discriminator is not None

    def phase(self, epoch: int) -> str:
        """The phase of 1-based ``epoch`` (one of :data:`PHASES`)."""
        if not self.adversarial or epoch <= self.supervised_epochs:
            return "supervised"
        if epoch <= self.supervised_epochs + self.discriminator_epochs:
            return "discriminator"
        return "adversarial"

    def _phase_started(self, engine: AdversarialPoseTrainer) -> None:
        epoch = engine.state.epoch
        phase = engine.phase(epoch)
        if epoch == 1 or phase != engine.phase(epoch - 1):
            engine.logger.info(f"epoch {epoch}: {phase} phase")
            if phase == "adversarial":
                engine.fire_event(AdversarialPoseEvents.ADVERSARIAL_STARTED)

    def run(self) -> None:  # type: ignore[override]
        """Run training; calling it again continues from the current state (up to ``state.max_epochs``)."""
        # skip Trainer.run, which replaces self.scaler by a CUDA-only GradScaler: this trainer owns one per optimiser
        Workflow.run(self)

    def _autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        kwargs = dict(self.amp_kwargs)
        if device_type == "cpu":
            kwargs.setdefault("dtype", torch.bfloat16)
        return torch.autocast(device_type, **kwargs)

    def _prepare(self, batchdata: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        batch = self.prepare_batch(batchdata, self.state.device, self.non_blocking, **self.to_kwargs)
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("AdversarialPoseTrainer: prepare_batch must return (image, target).")
        image, target = batch
        mask = None
        if isinstance(target, (tuple, list)):
            if len(target) != 2:
                raise ValueError("AdversarialPoseTrainer: target must be heatmaps or a pair (heatmaps, mask).")
            target, mask = target
        if not isinstance(target, torch.Tensor) or target.ndim != image.ndim:
            raise ValueError(
                "AdversarialPoseTrainer: the batch has no target heatmaps (B, K, *spatial) shaped like the image "
                f"{tuple(image.shape)}; got {type(target).__name__} "
                f"{tuple(target.shape) if isinstance(target, torch.Tensor) else ''}."
            )
        return image, target, mask

    def _discriminator_step(
        self,
        network: nn.Module,
        optimizer: Optimizer,
        scaler: torch.amp.GradScaler,
        logits_fn: Callable[[torch.Tensor], torch.Tensor],
        real: torch.Tensor,
        fake: torch.Tensor,
        fake_target: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """One optimiser step of a discriminator: ``BCE(D(real), 1) + BCE(D(fake), fake_target)``; returns the loss."""
        network.train()
        optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with self._autocast(real.device.type):
            loss = self.bce(logits_fn(real), 1.0, mask) + self.bce(logits_fn(fake), fake_target, mask)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    def _iteration(self, engine: AdversarialPoseTrainer, batchdata: Any) -> dict:
        """One Adversarial PoseNet iteration (see the module docstring); returns ``engine.state.output``."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, target_full, mask = engine._prepare(batchdata)
        device_type = image.device.type
        phase = engine.phase(engine.state.epoch)
        train_g = phase != "discriminator"
        train_d = phase != "supervised"

        # (1) generator forward (frozen while the discriminators are pre-trained)
        engine.generator.train(train_g)
        with engine._autocast(device_type), torch.set_grad_enabled(train_g):
            out = engine.generator(image)
        preds = list(out) if isinstance(out, (list, tuple)) else [out]
        pred = preds[-1]
        if pred.shape[:2] != target_full.shape[:2]:
            raise ValueError(
                f"AdversarialPoseTrainer: generator output {tuple(pred.shape)} and target heatmaps "
                f"{tuple(target_full.shape)} differ in batch size or number of landmarks."
            )
        if mask is None:
            mask = torch.nan_to_num(target_full.detach(), nan=0.0).flatten(2).amax(2) > 0
        mask = mask.to(device=pred.device, dtype=torch.float32)
        target = match_heatmap_resolution(target_full, pred.shape[2:]).to(torch.float32)
        visible = (mask > 0).view(*mask.shape, *([1] * (target.ndim - 2)))
        target = torch.where(visible, target, torch.zeros_like(target))  # a missing landmark has no heatmap
        output_stride = [float(i) / float(p) for i, p in zip(image.shape[2:], pred.shape[2:])]
        zero = torch.zeros((), device=pred.device)
        engine.state.output = {
            Keys.IMAGE: image,
            Keys.LABEL: target,
            MASK_KEY: mask,
            Keys.PRED: pred.detach(),
            **{k: zero for k in LOSS_KEYS},
        }
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        # (2) discriminator updates on the detached prediction
        fake = pred.detach().float()
        if train_d and engine.pose_discriminator is not None:
            p_fake = pose_fake_targets(fake, target, mask, engine.fake_threshold, output_stride)
            p_net = engine.pose_discriminator
            engine.state.output["d_P"] = engine._discriminator_step(
                p_net, engine.p_optimizer, engine.p_scaler,  # type: ignore[arg-type]
                lambda h: p_net(h, image, return_logits=True), target, fake, p_fake, mask,
            )
            engine.fire_event(AdversarialPoseEvents.D_P_COMPLETED)
        if train_d and engine.confidence_discriminator is not None:
            c_fake = confidence_fake_targets(fake, target, mask, engine.peak_tolerance)
            c_net = engine.confidence_discriminator
            engine.state.output["d_C"] = engine._discriminator_step(
                c_net, engine.c_optimizer, engine.c_scaler,  # type: ignore[arg-type]
                lambda h: c_net(h, return_logits=True), target, fake, c_fake, mask,
            )
            engine.fire_event(AdversarialPoseEvents.D_C_COMPLETED)

        if not train_g:  # discriminator phase: the heatmap loss is logged, the generator is not updated
            with torch.no_grad():
                mse = engine.heatmap_loss([p.float() for p in preds], target, mask).float()
            engine.state.output["mse"] = engine.state.output[Keys.LOSS] = mse
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            engine.fire_event(IterationEvents.MODEL_COMPLETED)
            return engine.state.output

        # (3) generator update: MSE over every stack + adversarial terms on the last stack
        discriminators = [d for d in (engine.pose_discriminator, engine.confidence_discriminator) if d is not None]
        adversarial = phase == "adversarial"
        engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with _frozen(discriminators), engine._autocast(device_type):
            mse = engine.heatmap_loss([p.float() for p in preds], target, mask).float()
            loss = mse
            if adversarial and engine.pose_discriminator is not None:
                adv_p = engine.bce(engine.pose_discriminator(pred, image, return_logits=True), 1.0, mask)
                loss = loss + engine.beta * adv_p
                engine.state.output["adv_P"] = adv_p.detach()
            if adversarial and engine.confidence_discriminator is not None:
                adv_c = engine.bce(engine.confidence_discriminator(pred, return_logits=True), 1.0, mask)
                loss = loss + engine.alpha * adv_c
                engine.state.output["adv_C"] = adv_c.detach()
        engine.state.output["mse"] = mse.detach()
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.g_scaler.scale(loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.g_scaler.step(engine.g_optimizer)
        engine.g_scaler.update()
        engine.fire_event(AdversarialPoseEvents.G_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def optimizer_for(network: nn.Module | None, optimizer: Optimizer) -> Optimizer | None:
    """An optimiser of ``network`` of the same class and hyper-parameters as ``optimizer`` (a discriminator trained
    like the generator, as in the paper); ``None`` for no network."""
    if network is None:
        return None
    return type(optimizer)(network.parameters(), **optimizer.defaults)


def checkpoint_objects(trainer: AdversarialPoseTrainer, **extra: Any) -> dict[str, Any]:
    """The ``save_dict`` / ``load_dict`` of MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` for ``trainer``.

    Keys: ``"trainer"`` (engine state: epoch, iteration), ``"generator"``, ``"g_optimizer"``, and when present
    ``"pose_discriminator"``, ``"p_optimizer"``, ``"confidence_discriminator"``, ``"c_optimizer"``, the enabled AMP
    grad scalers (``"g_scaler"``, ``"p_scaler"``, ``"c_scaler"``) and ``"heatmap_loss"`` when it has a state (e.g.
    learnable parameters). ``extra`` adds more ``state_dict``-able objects, e.g. ``g_scheduler=lr_scheduler``.
    """
    objects: dict[str, Any] = {"trainer": trainer, "generator": trainer.generator, "g_optimizer": trainer.g_optimizer}
    parts = (
        ("pose_discriminator", "p_optimizer", "p_scaler"),
        ("confidence_discriminator", "c_optimizer", "c_scaler"),
    )
    if trainer.g_scaler.is_enabled():
        objects["g_scaler"] = trainer.g_scaler
    for net_key, opt_key, scaler_key in parts:
        if getattr(trainer, net_key) is None:
            continue
        objects[net_key] = getattr(trainer, net_key)
        objects[opt_key] = getattr(trainer, opt_key)
        if getattr(trainer, scaler_key).is_enabled():
            objects[scaler_key] = getattr(trainer, scaler_key)
    if isinstance(trainer.heatmap_loss, nn.Module) and len(trainer.heatmap_loss.state_dict()) > 0:
        objects["heatmap_loss"] = trainer.heatmap_loss
    clash = sorted(set(objects) & set(extra))
    if clash:
        raise ValueError(f"checkpoint_objects: extra keys {clash} clash with the trainer's own objects.")
    objects.update(extra)
    return objects
