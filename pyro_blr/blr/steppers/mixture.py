r"""The ``"mixture"`` rule on :class:`pyro_blr.AutoMixture` guides (Lin, Khan & Schmidt 2019).

With :math:`h(z) = \log q(z) - \log p(\mathcal D, z)` (so :math:`-\mathbb E_q[h]` is the ELBO),
every component :math:`k` draws its own particles (stratified expectations, every component
sampled), and the updates are :func:`pyro_blr.blr.rules.mixture_update` for Gaussian components
and :func:`pyro_blr.blr.rules.expfamily_update` per site plus
:func:`pyro_blr.blr.rules.mixture_logits_update` for exponential-family components.

References:
    | Fast and Simple Natural-Gradient Variational Inference with Mixture of Exponential-family
      Approximations (Lin, Khan & Schmidt, ICML 2019) https://arxiv.org/abs/1906.02914
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pyro_blr.blr.rules import Estimates, ExpFamilyMixtureState, MixtureState
from pyro_blr.blr.steppers.base import KEPT, StepInfo, Stepper, check_state, prepare_layout
from pyro_blr.blr.steppers.expfamily import SiteDraws, SiteFamiliesStepper
from pyro_blr.blr.steppers.expfamily_estimates import (
    controlled_gradient,
    per_draw_leaves,
    statistics_jacobian,
)
from pyro_blr.blr.steppers.signature import signed, unsigned
from pyro_blr.core import derivatives, neg_log_joint, write_params
from pyro_blr.families import gaussian_family
from pyro_blr.guides import AutoMixture

__all__ = ["ExpFamilyMixtureStepper", "GaussianMixtureStepper"]


def _not_finite(step_number: int) -> FloatingPointError:
    return FloatingPointError(
        f"BLR step {step_number}: a mixture expectation is not finite; {KEPT}"
    )


class GaussianMixtureStepper(Stepper):
    """Runs the mixture rule on ``AutoMixture(component="diagonal" | "full")``."""

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
        self.layout, self.mode = None, None

    def _particles(self, locs: Tensor, precisions: Tensor) -> Tensor:
        k, d = locs.shape
        num = self.opts.mc_samples // 2 if self.opts.antithetic else self.opts.mc_samples
        noise = torch.randn(k, num, d, dtype=locs.dtype, device=locs.device)
        if self.opts.antithetic:
            noise = torch.cat([noise, -noise], 1)
        return torch.stack(
            [
                gaussian_family(p).sample(m, p, e)
                for m, p, e in zip(locs, precisions, noise, strict=True)
            ]
        )  # (K, S, D)

    def step(self, args: tuple, kwargs: dict, lr: float, step_number: int) -> StepInfo:
        if self.layout is None:
            self.layout, self.mode = prepare_layout(self.model, self.guide, args, kwargs, self.opts)
        logits, locs, precisions = self.guide.components()
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
        expected = out.value.reshape(k, num).mean(1)  # E_{q_k}[h]
        grads = out.grad.reshape(k, num, d).mean(1)
        hess = out.hess.reshape(k, num, d, d).mean(1)
        if not all(torch.isfinite(t).all() for t in (expected, grads, hess)):
            raise _not_finite(step_number)
        if precisions.dim() == 2:  # diagonal components
            hess = hess.diagonal(dim1=-2, dim2=-1)
        state = MixtureState(logits, locs, precisions)
        new, _ = self.rule.update(state, Estimates(grads, hess, step_number, values=expected), lr)
        if not all(torch.isfinite(t).all() for t in new):
            raise FloatingPointError(
                f"BLR step {step_number}: the update is not finite (lr={lr}); {KEPT}"
            )
        self.guide.set_components(*new)
        return StepInfo(float((torch.softmax(logits, -1) * expected).sum()))

    def natural_state(self) -> dict[str, Tensor]:
        logits, locs, precisions = self.guide.components()
        if precisions.dim() == 2:
            eta1 = precisions * locs
        else:
            eta1 = (precisions @ locs.unsqueeze(-1)).squeeze(-1)
        return {"logits": logits, "precision_times_loc": eta1, "precisions": precisions}

    def load_natural_state(self, state: dict[str, Tensor]) -> None:
        precisions = state["precisions"]
        locs = torch.stack(
            [
                gaussian_family(p).solve(p, e)
                for p, e in zip(precisions, state["precision_times_loc"], strict=True)
            ]
        )
        self.guide.set_components(state["logits"], locs, precisions)

    def state_dict(self) -> dict[str, Any]:
        # The guide's own (unconstrained) parameters: bit-exact, where precisions read back
        # through the scales' constraint would differ by round-off.
        if self.layout is None:
            return {}
        state = {f"param.{n}": p.detach().clone() for n, p in self.guide.named_parameters()}
        return signed(state, self.layout, self.rule_name, next(iter(self.guide.parameters())))

    def load_state_dict(self, state: dict[str, Any], args: tuple, kwargs: dict) -> None:
        if self.layout is None:
            self.layout, self.mode = prepare_layout(self.model, self.guide, args, kwargs, self.opts)
        like = next(iter(self.guide.parameters()))
        state = unsigned(state, self.layout, self.rule_name, like)  # before anything is read
        current = {f"param.{n}": p.detach() for n, p in self.guide.named_parameters()}
        if set(state) != set(current):
            raise ValueError(f"state_dict needs entries {sorted(current)}, got {sorted(state)}")
        for key, value in current.items():
            check_state(key, state[key], value)
        old = [(self.guide, key[6:], value.clone()) for key, value in current.items()]
        write_params(
            [
                (self.guide, key[6:], state[key].to(dtype=value.dtype, device=value.device))
                for key, value in current.items()
            ]
        )
        _, _, precisions = self.guide.components()
        valid = torch.isfinite(precisions).all() and (
            bool((precisions > 0).all())
            if precisions.dim() == 2
            else bool((torch.linalg.cholesky_ex(precisions).info == 0).all())
        )
        if not valid:
            write_params(old)
            raise ValueError("state_dict holds a mixture whose precisions are not positive")


class ExpFamilyMixtureStepper(SiteFamiliesStepper):
    r"""Runs the mixture rule on ``AutoMixture(component="expfamily")``.

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

    def step(self, args: tuple, kwargs: dict, lr: float, step_number: int) -> StepInfo:
        if self.layout is None:
            self._setup(args, kwargs)
        k, num, families = self.guide.num_components, self.opts.mc_samples, self.families
        etas = self.guide.natural_params()  # (K, *site batch, P)
        logits = self.guide.logits.detach().clone()
        log_weights = torch.log_softmax(logits, -1)
        with torch.enable_grad():
            leaves = {n: per_draw_leaves(eta, num) for n, eta in etas.items()}  # (S, K, ...)
            raw, draws, log_q, log_base = {}, {}, 0.0, 0.0
            for name, family in families.items():
                raw[name] = family.distribution(leaves[name]).rsample()  # (S, K, *shape)
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
            loss = SiteDraws(self, draws).neg_log_target(args, kwargs)  # -log p + log h_base
            h = (loss - log_base + log_mixture).detach()  # log q - log p
            objective = loss + log_mixture - own
            if not (torch.isfinite(h).all() and torch.isfinite(objective).all()):
                raise _not_finite(step_number)
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
        state = ExpFamilyMixtureState(logits, etas, families)
        estimates = Estimates(grads, None, step_number, values=expected)
        new, info = self.rule.update(state, estimates, lr)
        self.guide.set_natural_params(new.natural)
        self.guide.set_logits(new.logits)
        return StepInfo(float((log_weights.exp() * expected).sum()), info.halvings)

    def natural_state(self) -> dict[str, Tensor]:
        state = {f"eta.{n}": eta for n, eta in self.guide.natural_params().items()}
        state["logits"] = self.guide.logits.detach().clone()
        return state

    def load_natural_state(self, state: dict[str, Tensor]) -> None:
        self.guide.set_natural_params({k[4:]: v for k, v in state.items() if k != "logits"})
        self.guide.set_logits(state["logits"])
