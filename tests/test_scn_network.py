"""SpatialConfiguration-Net: shapes, H = H_LA * H_SC, 1/8 spatial branch, initialisation, errors, training, export."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai_ext.heatmaps import gaussian_heatmaps
from monai_ext.losses.heatmap import HeatmapMSELoss
from monai_ext.networks.scn import SpatialConfigurationNet


def small_net(**kwargs) -> SpatialConfigurationNet:
    args = dict(spatial_dims=2, in_channels=1, out_channels=3, num_levels=3, local_filters=8, spatial_filters=8,
                spatial_kernel_size=5)
    args.update(kwargs)
    return SpatialConfigurationNet(**args)


def expected_params(cin: int, k: int, levels: int, f: int, lk: int, fs: int, sk: int, dims: int = 2) -> int:
    level0 = cin * f * lk**dims + f + 2 * (f * f * lk**dims + f)
    other = 3 * (f * f * lk**dims + f)
    local_head = f * k * lk**dims + k
    spatial = (k * fs * sk**dims + fs) + 2 * (fs * fs * sk**dims + fs) + (fs * k * sk**dims + k)
    return level0 + (levels - 1) * other + local_head + spatial


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_output_shape_2d_default_architecture():
    torch.manual_seed(0)
    net = SpatialConfigurationNet(2, 1, 4, local_filters=8, spatial_filters=8)  # 4 levels, 5x5, 15x15 at 1/8
    out = net(torch.randn(2, 1, 64, 96))
    assert out.shape == (2, 4, 64, 96)
    assert torch.isfinite(out).all()


def test_output_shape_3d_tiny():
    net = SpatialConfigurationNet(3, 2, 2, num_levels=2, local_filters=4, local_kernel_size=3, spatial_filters=4,
                                  spatial_kernel_size=3, spatial_downsample=4)
    out, local, spatial = net(torch.randn(1, 2, 8, 16, 12), return_components=True)
    assert out.shape == local.shape == spatial.shape == (1, 2, 8, 16, 12)
    assert net.spatial_upsample_mode == "trilinear"  # no tricubic in PyTorch


def test_output_is_local_times_spatial():
    torch.manual_seed(0)
    net = small_net().eval()
    x = torch.randn(2, 1, 64, 64)
    out, local, spatial = net(x, return_components=True)
    assert torch.allclose(out, local * spatial)
    assert torch.equal(net(x), out)
    assert spatial.abs().max() < 1.0  # tanh range
    # the local component is not trivially proportional to the output: H_SC varies in space
    assert spatial.std() > 0


def test_spatial_branch_runs_at_one_eighth():
    net = small_net(num_levels=4)
    seen = {}
    net.spatial_convs.register_forward_hook(lambda m, i, o: seen.update(spatial_in=i[0].shape, spatial_out=o.shape))
    net.spatial_heatmaps.register_forward_hook(lambda m, i, o: seen.update(heat=o.shape))
    net(torch.randn(1, 1, 64, 96))
    assert seen["spatial_in"] == (1, 3, 8, 12)
    assert seen["spatial_out"] == (1, 8, 8, 12)
    assert seen["heat"] == (1, 3, 8, 12)


def test_payer_code_variant_runs_at_one_sixteenth_and_counts_parameters():
    net = small_net(spatial_downsample=16)
    seen = {}
    net.spatial_heatmaps.register_forward_hook(lambda m, i, o: seen.update(heat=o.shape))
    assert net(torch.randn(1, 1, 64, 32)).shape == (1, 3, 64, 32)
    assert seen["heat"] == (1, 3, 4, 2)

    default = SpatialConfigurationNet(2, 1, 19)
    payer = SpatialConfigurationNet(2, 1, 19, local_filters=128, spatial_filters=128, spatial_downsample=16,
                                    spatial_kernel_size=11)
    assert n_params(default) == expected_params(1, 19, 4, 64, 5, 64, 15)
    assert n_params(payer) == expected_params(1, 19, 4, 128, 5, 128, 11)
    assert n_params(payer) > 3 * n_params(default) // 2
    assert payer.spatial_pool.kernel_size == 16
    assert payer.spatial_heatmaps.kernel_size == (11, 11)
    assert payer.levels[0].conv0.out_channels == 128
    assert len(SpatialConfigurationNet(2, 1, 19, num_levels=5).levels) == 5
    assert SpatialConfigurationNet(2, 1, 19, heatmap_kernel_size=3).local_heatmaps.kernel_size == (3, 3)


def test_initialisation():
    torch.manual_seed(0)
    net = SpatialConfigurationNet(2, 1, 5)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 * 3 + 1 + 4
    for m in convs:
        assert torch.count_nonzero(m.bias) == 0
    assert net.local_heatmaps.weight.std() < 2e-4
    assert net.spatial_heatmaps.weight.std() < 2e-4
    hidden = net.levels[1].conv1.weight  # Kaiming: std = sqrt(2 / (1 + 0.1^2) / fan_in)
    fan_in = hidden.shape[1] * hidden[0, 0].numel()
    assert hidden.std().item() == pytest.approx((2 / 1.01 / fan_in) ** 0.5, rel=0.05)


def test_bad_input_size_raises():
    net = small_net(num_levels=4)  # multiple of lcm(8, 8) = 8
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.randn(1, 1, 60, 64))
    with pytest.raises(ValueError, match="multiple of 16"):
        small_net(spatial_downsample=16)(torch.randn(1, 1, 64, 40))
    with pytest.raises(ValueError, match="spatial dims"):
        net(torch.randn(1, 1, 64, 64, 64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(spatial_dims=1), "spatial_dims"),
        (dict(local_kernel_size=4), "local_kernel_size"),
        (dict(spatial_kernel_size=0), "spatial_kernel_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(upsample_mode="bogus"), "upsample mode"),
        (dict(out_channels=0), "out_channels"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_net(**kwargs)


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_upsample_modes(mode):
    net = small_net(upsample_mode=mode, spatial_upsample_mode=mode).eval()
    assert net(torch.randn(1, 1, 32, 64)).shape == (1, 3, 32, 64)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    net = small_net(dropout=0.5)
    x = torch.randn(1, 1, 32, 32)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    net = small_net()
    out = net(torch.randn(2, 1, 64, 64))
    target = gaussian_heatmaps(torch.tensor([[[10.0, 20.0], [30.0, 40.0], [50.0, 5.0]]] * 2), (64, 64), 3.0)
    HeatmapMSELoss()(out, target).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert torch.count_nonzero(p.grad) > 0, name


@pytest.fixture
def one_thread():
    """Small convolutions run several times faster on one thread than on oversubscribed CI cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_steps_reduce_the_loss(one_thread):
    torch.manual_seed(0)
    net = small_net(out_channels=2, dropout=0.0)  # default (Payer) initialisation: output starts almost at zero
    x = torch.randn(1, 1, 64, 64)
    target = gaussian_heatmaps(torch.tensor([[[20.0, 30.0], [44.0, 12.0]]]), (64, 64), 3.0)
    loss_fn = HeatmapMSELoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with torch.no_grad():
        initial = loss_fn(net(x), target).item()
    for _ in range(80):
        opt.zero_grad()
        loss_fn(net(x), target).backward()
        opt.step()
    with torch.no_grad():
        out = net(x)
        final = loss_fn(out, target).item()
    assert final < 0.2 * initial
    # the peaks are learned where the targets are: (x, y) = spatial dims order
    assert tuple(divmod(int(out[0, 0].argmax()), 64)) == (20, 30)


def test_torchscript_trace_and_script():
    torch.manual_seed(0)
    net = small_net().eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        scripted = torch.jit.script(net)
        assert torch.allclose(traced(x), net(x), atol=1e-7)
        x2 = torch.randn(2, 1, 32, 96)  # the traced graph is not specialised to the example size
        assert torch.allclose(traced(x2), net(x2), atol=1e-7)
        assert torch.allclose(scripted(x2), net(x2), atol=1e-7)
        out, local, spatial = scripted(x2, True)
        assert torch.allclose(out, local * spatial)
    with pytest.raises(Exception, match="multiple of"):
        scripted(torch.randn(1, 1, 60, 64))
