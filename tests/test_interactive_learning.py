"""The interactive network learns to use a click for the landmarks that were *not* clicked (model revision).

A synthetic "spine" where the image alone is ambiguous: a column of identical vertebral bodies, of which the ``K``
landmarks are ``K`` consecutive ones starting at a random level (the AASCE failure mode: the right shape one level
off). Without a click the network cannot know the level; one click on the first landmark fixes it, so a network that
reads the click maps must move its *unclicked* predictions onto the right vertebrae. Trained with the bundle's pieces
(HRNet with the hint gate and the previous-prediction channels, the official click counts, iterative rounds, the
BCE/morphology loss) for a few seconds; a network that ignores its hint channels fails the assertion (measured: the
unclicked error stays at the no-click error when the hint channels are zeroed).
"""

from __future__ import annotations

import numpy as np
import torch

from monai_ext.decoding import decode_heatmaps
from monai_ext.engines.interactive import interactive_inputs
from monai_ext.heatmaps import gaussian_heatmaps
from monai_ext.inferers.hints import IterativeHintInferer
from monai_ext.losses import MorphologyAwareHeatmapLoss
from monai_ext.networks import HRNet
from monai_ext.transforms import kim2022_click_count_probabilities

K, LEVELS, SPACING, SIZE, SIGMA = 4, 6, 8.0, (48, 48), 2.0


def ambiguous_spines(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(n, 1, 48, 48)`` with ``LEVELS`` identical bodies every ``SPACING`` px down a column; landmarks
    ``(n, K, 2)`` (x, y) = ``K`` consecutive bodies from a random level."""
    x = torch.rand(n, generator=generator) * 16 + 16
    y0 = torch.rand(n, generator=generator) * 2 + 3
    bodies = torch.stack([x[:, None].expand(n, LEVELS), y0[:, None] + SPACING * torch.arange(LEVELS)], -1)
    image = gaussian_heatmaps(bodies, SIZE, sigma=1.5, amplitude=1.0).amax(1, keepdim=True)
    first = torch.randint(0, LEVELS - K + 1, (n,), generator=generator)
    index = (first[:, None] + torch.arange(K))[..., None].expand(n, K, 2)
    return image, torch.gather(bodies, 1, index)


def random_clicks(points: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Ground-truth clicks on ``n`` random landmarks per sample, ``n`` from the official click-count distribution."""
    p = kim2022_click_count_probabilities()
    hints = torch.full_like(points, float("nan"))
    for b in range(points.shape[0]):
        n = min(int(rng.choice(len(p), p=p)), K)
        chosen = rng.permutation(K)[:n]
        hints[b, chosen] = points[b, chosen]
    return hints


def test_one_click_corrects_the_unclicked_landmarks():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(1)
    net = HRNet(
        1, K, hint_channels=2 * K, hint_gate=K, width=8, num_modules=[1, 1, 1, 1], num_blocks=1, stem_channels=16,
        se_reduction=None,
    )
    inferer = IterativeHintInferer(K, SIGMA, max_rounds=2, seed=0)
    loss_fn = MorphologyAwareHeatmapLoss(None, pos_weight=10.0)
    optimizer = torch.optim.Adam(net.parameters(), 2e-3)
    net.train()
    for _ in range(150):
        image, points = ambiguous_spines(16, generator)
        inputs = interactive_inputs(image, None, K, SIGMA, True)
        logits = inferer(inputs, net, hints=random_clicks(points, rng), landmarks=points)
        target = gaussian_heatmaps(points, SIZE, sigma=SIGMA, amplitude=1.0)
        loss = loss_fn(logits, (target, torch.ones(16, K), points))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    net.eval()
    image, points = ambiguous_spines(64, torch.Generator().manual_seed(99))

    def errors(hints: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            heatmaps = torch.sigmoid(net(interactive_inputs(image, hints, K, SIGMA, True)))
        return torch.linalg.vector_norm(decode_heatmaps(heatmaps, method="argmax")[0] - points, dim=-1)

    no_click = torch.full_like(points, float("nan"))
    one_click = no_click.clone()
    one_click[:, 0] = points[:, 0]
    before, after = errors(no_click)[:, 1:].mean(), errors(one_click)[:, 1:].mean()
    assert before > 0.5 * SPACING, f"the level must be ambiguous without a click (unclicked error {before:.2f} px)"
    # manual revision leaves the unclicked landmarks where they were; model revision must move them to the right level
    assert after < 0.4 * before, f"one click did not correct its unclicked neighbours: {before:.2f} -> {after:.2f} px"
