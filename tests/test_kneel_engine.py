"""KNEEL workflow pieces: mixup inside the training iteration, stage-2 initialisation from stage-1 weights,
per-group reports, the two-stage batch."""

from __future__ import annotations

import json
import math

import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from ignite.engine import Events
from monai.transforms import RandCoarseDropoutd

from monai_ext.engines import (
    MixupTrainer,
    PrepareLandmarkBatch,
    PrepareTwoStageBatch,
    init_from_checkpoint,
)
from monai_ext.engines.kneel import MixedTarget
from monai_ext.handlers import LandmarkGroupSummaryWriter
from monai_ext.losses import WingLoss
from monai_ext.networks import KneelHourglass
from monai_ext.transforms import LandmarkGroups, Mixup, mixup_loss, two_pass_mixup_loss


class _Constant(torch.nn.Module):
    """Predicts the same points for every image (so the loss of a batch is easy to recompute)."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.points = torch.nn.Parameter(torch.arange(2.0 * k).reshape(k, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.points[None].expand(x.shape[0], -1, -1) + 0.0 * x.mean()


def test_mixup_trainer_mixes_images_and_the_loss_not_the_targets():
    torch.manual_seed(0)
    images = [torch.full((1, 8, 8), float(i)) for i in range(4)]
    targets = torch.rand(4, 3, 2) * 8
    targets[1, 2] = float("nan")  # a missing landmark travels with its image
    data = [{"image": images[i], "landmarks": targets[i]} for i in range(4)]
    net = _Constant()
    seen = {}

    def record(engine):
        seen["output"] = engine.state.output
        seen["batch"] = engine.state.batch

    loss = WingLoss()
    trainer = MixupTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(Dataset(data), batch_size=4, shuffle=False),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
        loss_function=loss,
        prepare_batch=PrepareLandmarkBatch(),
        mixup=Mixup(alpha=0.75, seed=1),
        decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    out = seen["output"]
    label = out["label"]
    assert isinstance(label, MixedTarget) and 0.0 < label.lam < 1.0
    perm, lam = label.perm, label.lam
    torch.testing.assert_close(label.target, targets, equal_nan=True)  # the targets are not mixed...
    expected_images = lam * torch.arange(4.0) + (1 - lam) * perm.float()
    torch.testing.assert_close(out["image"][:, 0, 0, 0], expected_images)  # ...the images are
    pred = net(out["image"]).detach()
    want = lam * loss(pred, targets) + (1 - lam) * loss(pred, targets[perm])
    torch.testing.assert_close(out["loss"], want)
    torch.testing.assert_close(out["loss"], mixup_loss(loss, pred, targets, perm, lam))


def test_two_pass_mixup_sees_the_clean_and_the_mixed_batch():
    """KNEEL's official mixup: lam L(f(x), y) + (1 - lam) L(f(x~), y_perm), one network call on cat([x, x~])."""
    images = [torch.full((1, 8, 8), float(i)) for i in range(4)]
    targets = torch.rand(4, 3, 2) * 8
    data = [{"image": images[i], "landmarks": targets[i]} for i in range(4)]
    net = _Constant()
    seen = {}
    loss = WingLoss()
    trainer = MixupTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=DataLoader(Dataset(data), batch_size=4, shuffle=False),
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.0), loss_function=loss,
        prepare_batch=PrepareLandmarkBatch(), mixup=Mixup(alpha=0.75, seed=1, two_pass=True), decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.update(output=e.state.output))
    trainer.run()
    out = seen["output"]
    label = out["label"]
    assert isinstance(label, MixedTarget) and label.two_pass and 0.0 < label.lam < 1.0
    perm, lam = label.perm, label.lam
    assert out["image"].shape[0] == 8  # the clean batch, then the mixed one
    torch.testing.assert_close(out["image"][:4, 0, 0, 0], torch.arange(4.0))
    torch.testing.assert_close(out["image"][4:, 0, 0, 0], lam * torch.arange(4.0) + (1 - lam) * perm.float())
    pred = net(out["image"]).detach()
    want = lam * loss(pred[:4], targets) + (1 - lam) * loss(pred[4:], targets[perm])
    torch.testing.assert_close(out["loss"], want)
    torch.testing.assert_close(out["loss"], two_pass_mixup_loss(loss, pred, targets, perm, lam))
    with pytest.raises(ValueError, match="2 x 4"):
        two_pass_mixup_loss(loss, pred[:4], targets, perm, lam)


