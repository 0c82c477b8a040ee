import pytest
import torch

from monai_ext.networks.discriminators import ConfidenceDiscriminator, HeatmapEncoder, PoseDiscriminator

K = 3


def _pose(**kwargs) -> PoseDiscriminator:
    args = dict(spatial_dims=2, in_channels=K, out_channels=K, num_features=4, depth=2)
    args.update(kwargs)
    return PoseDiscriminator(**args)


def _conf(**kwargs) -> ConfidenceDiscriminator:
    args = dict(spatial_dims=2, in_channels=K, out_channels=K, num_features=4, depth=2)
    args.update(kwargs)
    return ConfidenceDiscriminator(**args)


@pytest.mark.parametrize("image_size", [16, 64])
def test_pose_discriminator_probabilities(image_size):
    torch.manual_seed(0)
    net = _pose()
    heatmaps, image = torch.rand(2, K, 16, 16), torch.randn(2, 1, image_size, image_size)
    p = net(heatmaps, image)
    assert p.shape == (2, K)
    assert ((p >= 0) & (p <= 1)).all()
    logits = net(heatmaps, image, return_logits=True)
    assert logits.shape == (2, K)
    torch.testing.assert_close(torch.sigmoid(logits), p)


def test_confidence_discriminator_probabilities_and_logits():
    torch.manual_seed(0)
    net = _conf()
    heatmaps = torch.rand(4, K, 16, 12)
    p = net(heatmaps)
    assert p.shape == (4, K) and ((p >= 0) & (p <= 1)).all()
    torch.testing.assert_close(torch.sigmoid(net(heatmaps, return_logits=True)), p)


def test_pose_discriminator_resizes_image_by_area_average():
    torch.manual_seed(0)
    net = _pose().eval()
    heatmaps = torch.rand(1, K, 8, 8)
    fine = torch.randn(1, 1, 32, 32)
    coarse = torch.nn.functional.avg_pool2d(fine, 4)
    torch.testing.assert_close(net(heatmaps, fine), net(heatmaps, coarse))


def test_pose_discriminator_uses_the_image():
    torch.manual_seed(0)
    net = _pose().eval()
    heatmaps = torch.rand(1, K, 16, 16)
    a = net(heatmaps, torch.zeros(1, 1, 16, 16), return_logits=True)
    b = net(heatmaps, torch.randn(1, 1, 16, 16), return_logits=True)
    assert not torch.allclose(a, b)


def test_gradients_flow_to_inputs():
    net_p, net_c = _pose(), _conf()
    heatmaps = torch.rand(2, K, 16, 16, requires_grad=True)
    image = torch.randn(2, 1, 32, 32, requires_grad=True)
    (net_p(heatmaps, image).sum() + net_c(heatmaps).sum()).backward()
    assert heatmaps.grad is not None and heatmaps.grad.abs().sum() > 0
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_visibility_channels_and_3d():
    p = _pose(in_channels=2 * K)(torch.rand(2, 2 * K, 16, 16), torch.randn(2, 1, 16, 16))
    assert p.shape == (2, K)
    c = _conf(spatial_dims=3)(torch.rand(2, K, 8, 8, 8))
    assert c.shape == (2, K)
    p3 = _pose(spatial_dims=3)(torch.rand(2, K, 8, 8, 8), torch.randn(2, 1, 16, 16, 16))
    assert p3.shape == (2, K)


def test_encoder_width_cap_and_any_size():
    enc = HeatmapEncoder(2, 1, 5, num_features=4, depth=4, max_features=8)
    widths = [m.conv.out_channels for m in enc.features]
    assert widths == [4, 8, 8, 8, 8]
    assert enc(torch.randn(2, 1, 33, 17)).shape == (2, 5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="spatial dims"):
        _conf()(torch.rand(2, K, 16))
    with pytest.raises(ValueError, match="image_channels"):
        _pose()(torch.rand(2, K, 16, 16), torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="spatial_dims"):
        _conf(spatial_dims=1)


def test_discriminator_learns_to_separate_real_from_fake():
    torch.manual_seed(0)
    net = _conf()
    real = torch.zeros(8, K, 16, 16)
    real[:, :, 8, 8] = 1.0
    fake = torch.rand(8, K, 16, 16) * 0.2
    x = torch.cat([real, fake])
    y = torch.cat([torch.ones(8, K), torch.zeros(8, K)])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    bce = torch.nn.BCEWithLogitsLoss()
    first = bce(net(x, return_logits=True), y).item()
    for _ in range(20):
        opt.zero_grad()
        loss = bce(net(x, return_logits=True), y)
        loss.backward()
        opt.step()
    assert bce(net(x, return_logits=True), y).item() < 0.5 * first
