"""HRNet: output shapes and strides, parallel branches and their fusion, SE blocks, RITM-style interaction maps,
the click-driven hint gate of Kim et al. 2022 and loading pretrained backbone weights."""

from __future__ import annotations

import pytest
import torch

from monai_ext.networks.hrnet import HintSEGate, HRNet, HighResolutionModule, SEBlock, load_backbone_weights


def tiny(**kwargs) -> HRNet:
    args = dict(in_channels=1, out_channels=5, width=4, num_modules=(1, 1, 1, 1), num_blocks=1, stem_channels=8)
    args.update(kwargs)
    return HRNet(**args)


def test_output_shape_full_and_quarter_resolution():
    torch.manual_seed(0)
    net = tiny().eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 96)).shape == (2, 5, 64, 96)
        assert net(torch.randn(1, 1, 37, 51)).shape == (1, 5, 37, 51)  # sizes not divisible by 32
        assert tiny(output_stride=4).eval()(torch.randn(1, 1, 64, 96)).shape == (1, 5, 16, 24)


def test_branches_have_doubling_channels_and_halving_resolution():
    net = tiny(width=6).eval()
    with torch.no_grad():
        feats = net.features(torch.randn(1, 1, 64, 128))
    assert [f.shape[1] for f in feats] == [6, 12, 24, 48]
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 32), (8, 16), (4, 8), (2, 4)]
    assert net.branch_channels == [6, 12, 24, 48]
    assert [len(net.features(torch.randn(1, 1, 32, 32))) for net in (tiny(num_branches=b) for b in (1, 2, 3))] == [1, 2, 3]


def test_fusion_mixes_every_branch_into_every_output():
    torch.manual_seed(0)
    module = HighResolutionModule([4, 8, 16], num_blocks=1, se_reduction=None).eval()
    xs = [torch.randn(1, c, 16 // 2**i, 16 // 2**i, requires_grad=True) for i, c in enumerate([4, 8, 16])]
    outs = module(xs)
    assert [tuple(o.shape) for o in outs] == [tuple(x.shape) for x in xs]
    for i, out in enumerate(outs):
        grads = torch.autograd.grad(out.sum(), xs, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads), f"fused output {i} ignores a branch"


def test_se_block_rescales_channels_and_can_be_disabled():
    torch.manual_seed(0)
    se = SEBlock(8, reduction=4)
    x = torch.randn(2, 8, 5, 5)
    y = se(x)
    ratio = y / x
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5)  # one weight per (sample, channel)
    assert ((ratio > 0) & (ratio < 1)).all()
    n_se = sum(p.numel() for p in tiny(se_reduction=4).parameters())
    n_plain = sum(p.numel() for p in tiny(se_reduction=None).parameters())
    assert n_se > n_plain
    assert not any(isinstance(m, SEBlock) for m in tiny(se_reduction=None).modules())


def test_interaction_maps_are_added_to_the_stem():
    torch.manual_seed(0)
    net = tiny(hint_channels=5).eval()
    image = torch.randn(1, 1, 64, 64)
    maps = torch.zeros(1, 5, 64, 64)
    maps[0, 2, 20:24, 30:34] = 1.0
    with torch.no_grad():
        without = net(torch.cat([image, torch.zeros_like(maps)], 1))
        with_hint = net(torch.cat([image, maps], 1))
    assert not torch.allclose(without, with_hint)
    # the maps enter through a 1x1 conv, LeakyReLU, a 3x3 stride-2 conv and a learnable scale (0.05 at start)
    layers = list(net.maps_transform)
    assert layers[0].kernel_size == (1, 1) and layers[2].kernel_size == (3, 3) and layers[2].stride == (2, 2)
    assert layers[3].scale.item() == pytest.approx(0.05)
    with pytest.raises(ValueError, match="interaction maps"):
        net(image)  # the hint channels are missing


def test_head_starts_near_empty_and_trains():
    torch.manual_seed(0)
    net = tiny(hint_channels=5, head_bias_prior=0.01)
    x = torch.randn(2, 6, 32, 32)
    target = torch.zeros(2, 5, 32, 32)
    target[:, :, 10, 12] = 1.0
    with torch.no_grad():
        assert torch.sigmoid(net.eval()(x)).mean() == pytest.approx(0.01, rel=0.2)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_invalid_arguments():
    with pytest.raises(ValueError):
        tiny(num_branches=5)
    with pytest.raises(ValueError):
        tiny(output_stride=2)
    with pytest.raises(ValueError):
        tiny(num_modules=(1, 1))


def _no_stem_maps(net: HRNet) -> HRNet:
    """Remove the RITM stem fusion's contribution (scale 0), so that only the hint gate can see the maps."""
    with torch.no_grad():
        net.maps_transform[3].scale.zero_()
    return net


def _click(k: int, channels: int, size: int = 64, y: int = 20, x: int = 30) -> torch.Tensor:
    maps = torch.zeros(1, channels, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    maps[0, k] = torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 3.0**2))
    return maps


