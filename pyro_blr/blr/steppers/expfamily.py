r"""The ``"expfamily"`` rule on :class:`pyro_blr.AutoExpFamily` guides.

For each site's family, with natural parameters :math:`\lambda`, expectation parameters
:math:`\mu`, base measure :math:`h` (:math:`q = h\,e^{\langle\lambda, T\rangle - A}`) and
:math:`\ell(x) = -\log p(\mathcal D, x) + \log h(x)` (the ELBO's stationarity
:math:`\lambda = \nabla_\mu\mathbb E_q[\log p - \log h]`), the step is
:func:`pyro_blr.blr.rules.expfamily_update`,

.. math::
    \lambda \leftarrow (1-\rho)\lambda - \rho\,\nabla_\mu \mathbb E_q[\ell],

with :math:`\nabla_\lambda\mathbb E_q[\ell]` estimated from reparameterized draws (implicit
reparameterization for Gamma, Beta, Dirichlet and von Mises) by
:func:`~pyro_blr.blr.steppers.expfamily_estimates.controlled_gradient`.

What holds exactly: where :math:`\ell` is linear in a site's sufficient statistics (a
conjugate site: Normal-Normal, Gamma-Poisson, Beta-Bernoulli, Dirichlet-categorical, von
Mises-von Mises, LogNormal over a Normal likelihood of :math:`\log x`), the estimate of
:math:`\nabla_\mu\mathbb E_q[\ell]` is exact, up to round-off, for every ``mc_samples >= 3``,
so :math:`\rho = 1` lands on the exact posterior in one step and the exact posterior is a fixed
point at every :math:`\rho`. With ``mc_samples <= 2`` (the driver's default is 2) it is plain
reparameterization: unbiased, not exact. Elsewhere the estimate is always unbiased. A site's
natural parameters beyond what its dtype resolves
(:meth:`pyro_blr.families.ExpFamily.check_resolved`: a von Mises concentration above about
:math:`2.6\times10^5` in float32, :math:`1.4\times10^{14}` in float64) are refused with an
error naming the site, before the guide is written.

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023), Section 3
    | https://arxiv.org/abs/2107.04562
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pyro_blr.blr.distributed import rank_stream
from pyro_blr.blr.rules import Estimates, ExpFamilyState
from pyro_blr.blr.steppers.base import KEPT, StepInfo, Stepper, check_state, prepare_layout
from pyro_blr.blr.steppers.expfamily_estimates import (
    controlled_gradient,
    per_draw_leaves,
    statistics_jacobian,
)
from pyro_blr.blr.steppers.signature import signed, unsigned
from pyro_blr.core import log_joint, neg_log_joint
from pyro_blr.guides import AutoExpFamily, AutoMixture

__all__ = ["ExpFamilyStepper", "SiteDraws", "SiteFamiliesStepper"]


class SiteDraws:
    """Reparameterized draws of every site of an exponential-family guide, with what the
    expectations need: the model's log joint, the base measures and the weight-decay penalty.

    Args:
        stepper: the stepper (its model, layout and vectorization).
        draws: site name -> constrained draws ``(S, *site_shape)``.
    """

    def __init__(self, stepper: Stepper, draws: dict[str, Tensor]):
        self.stepper, self.draws = stepper, draws
        self.num = next(iter(draws.values())).shape[0]

    def unconstrained(self) -> Tensor:
        """The draws as particles of the flat unconstrained vector, ``(S, D)``."""
        layout = self.stepper.layout
        blocks = [
            site.transform.inv(self.draws[site.name]).reshape(self.num, -1) for site in layout.sites
        ]
        return torch.cat(blocks, -1)

    def neg_log_target(self, args: tuple, kwargs: dict) -> Tensor:
        r""":math:`-\log p(\mathcal D, x_s) + \log h(x_s) + \tfrac\delta2\lVert\theta_s\rVert^2`,
        shape ``(S,)``."""
        stepper = self.stepper
        layout = stepper.layout
        batch_dims = {s.name: len(s.shape) - s.event_dim for s in layout.sites}
        value = -log_joint(
            stepper.model,
            self.draws,
            batch_dims,
            layout.max_plate_nesting,
            args,
            kwargs,
            stepper.mode,
        )
        for name, family in stepper.families.items():
            base = family.log_base_measure(self.draws[name])
            if base.dim():  # only the LogNormal has one
                value = value + base.reshape(self.num, -1).sum(-1)
        if stepper.opts.weight_decay:
            value = value + 0.5 * stepper.opts.weight_decay * self.unconstrained().square().sum(-1)
        return value

    def non_finite_sites(self, args: tuple, kwargs: dict) -> list[str]:
        """The sites whose log density is not finite at some draw (to name them in errors)."""
        runs = []
        with torch.no_grad():
            theta = self.unconstrained()
            neg_log_joint(
                self.stepper.model, self.stepper.layout, theta, args, kwargs, "loop", runs
            )
        return sorted({name for terms in runs for name, t in terms if not torch.isfinite(t).all()})


class SiteFamiliesStepper(Stepper):
    """What the steppers of exponential-family guides share: the layout, the evaluation mode
    and each site's family, found at the first step."""

    def __init__(self, model, guide, rule, options):
        super().__init__(model, guide, rule, options)
        self.layout, self.mode, self.families = None, None, None

    def _setup(self, args: tuple, kwargs: dict) -> None:
        self.layout, self.mode = prepare_layout(self.model, self.guide, args, kwargs, self.opts)
        self.families = self.guide.site_families()

    def state_dict(self) -> dict[str, Any]:
        """The guide's own (unconstrained) parameters, ``param.<name>`` (bit-exact, where
        natural parameters written back through the families' maps differ by round-off), and
        the model's signature (:mod:`pyro_blr.blr.steppers.signature`)."""
        if self.layout is None:
            return {}
        state = {f"param.{n}": p.detach().clone() for n, p in self.guide.named_parameters()}
        return signed(state, self.layout, self.rule_name, next(iter(self.guide.parameters())))

    def load_state_dict(self, state: dict[str, Any], args: tuple, kwargs: dict) -> None:
        """Write a :meth:`state_dict` into the guide; a checkpoint of another model, rule or
        dtype, or whose natural parameters are not finite or outside a family's domain, is
        refused (``ValueError`` naming what differs) and the guide left as it was."""
        if self.layout is None:
            self._setup(args, kwargs)
        like = next(iter(self.guide.parameters()))
        state = unsigned(state, self.layout, self.rule_name, like)  # before anything is read
        current = dict(self.guide.named_parameters())
        keys = {f"param.{n}" for n in current}
        if set(state) != keys:
            raise ValueError(f"state_dict needs entries {sorted(keys)}, got {sorted(state)}")
        for name, value in current.items():
            check_state(f"param.{name}", state[f"param.{name}"], value.detach())
        old = {name: value.detach().clone() for name, value in current.items()}
        with torch.no_grad():
            for name, value in current.items():
                value.copy_(state[f"param.{name}"])
        for site, eta in self.guide.natural_params().items():
            if not (torch.isfinite(eta).all() and self.families[site].in_domain(eta).all()):
                with torch.no_grad():
                    for name, value in current.items():
                        value.copy_(old[name])
                raise ValueError(
                    f"state_dict holds natural parameters of site '{site}' that are not finite "
                    f"or outside the {self.families[site].name} family's domain"
                )


