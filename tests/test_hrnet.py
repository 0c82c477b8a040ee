"""HRNet: output shapes and strides, parallel branches and their fusion, SE blocks, RITM-style interaction maps."""

from __future__ import annotations

import pytest
import torch

from monai_ext.networks.hrnet import HRNet, HighResolutionModule, SEBlock


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
