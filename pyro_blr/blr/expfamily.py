r"""The Bayesian learning rule for ``AutoExpFamily`` guides (rule ``"expfamily"``).

For each site's family, with natural parameters :math:`\lambda`, expectation parameters
:math:`\mu` and :math:`\ell(x) = -\log p(\mathcal D, x) - \log h(x)`,

.. math::
    \lambda \leftarrow (1-\rho)\lambda - \rho\,\nabla_\mu \mathbb E_q[\ell],
    \qquad \nabla_\mu \mathbb E_q[\ell] = F(\lambda)^{-1} \nabla_\lambda \mathbb E_q[\ell],

where :math:`F = \nabla^2 A(\lambda)` is the Fisher information and
:math:`\nabla_\lambda\mathbb E_q[\ell]` is estimated from reparameterized draws. On a conjugate
site :math:`\mathbb E_q[\ell]` is linear in :math:`\mu`, its :math:`\mu`-gradient is minus the
posterior's natural parameter, and :math:`\rho = 1` lands on the exact posterior. A step that
would leave a family's domain is halved until it does not, and the number of halvings is
reported in :attr:`ExpFamilyStepper.halvings`; nothing is clamped.

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023), Section 3
    | https://arxiv.org/abs/2107.04562
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from torch import Tensor

from pyro_blr.core import initialize_guide
from pyro_blr.core import write_param as _write
from pyro_blr.core import (
    PARTICLE_PLATE,
    site_log_probs as _log_prob_terms_pairs,
    sum_per_particle as _sum_per_particle,
    max_plate_nesting,
    trace_without_rng,
)
from pyro_blr.families.expfamily import FAMILIES, ExpFamily

__all__ = ["ExpFamilyStepper", "expfamily_update", "update_sites"]


def expfamily_update(
    family: ExpFamily, eta: Tensor, grad_eta: Tensor, lr: float
) -> tuple[Tensor, int]:
    r"""One BLR step :math:`(1-\rho)\lambda - \rho F^{-1}\nabla_\lambda\mathbb E[\ell]`.

    Returns the new natural parameters and how many times :math:`\rho` was halved to stay in the
    family's domain.

    Example:
        >>> import torch
        >>> from pyro_blr.families import Beta
        >>> family = Beta()
        >>> target = family.natural_params(torch.tensor(3.0), torch.tensor(5.0))
        >>> eta = family.natural_params(torch.tensor(1.0), torch.tensor(1.0))
        >>> grad = -family.fisher(eta) @ target  # E[l] = -<target, mu>: its lambda-gradient
        >>> new, halvings = expfamily_update(family, eta, grad, lr=1.0)
        >>> family.params(new)["concentration1"].item(), halvings
        (3.0, 0)
    """
    step = torch.linalg.solve(family.fisher(eta), grad_eta.unsqueeze(-1)).squeeze(-1)
    for halvings in range(60):
        new = (1 - lr) * eta - lr * step
        if family.in_domain(new).all():
            return new, halvings
        lr = lr / 2
    raise FloatingPointError(f"{family.name}: no step size keeps the natural parameters valid")


def update_sites(
    guide: AutoGuide, families: dict, etas: dict, grads: tuple, lr: float, step_number: int
) -> int:
    """Apply :func:`expfamily_update` to every site and write the guide's parameters.

    All updates are computed (and checked finite) before any parameter is written, so a failure
    leaves the guide as it was. Returns the total number of step halvings.
    """
    updates, total = {}, 0
    for (name, family), grad in zip(families.items(), grads, strict=True):
        if not torch.isfinite(grad).all():
            raise FloatingPointError(
                f"BLR step {step_number}: the gradient is not finite at site '{name}'; "
                "the guide's parameters were left as they were before this step"
            )
        updates[name], halvings = expfamily_update(family, etas[name], grad, lr)
        total += halvings
    for name, eta in updates.items():
        module = getattr(guide.params, name)
        for param, value in families[name].params(eta).items():
            _write(module, param, value.detach())
    return total


class ExpFamilyStepper:
    """Runs :func:`expfamily_update` on every site of an ``AutoExpFamily`` guide.

    Args:
        model: the Pyro model.
        guide: an ``AutoExpFamily`` of ``model``.
        mc_samples: reparameterized draws per step.
    """

    def __init__(self, model: Callable, guide: AutoGuide, mc_samples: int):
        self.model, self.guide, self.mc_samples = model, guide, mc_samples
        self.halvings = 0
        self._nesting = None

    def _setup(self, args: tuple, kwargs: dict) -> None:
        guide = self.guide
        like = initialize_guide(guide, args, kwargs)
        self._nesting = max_plate_nesting(trace_without_rng(self.model, args, kwargs, like))

    def step(self, args: tuple, kwargs: dict, lr: float, step_number: int) -> float:
        if self._nesting is None:
            self._setup(args, kwargs)
        guide, num = self.guide, self.mc_samples
        families = {name: FAMILIES[family] for name, family in guide.family.items()}
        distributions = guide.distributions(*args, **kwargs)
        etas = {n: f.natural_from(distributions[n]).detach() for n, f in families.items()}
        with torch.enable_grad():
            leaves = {n: eta.clone().requires_grad_(True) for n, eta in etas.items()}
            values, log_base = {}, 0.0
            for name, family in families.items():
                site = guide.prototype_trace.nodes[name]
                shape = site["value"].shape
                batch_ndim = len(shape) - site["fn"].event_dim
                pad = (1,) * (self._nesting - batch_ndim)
                draws = family.distribution(leaves[name]).rsample((num,))
                base_measure = family.log_base_measure(draws)
                if base_measure.dim():  # only the LogNormal has one
                    log_base = log_base + base_measure.reshape(num, -1).sum(-1)
                values[name] = draws.reshape((num, *pad, *shape))
            conditioned = poutine.condition(self.model, data=values)
            with pyro.plate(PARTICLE_PLATE, num, dim=-self._nesting - 1):
                trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
            log_joint = sum(
                _sum_per_particle(t, num, self._nesting) for _, t in _log_prob_terms_pairs(trace)
            )
            expected_loss = -(log_joint + log_base).mean()
            grads = torch.autograd.grad(expected_loss, list(leaves.values()))
        entropy = sum(families[n].entropy(etas[n]).sum() for n in families)
        loss = float(expected_loss.detach() - entropy)
        self.halvings += update_sites(guide, families, etas, grads, lr, step_number)
        return loss
