r"""The Bayesian learning rule for mixtures of Gaussians (rule ``"mixture"``, ``AutoMixture``).

With :math:`h(z) = \log q(z) - \log p(\mathcal D, z)` (so :math:`-\mathbb E_q[h]` is the ELBO) and
:math:`q = \sum_k \pi_k \mathcal N(m_k, S_k^{-1})`, the natural-gradient updates of Lin, Khan &
Schmidt (2019) are, for every component :math:`k` and the last one :math:`K`,

.. math::
    S_k &\leftarrow S_k + \rho\, \mathbb E_{q_k}[\nabla^2 h], \qquad
    m_k \leftarrow m_k - \rho\, S_k^{-1} \mathbb E_{q_k}[\nabla h], \\
    \log\frac{\pi_k}{\pi_K} &\leftarrow \log\frac{\pi_k}{\pi_K}
        - \rho\,\big(\mathbb E_{q_k}[h] - \mathbb E_{q_K}[h]\big).

The expectations are stratified: every component draws its own antithetic pairs
:math:`m_k \pm S_k^{-1/2}\epsilon`, and the model runs once on all of them (vectorized). The
precision update is taken in the positive-definite form of Lin, Schmidt & Khan (2020), as for the
single Gaussian (:func:`pyro_blr.blr.rules.von_update`).

References:
    | Fast and Simple Natural-Gradient Variational Inference with Mixture of Exponential-family
      Approximations (Lin, Khan & Schmidt, ICML 2019) https://arxiv.org/abs/1906.02914
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide

from pyro_blr.core import derivatives
from pyro_blr.blr.expfamily import update_sites
from pyro_blr.core import initialize_guide
from pyro_blr.core import write_param as _write
from pyro_blr.core import (
    PARTICLE_PLATE,
    site_log_probs as _log_prob_terms_pairs,
    sum_per_particle as _sum_per_particle,
    latent_layout,
    max_plate_nesting,
    neg_log_joint,
    trace_without_rng,
)
from pyro_blr.blr.rules import GaussianState, von_update
from pyro_blr.families.expfamily import FAMILIES

__all__ = ["ExpFamilyMixtureStepper", "MixtureStepper"]


class MixtureStepper:
    """Runs the mixture rule on an ``AutoMixture`` guide.

    Args:
        model: the Pyro model.
        guide: a ``pb.AutoMixture`` of ``model``.
        mc_samples: draws per component per step (antithetic pairs: even).
    """

    def __init__(self, model: Callable, guide: AutoGuide, mc_samples: int):
        self.model, self.guide, self.mc_samples = model, guide, mc_samples
        self._layout = None

    def _setup(self, args: tuple, kwargs: dict) -> None:
        guide = self.guide
        like = initialize_guide(guide, args, kwargs)
        trace = trace_without_rng(self.model, args, kwargs, like)
        self._layout = latent_layout(guide.prototype_trace, trace)

    def step(self, args: tuple, kwargs: dict, lr: float, step_number: int) -> float:
        if self._layout is None:
            self._setup(args, kwargs)
        guide = self.guide
        full = guide.component == "full"
        with torch.no_grad():
            logits, locs = guide.logits.detach().clone(), guide.locs.detach().clone()
            mixture = guide.mixture()
            scale_trils = mixture.component_distribution.scale_tril.detach().clone()
        k, d = locs.shape
        half = max(1, self.mc_samples // 2)
        noise = torch.randn(k, half, d, dtype=locs.dtype, device=locs.device)
        noise = torch.cat([noise, -noise], 1)  # (K, S, D), antithetic
        offsets = (scale_trils.unsqueeze(1) @ noise.unsqueeze(-1)).squeeze(-1)
        theta = (locs.unsqueeze(1) + offsets).reshape(-1, d)

        def h(t):
            return mixture.log_prob(t) + neg_log_joint(self.model, self._layout, t, args, kwargs)

        out = derivatives(h, theta, hessian=True)
        num = noise.shape[1]
        values = out.value.reshape(k, num)
        grads = out.grad.reshape(k, num, d).mean(1)
        hess = out.hess.reshape(k, num, d, d).mean(1)
        finite = [torch.isfinite(t).all() for t in (values, grads, hess)]
        if not all(finite):
            raise FloatingPointError(
                f"BLR step {step_number}: a mixture expectation is not finite; "
                "the guide's parameters were left as they were before this step"
            )
        expected = values.mean(1)  # E_{q_k}[h]
        precision = torch.cholesky_inverse(scale_trils)
        if not full:
            precision, hess = precision.diagonal(dim1=-2, dim2=-1), hess.diagonal(dim1=-2, dim2=-1)
        states = [
            von_update(GaussianState(locs[c], precision[c]), grads[c], precision[c] + hess[c], lr)
            for c in range(k)
        ]
        new_logits = logits - logits[-1] - lr * (expected - expected[-1])
        new_precision = torch.stack([state.precision for state in states])
        _write(guide, "locs", torch.stack([state.loc for state in states]))
        if full:
            covariance = torch.cholesky_inverse(torch.linalg.cholesky(new_precision))
            _write(guide, "scale_trils", torch.linalg.cholesky(covariance))
        else:
            _write(guide, "scales", new_precision.rsqrt())
        _write(guide, "logits", new_logits)
        return float((torch.softmax(logits, -1) * expected).sum())


class ExpFamilyMixtureStepper:
    """Runs the mixture rule on ``AutoMixture(component="expfamily")``.

    Every component :math:`k` draws its own reparameterized values; with
    :math:`h = \\log q(x) - \\log p(\\mathcal D, x) + \\log h_{\\text{base}}(x)` (the mixture
    density held fixed), each site's natural parameters in component :math:`k` move by
    :func:`pyro_blr.blr.expfamily.expfamily_update` on :math:`\\mathbb E_{q_k}[h]`, and the
    weights by the differences of :math:`\\mathbb E_{q_k}[h]`, as for Gaussian components.

    Args:
        model: the Pyro model.
        guide: an ``AutoMixture(component="expfamily")`` of ``model``.
        mc_samples: draws per component per step.
    """

    def __init__(self, model: Callable, guide: AutoGuide, mc_samples: int):
        self.model, self.guide, self.mc_samples = model, guide, mc_samples
        self.halvings = 0
        self._nesting = None

    def step(self, args: tuple, kwargs: dict, lr: float, step_number: int) -> float:
        guide = self.guide
        if self._nesting is None:
            like = initialize_guide(guide, args, kwargs)
            trace = trace_without_rng(self.model, args, kwargs, like)
            self._nesting = max_plate_nesting(trace)
        k, num, nesting = guide.num_components, self.mc_samples, self._nesting
        families = {name: FAMILIES[family] for name, family in guide.family.items()}
        distributions = guide.distributions(*args, **kwargs)  # batch (K, *site batch)
        etas = {n: f.natural_from(distributions[n]).detach() for n, f in families.items()}
        log_weights = torch.log_softmax(guide.logits.detach(), -1)
        with torch.enable_grad():
            leaves = {n: eta.clone().requires_grad_(True) for n, eta in etas.items()}
            values, log_q, log_base = {}, 0.0, 0.0
            for name, family in families.items():
                site = guide.prototype_trace.nodes[name]
                shape = site["value"].shape
                pad = (1,) * (nesting - (len(shape) - site["fn"].event_dim))
                draws = family.distribution(leaves[name]).rsample((num,))  # (S, K, *shape)
                draws = draws.transpose(0, 1).reshape((k * num, *shape))
                fixed = family.distribution(etas[name])  # every component, parameters fixed
                per_component = fixed.log_prob(draws.unsqueeze(1))  # (K*S, K, *site batch)
                log_q = log_q + per_component.reshape(k * num, k, -1).sum(-1)
                base = family.log_base_measure(draws)
                if base.dim():  # only the LogNormal has one
                    log_base = log_base + base.reshape(k * num, -1).sum(-1)
                values[name] = draws.reshape((k * num, *pad, *shape))
            log_mixture = torch.logsumexp(log_weights + log_q, -1)
            conditioned = poutine.condition(self.model, data=values)
            with pyro.plate(PARTICLE_PLATE, k * num, dim=-nesting - 1):
                model_trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
            terms = (t for _, t in _log_prob_terms_pairs(model_trace))
            log_joint = sum(_sum_per_particle(t, k * num, nesting) for t in terms)
            expected = (log_mixture - log_joint + log_base).reshape(k, num).mean(1)
            grads = torch.autograd.grad(expected.sum(), list(leaves.values()))
        expected = expected.detach()
        if not torch.isfinite(expected).all():
            raise FloatingPointError(
                f"BLR step {step_number}: a mixture expectation is not finite; "
                "the guide's parameters were left as they were before this step"
            )
        self.halvings += update_sites(guide, families, etas, grads, lr, step_number)
        logits = guide.logits.detach()
        _write(guide, "logits", logits - logits[-1] - lr * (expected - expected[-1]))
        return float((log_weights.exp() * expected).sum())
