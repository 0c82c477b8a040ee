import pytest
import torch

from monai_ext.networks.hourglass import Hourglass, PreActBottleneck, StackedHourglass


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny(**kwargs) -> StackedHourglass:
    args = dict(spatial_dims=2, in_channels=1, out_channels=3, num_stacks=2, num_features=16, depth=2)
    args.update(kwargs)
    return StackedHourglass(**args)


@pytest.mark.parametrize("stem_stride", [1, 2, 4])
def test_output_shapes_per_stride(stem_stride):
    torch.manual_seed(0)
    net = _tiny(num_stacks=3, stem_stride=stem_stride)
    assert net.output_stride == stem_stride
    x = torch.randn(2, 1, 64, 48)
    out = net(x)
    assert isinstance(out, list) and len(out) == 3
    for o in out:
        assert o.shape == (2, 3, 64 // stem_stride, 48 // stem_stride)
        assert torch.isfinite(o).all()


def test_intermediate_supervision_length_equals_num_stacks():
    for n in (1, 2, 4):
        assert len(_tiny(num_stacks=n, stem_stride=2)(torch.randn(1, 1, 32, 32))) == n


def test_visibility_channels_and_split():
    net = _tiny(predict_visibility=True, stem_stride=2)
    out = net(torch.randn(2, 1, 32, 32))
    assert all(o.shape == (2, 6, 16, 16) for o in out)
    pose, vis = net.split_visibility(out[-1])
    assert pose.shape == vis.shape == (2, 3, 16, 16)
    assert torch.equal(torch.cat([pose, vis], 1), out[-1])
    with pytest.raises(ValueError, match="predict_visibility"):
        _tiny().split_visibility(out[-1])


def test_three_dimensional():
    net = _tiny(spatial_dims=3, num_features=8, stem_stride=2)
    out = net(torch.randn(1, 1, 16, 24, 8))
    assert [o.shape for o in out] == [(1, 3, 8, 12, 4)] * 2


@pytest.mark.parametrize("mode", ["nearest", "linear", "deconv"])
def test_upsample_modes(mode):
    out = _tiny(upsample_mode=mode, stem_stride=1)(torch.randn(1, 1, 16, 16))
    assert out[-1].shape == (1, 3, 16, 16)


def test_bad_arguments_and_input_size():
    with pytest.raises(ValueError, match="stem_stride"):
        _tiny(stem_stride=3)
    with pytest.raises(ValueError, match="num_features"):
        _tiny(num_features=10)
    with pytest.raises(ValueError, match="upsample_mode"):
        _tiny(upsample_mode="cubic")
    with pytest.raises(ValueError, match="multiple of 16"):
        _tiny(stem_stride=4)(torch.randn(1, 1, 64, 40))
    with pytest.raises(ValueError, match="spatial dims"):
        _tiny()(torch.randn(1, 64, 64))


def test_parameter_count_grows_with_num_stacks():
    counts = [_n_params(_tiny(num_stacks=n)) for n in (1, 2, 3)]
    assert counts[0] < counts[1] < counts[2]
    # every additional stack adds the same modules (hourglass, features, head and the two merge convs)
    assert counts[2] - counts[1] == counts[1] - counts[0]


def test_bottleneck_and_hourglass_preserve_shape_and_skip():
    block = PreActBottleneck(2, 4, 8)
    assert block(torch.randn(2, 4, 8, 8)).shape == (2, 8, 8, 8)
    assert isinstance(PreActBottleneck(2, 8, 8).skip, torch.nn.Identity)
    hg = Hourglass(2, 8, depth=3, block=lambda i, o: PreActBottleneck(2, i, o))
    assert hg(torch.randn(1, 8, 16, 8)).shape == (1, 8, 16, 8)


def test_gradients_reach_the_input():
    net = _tiny(stem_stride=2)
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    sum(o.sum() for o in net(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_adam_steps_reduce_loss_with_intermediate_supervision():
    torch.manual_seed(0)
    net = _tiny(stem_stride=2)
    x = torch.randn(2, 1, 32, 32)
    target = torch.zeros(2, 3, 16, 16)
    target[:, 0, 4, 5] = target[:, 1, 10, 3] = target[:, 2, 8, 12] = 1.0
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        return sum(torch.nn.functional.mse_loss(o, target) for o in net(x))

    zero_prediction = 2 * float((target**2).mean())  # what empty heatmaps from both stacks score
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.2 * zero_prediction  # the peaks are learnt, not just an empty map


def test_head_init_starts_from_empty_heatmaps():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    net = _tiny(stem_stride=2)  # default head_init_std=0.001
    for head in net.heads:
        assert torch.all(head.bias == 0)
        assert 0.0005 < float(head.weight.std()) < 0.0015
    assert max(float(o.abs().max()) for o in net(x)) < 0.05
    torch.manual_seed(0)
    default = _tiny(stem_stride=2, head_init_std=None)  # PyTorch's init: heatmap noise of order 0.1-1
    assert max(float(o.abs().max()) for o in default(x)) > 0.1
    # the init does not change the parameters: checkpoints load either way
    net.load_state_dict(default.state_dict())
    with pytest.raises(ValueError, match="head_init_std"):
        _tiny(head_init_std=0.0)
