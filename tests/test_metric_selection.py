"""Key-metric selection by name (monai_ext.metrics.selection): which checkpoint a MONAI evaluator + CheckpointSaver
keep, and adv_posenet's ``key_metric`` switch (hand.json picks the best checkpoint by MRE)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines import SupervisedEvaluator
from monai.engines.utils import default_metric_cmp_fn
from monai.handlers import CheckpointSaver

from monai_ext.metrics import (
    PCK,
    MeanRadialError,
    SuccessfulDetectionRate,
    higher_is_better,
    key_metric_cmp_fn,
    lower_is_better,
    select_metrics,
)

REPO = Path(__file__).resolve().parents[1]
ADV = REPO / "bundles" / "adv_posenet"


def test_select_metrics_by_name():
    metrics = {"a": 1, "b": 2, "c": 3}
    assert select_metrics(metrics, ["b"]) == {"b": 2}
    assert select_metrics(metrics, exclude=["b"]) == {"a": 1, "c": 3}
    assert select_metrics(metrics, ["c", "a"]) == {"a": 1, "c": 3}  # the declaration order
    assert select_metrics(metrics) == metrics
    with pytest.raises(KeyError, match=r"unknown metric name\(s\) \['val_x'\].*\['a', 'b', 'c'\]"):
        select_metrics(metrics, ["val_x"])
    with pytest.raises(KeyError, match="val_y"):
        select_metrics(metrics, exclude=["val_y"])


def test_direction_of_landmark_metrics():
    assert higher_is_better(PCK(10)) and higher_is_better(SuccessfulDetectionRate(2))
    assert not higher_is_better(MeanRadialError())
    assert higher_is_better({"val_pck10": PCK(10)}) and not higher_is_better({"val_mre": MeanRadialError()})
    assert higher_is_better(object())  # MONAI's convention for metrics that do not say
    assert key_metric_cmp_fn({"val_mre": MeanRadialError()}) is lower_is_better
    assert key_metric_cmp_fn(PCK(10)) is default_metric_cmp_fn
    with pytest.raises(ValueError, match="one key metric"):
        higher_is_better({"a": PCK(10), "b": PCK(20)})


class _Tagged(torch.nn.Module):
    """Identity network whose state records the epoch it was saved in."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("epoch", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _best_epoch(key: str, tmp_path: Path, scales: list[float]) -> tuple[int, float]:
    """Validate once per epoch with errors ``5 * scale`` mm (all within 10 mm: PCK@10 = 100 % every epoch), with the
    key metric, cmp fn and CheckpointSaver sign wired as adv_posenet's train.json does; return the epoch in
    model.pt and the evaluator's best metric."""
    gt = torch.tensor([[[10.0, 10.0], [20.0, 30.0]]])
    net = _Tagged()
    metrics = {"val_pck10": PCK(10), "val_mre": MeanRadialError(save_details=False)}
    key_metric = select_metrics(metrics, [key])
    state = {"scale": 1.0}

    def post(d):
        return {**d, "pred_landmarks": d["landmarks"] + state["scale"] * torch.tensor([3.0, 4.0])}

    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=[{"image": torch.zeros(1, 1, 4, 4), "landmarks": gt, "spacing": torch.ones(1, 2)}],
        network=net,
        postprocessing=post,
        key_val_metric=key_metric,
        additional_metrics=select_metrics(metrics, exclude=[key]),
        metric_cmp_fn=key_metric_cmp_fn(key_metric),
    )
    CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_filename="model.pt",
                    key_metric_negative_sign=not higher_is_better(key_metric)).attach(evaluator)
    for epoch, scale in enumerate(scales, start=1):
        state["scale"] = scale
        net.epoch.fill_(epoch)
        evaluator.run(global_epoch=epoch)
        assert evaluator.state.metrics["val_pck10"] == 100.0
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    return int(saved["epoch"]), float(evaluator.state.best_metric)


def test_checkpoint_follows_the_chosen_key_metric(tmp_path):
    scales = [1.0, 0.4, 0.2, 0.6]  # MRE 5, 2, 1, 3 mm
    assert _best_epoch("val_mre", tmp_path / "mre", scales) == (3, pytest.approx(1.0))
    # PCK@10 is 100 % every epoch: a tie never beats the first
    assert _best_epoch("val_pck10", tmp_path / "pck", scales) == (1, 100.0)


@pytest.mark.parametrize(
    "configs, key", [(["train.json"], "val_mre"), (["train.json", "hand.json"], "val_mre"), (["train.json", "pck.json"], "val_pck10")]
)
def test_adv_posenet_key_metric_wiring(configs: list[str], key: str, tmp_path):
    from monai_ext.data.synthetic import generate_dataset

    datalist = generate_dataset("limbs", tmp_path / "data", n_train=1, n_val=1, n_test=0)
    from monai_ext.bundle import read_config

    (tmp_path / "pck.json").write_text('{"key_metric": "val_pck10"}')  # the paper's headline metric, by choice
    files = [str(tmp_path / c) if c == "pck.json" else str(ADV / "configs" / c) for c in configs]
    parser = read_config(files, bundle_root=str(tmp_path), datalist=str(datalist))
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert list(parser.get_parsed_content("validate#parts#key_metric")) == [key]
    assert set(parser.get_parsed_content("validate#parts#additional_metrics")) == {"val_pck10", "val_pck20", "val_mre"} - {key}
    assert evaluator.metric_cmp_fn is (lower_is_better if key == "val_mre" else default_metric_cmp_fn)
    assert parser.get_parsed_content("validate#parts#saver#key_metric_negative_sign") is (key == "val_mre")
    assert parser.get_parsed_content("experiment_params")["key_metric"] == key
    parser.update({"key_metric": "val_nope"})
    parser.parse(True)
    with pytest.raises(RuntimeError) as err:  # MONAI's parser wraps the KeyError of the expression
        parser.get_parsed_content("validate#parts#key_metric")
    assert isinstance(err.value.__cause__, KeyError) and "['val_nope']" in str(err.value.__cause__)