def test_cutout_keeps_landmark_targets():
    d = {"image": MetaTensor(torch.ones(1, 64, 64)), "landmarks": torch.tensor([[10.0, 20.0], [float("nan")] * 2])}
    t = RandCoarseDropoutd("image", holes=1, max_holes=1, spatial_size=(14, 14), max_spatial_size=(20, 20), fill_value=0.0, prob=1.0)
    t.set_random_state(3)
    out = t(dict(d))
    torch.testing.assert_close(out["landmarks"], d["landmarks"], equal_nan=True)
    assert 0.05 - 1e-6 <= float((out["image"] == 0).float().mean()) <= 0.1 + 1e-6  # 5-10 % of the image


def test_stage2_initialised_from_stage1_copies_every_matching_tensor(tmp_path):
    torch.manual_seed(0)
    stage1 = KneelHourglass(2, 1, out_channels=2, base_width=4, depth=2)
    with torch.no_grad():
        for p in stage1.parameters():
            p.add_(1.0)  # distinguishable from a fresh initialisation
    stage1.mixer[1].branches[0][0].running_mean.fill_(0.5)
    path = tmp_path / "model.pt"
    torch.save(stage1.state_dict(), path)
    stage2 = KneelHourglass(2, 1, out_channels=8, base_width=4, depth=2)
    head_before = stage2.head.weight.detach().clone()
    copied, kept = init_from_checkpoint(stage2, path)
    assert sorted(kept) == ["head.bias", "head.weight"]  # K differs: the output layer keeps its initialisation
    s1, s2 = stage1.state_dict(), stage2.state_dict()
    assert set(copied) == set(s2) - {"head.bias", "head.weight"}
    for name in copied:
        torch.testing.assert_close(s2[name], s1[name])  # buffers (BN statistics, beta) included
    torch.testing.assert_close(stage2.head.weight, head_before)

    # a checkpoint saved as {"model": state_dict} loads the same way; a missing one names what to do
    torch.save({"model": stage1.state_dict()}, tmp_path / "wrapped.pt")
    again = KneelHourglass(2, 1, out_channels=8, base_width=4, depth=2)
    assert len(init_from_checkpoint(again, tmp_path / "wrapped.pt")[0]) == len(copied)
    with pytest.raises(FileNotFoundError, match="train stage 1 first"):
        init_from_checkpoint(again, tmp_path / "missing.pt")


def test_group_summary_writer_reports_each_group(tmp_path):
    groups = LandmarkGroups([[0, 1], [2, 3]], names=["right_knee", "left_knee"])
    errors = torch.tensor([[0.5, 1.2, 3.0, float("nan")], [2.0, 4.5, float("inf"), 6.0]])
    writer = LandmarkGroupSummaryWriter(tmp_path, "val_mre", groups, ["a_R", "b_R", "a_L", "b_L"], radii=[1, 2, 5])

    class _State:
        metric_details = {"val_mre": errors}

    class _Engine:
        state = _State()

    writer(_Engine())
    doc = json.loads((tmp_path / "groups.json").read_text())
    right, left = doc["right_knee"], doc["left_knee"]
    assert right["mre"] == pytest.approx((0.5 + 1.2 + 2.0 + 4.5) / 4)
    assert right["sdr"] == {"1": 25.0, "2": 75.0, "5": 100.0}
    assert [e["name"] for e in right["per_landmark"]] == ["a_R", "b_R"]
    # left: one missing ground truth (excluded), one failed detection (a miss, not in the mean)
    assert left["n_points"] == 3 and left["n_failed"] == 1 and left["mre"] == pytest.approx(4.5)
    assert left["sdr"]["5"] == pytest.approx(100.0 / 3)
    with pytest.raises(KeyError, match="val_other"):
        LandmarkGroupSummaryWriter(tmp_path, "val_other", groups)(_Engine())


def test_prepare_two_stage_batch():
    affine = torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.zeros(1, 1, 8, 8), affine=affine)
    original = MetaTensor(torch.zeros(1, 1, 20, 16))
    inputs, target, args, kwargs = PrepareTwoStageBatch()({"image": image, "image_original": original, "landmarks": torch.zeros(1, 4, 2)})
    assert inputs.shape == (1, 1, 8, 8) and target.shape == (1, 4, 2) and args == ()
    assert len(kwargs["originals"]) == 1 and kwargs["originals"][0].shape == (1, 20, 16)
    assert kwargs["affines"].shape == (1, 4, 4) and math.isclose(float(kwargs["affines"][0, 0, 0]), 2.0)
    with pytest.raises(KeyError, match="CopyItemsd"):
        PrepareTwoStageBatch()({"image": image})
    # a batch of originals of different sizes (a list): taken out of the batch, one per image
    two = MetaTensor(torch.zeros(2, 1, 8, 8), affine=affine)
    batch = {"image": two, "image_original": [MetaTensor(torch.zeros(1, 20, 16)), MetaTensor(torch.zeros(1, 9, 7))]}
    _, target, _, kwargs = PrepareTwoStageBatch()(batch)
    assert [tuple(o.shape) for o in kwargs["originals"]] == [(1, 20, 16), (1, 9, 7)] and target is None
    assert "image_original" not in batch and kwargs["affines"].shape == (2, 4, 4)


