r"""The predictive densities of :func:`~pyro_blr.diagnostics.sensitivity.loo_sensitivity`:
:math:`\log p(y_i \mid q)` for Gaussians :math:`q`, in closed form for a quadratic
log-likelihood or by Monte Carlo."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pyro_blr.diagnostics.datum_terms import enumerated_batch, without_validation

__all__ = [
    "MAX_ELEMENTS",
    "is_quadratic",
    "predictive_densities",
    "quadratic_predictive",
    "sampled_predictive",
]

MAX_ELEMENTS = 1 << 22
"""Per-datum log-likelihoods held at once by :func:`sampled_predictive`."""


def is_quadratic(
    log_lik: Callable[[Tensor], Tensor],
    loc: Tensor,
    chol: Tensor,
    value: Tensor,
    grad: Tensor,
    hess: Tensor,
) -> bool:
    """Whether every :math:`\\ell_i` equals its second-order expansion at ``loc`` to round-off,
    on four points one posterior standard deviation away along two fixed directions."""
    dim = loc.shape[0]
    ones = torch.ones(dim, dtype=loc.dtype, device=loc.device)
    alternating = ones.clone()
    alternating[1::2] = -1.0
    directions = torch.stack([ones, alternating, -ones, -alternating]) / math.sqrt(dim)
    steps = torch.linalg.solve_triangular(chol.mT, directions.T, upper=True).T  # ~ N(0, S^-1)
    eps = torch.finfo(loc.dtype).eps
    with torch.no_grad():
        for step in steps:
            linear = grad @ step
            quadratic = 0.5 * (step @ hess @ step)
            expansion = value + linear + quadratic
            actual = log_lik(loc + step)
            scale = value.abs() + linear.abs() + quadratic.abs() + 1.0
            if not bool(((actual - expansion).abs() <= 1e3 * eps * scale).all()):
                return False
    return True


def quadratic_predictive(
    value: Tensor, grad: Tensor, curvature: Tensor, shift: Tensor, precision: Tensor
) -> Tensor:
    r""":math:`\log \int e^{\tilde\ell_i(\theta)}\, \mathcal N(\theta; m + \delta_i, P_i^{-1})\,
    d\theta` for the second-order expansion :math:`\tilde\ell_i` at :math:`m`, per datum."""
    pull = grad + (precision @ shift[..., None])[..., 0]
    joint = precision + curvature
    joint_chol, info = torch.linalg.cholesky_ex(joint)
    if (info != 0).any():
        bad = torch.nonzero(info).flatten()[:5].tolist()
        raise ValueError(
            f"the log-likelihood of datum {bad} curves upward faster than the posterior "
            "narrows (P + H_i is not positive definite): use predictive='sample'"
        )
    solved = torch.cholesky_solve(pull[..., None], joint_chol)[..., 0]
    log_det_joint = 2 * joint_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    log_det = torch.linalg.cholesky(precision).diagonal(dim1=-2, dim2=-1).log().sum(-1) * 2
    penalty = (shift * (precision @ shift[..., None])[..., 0]).sum(-1)
    return value - 0.5 * penalty + 0.5 * (pull * solved).sum(-1) - 0.5 * (log_det_joint - log_det)


def sampled_predictive(
    log_lik: Callable[[Tensor], Tensor],
    means: Tensor,
    precision_chols: Tensor,
    noise: Tensor,
    num_data: int,
    batched: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r""":math:`\log \frac1S \sum_s p(y_i \mid \theta_{is})`, :math:`\theta_{is} = \mu_i +
    C_i^{-\top}\varepsilon_s` for ``K`` Gaussians (``means`` ``(K, D)``, Cholesky factors of their
    precisions ``(K, D, D)``): datum ``i`` under Gaussian ``i`` when ``K = N``, every datum
    under the one Gaussian when ``K = 1`` (then ``(N,)`` is returned as well). ``batched``:
    ``log_lik`` of many draws at once (by default ``vmap`` of it)."""
    num_gaussians = means.shape[0]
    num_samples = noise.shape[0]
    quiet = without_validation(log_lik)
    batched = batched or torch.func.vmap(quiet, randomness="different")
    rows = max(1, MAX_ELEMENTS // (num_samples * num_data))
    out = []
    with torch.no_grad():
        for start in range(0, num_gaussians, rows):
            stop = min(start + rows, num_gaussians)
            offsets = torch.linalg.solve_triangular(
                precision_chols[start:stop].mT, noise.T.expand(stop - start, -1, -1), upper=True
            )  # (B, D, S)
            theta = (means[start:stop, :, None] + offsets).mT.reshape(-1, means.shape[1])
            try:
                values = batched(theta)
            # a model that vmap cannot run (ValueError: the enumerated run, which names the
            # failure): one run per draw, which raises a real error in the model again
            except (RuntimeError, ValueError):
                values = torch.stack([quiet(t) for t in theta])
            values = values.reshape(stop - start, num_samples, num_data)
            if num_gaussians == 1:
                out.append(values[0].logsumexp(0))
            else:
                index = torch.arange(start, stop, device=values.device)
                out.append(values[torch.arange(stop - start), :, index].logsumexp(-1))
    return torch.cat(out) - math.log(num_samples)


def predictive_densities(
    predictive, log_lik, layout, loc, shift, chol, loo_chol, value, grad, hess, curvature,
    precision_matrix, loo_precision, num_samples, num_data, run,
) -> tuple[Tensor, Tensor, str]:  # fmt: skip
    """The in-sample and leave-one-out predictive densities ``(N,)`` of
    :func:`~pyro_blr.diagnostics.sensitivity.loo_sensitivity`, and how they were computed
    (``predictive``: ``"auto"``, ``"quadratic"`` or ``"sample"``; ``run``: the model, the data
    plate's dim, its observed sites, and the model's arguments, for an enumerated model's
    batched runs)."""
    if predictive == "auto":
        quadratic = is_quadratic(log_lik, loc, chol, value, grad, hess)
        predictive = "quadratic" if quadratic else "sample"
    if predictive == "quadratic":
        lpd = quadratic_predictive(value, grad, curvature, torch.zeros_like(shift),
                                   precision_matrix.expand_as(curvature))  # fmt: skip
        loo_lpd = quadratic_predictive(value, grad, curvature, shift, loo_precision)
        return lpd, loo_lpd, predictive
    noise = torch.randn((num_samples, loc.shape[0]), dtype=loc.dtype, device=loc.device)
    batched = None
    if layout.enumerated:  # vmap cannot run the enumeration: a particle plate can
        model, dim, data_sites, args, kwargs = run
        batched = enumerated_batch(model, layout, dim, num_data, data_sites, args, kwargs)
    lpd = sampled_predictive(log_lik, loc[None], chol[None], noise, num_data, batched)
    loo_lpd = sampled_predictive(log_lik, loc + shift, loo_chol, noise, num_data, batched)
    return lpd, loo_lpd, predictive
