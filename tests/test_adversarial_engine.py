import copy
import math

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver

from monai_ext.engines.adversarial import (
    LOSS_KEYS,
    AdversarialPoseEvents,
    AdversarialPoseTrainer,
    checkpoint_objects,
    match_heatmap_resolution,
)
from monai_ext.heatmaps import gaussian_heatmaps
from monai_ext.losses.adversarial import (
    MaskedBCEWithLogits,
    confidence_fake_targets,
    heatmap_peaks,
    pose_fake_targets,
)
from monai_ext.losses.heatmap import HeatmapMSELoss
from monai_ext.networks.discriminators import ConfidenceDiscriminator, PoseDiscriminator
from monai_ext.networks.hourglass import StackedHourglass

K = 3
SIZE = 32
STRIDE = 4
HM = SIZE // STRIDE


def _batches(n: int = 2, batch_size: int = 2, seed: int = 0) -> list[dict]:
    """``n`` batches of 32x32 images with image-resolution heatmaps; landmark 1 of sample 0 is missing in batch 0."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        pts = torch.rand(batch_size, K, 2, generator=g) * (SIZE - 8) + 4
        if i == 0:
            pts[0, 1] = float("nan")
        out.append(
            {
                "image": torch.randn(batch_size, 1, SIZE, SIZE, generator=g),
                "heatmap": gaussian_heatmaps(pts, (SIZE, SIZE), sigma=2.0),
                "landmark_mask": torch.isfinite(pts).all(-1).float(),
            }
        )
    return out


def _nets(seed: int = 0, stacks: int = 1):
    torch.manual_seed(seed)
    g = StackedHourglass(2, 1, K, num_stacks=stacks, num_features=16, depth=1, stem_stride=STRIDE)
    p = PoseDiscriminator(2, K, K, image_channels=1, num_features=4, depth=2)
    c = ConfidenceDiscriminator(2, K, K, num_features=4, depth=2)
    return g, p, c


def _trainer(data, g, p=None, c=None, max_epochs: int = 1, **kwargs) -> AdversarialPoseTrainer:
    adam = lambda net: torch.optim.Adam(net.parameters(), lr=2e-4) if net is not None else None  # noqa: E731
    return AdversarialPoseTrainer(
        device="cpu", max_epochs=max_epochs, train_data_loader=data, generator=g, g_optimizer=adam(g),
        pose_discriminator=p, p_optimizer=adam(p), confidence_discriminator=c, c_optimizer=adam(c), **kwargs,
    )


def _params(*nets) -> list[torch.Tensor]:
    return [t.detach().clone() for n in nets for t in n.state_dict().values()]


def _record_events(trainer: AdversarialPoseTrainer) -> list:
    seen = []
    for ev in [*IterationEvents, *AdversarialPoseEvents]:
        trainer.add_event_handler(ev, lambda e, ev=ev: seen.append(ev))
    return seen


def test_network_output_shapes():
    g, p, c = _nets(stacks=2)
    batch = _batches(1)[0]
    preds = g(batch["image"])
    assert len(preds) == 2 and all(h.shape == (2, K, HM, HM) for h in preds)
    assert p(preds[-1], batch["image"], return_logits=True).shape == (2, K)
    assert c(preds[-1], return_logits=True).shape == (2, K)


def test_match_heatmap_resolution_block_average_and_centre():
    x = torch.rand(2, K, SIZE, SIZE)
    pooled = match_heatmap_resolution(x, (HM, HM))
    manual = x.reshape(2, K, HM, STRIDE, HM, STRIDE).mean(dim=(3, 5))
    torch.testing.assert_close(pooled, manual)
    assert match_heatmap_resolution(x, (SIZE, SIZE)) is x
    with pytest.raises(ValueError, match="integer multiple"):
        match_heatmap_resolution(torch.rand(1, K, 30, 32), (HM, HM))
    # the pooled Gaussian is centred on the heatmap coordinate (p + 0.5) / stride - 0.5 of the image point p
    point = torch.tensor([[[13.3, 18.6]]])
    hm = match_heatmap_resolution(gaussian_heatmaps(point, (SIZE, SIZE), sigma=3.0), (HM, HM))[0, 0]
    grid = torch.arange(HM, dtype=torch.float32)
    centroid = torch.stack([(hm.sum(1) * grid).sum(), (hm.sum(0) * grid).sum()]) / hm.sum()
    torch.testing.assert_close(centroid, (point[0, 0] + 0.5) / STRIDE - 0.5, atol=0.05, rtol=0)


def test_pose_fake_targets_near_far_missing():
    gt_points = torch.tensor([[[3.0, 4.0], [5.0, 1.0], [2.0, 2.0]]])  # heatmap pixels
    gt = gaussian_heatmaps(gt_points, (HM, HM), sigma=1.0)
    pred_points = gt_points.clone()
    pred_points[0, 1] = torch.tensor([0.0, 7.0])  # far from the ground truth
    pred = gaussian_heatmaps(pred_points, (HM, HM), sigma=1.0)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # landmark 2 missing
    targets = pose_fake_targets(pred, gt, mask, threshold=2.0, output_stride=STRIDE)
    assert targets.tolist() == [[1.0, 0.0, 0.0]]
    # ground-truth points in image pixels: heatmap index h <-> image pixel (h + 0.5) * stride - 0.5
    image_points = (gt_points + 0.5) * STRIDE - 0.5
    image_points[0, 0] += torch.tensor([1.5, 0.0])  # within 2 image pixels
    image_points[0, 2] = float("nan")
    assert pose_fake_targets(pred, image_points, None, 2.0, STRIDE).tolist() == [[1.0, 0.0, 0.0]]
    assert pose_fake_targets(pred, image_points, None, 1.0, STRIDE).tolist() == [[0.0, 0.0, 0.0]]
    peaks, values = heatmap_peaks(pred, STRIDE)
    torch.testing.assert_close(peaks[0, 0], (gt_points[0, 0] + 0.5) * STRIDE - 0.5)
    torch.testing.assert_close(values, torch.ones(1, K))


def test_confidence_fake_targets_peak_and_location():
    gt = gaussian_heatmaps(torch.tensor([[[3.0, 4.0], [5.0, 1.0], [2.0, 2.0]]]), (HM, HM), sigma=1.0)
    pred = gt.clone()
    pred[0, 1] *= 0.1  # right place, not confident
    assert confidence_fake_targets(pred, gt).tolist() == [[1.0, 0.0, 1.0]]
    assert confidence_fake_targets(pred * 3.0, gt).tolist() == [[0.0, 0.0, 0.0]]
    assert confidence_fake_targets(pred, gt, torch.tensor([[1.0, 1.0, 0.0]])).tolist() == [[1.0, 0.0, 0.0]]
    shifted = gt.roll(shifts=3, dims=2)  # confident but misplaced by 3 heatmap pixels
    assert confidence_fake_targets(shifted, gt).tolist() == [[1.0, 1.0, 1.0]]
    assert confidence_fake_targets(shifted, gt, threshold=STRIDE, output_stride=STRIDE).tolist() == [[0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="target_peak"):
        confidence_fake_targets(pred, torch.zeros(1, K, 2))


def test_masked_bce_with_logits_excludes_missing():
    bce = MaskedBCEWithLogits()
    logits = torch.tensor([[2.0, -1.0, 50.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected = F.binary_cross_entropy_with_logits(logits[:, :2], target[:, :2])
    torch.testing.assert_close(bce(logits, target, mask), expected)
    torch.testing.assert_close(bce(logits, 1.0), F.binary_cross_entropy_with_logits(logits, torch.ones(1, K)))
    loss = bce(logits, target, torch.zeros(1, K))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(1, K))


def test_adversarial_iteration_updates_g_p_c_and_reports_losses():
    g, p, c = _nets()
    trainer = _trainer(_batches(1), g, p, c)
    seen = _record_events(trainer)
    before = [_params(g), _params(p), _params(c)]
    trainer.run()
    for old, net in zip(before, (g, p, c)):
        assert any(not torch.equal(a, b) for a, b in zip(old, _params(net))), type(net).__name__
    out = trainer.state.output
    assert set(out) == {"image", "label", "mask", "pred", "loss", *LOSS_KEYS}
    for key in ("loss", *LOSS_KEYS):
        assert out[key].ndim == 0 and out[key].dtype == torch.float32 and math.isfinite(out[key].item()), key
        assert out[key].item() > 0, key
    expected = out["mse"] + trainer.alpha * out["adv_C"] + trainer.beta * out["adv_P"]
    torch.testing.assert_close(out["loss"], expected)
    assert out["pred"].shape == out["label"].shape == (2, K, HM, HM)
    assert out["mask"].tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    assert seen == [
        AdversarialPoseEvents.ADVERSARIAL_STARTED,  # no warm-up phases: the first epoch is adversarial
        IterationEvents.FORWARD_COMPLETED,
        AdversarialPoseEvents.D_P_COMPLETED,
        AdversarialPoseEvents.D_C_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        AdversarialPoseEvents.G_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ]


def test_supervised_switch_is_plain_heatmap_regression():
    g, _, _ = _nets(stacks=2)  # the MSE sums over both stacks
    data = _batches(1)
    reference = copy.deepcopy(g).train()
    trainer = _trainer(data, g)
    seen = _record_events(trainer)
    before = _params(g)
    trainer.run()
    assert any(not torch.equal(a, b) for a, b in zip(before, _params(g)))
    out = trainer.state.output
    assert [out[k].item() for k in ("adv_P", "adv_C", "d_P", "d_C")] == [0.0] * 4
    batch = data[0]
    expected = HeatmapMSELoss()(reference(batch["image"]), match_heatmap_resolution(batch["heatmap"], (HM, HM)),
                                batch["landmark_mask"])
    torch.testing.assert_close(out["mse"], expected.detach())
    torch.testing.assert_close(out["loss"], out["mse"])
    assert AdversarialPoseEvents.D_P_COMPLETED not in seen and AdversarialPoseEvents.D_C_COMPLETED not in seen
    assert seen.count(AdversarialPoseEvents.G_COMPLETED) == 1


def test_pose_only_ablation_never_calls_the_absent_discriminator():
    g, p, c = _nets()
    calls = {"P": 0, "C": 0}
    p.register_forward_hook(lambda *_: calls.__setitem__("P", calls["P"] + 1))
    c.register_forward_hook(lambda *_: calls.__setitem__("C", calls["C"] + 1))
    trainer = _trainer(_batches(2), g, p)
    trainer.run()
    assert calls == {"P": 3 * 2, "C": 0}  # real, fake, generator step; per iteration
    assert trainer.state.output["adv_C"].item() == 0.0 and trainer.state.output["d_C"].item() == 0.0
    assert trainer.state.output["adv_P"].item() > 0.0
    with pytest.raises(ValueError, match="optimiser"):
        AdversarialPoseTrainer("cpu", 1, [], g, torch.optim.Adam(g.parameters()), confidence_discriminator=c)


def test_missing_landmark_content_does_not_matter():
    """A missing landmark whose channel holds NaN, with the mask derived from the heatmaps (no mask in the batch),
    gives the same losses as the clean batch with its mask."""
    clean = _batches(1)[0]
    dirty = {"image": clean["image"], "heatmap": clean["heatmap"].clone()}
    dirty["heatmap"][0, 1] = float("nan")
    outs = []
    for batch, prepare in ((clean, None), (dirty, lambda b, *a, **kw: (b["image"], b["heatmap"]))):
        g, p, c = _nets(seed=1)
        trainer = _trainer([batch], g, p, c, prepare_batch=prepare)
        trainer.run()
        outs.append(trainer.state.output)
    torch.testing.assert_close(outs[1]["mask"], clean["landmark_mask"])
    for key in ("loss", *LOSS_KEYS):
        assert math.isfinite(outs[1][key].item())
        torch.testing.assert_close(outs[1][key], outs[0][key])


def test_cpu_amp_runs_without_grad_scalers():
    g, p, c = _nets()
    trainer = _trainer(_batches(1), g, p, c, amp=True)
    trainer.run()
    assert all(math.isfinite(trainer.state.output[k].item()) for k in ("loss", *LOSS_KEYS))
    assert not trainer.g_scaler.is_enabled()
    assert set(checkpoint_objects(trainer)) == {
        "trainer", "generator", "g_optimizer", "pose_discriminator", "p_optimizer", "confidence_discriminator",
        "c_optimizer",
    }


def test_checkpoint_resume_continues_iterations_with_identical_state(tmp_path):
    data = _batches(2)
    g1, p1, c1 = _nets(seed=0)
    first = _trainer(data, g1, p1, c1, max_epochs=1)
    CheckpointSaver(str(tmp_path), checkpoint_objects(first), save_interval=1, epoch_level=True).attach(first)
    first.run()
    assert first.state.iteration == 2
    saved = _params(g1, p1, c1)
    (ckpt,) = tmp_path.glob("*.pt")

    g2, p2, c2 = _nets(seed=5)
    second = _trainer(data, g2, p2, c2, max_epochs=2)
    CheckpointLoader(str(ckpt), checkpoint_objects(second)).attach(second)
    started = []

    @second.on(Events.ITERATION_STARTED)
    def _first_iteration(engine):
        if not started:
            started.append(engine.state.iteration)
            for a, b in zip(saved, _params(g2, p2, c2)):
                torch.testing.assert_close(a, b)

    second.run()
    assert started == [3]  # ITERATION_STARTED sees the incremented counter: continues after the saved iteration 2
    assert second.state.iteration == 4 and second.state.epoch == 2

    # the uninterrupted run gives the same weights: optimiser states were restored as well
    first.state.max_epochs = 2
    first.run()
    assert first.state.iteration == 4
    for a, b in zip(_params(g1, p1, c1), _params(g2, p2, c2)):
        torch.testing.assert_close(a, b)


def _ddp_worker(rank: int, world_size: int, init_file: str, queue) -> None:
    import os

    import torch.distributed as dist

    from monai_ext.utils import place_network

    os.environ["WORLD_SIZE"] = str(world_size)  # what torchrun sets: place_network wraps in DDP
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        g, p, c = _nets(seed=0)  # the same start on every rank (DDP also broadcasts rank 0's)
        g, p, c = (place_network(n, "cpu") for n in (g, p, c))
        assert all(isinstance(n, torch.nn.parallel.DistributedDataParallel) for n in (g, p, c))
        _trainer(_batches(2, seed=10 + rank), g, p, c, max_epochs=2).run()  # different data on every rank
        # parameters (BatchNorm running statistics are per rank between DDP's buffer broadcasts); by value, not shared
        queue.put((rank, [t.detach().numpy().copy() for n in (g, p, c) for t in n.module.parameters()]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_training_keeps_generator_and_discriminators_identical_across_ranks(tmp_path):
    """Under torchrun every network of the adversarial trainer is DDP-wrapped (``place_network``): after steps on
    different data the two ranks' generator, pose and confidence discriminator parameters are still the same."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    try:  # read before joining: a worker exits only once its result has left the pipe
        results = [queue.get(timeout=300) for _ in range(2)]
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0]
    states = {r: [torch.from_numpy(a) for a in arrays] for r, arrays in results}
    start = [t.detach() for n in _nets(seed=0) for t in n.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(start, states[0])), "no step was taken"
    for a, b in zip(states[0], states[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_phases_supervised_then_discriminators_then_adversarial():
    """Epoch 1 trains G alone, epoch 2 only P and C against the frozen G (BN statistics included), epoch 3 all."""
    g, p, c = _nets()
    trainer = _trainer(_batches(2), g, p, c, max_epochs=3, supervised_epochs=1, discriminator_epochs=1)
    assert [trainer.phase(e) for e in (1, 2, 3, 4)] == ["supervised", "discriminator", "adversarial", "adversarial"]
    seen = _record_events(trainer)
    snapshots, outputs = [[_params(g), _params(p), _params(c)]], []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.append([_params(g), _params(p), _params(c)]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: outputs.append(dict(e.state.output)))

    def changed(epoch: int) -> list[bool]:
        return [any(not torch.equal(a, b) for a, b in zip(old, new)) for old, new in zip(snapshots[epoch - 1], snapshots[epoch])]

    trainer.run()
    assert changed(1) == [True, False, False]
    assert changed(2) == [False, True, True]
    assert changed(3) == [True, True, True]
    assert outputs[0]["adv_P"] == outputs[0]["d_P"] == outputs[0]["adv_C"] == outputs[0]["d_C"] == 0
    assert outputs[1]["adv_P"] == outputs[1]["adv_C"] == 0 and outputs[1]["d_P"] > 0 and outputs[1]["d_C"] > 0
    assert outputs[1]["loss"] == outputs[1]["mse"] > 0
    assert all(outputs[2][k] > 0 for k in LOSS_KEYS)
    assert seen.count(AdversarialPoseEvents.ADVERSARIAL_STARTED) == 1
    assert seen.count(AdversarialPoseEvents.G_COMPLETED) == 4  # 2 supervised + 2 adversarial iterations
    assert seen.count(AdversarialPoseEvents.D_P_COMPLETED) == 4  # 2 discriminator + 2 adversarial iterations


def test_phases_without_discriminators_are_all_supervised():
    g, _, _ = _nets()
    trainer = _trainer(_batches(1), g, max_epochs=2, supervised_epochs=0, discriminator_epochs=1)
    seen = _record_events(trainer)
    before = _params(g)
    trainer.run()
    assert trainer.phase(2) == "supervised" and AdversarialPoseEvents.ADVERSARIAL_STARTED not in seen
    assert any(not torch.equal(a, b) for a, b in zip(before, _params(g)))
    with pytest.raises(ValueError, match="supervised_epochs"):
        _trainer(_batches(1), g, supervised_epochs=-1)


def test_restart_model_selection_keeps_only_later_checkpoints(tmp_path):
    """After the restart, the next validation writes model.pt even though its error is worse than an earlier one."""
    from ignite.engine import Engine

    from monai_ext.handlers import RestartModelSelection

    net = torch.nn.Linear(1, 1)
    errors = iter([1.0, 3.0, 2.0])  # validation MRE after epochs 1, 2 (restart before it), 3
    evaluator = Engine(lambda e, b: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.5, 1

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _score(e):
        e.state.metrics = {"val_mre": next(errors)}
        net.weight.data.fill_(e.state.metrics["val_mre"])

    saver = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="val_mre",
                            key_metric_filename="model.pt", key_metric_negative_sign=True)
    saver.attach(evaluator)
    trainer = Engine(lambda e, b: None)
    trainer.register_events(*AdversarialPoseEvents)
    RestartModelSelection(evaluator, saver, AdversarialPoseEvents.ADVERSARIAL_STARTED).attach(trainer)
    weight = lambda: torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item()  # noqa: E731
    evaluator.run([0])
    assert weight() == 1.0
    trainer.fire_event(AdversarialPoseEvents.ADVERSARIAL_STARTED)
    assert evaluator.state.best_metric == -1 and evaluator.state.best_metric_epoch == -1
    evaluator.run([0])
    assert weight() == 3.0  # worse than 1.0, written because selection restarted
    evaluator.run([0])
    assert weight() == 2.0  # better than 3.0
