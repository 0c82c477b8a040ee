"""SCN's recipe and switches: Payer's learnable per-landmark sigmas, SGD with kernel-only weight decay and gradient
clipping (the default train.json), histogram matching to a reference image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from bundle_workflow import bundle_workflow

from monai_ext.data import load_datalist
from monai_ext.transforms import MatchHistogram

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "scn"


def test_learnable_sigma_trains_the_sigmas_with_the_network(tmp_path: Path):
    # Payer's learning rate moves the sigmas by ~1e-7 per step: a larger one shows that they train at all
    wf = bundle_workflow(BUNDLE, ["train.json"], "training", tmp_path, max_epochs=1, batch_size=2, learning_rate=1e-4)
    loss = wf.parser.get_parsed_content("loss")
    optimizer = wf.parser.get_parsed_content("optimizer")
    assert any(p is loss.sigma for group in optimizer.param_groups for p in group["params"])
    before = loss.sigma.detach().clone()
    np.testing.assert_allclose(before.numpy(), 2.5)
    wf.run()
    wf.finalize()
    after = loss.sigma.detach()
    assert after.shape == (wf.parser.get_parsed_content("header")["num_landmarks"],)
    assert not torch.allclose(before, after), "the sigmas did not receive gradients"
    assert torch.isfinite(after).all() and (after > 0).all()
    saved = torch.load(tmp_path / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)
    torch.testing.assert_close(saved["loss"]["sigma"], after)
    assert (tmp_path / "models" / "model.pt").is_file()


def test_histogram_matching_reference_from_a_file_matches_foreground_quantiles(tmp_path: Path):
    wf = bundle_workflow(BUNDLE, ["train.json"], "training", tmp_path, max_epochs=1)
    datalist = Path(wf.parser.get_parsed_content("datalist"))
    items = load_datalist(datalist, "training")
    ref_path, image_path = items[0]["image"], items[1]["image"]
    from monai_ext.data.readers import read_radiograph

    reference, image = read_radiograph(ref_path)[0], read_radiograph(image_path)[0]
    from_file = MatchHistogram(ref_path)
    np.testing.assert_allclose(from_file.reference, MatchHistogram(reference).reference)
    out = np.asarray(from_file(torch.as_tensor(image[None])))[0]
    assert out.shape == image.shape
    # the monotone mapping sends the image's foreground (its own Otsu mask) quantiles onto the reference's
    from skimage.filters import threshold_otsu

    fg = image > threshold_otsu(image)
    levels = np.linspace(0.05, 0.95, 19)
    ref_fg = reference[reference > threshold_otsu(reference)]
    np.testing.assert_allclose(np.quantile(out[fg], levels), np.quantile(ref_fg, levels), atol=0.02 * np.ptp(reference))
    assert not np.allclose(np.quantile(image[fg], levels), np.quantile(ref_fg, levels), atol=0.02 * np.ptp(reference))


def test_payer_optimiser_decays_kernels_only_and_clips_the_gradient(tmp_path: Path):
    from monai_ext.bundle import read_config
    from monai_ext.handlers import GradientNormClipping

    parser = read_config([str(BUNDLE / "configs" / "train.json")], dataset_dir=str(tmp_path / "data"),
                         spatial_size=[64, 64], **{"network_def#local_filters": 8, "network_def#spatial_filters": 8})
    optimizer, network, loss = (parser.get_parsed_content(k) for k in ("optimizer", "network", "loss"))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    assert optimizer.defaults["momentum"] == 0.99 and optimizer.defaults["lr"] == 5e-7
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.002 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert any(p is loss.sigma for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(network.parameters())) + 1
    assert parser.get_parsed_content("batch_size") == 1 and parser.get_parsed_content("heatmap_amplitude") == 100.0
    n_train = len(parser.get_parsed_content("train#datalist"))
    assert parser.get_parsed_content("max_epochs") == -(-30000 // n_train)  # 30000 iterations at batch 1
    handlers = parser.get_parsed_content("train#handlers")
    assert [type(h) for h in handlers] == [GradientNormClipping] and handlers[0].max_norm == 20000.0


def test_histogram_matching_switch_puts_the_match_in_every_pipeline(tmp_path: Path):
    wf = bundle_workflow(BUNDLE, ["train.json"], "training", tmp_path, max_epochs=1, batch_size=2,
                         histogram_matching="True")
    names = lambda compose: [type(t).__name__ for t in compose.transforms]  # noqa: E731
    train, val = wf.parser.get_parsed_content("train#parts#dataset#transform"), wf.parser.get_parsed_content("validate#parts#dataset#transform")
    for pipeline in (train, val):
        n = names(pipeline)
        assert n.index("MatchHistogramd") == n.index("FitToShaped") + 1, n
    reference = wf.parser.get_parsed_content("histogram_reference")
    assert Path(reference).is_file()
    wf.run()  # trains one epoch with the matching on
    wf.finalize()
    assert (tmp_path / "models" / "model.pt").is_file()

    off = bundle_workflow(BUNDLE, ["train.json"], "training", tmp_path / "off", max_epochs=1)
    assert "MatchHistogramd" not in names(off.parser.get_parsed_content("train#parts#dataset#transform"))

    # the trained model records the matching and its reference: inference repeats neither
    inf = bundle_workflow(BUNDLE, ["inference.json"], "inference", tmp_path)
    n = names(inf.parser.get_parsed_content("preprocessing"))
    assert n.index("MatchHistogramd") == n.index("FitToShaped") + 1
    assert inf.parser.get_parsed_content("histogram_reference") == reference
    inf.run()
    assert (tmp_path / "eval" / "inference" / "predictions.json").is_file()
