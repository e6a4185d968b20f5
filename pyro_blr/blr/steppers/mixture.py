r"""The ``"mixture"`` rule on :class:`pyro_blr.AutoMixture` guides (Lin, Khan & Schmidt 2019).

With :math:`h(z) = \log q(z) - \log p(\mathcal D, z)` (so :math:`-\mathbb E_q[h]` is the ELBO),
every component :math:`k` draws its own particles (stratified expectations, every component
sampled), and the updates are :func:`pyro_blr.blr.rules.mixture_update` for Gaussian components
and :func:`pyro_blr.blr.rules.expfamily_update` per site plus
:func:`pyro_blr.blr.rules.mixture_logits_update` for exponential-family components.

Both steppers keep the rule's state between steps, checkpoint it, step back from a step that
made the fit diverge and reduce their estimates across ranks
(:class:`~pyro_blr.blr.steppers.rule_state.RuleStateStepper`); a step whose log joint, gradient,
curvature or update is not finite raises naming the sites and the components, with the guide
unchanged (:mod:`pyro_blr.blr.steppers.mixture_diagnosis`).

References:
    | Fast and Simple Natural-Gradient Variational Inference with Mixture of Exponential-family
      Approximations (Lin, Khan & Schmidt, ICML 2019) https://arxiv.org/abs/1906.02914
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pyro_blr.blr.distributed import rank_stream
from pyro_blr.blr.rules import Estimates, ExpFamilyMixtureState, MixtureState
from pyro_blr.blr.steppers.base import prepare_layout
from pyro_blr.blr.steppers.expfamily import SiteDraws, SiteFamiliesStepper
from pyro_blr.blr.steppers.expfamily_estimates import (
    controlled_gradient,
    per_draw_leaves,
    statistics_jacobian,
)
from pyro_blr.blr.steppers.mixture_diagnosis import (
    check_draws,
    check_gaussian_estimates,
    gaussian_update,
)
from pyro_blr.blr.steppers.rule_state import RuleStateStepper
from pyro_blr.core import derivatives, neg_log_joint
from pyro_blr.families import gaussian_family, is_positive_definite
from pyro_blr.guides import AutoMixture

__all__ = ["ExpFamilyMixtureStepper", "GaussianMixtureStepper"]


class GaussianMixtureStepper(RuleStateStepper):
    """Runs the mixture rule on ``AutoMixture(component="diagonal" | "full")``; its state and
    checkpoint are :class:`~pyro_blr.blr.rules.MixtureState` (logits, means, precisions)."""

    kind = "mixture"

    @classmethod
    def accepts(cls, guide: Any, rule: Any) -> bool:
        return isinstance(guide, AutoMixture) and guide.component in ("diagonal", "full")

    def __init__(self, model, guide, rule, options):
        super().__init__(model, guide, rule, options)
        if options.antithetic and options.mc_samples % 2:
            raise ValueError(
                f"antithetic sampling draws pairs: mc_samples must be even, got "
                f"{options.mc_samples} (or pass antithetic=False)"
            )

    def _setup(self, args: tuple, kwargs: dict) -> None:
        self.layout, self.mode = prepare_layout(self.model, self.guide, args, kwargs, self.opts)

    def _structure(self) -> dict[str, Any]:
        return {"components": self.guide.num_components}

    def _read(self) -> MixtureState:
        return MixtureState(*self.guide.components())

    def _write_guide(self, state: MixtureState) -> None:
        self.guide.set_components(*state)

    def _tensors(self, state: MixtureState) -> dict[str, Tensor]:
        return state._asdict()

    def _from_tensors(self, tensors: dict[str, Tensor]) -> MixtureState:
        return MixtureState(**tensors)

    def _check_loaded(self, state: MixtureState) -> None:
        valid = [bool(is_positive_definite(p)) for p in state.precisions]
        if not all(valid):
            bad = [k for k, ok in enumerate(valid) if not ok]
            raise ValueError(
                f"state_dict entry 'precisions' holds precisions of component(s) {bad} that are "
                "not positive definite; nothing was changed"
            )

    def _natural(self, state: MixtureState) -> dict[str, Tensor]:
        logits, locs, precisions = state
        if precisions.dim() == 2:
            eta1 = precisions * locs
        else:
            eta1 = (precisions @ locs.unsqueeze(-1)).squeeze(-1)
        return {"logits": logits, "precision_times_loc": eta1, "precisions": precisions}

    def _from_natural(self, natural: dict[str, Tensor]) -> MixtureState:
        precisions = natural["precisions"]
        locs = torch.stack(
            [
                gaussian_family(p).solve(p, e)
                for p, e in zip(precisions, natural["precision_times_loc"], strict=True)
            ]
        )
        return MixtureState(natural["logits"], locs, precisions)

    @torch.no_grad()
    def _finite_at(self, state: MixtureState, args: tuple, kwargs: dict) -> bool:
        value = neg_log_joint(self.model, self.layout, state.locs, args, kwargs, self.mode)
        return bool(torch.isfinite(value).all())

    def _particles(self, locs: Tensor, precisions: Tensor) -> Tensor:
        k, d = locs.shape
        num = self.opts.mc_samples // 2 if self.opts.antithetic else self.opts.mc_samples
        with rank_stream(self.collective, locs.device):
            noise = torch.randn(k, num, d, dtype=locs.dtype, device=locs.device)
        if self.opts.antithetic:
            noise = torch.cat([noise, -noise], 1)
        return torch.stack(
            [
                gaussian_family(p).sample(m, p, e)
                for m, p, e in zip(locs, precisions, noise, strict=True)
            ]
        )  # (K, S, D)

    def _estimate(self, state: MixtureState, args, kwargs, step_number):
        logits, locs, precisions = state
        with torch.no_grad():
            mixture = self.guide.mixture()
        k, d = locs.shape
        theta = self._particles(locs, precisions)
        num = theta.shape[1]
        decay = self.opts.weight_decay

        def h(t: Tensor) -> Tensor:
            value = mixture.log_prob(t)
            value = value + neg_log_joint(self.model, self.layout, t, args, kwargs, self.mode)
            return value + 0.5 * decay * t.square().sum(-1) if decay else value

        out = derivatives(h, theta.reshape(-1, d), hessian=True)
        check_gaussian_estimates(self, theta, out, args, kwargs, step_number)
        expected = out.value.reshape(k, num).mean(1)  # E_{q_k}[h]
        grads = out.grad.reshape(k, num, d).mean(1)
        hess = out.hess.reshape(k, num, d, d).mean(1)
        if precisions.dim() == 2:  # diagonal components
            hess = hess.diagonal(dim1=-2, dim2=-1)
        loss = (torch.softmax(logits, -1) * expected).sum()
        return loss, Estimates(grads, hess, step_number, values=expected)

    def _update(self, state: MixtureState, estimates: Estimates, lr: float):
        return gaussian_update(self.rule, self.layout, state, estimates, lr)


class ExpFamilyMixtureStepper(SiteFamiliesStepper):
    r"""Runs the mixture rule on ``AutoMixture(component="expfamily")``; its state and
    checkpoint are :class:`~pyro_blr.blr.rules.ExpFamilyMixtureState` (logits and each site's
    natural parameters per component).

    With :math:`h = \log q - \log p(\mathcal D, \cdot)` (:math:`q` the mixture), the rule of
    Lin, Khan & Schmidt (2019, Eqs. 9--11) moves component :math:`k`'s natural parameters by
    :math:`\lambda_k \leftarrow \lambda_k - \rho\,\nabla_{\mu_k}\mathbb E_{q_k}[h]` (the mixture
    density inside :math:`h` held fixed) and the weights by
    :func:`pyro_blr.blr.rules.mixture_logits_update` on :math:`\mathbb E_{q_k}[h]`. Since
    :math:`\nabla_{\mu}\mathbb E_{q_k}[\log \bar q_k] = \lambda_k + \nabla_\mu\mathbb
    E_{q_k}[\log h_{\text{base}}]` for the component's own density :math:`\bar q_k` (held fixed),
    this is the exponential-family step :func:`pyro_blr.blr.rules.expfamily_update`,
    :math:`\lambda_k \leftarrow (1-\rho)\lambda_k - \rho\nabla_{\mu_k}\mathbb E_{q_k}[\ell_k]`,
    on

    .. math::
        \ell_k(x) = -\log p(\mathcal D, x) + \log h_{\text{base}}(x)
            + \log q(x) - \log \bar q_k(x),

    whose last two terms vanish for :math:`K = 1` (the ``"expfamily"`` rule exactly) and are
    :math:`\approx \log\pi_k` near component :math:`k`'s draws when the components are apart.
    Its gradient is :func:`~pyro_blr.blr.steppers.expfamily_estimates.controlled_gradient`
    (exact where :math:`\ell_k` is linear in the sufficient statistics). Every component draws
    its own reparameterized values."""

    kind = "mixture"
    per_component = True

    @classmethod
    def accepts(cls, guide: Any, rule: Any) -> bool:
        return isinstance(guide, AutoMixture) and guide.component == "expfamily"

    def __init__(self, model, guide, rule, options):
        super().__init__(model, guide, rule, options)
        if rule.option("antithetic") is not None:
            raise ValueError(
                "MixtureRule(antithetic=...) applies to Gaussian components; an "
                "AutoMixture(component='expfamily') draws each site from its own family, which "
                "has no antithetic pairs: leave antithetic=None"
            )

    def _structure(self) -> dict[str, Any]:
        return {**super()._structure(), "components": self.guide.num_components}

    def _read(self) -> ExpFamilyMixtureState:
        logits = self.guide.logits.detach().clone()
        return ExpFamilyMixtureState(logits, self.guide.natural_params(), self.families)

    def _write_guide(self, state: ExpFamilyMixtureState) -> None:
        if not torch.isfinite(state.logits).all():  # checked before the sites are written
            raise FloatingPointError(f"the mixture's new logits are not finite: {state.logits}")
        self.guide.set_natural_params(state.natural)
        self.guide.set_logits(state.logits)

    def _tensors(self, state: ExpFamilyMixtureState) -> dict[str, Tensor]:
        return {"logits": state.logits, **{f"natural.{n}": e for n, e in state.natural.items()}}

    def _from_tensors(self, tensors: dict[str, Tensor]) -> ExpFamilyMixtureState:
        natural = {n: tensors[f"natural.{n}"] for n in self.families}
        return ExpFamilyMixtureState(tensors["logits"], natural, self.families)

    def _check_loaded(self, state: ExpFamilyMixtureState) -> None:
        self._check_natural(state.natural)

    def _natural(self, state: ExpFamilyMixtureState) -> dict[str, Tensor]:
        return self._tensors(state)

    def _from_natural(self, natural: dict[str, Tensor]) -> ExpFamilyMixtureState:
        return self._from_tensors(natural)

    def _estimate(self, state: ExpFamilyMixtureState, args, kwargs, step_number):
        k, num, families = self.guide.num_components, self.opts.mc_samples, self.families
        etas, logits = state.natural, state.logits  # (K, *site batch, P), (K,)
        log_weights = torch.log_softmax(logits, -1)
        with torch.enable_grad():
            leaves = {n: per_draw_leaves(eta, num) for n, eta in etas.items()}  # (S, K, ...)
            raw, draws, log_q, log_base = {}, {}, 0.0, 0.0
            with rank_stream(self.collective, logits.device):
                for name, family in families.items():
                    raw[name] = family.distribution(leaves[name]).rsample()  # (S, K, *shape)
            for name, family in families.items():
                value = raw[name].transpose(0, 1).reshape((k * num, *raw[name].shape[2:]))
                fixed = family.distribution(etas[name])  # every component, parameters fixed
                per_component = fixed.log_prob(value.unsqueeze(1))  # (K*S, K, *site batch)
                log_q = log_q + per_component.reshape(k * num, k, -1).sum(-1)
                base = family.log_base_measure(value)
                if base.dim():  # only the LogNormal has one
                    log_base = log_base + base.reshape(k * num, -1).sum(-1)
                draws[name] = value
            log_mixture = torch.logsumexp(log_weights + log_q, -1)  # (K*S,)
            own = log_q.reshape(k, num, k).diagonal(dim1=0, dim2=2).T.reshape(-1)  # log q_k
            sample = SiteDraws(self, draws)
            loss = sample.neg_log_target(args, kwargs)  # -log p + log h_base
            h = (loss - log_base + log_mixture).detach()  # log q - log p
            objective = loss + log_mixture - own
            check_draws(sample, h, objective, num, args, kwargs, step_number)
            per_draw = torch.autograd.grad(
                objective.sum(), list(leaves.values()), retain_graph=True
            )
            grads = {
                n: controlled_gradient(
                    families[n].fisher(etas[n]),
                    d,
                    statistics_jacobian(families[n], raw[n], leaves[n]),
                )
                for n, d in zip(leaves, per_draw, strict=True)
            }
        expected = h.reshape(k, num).mean(1)  # E_{q_k}[h]
        loss = (log_weights.exp() * expected).sum()
        return loss, Estimates(grads, None, step_number, values=expected)