def _changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-7 * max(1.0, a.abs().max().item())


def test_hint_gate_is_driven_by_every_click_channel():
    torch.manual_seed(0)
    k = 3
    gated = _no_stem_maps(tiny(out_channels=k, hint_channels=k, hint_gate=k, se_reduction=None, head_bias_prior=None)).eval()
    image = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        base = gated(torch.cat([image, torch.zeros(1, k, 64, 64)], 1))
        for c in range(k):
            assert _changed(base, gated(torch.cat([image, _click(c, k)], 1))), f"a click in channel {c} is ignored"
    # control: without the gate (and without the stem fusion) the clicks cannot change the output
    torch.manual_seed(0)
    plain = _no_stem_maps(tiny(out_channels=k, hint_channels=k, hint_gate=0, se_reduction=None, head_bias_prior=None)).eval()
    assert plain.gate is None
    with torch.no_grad():
        assert torch.equal(plain(torch.cat([image, torch.zeros(1, k, 64, 64)], 1)), plain(torch.cat([image, _click(1, k)], 1)))


def test_hint_gate_ignores_the_previous_prediction_channels():
    torch.manual_seed(0)
    k = 3
    net = _no_stem_maps(tiny(out_channels=k, hint_channels=2 * k, hint_gate=k, se_reduction=None, head_bias_prior=None)).eval()
    image = torch.randn(1, 1, 64, 64)
    clicks = _click(0, k)
    previous = torch.rand(1, k, 64, 64)
    with torch.no_grad():
        out = net(torch.cat([image, clicks, torch.zeros_like(previous)], 1))
        assert torch.equal(out, net(torch.cat([image, clicks, previous], 1)))
        assert _changed(out, net(torch.cat([image, torch.zeros_like(clicks), previous], 1)))
    # the gate sees exactly the K click channels: its first convolution takes stage-1 features (256) + K maps
    assert net.gate.encoder[0].in_channels == 256 + k


def test_hint_gate_structure_and_shapes():
    torch.manual_seed(0)
    for hint_channels in (5, 10):  # click maps only, click maps + previous prediction
        net = tiny(hint_channels=hint_channels, hint_gate=5, se_reduction=None).eval()
        with torch.no_grad():
            assert net(torch.randn(2, 1 + hint_channels, 64, 96)).shape == (2, 5, 64, 96)
            assert net(torch.randn(1, 1 + hint_channels, 37, 51)).shape == (1, 5, 37, 51)
            layer1 = net.layer1(torch.randn(2, 8, 16, 24))
            gate = net.gate(layer1, torch.rand(2, 5, 64, 96))
        assert gate.shape == (2, sum(net.branch_channels), 1, 1) and ((gate > 0) & (gate < 1)).all()
        assert net.init_arguments["hint_gate"] == 5
    convs = [m for m in net.gate.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.stride) for c in convs] == [(256, (2, 2)), (256, (1, 1)), (256, (1, 1))]
    assert (net.gate.squeeze.in_channels, net.gate.squeeze.out_channels) == (256, 16)
    assert net.gate.excite.out_channels == sum(net.branch_channels) == 4 + 8 + 16 + 32
    # global max pooling (official ``SE_maxpool: True``): only the per-channel maxima of the encoded maps matter
    gate = HintSEGate(feature_channels=6, hint_channels=2, out_channels=4, hidden=8, reduction=2).eval()
    gate.encoder = torch.nn.Identity()  # look at the pooling alone
    features, hints = torch.randn(1, 6, 6, 6), torch.rand(1, 2, 6, 6)
    spiky = torch.full_like(features, -10.0)
    spiky[..., 2, 3] = features.amax(dim=(2, 3))
    assert torch.allclose(gate(features, hints), gate(spiky, hints))
    assert not torch.allclose(gate(features, hints), gate(features * 0.5, hints))