def test_stage2_must_fit_the_stage1_model_in_training_and_end_to_end(tmp_path):
    """Stage 2 starts from, and is used after, one stage-1 model: landmarks and ROI groups other than the stage-1
    model's record are an error naming them, when stage 2 is built from stage 1 and when the two are used together."""
    from bundle_workflow import save_untrained_model, workflow_files
    from conftest import REPO

    from monai_ext.bundle import ModelConfigMismatch, read_config

    kneel = REPO / "bundles" / "kneel"
    save_untrained_model(kneel, tmp_path)  # stage 1: the default groups (two knees of 8 landmarks)
    other_groups = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    paths = {"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "data")}

    stage2 = read_config(workflow_files(kneel, ["train.json"], "stage2.json"), **paths, roi_groups=other_groups,
                         roi_flip=[False] * 4, roi_group_names=list("abcd"))
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps what an expression raises
        stage2.get_parsed_content("network")
    error = raised.value.__cause__
    assert isinstance(error, ModelConfigMismatch) and "roi_groups" in str(error) and "header" not in str(error)
    assert "train stage 2 with stage 1's datalist" in str(error)
    stage2["roi_groups"] = "%bundles/kneel/configs/train.json#roi_groups"
    stage2["roi_flip"] = "%bundles/kneel/configs/train.json#roi_flip"
    stage2["roi_group_names"] = "%bundles/kneel/configs/train.json#roi_group_names"
    assert stage2.get_parsed_content("network") is not None  # the stage-1 groups: transferred

    # a stage 2 trained for other groups, next to this stage 1: evaluation stops before running
    save_untrained_model(kneel, tmp_path, stage="stage2.json", roi_groups=other_groups, roi_flip=[False] * 4,
                         roi_group_names=list("abcd"))
    evaluate = read_config(workflow_files(kneel, ["evaluate.json"]), **paths)
    with pytest.raises(RuntimeError) as raised:
        for i in range(len(evaluate.get("initialize"))):
            evaluate.get_parsed_content(f"initialize#{i}")
    error = raised.value.__cause__
    assert isinstance(error, ModelConfigMismatch) and "roi_groups" in str(error)
    assert "stage 2 was trained after another stage 1" in str(error)


def test_stage2_validates_end_to_end_like_the_evaluation(tmp_path):
    """Stage 2 selects its checkpoint on what the two models do together: its validator (stage-1 ROI centres from
    the stage-1 model file, this network in the ROIs, the refinement pass) gives the errors of the end-to-end
    evaluation of the same two models on the same images."""
    from bundle_workflow import save_untrained_model, workflow_files
    from conftest import REPO

    from monai_ext.bundle import read_config
    from monai_ext.data.synthetic import generate_dataset

    kneel = REPO / "bundles" / "kneel"
    generate_dataset("knees", tmp_path / "data", n_train=2, n_val=3, n_test=0, seed=3)
    paths = {"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "data")}
    save_untrained_model(kneel, tmp_path)
    stage2_file = save_untrained_model(kneel, tmp_path, stage="stage2.json")
    training = read_config(workflow_files(kneel, ["train.json"], "stage2.json"), **paths)
    training.get_parsed_content("network").load_state_dict(torch.load(stage2_file, weights_only=True)["model"])
    validator = training.get_parsed_content("validate#evaluator")
    validator.run()
    evaluate = read_config(workflow_files(kneel, ["evaluate.json"]), **paths, eval_section="validation")
    for i in range(len(evaluate.get("initialize"))):
        evaluate.get_parsed_content(f"initialize#{i}")
    evaluator = evaluate.get_parsed_content("evaluator")
    evaluator.run()
    during_training = validator.state.metric_details["val_mre"]
    end_to_end = evaluator.state.metric_details["val_mre"]
    assert during_training.shape == end_to_end.shape == (3, 16)
    torch.testing.assert_close(during_training, end_to_end, atol=1e-3, rtol=0)
