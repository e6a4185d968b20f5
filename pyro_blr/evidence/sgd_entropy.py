r"""A lower bound on the log evidence from plain (stochastic) gradient descent chains.

Start :math:`r` chains from :math:`q_0 = \mathcal N(m_0, \sigma_0^2 I)` in the model's
unconstrained coordinates and run gradient descent on :math:`\ell = -\log p(\mathcal D, \theta)`,
:math:`\theta_{t+1} = \theta_t - \beta P \nabla\ell(\theta_t)` (:math:`P` an optional
positive-definite preconditioner). The chains' distribution :math:`q_t` has entropy

.. math::
    \mathbb H[q_{t+1}] = \mathbb H[q_t] + \mathbb E_{q_t} \log\lvert\det(I - \beta P
    \nabla^2\ell(\theta_t))\rvert,

so :math:`\mathcal L_t = \mathbb E_{q_t}[\log p(\mathcal D, \theta_t)] + \mathbb H[q_t] \le \log
p(\mathcal D)` is an ELBO of the implicit distribution of SGD's iterates. Its maximum over
:math:`t` is the early-stopping point. The log-determinant is computed exactly (autograd Hessian,
small models) or by the second-order expansion :math:`-\beta\operatorname{tr}(PH) -
\tfrac{\beta^2}{2}\operatorname{tr}((PH)^2)` with Hutchinson probes and Hessian-vector products.
With ``langevin=True`` each step adds :math:`\mathcal N(0, 2\beta T P)` noise, and the entropy
power inequality, :math:`e^{2\mathbb H[X+Y]/D} \ge e^{2\mathbb H[X]/D} + e^{2\mathbb H[Y]/D}`, keeps
the entropy a lower bound (Altieri & Duvenaud 2015).

References:
    | Early Stopping as Nonparametric Variational Inference (Duvenaud, Maclaurin & Adams,
      AISTATS 2016) https://arxiv.org/abs/1504.01344
    | Variational Inference with Gradient Flows (Altieri & Duvenaud, NeurIPS AABI 2015)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.core import hessian_from_grad, latent_layout, neg_log_joint

__all__ = ["SGDEvidence", "sgd_evidence"]


class SGDEvidence(NamedTuple):
    """The entropy-via-optimization bound along the chains.

    Attributes:
        bound: :math:`\\mathcal L_t` for :math:`t = 0, \\dots, T` (a tensor of shape ``(T + 1,)``).
        best: its maximum, a float.
        best_step: where the maximum is reached (the early-stopping point).
    """

    bound: Tensor
    best: float
    best_step: int


def _hvp(grad: Tensor, theta: Tensor, vector: Tensor) -> Tensor:
    (product,) = torch.autograd.grad(grad, theta, grad_outputs=vector, retain_graph=True)
    return product


class _Preconditioner:
    """P = L L^T, a positive vector (diagonal) or a positive-definite matrix."""

    def __init__(self, matrix: Tensor):
        self.diagonal = matrix.dim() == 1
        if self.diagonal:
            if not (matrix > 0).all():
                raise ValueError("a vector preconditioner must be positive")
            self.factor = matrix.sqrt()
        else:
            factor, info = torch.linalg.cholesky_ex(matrix)
            if info != 0:
                raise ValueError("a matrix preconditioner must be positive definite")
            self.factor = factor
        self.log_det = float(
            2 * (self.factor if self.diagonal else self.factor.diagonal()).log().sum()
        )

    def root(self, v: Tensor) -> Tensor:
        """L v for rows v."""
        return self.factor * v if self.diagonal else v @ self.factor.mT

    def root_t(self, v: Tensor) -> Tensor:
        """L^T v for rows v."""
        return self.factor * v if self.diagonal else v @ self.factor

    def apply(self, v: Tensor) -> Tensor:
        """P v for rows v."""
        return self.root(self.root_t(v))


def _log_det_exact(grad: Tensor, theta: Tensor, step_size: float, precond: _Preconditioner):
    """log|det(I - beta P H)| per chain, and the largest |eigenvalue| of beta L^T H L."""
    hess = hessian_from_grad(grad, theta)  # (r, D, D)
    factor = precond.factor if not precond.diagonal else torch.diag(precond.factor)
    scaled = step_size * factor.mT @ hess @ factor  # similar to beta P H
    eye = torch.eye(theta.shape[-1], dtype=theta.dtype, device=theta.device)
    log_det = torch.linalg.slogdet(eye - scaled).logabsdet
    return log_det, torch.linalg.eigvalsh(scaled).abs().amax(-1)


def _log_det_hutchinson(
    grad: Tensor, theta: Tensor, step_size: float, precond: _Preconditioner, num_probes: int
) -> tuple[Tensor, Tensor]:
    """Second-order expansion of log|det(I - beta P H)| per chain, with Rademacher probes
    on the similar matrix B = beta L^T H L: -tr B - tr(B^2)/2."""
    first = theta.new_zeros(theta.shape[0])
    second = theta.new_zeros(theta.shape[0])
    norm_ratio = theta.new_zeros(theta.shape[0])
    for _ in range(num_probes):
        v = torch.randint(0, 2, theta.shape, device=theta.device).to(theta.dtype) * 2 - 1
        bv = step_size * precond.root_t(_hvp(grad, theta, precond.root(v)))
        first = first + (v * bv).sum(-1)
        second = second + bv.square().sum(-1)
        norm_ratio = torch.maximum(norm_ratio, bv.norm(dim=-1) / v.norm(dim=-1))
    return -(first + 0.5 * second) / num_probes, norm_ratio


def sgd_evidence(
    model: Callable,
    *args: Any,
    num_chains: int = 10,
    num_steps: int = 100,
    step_size: float = 1e-3,
    hessian: str = "hutchinson",
    langevin: bool = False,
    temperature: float = 1.0,
    init_loc: Tensor | None = None,
    init_scale: float = 1.0,
    preconditioner: Tensor | None = None,
    num_probes: int = 1,
    **kwargs: Any,
) -> SGDEvidence:
    r"""Run gradient-descent chains and track the entropy-via-optimization bound on
    :math:`\log p(\mathcal D)` (see the module docstring for the maths).

    Args:
        model: the Pyro model (its latent sites are mapped to unconstrained coordinates).
        *args: the model's positional arguments. Minibatch plates give stochastic gradients
            and an unbiased estimate of each :math:`\mathcal L_t`.
        num_chains: the number :math:`r` of chains.
        num_steps: the number :math:`T` of gradient steps.
        step_size: :math:`\beta`.
        hessian: ``"exact"`` (autograd Hessian per chain and step; small models) or
            ``"hutchinson"`` (second-order expansion with Hessian-vector products).
        langevin: add SGLD noise :math:`\mathcal N(0, 2\beta T P)` and the entropy-power bound.
        temperature: :math:`T` for the Langevin noise.
        init_loc: :math:`m_0` (unconstrained, shape ``(D,)``); zeros if not given.
        init_scale: :math:`\sigma_0`.
        preconditioner: :math:`P`, a positive vector (diagonal) or a positive-definite matrix,
            e.g. a BLR fit's posterior variances or covariance; the identity if not given.
        num_probes: Hutchinson probes per chain and step.
        **kwargs: the model's keyword arguments.

    Returns:
        ``SGDEvidence(bound, best, best_step)``.

    Warns:
        UserWarning: when :math:`\beta\lambda_{\max}(P^{1/2} H P^{1/2}) \ge 1` somewhere on the
            chains (the step is not invertible and the bound is invalid), or :math:`\ge 0.5` with
            ``hessian="hutchinson"`` (the expansion is inaccurate).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_blr as pb
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.tensor(0.0), 1.0))
        >>> # q_t = N(0, 9 * 0.9^(2t)) reaches the posterior N(0, 1) near t = 10, where the bound
        >>> # meets log p(D) = 0
        >>> result = pb.sgd_evidence(model, num_chains=1000, num_steps=30, step_size=0.1,
        ...                          hessian="exact", init_scale=3.0)
        >>> -0.1 < result.best < 0.1, 7 <= result.best_step <= 15
        (True, True)
    """
    if hessian not in ("exact", "hutchinson"):
        raise ValueError(f"hessian must be 'exact' or 'hutchinson', got {hessian!r}")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    if not init_scale > 0:
        raise ValueError(f"init_scale must be positive, got {init_scale}")
    with poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    layout = latent_layout(trace, trace)
    like = trace.nodes[layout.sites[0].name]["value"]
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    options = {"dtype": dtype, "device": like.device}
    dim = layout.dim
    loc = torch.zeros(dim, **options) if init_loc is None else init_loc.to(**options)
    precond = _Preconditioner(
        torch.ones(dim, **options) if preconditioner is None else preconditioner.to(**options)
    )

    theta = loc + init_scale * torch.randn(num_chains, dim, **options)
    entropy = 0.5 * dim * math.log(2 * math.pi * math.e * init_scale**2)
    noise_entropy = 0.5 * dim * math.log(2 * math.pi * math.e * 2 * temperature * step_size)
    noise_entropy += 0.5 * precond.log_det
    bounds, worst = [], 0.0
    for t in range(num_steps + 1):
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            values = neg_log_joint(model, layout, theta, args, kwargs)
            (grad,) = torch.autograd.grad(values.sum(), theta, create_graph=t < num_steps)
            bounds.append(float(-values.detach().mean()) + entropy)
            if t == num_steps:
                break
            if hessian == "exact":
                log_det, curvature = _log_det_exact(grad, theta, step_size, precond)
            else:
                log_det, curvature = _log_det_hutchinson(
                    grad, theta, step_size, precond, num_probes
                )
        worst = max(worst, float(curvature.detach().max()))
        entropy += float(log_det.detach().mean())
        theta = theta.detach() - step_size * precond.apply(grad.detach())
        if langevin:
            noise = precond.root(torch.randn_like(theta))
            theta = theta + math.sqrt(2 * temperature * step_size) * noise
            both = torch.tensor([2 * entropy / dim, 2 * noise_entropy / dim], dtype=torch.float64)
            entropy = 0.5 * dim * float(torch.logsumexp(both, 0))
    limit = 1.0 if hessian == "exact" else 0.5
    if worst >= limit:
        warnings.warn(
            f"step_size * largest curvature reached {worst:.3g} (>= {limit}): "
            + (
                "the gradient step is not invertible, so the bound is invalid"
                if worst >= 1
                else "the second-order log-determinant expansion is inaccurate"
            )
            + "; lower step_size",
            stacklevel=2,
        )
    bound = torch.tensor(bounds, **options)
    best_step = int(bound.argmax())
    return SGDEvidence(bound, float(bound[best_step]), best_step)
