from __future__ import annotations

import pytest
import torch

from monai_ext.decoding import SoftArgmax, decode_heatmaps, soft_argmax


def gaussian_heatmaps(shape: tuple[int, ...], centres: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1, K, *shape)`` float64 Gaussians; ``centres`` and ``sigmas`` are ``(K, ndim)`` in index order."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij")
    maps = [
        torch.exp(-sum((g - c[d]) ** 2 / (2 * s[d] ** 2) for d, g in enumerate(grids)))
        for c, s in zip(centres.double(), sigmas.double())
    ]
    return torch.stack(maps)[None]


def random_centres(n: int, shape: tuple[int, ...], margin: float, generator: torch.Generator) -> torch.Tensor:
    size = torch.tensor(shape, dtype=torch.float64) - 1 - 2 * margin
    return margin + torch.rand(n, len(shape), generator=generator, dtype=torch.float64) * size


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def test_axis_order_peak_index_decodes_to_spatial_indices():
    heatmaps = torch.zeros(1, 2, 12, 7)  # W=12 (x), H=7 (y)
    heatmaps[0, 0, 9, 2] = 1.0
    heatmaps[0, 1, 3, 5] = 0.5
    for method in ("argmax", "quadratic", "local_soft_argmax"):
        coords, conf = decode_heatmaps(heatmaps, method)
        assert coords.shape == (1, 2, 2) and conf.shape == (1, 2)
        torch.testing.assert_close(coords[0], torch.tensor([[9.0, 2.0], [3.0, 5.0]]))
        torch.testing.assert_close(conf[0], torch.tensor([1.0, 0.5]))


@pytest.mark.parametrize("shape", [(48, 37), (37, 48)])
@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_subpixel_recovery_anisotropic_images_and_peaks(shape, sigma, gen):
    centres = random_centres(60, shape, margin=2.0, generator=gen)
    sigmas = torch.tensor([[sigma, sigma * 1.3]]).expand(60, 2)
    heatmaps = gaussian_heatmaps(shape, centres, sigmas)
    methods = ("argmax", "quadratic", "local_soft_argmax")
    errors = {m: (decode_heatmaps(heatmaps, m)[0][0] - centres).abs().max().item() for m in methods}
    assert errors["argmax"] <= 0.5 + 1e-9
    assert errors["quadratic"] < 0.1
    assert errors["local_soft_argmax"] < 0.1


def test_quadratic_near_and_on_borders(gen):
    shape = (30, 22)
    # peaks within 1.5 px of every border, including the border pixel itself
    lo = torch.rand(40, 2, generator=gen, dtype=torch.float64) * 1.5
    hi = torch.tensor(shape, dtype=torch.float64) - 1 - torch.rand(40, 2, generator=gen, dtype=torch.float64) * 1.5
    centres = torch.cat([lo, hi, torch.stack([lo[:, 0], hi[:, 1]], -1)])
    heatmaps = gaussian_heatmaps(shape, centres, torch.full_like(centres, 2.5))
    coords, _ = decode_heatmaps(heatmaps, "quadratic")
    assert (coords[0] - centres).abs().max() < 0.1


def test_local_soft_argmax_near_borders(gen):
    shape = (26, 31)
    # the window (5 px) still fits around the argmax: peaks 2-3.5 px from the borders
    lo = 2.0 + torch.rand(30, 2, generator=gen, dtype=torch.float64) * 1.5
    hi = torch.tensor(shape, dtype=torch.float64) - 1 - lo
    centres = torch.cat([lo, hi])
    heatmaps = gaussian_heatmaps(shape, centres, torch.full_like(centres, 2.0))
    coords, _ = decode_heatmaps(heatmaps, "local_soft_argmax", window=5)
    assert (coords[0] - centres).abs().max() < 0.1


def test_quadratic_raw_values_when_not_positive():
    # a paraboloid with non-positive values: the parabola fit on the raw values is exact
    xs, ys = torch.meshgrid(torch.arange(15.0), torch.arange(11.0), indexing="ij")
    heatmaps = (-((xs - 6.3) ** 2) - 2 * (ys - 4.8) ** 2)[None, None]
    coords, _ = decode_heatmaps(heatmaps, "quadratic")
    torch.testing.assert_close(coords[0, 0], torch.tensor([6.3, 4.8]), atol=1e-4, rtol=0)


