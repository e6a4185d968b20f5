"""IVON's gradient-only Hessian estimate."""

import torch

from pyro_blr.blr.curvature import reparam_hessian_diagonal


def test_reparam_estimate_is_unbiased_for_the_hessian_diagonal():
    # l(t) = sum_i a_i t_i^2 / 2 + t_0 t_1: the expected estimate is a under any Gaussian.
    # 2e5 draws: each coordinate's estimate has sd a_i * sqrt(2 / 2e5) ~ 0.003 a_i (plus the
    # cross term's), so a 2% tolerance is over six standard errors.
    a = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    loc = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    precision = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    theta = loc + torch.randn(200_000, 3, generator=gen, dtype=torch.float64) * precision.rsqrt()
    grad = a * theta + torch.stack([theta[:, 1], theta[:, 0], 0 * theta[:, 2]], -1)
    estimate = reparam_hessian_diagonal(grad, theta, loc, precision).mean(0)
    torch.testing.assert_close(estimate, a, rtol=0.02, atol=0)
