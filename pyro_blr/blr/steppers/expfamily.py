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

import warnings
from typing import Any

import torch
from torch import Tensor

from pyro_blr.blr.distributed import rank_stream
from pyro_blr.blr.rules import Estimates, ExpFamilyState
from pyro_blr.blr.steppers.base import KEPT, Stepper, prepare_layout
from pyro_blr.blr.steppers.expfamily_estimates import (
    controlled_gradient,
    per_draw_leaves,
    relaxed_gradient,
    relaxed_simplex_gradient,
    statistics_jacobian,
)
from pyro_blr.blr.steppers.expfamily_relaxed import check_relaxed_model
from pyro_blr.blr.steppers.rule_state import RuleStateStepper
from pyro_blr.core import initialize_guide, log_joint, neg_log_joint
from pyro_blr.families.relaxation import relax_binary_sites
from pyro_blr.guides import AutoExpFamily, AutoMixture

__all__ = ["FEW_DRAWS", "ExpFamilyStepper", "SiteDraws", "SiteFamiliesStepper"]

FEW_DRAWS = 100
"""Below this ``mc_samples`` a fit with binary sites warns (see
:func:`~pyro_blr.blr.steppers.expfamily_estimates.relaxed_gradient`)."""


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

    def continuous_unconstrained(self) -> Tensor:
        """The unconstrained values of the continuous sites only, ``(S, D')`` (a binary site's
        relaxed value has no unconstrained value to penalize)."""
        families = self.stepper.families
        blocks = [
            site.transform.inv(self.draws[site.name]).reshape(self.num, -1)
            for site in self.stepper.layout.sites
            if not families[site.name].discrete
        ]
        return torch.cat(blocks, -1) if blocks else self.unconstrained()[:, :0]

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
            enumerated=bool(layout.enumerated),  # summed out per draw, as TraceEnum_ELBO does
        )
        for name, family in stepper.families.items():
            base = family.log_base_measure(self.draws[name])
            if base.dim():  # only the LogNormal has one
                value = value + base.reshape(self.num, -1).sum(-1)
        if stepper.opts.weight_decay:
            penalty = self.continuous_unconstrained().square().sum(-1)
            value = value + 0.5 * stepper.opts.weight_decay * penalty
        return value

    def non_finite_sites(self, args: tuple, kwargs: dict, rows: Tensor | None = None) -> list[str]:
        """The sites whose log density is not finite at some draw (of ``rows``, a boolean mask
        of the draws, if given), to name them in errors."""
        runs = []
        with torch.no_grad():
            theta = self.unconstrained()
            if rows is not None:
                theta = theta[rows]
            neg_log_joint(
                self.stepper.model, self.stepper.layout, theta, args, kwargs, "loop", runs
            )
        return sorted({name for terms in runs for name, t in terms if not torch.isfinite(t).all()})


class SiteFamiliesStepper(RuleStateStepper):
    """What the steppers of exponential-family guides share: the layout, the evaluation mode
    and each site's family (found at the first step, and recorded in checkpoints)."""

    per_component = False
    """Whether the natural parameters have a leading axis of mixture components."""

    def __init__(self, model, guide, rule, options):
        super().__init__(model, guide, rule, options)
        self.families = None

    def _setup(self, args: tuple, kwargs: dict) -> None:
        self.layout, self.mode = prepare_layout(self.model, self.guide, args, kwargs, self.opts)
        self.families = self.guide.site_families()

    def _structure(self) -> dict[str, Any]:
        return {"families": {name: family.name for name, family in self.families.items()}}

    def _check_natural(self, natural: dict[str, Tensor], key: str = "natural.") -> None:
        """Refuse natural parameters that are outside their family's domain, naming the
        state_dict entry."""
        for name, eta in natural.items():
            if not self.families[name].in_domain(eta).all():
                raise ValueError(
                    f"state_dict entry '{key}{name}' holds natural parameters outside the "
                    f"{self.families[name].name} family's domain; nothing was changed"
                )

    @torch.no_grad()
    def _finite_at(self, state: Any, args: tuple, kwargs: dict) -> bool:
        """Whether the log joint is finite at every site's mean (one point per component)."""
        try:
            means = {n: self.families[n].distribution(e).mean for n, e in state.natural.items()}
        except NotImplementedError:  # a family without a mean: take the state as finite
            return True
        if not self.per_component:  # one point: a batch of one draw
            means = {n: m.unsqueeze(0) for n, m in means.items()}
        return bool(torch.isfinite(SiteDraws(self, means).neg_log_target(args, kwargs)).all())