class ExpFamilyStepper(SiteFamiliesStepper):
    """Runs the ``"expfamily"`` rule on every site of an ``AutoExpFamily`` guide."""

    kind = "expfamily"

    @classmethod
    def accepts(cls, guide: Any, rule: Any) -> bool:
        return isinstance(guide, AutoExpFamily) and not isinstance(guide, AutoMixture)

    distributable = True

    def step(self, args: tuple, kwargs: dict, lr: float, step_number: int) -> StepInfo:
        if self.layout is None:
            self._together(step_number, lambda: self._setup(args, kwargs))
        self._join(step_number, args, kwargs)
        families = self.families
        etas = self.guide.natural_params()
        loss, grads = self._together(
            step_number, lambda: self._estimate(etas, args, kwargs, step_number)
        )
        if self.collective is not None:  # one all-reduce: every rank then takes the same step
            names = list(grads)
            loss, *values = self.collective.mean([loss, *grads.values()])
            grads = dict(zip(names, values, strict=True))
        state = ExpFamilyState(etas, families)
        new, info = self.rule.update(state, Estimates(grads, None, step_number), lr)
        self.guide.set_natural_params(new.natural)
        return StepInfo(float(loss), info.halvings)

    def _estimate(self, etas, args, kwargs, step_number) -> tuple[Tensor, dict[str, Tensor]]:
        r"""This process's estimate of the negative ELBO, the mean of
        :math:`\log q(x_s) - \log p(\mathcal D, x_s)` over the draws (zero variance at the
        exact posterior), and the gradient of :math:`\mathbb E_q[\ell]` in each site's
        natural parameters (:func:`~pyro_blr.blr.steppers.expfamily_estimates.
        controlled_gradient`: exact on a conjugate site)."""
        num, families = self.opts.mc_samples, self.families
        with torch.enable_grad():
            leaves = {n: per_draw_leaves(eta, num) for n, eta in etas.items()}
            with rank_stream(self.collective, next(iter(etas.values())).device):
                draws = {n: f.distribution(leaves[n]).rsample() for n, f in families.items()}
            sample = SiteDraws(self, draws)
            values = sample.neg_log_target(args, kwargs)
            expected_loss = values.mean()
            if not torch.isfinite(expected_loss):
                bad = sample.non_finite_sites(args, kwargs)
                raise FloatingPointError(
                    f"BLR step {step_number}: the log joint is not finite at site(s) {bad}; {KEPT}"
                )
            per_draw = torch.autograd.grad(values.sum(), list(leaves.values()), retain_graph=True)
            grads = {
                n: controlled_gradient(
                    families[n].fisher(etas[n]),
                    d,
                    statistics_jacobian(families[n], draws[n], leaves[n]),
                )
                for n, d in zip(leaves, per_draw, strict=True)
            }
            log_q_over_h = 0.0  # log q - log h = <lambda, T> - A, per draw
            for n, family in families.items():
                value = draws[n].detach()
                terms = family.distribution(etas[n]).log_prob(value) - family.log_base_measure(
                    value
                )
                log_q_over_h = log_q_over_h + terms.reshape(num, -1).sum(-1)
            loss = (values.detach() + log_q_over_h).mean()  # l = -log p + log h
        return loss, grads

    def natural_state(self) -> dict[str, Tensor]:
        return self.guide.natural_params()

    def load_natural_state(self, state: dict[str, Tensor]) -> None:
        self.guide.set_natural_params(state)