def test_quadratic_flat_tops():
    heatmaps = torch.zeros(1, 2, 9, 9)
    heatmaps[0, 0, 4, 3:5] = 1.0  # two equal maxima along y: the vertex is between them
    heatmaps[0, 1, 3:6, 4] = 1.0  # a plateau along x: argmax is its first pixel, refined towards the next
    coords, _ = decode_heatmaps(heatmaps, "quadratic")
    torch.testing.assert_close(coords[0], torch.tensor([[4.0, 3.5], [3.5, 4.0]]))
    assert torch.isfinite(coords).all()


def test_constant_and_tiny_heatmaps_are_finite():
    for shape in [(1, 1, 8, 8), (1, 1, 2, 1), (1, 1, 1, 5)]:
        for method in ("argmax", "quadratic", "local_soft_argmax", "soft_argmax"):
            coords, conf = decode_heatmaps(torch.zeros(shape), method)
            assert torch.isfinite(coords).all() and torch.isfinite(conf).all()


def test_batch_and_3d_shapes(gen):
    shape = (14, 17, 12)
    centres = random_centres(6, shape, margin=2.0, generator=gen)
    heatmaps = gaussian_heatmaps(shape, centres, torch.full_like(centres, 2.0)).reshape(2, 3, *shape)
    for method in ("argmax", "quadratic", "local_soft_argmax", "soft_argmax"):
        coords, conf = decode_heatmaps(heatmaps.float(), method, beta=50.0)
        assert coords.shape == (2, 3, 3) and conf.shape == (2, 3)
    coords, conf = decode_heatmaps(heatmaps, "quadratic")
    assert (coords.reshape(6, 3) - centres).abs().max() < 0.1
    heatmaps_2d = torch.rand(4, 5, 10, 13, generator=gen)
    coords, conf = decode_heatmaps(heatmaps_2d, "argmax")
    flat = heatmaps_2d.reshape(4, 5, -1)
    torch.testing.assert_close(conf, flat.max(-1).values)
    torch.testing.assert_close(coords[..., 0] * 13 + coords[..., 1], flat.argmax(-1).float())


def test_soft_argmax_exact_on_symmetric_peak():
    shape = (21, 15)
    heatmaps = gaussian_heatmaps(shape, torch.tensor([[10.0, 7.0]]), torch.tensor([[2.0, 3.0]]))
    for beta in (1.0, 10.0):
        torch.testing.assert_close(soft_argmax(heatmaps, beta)[0, 0], torch.tensor([10.0, 7.0], dtype=torch.float64))
    # an off-centre sharp symmetric peak with a large beta: the background weight vanishes
    logits = torch.full((1, 1, 21, 15), -10.0)
    logits[0, 0, 3:6, 11:14] = 0.0
    logits[0, 0, 4, 12] = 1.0
    torch.testing.assert_close(soft_argmax(logits, beta=30.0)[0, 0], torch.tensor([4.0, 12.0]))


def test_soft_argmax_is_differentiable_and_module_matches():
    logits = torch.randn(2, 3, 9, 11, requires_grad=True)
    head = SoftArgmax(beta=2.0)
    coords = head(logits)
    assert coords.shape == (2, 3, 2)
    torch.testing.assert_close(coords, soft_argmax(logits, 2.0))
    coords.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    decoded, _ = decode_heatmaps(logits, "soft_argmax", beta=2.0)
    assert decoded.requires_grad


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown decoding method"):
        decode_heatmaps(torch.zeros(1, 1, 4, 4), "centroid")
    with pytest.raises(ValueError, match="spatial"):
        decode_heatmaps(torch.zeros(4, 4), "argmax")
    with pytest.raises(ValueError, match="odd"):
        decode_heatmaps(torch.zeros(1, 1, 8, 8), "local_soft_argmax", window=4)


def test_metatensor_and_integer_inputs_give_plain_float_tensors():
    from monai.data import MetaTensor

    heatmaps = torch.zeros(1, 1, 6, 5, dtype=torch.uint8)
    heatmaps[0, 0, 4, 1] = 7
    for data in (heatmaps, MetaTensor(heatmaps.float())):
        for method in ("argmax", "quadratic", "soft_argmax"):
            coords, conf = decode_heatmaps(data, method, beta=100.0)
            assert type(coords) is torch.Tensor and type(conf) is torch.Tensor and coords.is_floating_point()
            torch.testing.assert_close(coords[0, 0], torch.tensor([4.0, 1.0]))