class ExpFamilyStepper(SiteFamiliesStepper):
    """Runs the ``"expfamily"`` rule on every site of an ``AutoExpFamily`` guide.

    Bernoulli sites (binary latents) and OneHotCategorical sites (one-hot latents) are
    differentiated on the Gumbel-softmax relaxation at the rule's ``temperature``: the model is
    run with them in :math:`[0, 1]` or on the simplex
    (:func:`pyro_blr.families.relaxation.relax_binary_sites`), after
    :func:`~pyro_blr.blr.steppers.expfamily_relaxed.check_relaxed_model` has checked that it is
    defined and differentiable there.
    """

    kind = "expfamily"

    def __init__(self, model, guide, rule, options):
        super().__init__(model, guide, rule, options)
        self.written_model = model  # the model as written; self.model may relax binary sites
        self.temperature = float(getattr(rule, "temperature", 1.0))

    def _setup(self, args: tuple, kwargs: dict) -> None:
        initialize_guide(self.guide, args, kwargs)
        families = self.guide.site_families()
        discrete = [n for n, f in families.items() if f.discrete]
        self.model = self.written_model
        if discrete:
            self.model = relax_binary_sites(self.written_model, discrete)
            median = self.guide.median(*args, **kwargs)
            check_relaxed_model(self.model, median, discrete, args, kwargs)
            if self.opts.mc_samples < FEW_DRAWS:
                kind = (
                    "binary"
                    if all(families[n].name == "bernoulli" for n in discrete)
                    else "discrete"
                )
                warnings.warn(
                    f"{kind} site(s) {discrete} with mc_samples={self.opts.mc_samples}: their "
                    "relaxed gradient is a ratio over the draws, biased at few draws toward "
                    "probabilities nearer 1/2 (on a 4-indicator regression at temperature 0.03, "
                    "probabilities off by up to 0.14 at mc_samples=2, 0.03 at 100, 0.004 at "
                    "1000): pass "
                    f"pb.ExpFamilyRule(mc_samples={FEW_DRAWS}, ...) or more",
                    stacklevel=2,
                )
        super()._setup(args, kwargs)

    @classmethod
    def accepts(cls, guide: Any, rule: Any) -> bool:
        return isinstance(guide, AutoExpFamily) and not isinstance(guide, AutoMixture)

    def _read(self) -> ExpFamilyState:
        return ExpFamilyState(self.guide.natural_params(), self.families)

    def _write_guide(self, state: ExpFamilyState) -> None:
        self.guide.set_natural_params(state.natural)

    def _tensors(self, state: ExpFamilyState) -> dict[str, Tensor]:
        return {f"natural.{name}": eta for name, eta in state.natural.items()}

    def _from_tensors(self, tensors: dict[str, Tensor]) -> ExpFamilyState:
        return ExpFamilyState({n: tensors[f"natural.{n}"] for n in self.families}, self.families)

    def _check_loaded(self, state: ExpFamilyState) -> None:
        self._check_natural(state.natural)

    def _natural(self, state: ExpFamilyState) -> dict[str, Tensor]:
        return dict(state.natural)

    def _from_natural(self, natural: dict[str, Tensor]) -> ExpFamilyState:
        return ExpFamilyState(dict(natural), self.families)

    def _estimate(self, state, args, kwargs, step_number) -> tuple[Tensor, Estimates]:
        r"""This process's estimate of the negative ELBO, the mean of
        :math:`\log q(x_s) - \log p(\mathcal D, x_s)` over the draws (zero variance at the
        exact posterior), and the gradient of :math:`\mathbb E_q[\ell]` in each site's
        natural parameters (:func:`~pyro_blr.blr.steppers.expfamily_estimates.
        controlled_gradient`: exact on a conjugate site)."""
        num, families, etas = self.opts.mc_samples, self.families, state.natural
        with torch.enable_grad():
            leaves = {n: per_draw_leaves(eta, num) for n, eta in etas.items()}
            log_weights, one_hot = {}, set()
            with rank_stream(self.collective, next(iter(etas.values())).device):
                draws = {}
                for n, family in families.items():
                    if not family.discrete:
                        draws[n] = family.distribution(leaves[n]).rsample()
                        continue
                    expanded = etas[n].expand(num, *etas[n].shape)
                    relaxed, log_w = family.relaxed_draws(expanded, self.temperature)
                    if relaxed.dim() == expanded.dim():  # outcomes in the last dimension
                        one_hot.add(n)
                    log_weights[n] = log_w.detach()
                    leaves[n] = draws[n] = relaxed.detach().requires_grad_(True)
            sample = SiteDraws(self, draws)
            values = sample.neg_log_target(args, kwargs)
            expected_loss = values.mean()
            if not torch.isfinite(expected_loss):
                bad = sample.non_finite_sites(args, kwargs)
                raise FloatingPointError(
                    f"BLR step {step_number}: the log joint is not finite at site(s) {bad}; {KEPT}"
                )
            per_draw = torch.autograd.grad(values.sum(), list(leaves.values()), retain_graph=True)
            grads = {}
            for n, d in zip(leaves, per_draw, strict=True):
                fisher = families[n].fisher(etas[n])
                if n in one_hot:  # d: the slope in the relaxed value
                    probs = families[n].distribution(etas[n]).probs
                    grads[n] = relaxed_simplex_gradient(probs, d, log_weights[n])
                elif n in log_weights:
                    grads[n] = relaxed_gradient(fisher, d, log_weights[n])
                else:
                    jacobian = statistics_jacobian(families[n], draws[n], leaves[n])
                    grads[n] = controlled_gradient(fisher, d, jacobian)
            if log_weights:  # the loss at exact draws
                draws = {
                    n: _exact_draws(d, log_weights[n], n in one_hot) if n in log_weights else d
                    for n, d in draws.items()
                }
                with torch.no_grad():
                    values = SiteDraws(self, draws).neg_log_target(args, kwargs)
            log_q_over_h = 0.0  # log q - log h = <lambda, T> - A, per draw
            for n, family in families.items():
                value = draws[n].detach()
                terms = family.distribution(etas[n]).log_prob(value) - family.log_base_measure(
                    value
                )
                log_q_over_h = log_q_over_h + terms.reshape(num, -1).sum(-1)
            loss = (values.detach() + log_q_over_h).mean()  # l = -log p + log h
        return loss, Estimates(grads, None, step_number)


def _exact_draws(relaxed: Tensor, log_weights: Tensor, one_hot: bool) -> Tensor:
    """The exact discrete draws behind relaxed ones: a binary draw rounded at 1/2, a one-hot
    draw the argmax of its logarithm (the Gumbel-max trick)."""
    if one_hot:
        index = log_weights.argmax(-1)
        return torch.nn.functional.one_hot(index, relaxed.shape[-1]).to(relaxed.dtype)
    return (relaxed.detach() > 0.5).to(relaxed.dtype)
