r"""The variational Rényi bound for every α, as a ``pyro.infer.ELBO``.

.. math::
    \mathcal L_\alpha = \frac{1}{1-\alpha} \log \mathbb E_q\!\left[
        \left(\frac{p(\mathcal D, z)}{q(z)}\right)^{1-\alpha} \right],
    \qquad
    \hat{\mathcal L}_\alpha = \frac{1}{1-\alpha} \log \frac1K \sum_{k=1}^K w_k^{1-\alpha}.

Special cases: :math:`\alpha = 1` the ELBO :math:`\frac1K\sum_k \log w_k`, :math:`\alpha = 0` the
importance-weighted bound (IWAE), :math:`\alpha \to -\infty` VR-max :math:`\max_k \log w_k`,
:math:`\alpha \to +\infty` :math:`\min_k \log w_k`. :math:`\mathcal L_\alpha` is non-increasing in
:math:`\alpha`; it is a lower bound on :math:`\log p(\mathcal D)` for :math:`\alpha \ge 0` and lies
on the upper-bound side for :math:`\alpha < 0` (its Monte Carlo estimate is still biased low).

References:
    | Rényi Divergence Variational Inference (Li & Turner, NeurIPS 2016)
    | https://arxiv.org/abs/1602.02311
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from torch import Tensor

from pyro_blr.core import LogWeights, check_model_and_guide, guess_max_plate_nesting, log_weights
from pyro_blr.core.checks import initialized_cuda_devices

__all__ = ["RenyiELBO", "as_alpha", "renyi_bound"]


def as_alpha(alpha: Any) -> float:
    """The Rényi order as a float: a Python or NumPy real number, or a 0-d tensor;
    ``±inf`` allowed.

    Raises:
        ValueError: a bool, NaN, a complex number, a tensor with more than one element, or
            anything else that is not a real number.

    Example:
        >>> import numpy as np, torch
        >>> as_alpha(np.float32(0.5)), as_alpha(torch.tensor(2)), as_alpha(float("-inf"))
        (0.5, 2.0, -inf)
    """
    if torch.is_tensor(alpha):
        if alpha.dim() != 0 or alpha.is_complex() or alpha.dtype == torch.bool:
            raise ValueError(f"alpha must be a real number or +-inf, got {alpha!r}")
        alpha = alpha.item()
    elif hasattr(alpha, "dtype") and getattr(alpha, "shape", None) == ():  # a NumPy scalar
        alpha = alpha.item()
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or math.isnan(alpha):
        raise ValueError(f"alpha must be a real number or +-inf, got {alpha!r}")
    return float(alpha)


def renyi_bound(log_w: Tensor, alpha: float, dim: int = 0) -> Tensor:
    r"""The Monte Carlo Rényi bound :math:`\hat{\mathcal L}_\alpha` along ``dim``.

    Differentiable: its gradient is :math:`\sum_k \bar w_k^{(\alpha)} \nabla \log w_k` with
    self-normalized weights :math:`\bar w^{(\alpha)} \propto w^{1-\alpha}` (one-hot on the
    largest weight for :math:`\alpha = -\infty`, on the smallest for :math:`+\infty`).

    Example:
        >>> import torch
        >>> log_w = torch.tensor([0.0, 1.0, 2.0])
        >>> alphas = (float("-inf"), 0.0, 1.0, float("inf"))
        >>> print(" ".join(f"{float(renyi_bound(log_w, a)):.4f}" for a in alphas))
        2.0000 1.3090 1.0000 0.0000
    """
    if alpha == 1:
        return log_w.mean(dim)
    if alpha == math.inf:
        return log_w.min(dim).values
    if alpha == -math.inf:
        return log_w.max(dim).values
    k = log_w.shape[dim]
    return (torch.logsumexp((1 - alpha) * log_w, dim) - math.log(k)) / (1 - alpha)


class RenyiELBO(ELBO):
    r"""The variational Rényi bound :math:`\mathcal L_\alpha` for every α, as an ELBO for ``SVI``.

    ``differentiable_loss`` returns :math:`-\hat{\mathcal L}_\alpha`; ``loss`` and
    ``loss_and_grads`` are built on it. The guide must be reparameterized (Pyro's autoguides,
    normal flows, this package's guides); a site that is not raises ``ValueError``.

    **Minibatches.** For :math:`\alpha = 1` the estimate is linear in the per-datum terms and
    stays unbiased under ``pyro.plate(subsample_size=B)``. For :math:`\alpha \ne 1` a bound over a
    minibatch is unbiased only when it splits over the data: when every site of the model and the
    guide lies in one plate (local latents), the bound is taken per element,
    :math:`\frac NB\sum_{i\in B} \hat{\mathcal L}_{\alpha,i}`, which estimates the sum of the
    local bounds without bias (and is tighter than a bound on the joint). A subsampled model with
    a global latent, a sequential subsampled plate (``for i in pyro.plate(..., subsample_size=B)``)
    or a second subsampled plate has no such split, and raises ``ValueError`` naming the plate
    rather than return a biased value.

    Args:
        alpha: the order α: any real number (Python, NumPy or a 0-d tensor), ``float("inf")``
            or ``float("-inf")``.
        num_particles: the number :math:`K` of importance samples per estimate.
        max_plate_nesting: the model's plate nesting (guessed from a trace when not given).
        vectorize_particles: draw the particles in one vectorized run (required for α ≠ 1; the
            model must broadcast, as for Pyro's ``vectorize_particles=True``).

    Raises:
        ValueError: ``alpha`` is NaN, a bool or not a real number, ``num_particles < 1``, or
            ``α ≠ 1`` without vectorized particles; when the bound is computed, a discrete
            latent site the guide leaves out and the model does not mark
            ``infer={"enumerate": "parallel"}`` (sites so marked are summed out exactly, as
            ``TraceEnum_ELBO`` sums them), or for ``α ≠ 1`` a subsampled plate the
            bound cannot be split over (see **Minibatches**).

    References:
        | Rényi Divergence Variational Inference (Li & Turner, NeurIPS 2016)
        | https://arxiv.org/abs/1602.02311

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> import pyro_blr as pb
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([0.5, 1.5])
        >>> guide = AutoNormal(model)
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}),
        ...                      pb.RenyiELBO(alpha=0.5, num_particles=8))
        >>> loss = svi.step(y)
    """

    def __init__(
        self,
        alpha: float = 0.0,
        num_particles: int = 2,
        max_plate_nesting: int | float = math.inf,
        vectorize_particles: bool = True,
    ):
        alpha = as_alpha(alpha)
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        if num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        if alpha != 1 and not vectorize_particles:
            raise ValueError(
                f"RenyiELBO(alpha={alpha}) mixes its particles inside a log-mean-exp and needs "
                "vectorize_particles=True"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )
        self.alpha = alpha
        self._checked: dict[tuple[int, int], tuple[str, ...]] = {}

    def _nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
        key = (id(model), id(guide))
        if key not in self._checked:  # once per pair, leaving the draws unchanged
            self._checked[key] = check_model_and_guide(model, guide, args, kwargs, summed=True)
        if self.max_plate_nesting == math.inf:  # a run that leaves the draws as they were
            with torch.random.fork_rng(devices=initialized_cuda_devices()):
                self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        return int(self.max_plate_nesting)

    def _weights(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, num: int
    ) -> LogWeights:
        nesting = self._nesting(model, guide, args, kwargs)
        enumerated = self._checked[(id(model), id(guide))]
        return log_weights(model, guide, args, kwargs, num, nesting, enumerated=enumerated)

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        """One (model, guide) trace pair, as Pyro's ELBOs return it."""
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def bound(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        """The estimate :math:`\\hat{\\mathcal L}_\\alpha` (differentiable), see the class doc."""
        if not self.vectorize_particles:  # alpha == 1: an average of independent ELBOs
            values = [
                self._weights(model, guide, args, kwargs, 1).joint
                for _ in range(self.num_particles)
            ]
            return torch.cat(values).mean()
        weights = self._weights(model, guide, args, kwargs, self.num_particles)
        if self.alpha == 1:
            return weights.joint.mean()
        if weights.local is not None:
            return weights.local_scale * renyi_bound(weights.local, self.alpha).sum()
        if weights.subsampled:
            raise ValueError(self._no_minibatch_estimate(weights))
        return renyi_bound(weights.joint, self.alpha)

    def _no_minibatch_estimate(self, weights: LogWeights) -> str:
        """Why a subsampled model's bound does not split over its minibatch, and the fix."""
        start = (
            f"RenyiELBO(alpha={self.alpha}) has no unbiased minibatch estimate for this model: "
            f"plate {list(weights.subsampled)} is subsampled"
        )
        if weights.outside:
            return (
                f"{start} but latent site(s) {list(weights.outside)} are shared by all data. Use "
                "full-data plates, alpha=1, or put every latent inside the subsampled plate"
            )
        if weights.sequential:
            return (
                f"{start}, and plate {list(weights.sequential)} is sequential (for i in "
                "pyro.plate(...)): its sites share no batch dimension to split the bound over. "
                "Use full-data plates, alpha=1, or a vectorized plate (with pyro.plate(...))"
            )
        return (
            f"{start} but the model's sites do not all lie in one subsampled plate, the only "
            "one the bound can be split over. Use full-data plates, alpha=1, or subsample one "
            "plate that holds every site"
        )

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """The negative bound :math:`-\\hat{\\mathcal L}_\\alpha`, differentiable."""
        loss = -self.bound(model, guide, *args, **kwargs)
        if is_validation_enabled() and not torch.isfinite(loss):
            raise ValueError(f"RenyiELBO(alpha={self.alpha}) loss is {float(loss)}")
        return loss

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negative bound as a float, without gradients."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negative bound; accumulates its gradient into the parameters (for ``SVI``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())
