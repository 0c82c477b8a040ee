"""GradientNormClipping: the global gradient norm is at most max_norm when the optimizer steps."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer

from monai_ext.handlers import GradientNormClipping
from monai_ext.optimizers import epochs_for_iterations, kernel_weight_decay_groups


def _trainer(max_norm: float):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 1, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the step keeps the weights, the gradients stay readable
    data = [{"image": torch.randn(2, 1, 8, 8), "label": 100.0 * torch.randn(2, 1, 8, 8)}]
    trainer = SupervisedTrainer(torch.device("cpu"), 1, data, net, opt, torch.nn.MSELoss(reduction="sum"))
    clip = GradientNormClipping(max_norm)
    clip.attach(trainer)
    return trainer, net, clip


def test_the_gradient_norm_is_clipped_before_the_step():
    trainer, net, clip = _trainer(1.0)
    trainer.run()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert clip.last_norm > 100.0  # the norm before clipping, returned by clip_grad_norm_
    assert float(norm) == pytest.approx(1.0, rel=1e-4)


def test_a_norm_below_max_is_untouched_and_bad_max_is_an_error():
    trainer, net, clip = _trainer(1e12)
    trainer.run()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert float(norm) == pytest.approx(clip.last_norm, rel=1e-5)
    with pytest.raises(ValueError, match="max_norm"):
        GradientNormClipping(0.0)


def test_kernel_weight_decay_groups_and_epochs_for_iterations():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 1, 1))
    sigma = torch.nn.Parameter(torch.ones(3))
    decayed, plain = kernel_weight_decay_groups(net, 0.01, [sigma])
    assert decayed["weight_decay"] == 0.01 and [p.shape for p in decayed["params"]] == [(4, 1, 3, 3), (1, 4, 1, 1)]
    assert plain["weight_decay"] == 0.0 and [p.shape for p in plain["params"]] == [(4,), (1,), (3,)]
    assert epochs_for_iterations(30000, 79, 1) == 380
    assert epochs_for_iterations(100, 10, 4) == 34  # 3 steps per epoch (last batch partial)
    with pytest.raises(ValueError):
        epochs_for_iterations(10, 0, 1)
