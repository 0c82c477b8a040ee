"""The adv_posenet bundle: its switches (supervised baseline, resume) and the last-stack selection of its outputs.

Files, metadata and a 1-epoch training + inference run are covered for every bundle by ``tests/test_bundles.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import decollate_batch

from bundle_workflow import bundle_workflow

from monai_ext.transforms import SelectLast, SelectLastd

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "adv_posenet"
CONFIGS = BUNDLE / "configs"


# ------------------------------------------------------------------------------------------------
# SelectLastd
# ------------------------------------------------------------------------------------------------


def test_select_last_takes_the_last_output_and_passes_tensors():
    a, b = torch.zeros(2, 3, 4, 8), torch.ones(2, 3, 4, 8)
    assert SelectLast()([a, b]) is b
    assert SelectLast()((a, b)) is b
    assert SelectLast()(a) is a
    with pytest.raises(ValueError, match="empty"):
        SelectLast()([])


def test_select_lastd_after_decollation_and_on_a_batch():
    stacks = [torch.randn(2, 6, 4, 8), torch.randn(2, 6, 4, 8)]
    items = decollate_batch({"pred": stacks, "other": torch.arange(2)})
    assert isinstance(items[0]["pred"], list)  # MONAI keeps the list of stacks per image
    for i, item in enumerate(items):
        out = SelectLastd("pred")(item)
        assert out["pred"].shape == (6, 4, 8)
        torch.testing.assert_close(out["pred"], stacks[-1][i])
        assert out["other"] == i
    batch = SelectLastd("pred")({"pred": stacks})  # decollate=False: the list holds batched tensors
    assert batch["pred"] is stacks[-1]
    single = torch.randn(6, 4, 8)  # a single-output network passes unchanged
    assert SelectLastd("pred")({"pred": single})["pred"] is single
    with pytest.raises(ValueError, match="'pred'"):
        SelectLastd("pred")({"pred": []})
    with pytest.raises(KeyError):
        SelectLastd("pred")({"image": single})


# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------


def test_input_sizes_fit_the_hourglass():
    """Default and quick input sizes are multiples of the hourglass's total stride (a trained model's own size is
    what evaluation and inference use: tests/test_model_config.py)."""
    train = json.loads((CONFIGS / "train.json").read_text())
    multiple = train["network_def"]["stem_stride"] * 2 ** train["network_def"]["depth"]
    for name, recipe in train["recipes"].items():
        assert all(s % multiple == 0 for s in recipe["spatial_size"]), name
    cpu = json.loads((CONFIGS / "cpu.json").read_text())
    assert all(s % multiple == 0 for s in cpu["spatial_size"])
    quick = json.loads((CONFIGS / "quick.json").read_text())
    multiple = train["network_def"]["stem_stride"] * 2 ** quick["network_def#depth"]
    assert all(s % multiple == 0 for s in quick["spatial_size"])


def test_recipe_follows_the_device_and_says_so(caplog: pytest.LogCaptureFixture):
    """``recipe: auto`` trains the authors' recipe on CUDA and the CPU recipe otherwise, with a warning naming both;
    ``--recipe paper`` forces the authors' recipe; values an overlay sets directly win over the recipe's."""
    from monai_ext.bundle import device_recipe

    def parsed(device: str, **overrides):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.json"))
        parser.update({"device": f"$torch.device('{device}')", **overrides})
        return {k: parser.get_parsed_content(k) for k in ("recipe_values", "spatial_size", "max_epochs", "network_def#num_stacks", "max_minutes")}

    recipes = json.loads((CONFIGS / "train.json").read_text())["recipes"]
    with caplog.at_level("WARNING", logger="monai_ext.bundle"):
        cpu = parsed("cpu")
    assert cpu["recipe_values"] == recipes["cpu"] and "'cpu' recipe" in caplog.text and "--recipe paper" in caplog.text
    assert cpu["max_epochs"] == sum(recipes["cpu"][f"{p}_epochs"] for p in ("supervised", "discriminator", "adversarial"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_ext.bundle"):
        paper = parsed("cpu", recipe="paper")
    assert caplog.text == ""
    assert paper["network_def#num_stacks"] == 8 and paper["spatial_size"] == [256, 256] and paper["max_minutes"] is None
    assert device_recipe(recipes, "auto", "cuda:0") == recipes["paper"]  # no CUDA needed to choose by a device name
    assert parsed("cpu", spatial_size=[64, 64])["spatial_size"] == [64, 64]
    with pytest.raises(ValueError, match="unknown recipe 'gpu'"):
        device_recipe(recipes, "gpu", "cpu")


# ------------------------------------------------------------------------------------------------
# training switches, on the quick config with one iteration per epoch
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("limbs") / "data"


def _workflow(tmp: Path, dataset_dir: Path, **overrides) -> ConfigWorkflow:
    return bundle_workflow(BUNDLE, ["train.json"], "training", tmp, dataset_dir=str(dataset_dir),
                           **{"train#trainer#epoch_length": 1, **overrides})


def _params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def _changed(before: list[torch.Tensor], net: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("adversarial", [False, True])
def test_adversarial_switch(adversarial: bool, tmp_path: Path, dataset_dir: Path):
    wf = _workflow(tmp_path, dataset_dir, adversarial=adversarial)
    parser: ConfigParser = wf.parser
    trainer = parser.get_parsed_content("train#trainer")
    generator = parser.get_parsed_content("network")
    pose, conf = trainer.pose_discriminator, trainer.confidence_discriminator
    assert (pose is not None) is adversarial and (conf is not None) is adversarial
    g0 = _params(generator)
    p0, c0 = (_params(pose), _params(conf)) if adversarial else (None, None)

    wf.run()
    out = trainer.state.output
    out = out[0] if isinstance(out, list) else out  # decollated: every item carries the scalar losses
    assert trainer.state.iteration == 1
    assert _changed(g0, generator)
    for key in ("d_P", "d_C", "adv_P", "adv_C"):
        assert (float(out[key]) > 0) is adversarial, key
    if adversarial:
        assert _changed(p0, pose) and _changed(c0, conf)
    else:
        torch.testing.assert_close(out["loss"], out["mse"])
    # the best model is the generator's state dict with the model's record; the resume checkpoint has the
    # discriminators only when used
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert set(state["model"]) == set(generator.state_dict()) and "model_config" in state
    keys = set(torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True))
    assert {"trainer", "model", "optimizer"} <= keys
    assert ({"pose_discriminator", "p_optimizer", "confidence_discriminator", "c_optimizer"} <= keys) is adversarial
    wf.finalize()


def test_resume_continues_from_the_checkpoint(tmp_path: Path, dataset_dir: Path):
    wf = _workflow(tmp_path, dataset_dir)
    wf.run()
    saved = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    wf.finalize()

    wf = _workflow(tmp_path, dataset_dir, resume=True, max_epochs=2)
    trainer = wf.parser.get_parsed_content("train#trainer")
    generator = wf.parser.get_parsed_content("network")
    seen: dict[str, object] = {}

    def first_iteration(engine):
        if "epoch" not in seen:  # after the checkpoint loader (STARTED), before the first update
            seen["epoch"] = engine.state.epoch
            seen["weights"] = {k: v.clone() for k, v in generator.state_dict().items()}

    trainer.add_event_handler(Events.ITERATION_STARTED, first_iteration)
    wf.run()
    assert seen["epoch"] == 2, "training did not continue from the saved epoch"
    assert trainer.state.epoch == 2 and trainer.state.iteration == 2
    for k, v in saved["model"].items():
        torch.testing.assert_close(seen["weights"][k], v)
    wf.finalize()


@pytest.mark.parametrize("value, expected", [("false", False), ("False", False), ("no", False), ("true", True), ("1", True)])
def test_command_line_booleans_switch_the_discriminators(value: str, expected: bool, tmp_path: Path):
    """``--adversarial false`` from a shell or a fire dict arrives as a string: it must not read as ``True``."""
    from monai_ext.bundle import read_config

    parser = read_config([str(CONFIGS / "train.json"), str(CONFIGS / "quick.json")],
                         bundle_root=str(tmp_path), dataset_dir=str(tmp_path / "data"), adversarial=value)
    parser.parse()
    assert (parser.get_parsed_content("pose_discriminator") is not None) is expected
    assert (parser.get_parsed_content("confidence_discriminator") is not None) is expected
    from monai_ext.utils import use_amp

    assert use_amp(value, "cuda") is expected  # the engines' amp switch reads the string the same way
    with pytest.raises(RuntimeError):  # a typo is an error, not a silent True
        parser.update({"adversarial": "flase"})
        parser.parse()
        parser.get_parsed_content("pose_discriminator")
