import math

import pytest
import torch

from monai_ext.networks.kneel import KneelHourglass, MultiScaleResidual, _soft_argmax


def _tiny(**kwargs) -> KneelHourglass:
    args = dict(spatial_dims=2, in_channels=1, out_channels=2, base_width=4, depth=2, stem_stride=4)
    args.update(kwargs)
    return KneelHourglass(**args)


def test_soft_argmax_single_peak_maps_to_input_pixel_centre():
    scores = torch.zeros(1, 2, 8, 6)  # (B, K, x, y) on the heatmap grid, deliberately not square
    scores[0, 0, 5, 2] = 60.0
    scores[0, 1, 0, 5] = 60.0
    coords = _soft_argmax(scores, 1.0, 4.0)
    expected = torch.tensor([[[5.5 * 4 - 0.5, 2.5 * 4 - 0.5], [0.5 * 4 - 0.5, 5.5 * 4 - 0.5]]])
    assert coords.shape == (1, 2, 2)
    torch.testing.assert_close(coords, expected, atol=0.05, rtol=0)


def test_soft_argmax_subpixel_and_stride_one():
    scores = torch.full((1, 1, 10, 10), -30.0)
    scores[0, 0, 3, 7] = scores[0, 0, 4, 7] = 10.0  # two equal cells: midpoint along x
    torch.testing.assert_close(_soft_argmax(scores, 1.0, 1.0), torch.tensor([[[3.5, 7.0]]]), atol=0.05, rtol=0)

    cx, cy, sigma = 6.3, 4.8, 1.5  # discrete Gaussian log-density: its softmax mean is the continuous centre
    u = torch.arange(16.0)[:, None]
    v = torch.arange(12.0)[None, :]
    gauss = -((u - cx) ** 2 + (v - cy) ** 2) / (2 * sigma**2)
    coords = _soft_argmax(gauss[None, None] / 2.0, 2.0, 2.0)  # beta undoes the scaling
    expected = torch.tensor([[[(cx + 0.5) * 2 - 0.5, (cy + 0.5) * 2 - 0.5]]])
    torch.testing.assert_close(coords, expected, atol=0.05, rtol=0)


def test_soft_argmax_uniform_is_image_centre_3d():
    coords = _soft_argmax(torch.zeros(2, 3, 4, 6, 2), 1.0, 4.0)
    torch.testing.assert_close(coords, torch.tensor([7.5, 11.5, 3.5]).expand(2, 3, 3))


def test_output_shape_and_input_pixel_units():
    net = _tiny().eval()
    # uniform heatmaps -> expectation is the centre of the input, ((W - 1) / 2, (H - 1) / 2) in input pixels
    torch.nn.init.zeros_(net.head.weight)
    torch.nn.init.zeros_(net.head.bias)
    coords = net(torch.randn(3, 1, 64, 32))
    assert coords.shape == (3, 2, 2)
    torch.testing.assert_close(coords, torch.tensor([31.5, 15.5]).expand(3, 2, 2))


@pytest.mark.parametrize("stem_stride", [1, 2, 4])
def test_return_heatmaps_and_output_stride(stem_stride):
    net = _tiny(stem_stride=stem_stride, return_heatmaps=True).eval()
    assert net.output_stride == stem_stride
    x = torch.randn(1, 1, 32, 48)
    coords, scores = net(x)
    assert scores.shape == (1, 2, 32 // stem_stride, 48 // stem_stride)
    torch.testing.assert_close(coords, _soft_argmax(scores, net.beta, float(stem_stride)))
    assert (coords >= -0.5).all() and (coords[..., 0] <= 31.5).all() and (coords[..., 1] <= 47.5).all()


def test_dropout2d_present_and_inactive_in_eval():
    torch.manual_seed(0)
    net = _tiny()
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert len(drops) == 2 and all(m.p == 0.25 for m in drops)
    x = torch.randn(2, 1, 32, 32)
    net.eval()
    torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)
    net.train()
    assert not torch.allclose(net(x), net(x))


def test_torch_jit_trace():
    torch.manual_seed(0)
    net = _tiny().eval()
    traced = torch.jit.trace(net, torch.randn(1, 1, 32, 32))
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(traced(x), net(x))

    net_hm = _tiny(return_heatmaps=True).eval()
    traced_hm = torch.jit.trace(net_hm, torch.randn(1, 1, 32, 32))
    for a, b in zip(traced_hm(x), net_hm(x)):
        torch.testing.assert_close(a, b)


def test_beta_fixed_or_learnable():
    fixed = _tiny(beta=2.0)
    assert "log_beta" not in dict(fixed.named_parameters())
    assert math.isclose(fixed.beta.item(), 2.0, rel_tol=1e-6)
    learn = _tiny(learnable_beta=True)
    learn(torch.randn(1, 1, 32, 32)).sum().backward()
    assert learn.log_beta.grad is not None
    with pytest.raises(ValueError, match="beta"):
        _tiny(beta=0.0)


def test_multiscale_residual_widths_and_skip():
    block = MultiScaleResidual(2, 8, 24)
    assert [b[-1].out_channels for b in block.branches] == [12, 6, 6]
    assert block(torch.randn(2, 8, 8, 8)).shape == (2, 24, 8, 8)
    odd = MultiScaleResidual(2, 10, 10)
    assert isinstance(odd.skip, torch.nn.Identity)
    assert odd(torch.randn(1, 10, 4, 4)).shape == (1, 10, 4, 4)


def test_three_dimensional_and_bad_size():
    net = _tiny(spatial_dims=3, stem_stride=2, depth=1).eval()
    assert net(torch.randn(1, 1, 8, 12, 4)).shape == (1, 2, 3)
    with pytest.raises(ValueError, match="multiple of 16"):
        _tiny()(torch.randn(1, 1, 32, 40))


def test_gradients_and_adam_steps_reduce_coordinate_loss():
    torch.manual_seed(0)
    net = _tiny(dropout=0.0)
    x = torch.randn(2, 1, 32, 32, requires_grad=True)
    target = torch.tensor([[[8.0, 20.0], [25.0, 5.0]], [[12.0, 12.0], [3.0, 28.0]]])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = torch.nn.functional.l1_loss(net(x), target)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    first = loss.item()
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.l1_loss(net(x), target)
        loss.backward()
        opt.step()
    assert torch.nn.functional.l1_loss(net(x), target).item() < 0.5 * first