def test_official_layout_parameter_count():
    gated = HRNet(width=32, hint_channels=136, out_channels=68, hint_gate=68, se_reduction=None)
    plain = HRNet(width=32, hint_channels=136, out_channels=68, se_reduction=None)
    count = lambda n: sum(p.numel() for p in n.parameters())
    gate = (256 + 68) * 256 * 9 + 2 * 256 * 256 * 9 + 3 * 2 * 256 + (256 * 16 + 16) + (16 * 480 + 480)
    assert count(gated) - count(plain) == gate
    assert not any(isinstance(m, SEBlock) for m in gated.modules())


def test_invalid_hint_gate():
    with pytest.raises(ValueError, match="hint_gate"):
        tiny(hint_channels=4, hint_gate=5)
    with pytest.raises(ValueError, match="hint_gate"):
        tiny(hint_channels=0, hint_gate=1)
    with pytest.raises(ValueError, match="hint_gate"):
        tiny(hint_channels=4, hint_gate=-1)


def test_load_backbone_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    source = tiny(hint_channels=5, hint_gate=5, se_reduction=None).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that buffers matter too
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    target = tiny(hint_channels=5, hint_gate=5, se_reduction=None).eval()
    x = torch.randn(1, 6, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(source(x), target(x))
        report = load_backbone_weights(target, path)
        assert torch.equal(source(x), target(x))
    assert report["loaded"] == list(source.state_dict()) and report["skipped"] == [] and report["missing"] == []


def test_load_backbone_weights_partial_and_rgb_stem(tmp_path):
    torch.manual_seed(0)
    net = tiny()
    rgb = torch.randn(8, 3, 3, 3)
    state = {
        "conv1.weight": rgb,  # an RGB stem for a grayscale network
        "bn1.weight": torch.rand(8),
        "bn2.weight": torch.rand(7),  # wrong shape
        "fc.weight": torch.randn(3, 3),  # not in the network
    }
    torch.save(state, tmp_path / "w.pt")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_backbone_weights(net, tmp_path / "w.pt")
    assert report["loaded"] == ["conv1.weight", "bn1.weight"]
    assert report["skipped"] == ["bn2.weight", "fc.weight"]
    assert "bn2.weight" in report["missing"] and "conv1.weight" not in report["missing"]
    assert len(report["missing"]) == len(before) - 2
    assert torch.allclose(net.conv1.weight, rgb.sum(1, keepdim=True))
    assert torch.equal(net.bn1.weight, state["bn1.weight"]) and torch.equal(net.bn2.weight, before["bn2.weight"])
    # summing the RGB stem over its input channels equals feeding the gray image as 3 identical channels
    gray = torch.randn(1, 1, 16, 16)
    assert torch.allclose(
        torch.nn.functional.conv2d(gray.expand(-1, 3, -1, -1), rgb, stride=2, padding=1), net.conv1(gray), atol=1e-5
    )


def test_load_backbone_weights_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone_weights(tiny(), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_backbone_weights(tiny(), tmp_path / "junk.pth")


def test_with_backbone_weights_is_the_config_entry_point(tmp_path):
    from monai_ext.networks import with_backbone_weights

    torch.manual_seed(0)
    source = HRNet(1, 4, hint_channels=8, width=4, num_modules=[1, 1, 1, 1], num_blocks=1, stem_channels=8)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = HRNet(1, 4, hint_channels=8, width=4, num_modules=[1, 1, 1, 1], num_blocks=1, stem_channels=8)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert with_backbone_weights(target, None) is target
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # no file: untouched
    assert with_backbone_weights(target, tmp_path / "w.pt") is target
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
