r"""The Monte Carlo estimates a Gaussian rule steps on: the expected gradient and curvature of
:math:`\ell` under the guide, from particles :math:`\theta_s = m \pm S^{-1/2}\epsilon_s`.

The curvature is the rule's: the exact Hessian by autograd (``"von"``, ``"newton"``; for a
diagonal guide only its diagonal, never a ``D x D`` matrix: exact by one product per group of
non-interacting coordinates, a coordinate or a coordinate of a plate row where the latents are
local to a subsampled plate, up to :data:`pyro_blr.core.autodiff.EXACT_DIAGONAL_MAX` groups, and
Hutchinson's unbiased estimate above, see :meth:`pyro_blr.core.Target.derivatives`), IVON's
reparameterization estimate :math:`\hat g\,(\theta - m)\,s` (``"ivon"``), or the
Gauss--Newton sum of the per-datum gradients' outer products (``"vogn"``; their squares for a
diagonal guide), the particles' squared gradients :math:`\mathbb E_q[\nabla\ell\circ\nabla\ell]`
(``"rmsprop"``, ``"adam"``: the average of each particle's, so that at the mean it is the
gradient's square, as ``torch.optim`` takes it) or none (``"sgd"``). Every estimate is checked
finite, naming the sites at fault.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from pyro_blr.blr.curvature import reparam_hessian_diagonal
from pyro_blr.blr.steppers.base import KEPT
from pyro_blr.core import Derivatives, all_finite
from pyro_blr.families import gaussian_family

__all__ = ["GaussianEstimates"]

logger = logging.getLogger(__name__)


class GaussianEstimates:
    """The estimating half of :class:`~pyro_blr.blr.steppers.gaussian.GaussianStepper` (a
    mixin: it reads the stepper's ``rule``, ``opts``, ``layout``, ``mode``, ``collective`` and
    ``_target``, the :class:`~pyro_blr.core.Target` through which every model run goes)."""

    rule: Any
    opts: Any
    layout: Any
    mode: Any
    collective: Any
    _target: Any
    _started: bool
    _groups: Tensor | None
    _groups_checked: bool

    def _particles(self, loc: Tensor, precision: Tensor) -> Tensor:
        if self.rule.at_mean:
            return loc.unsqueeze(0)
        num = self.opts.mc_samples // 2 if self.opts.antithetic else self.opts.mc_samples
        generator = None if self.collective is None else self.collective.generator
        noise = torch.randn(
            num, loc.shape[-1], dtype=loc.dtype, device=loc.device, generator=generator
        )
        if self.opts.antithetic:
            noise = torch.cat([noise, -noise])
        return gaussian_family(precision).sample(loc, precision, noise)

    def _neg_log_joint(self, theta: Tensor, mode=None, terms_out=None) -> Tensor:
        return self._target.neg_log_joint(theta, mode, terms_out)

    def _check_finite(self, theta: Tensor, d: Derivatives, step: int) -> None:
        if all_finite(d.value, d.grad, d.hess):  # one fused check in the usual case
            return
        if not torch.isfinite(d.value).all():
            runs = []
            with torch.no_grad():
                self._neg_log_joint(theta, "loop", runs)
            bad = sorted(
                {name for terms in runs for name, t in terms if not torch.isfinite(t).all()}
            )
            raise FloatingPointError(
                f"BLR step {step}: the log joint is not finite at site(s) {bad}; {KEPT}"
            )
        for label, tensor in (("gradient", d.grad), ("Hessian", d.hess)):
            if tensor is None or torch.isfinite(tensor).all():
                continue
            bad_coords = (~torch.isfinite(tensor)).reshape(-1, self.layout.dim).any(0)
            sites = sorted({self.layout.site_at(int(i)) for i in bad_coords.nonzero()})
            raise FloatingPointError(
                f"BLR step {step}: the {label} is not finite at {sites}; {KEPT}"
            )

    def _check_informative(self, d: Derivatives, hess: Tensor) -> None:
        """Refuse coordinates the log joint does not depend on (zero gradient and curvature at
        every particle): their precision would decay step after step until the update is not
        finite. This is an improper (flat) or masked-out site."""
        diag = hess if hess.dim() == 1 else hess.diagonal()
        flat = (d.grad == 0).all(0) & (diag == 0)
        if flat.any():
            sites = sorted({self.layout.site_at(int(i)) for i in flat.nonzero()})
            raise ValueError(
                f"the log joint does not depend on site(s) {sites} (zero gradient and curvature): "
                "their posterior is improper under this model, e.g. a masked-out or flat-prior "
                "site; give them a proper prior or remove them"
            )

    def _estimate(self, loc, precision, step_number, curvature=True) -> tuple[Tensor, ...]:
        """This process's estimates of the expected gradient and curvature (the Hessian's
        diagonal for a diagonal guide; ``None`` without ``curvature``, for an exact-Hessian
        rule between its Hessians) and of the expected negative log joint."""
        theta = self._particles(loc, precision)
        d, hess = self._derivatives(theta, loc, precision, curvature)
        self._check_finite(theta, d, step_number)
        if hess is not None:
            hess = hess.mean(0)
            if hess.dim() == 2 and precision.dim() == 1:
                hess = hess.diagonal()
            # the first step of this stepper (always with curvature); a squared gradient is
            # no curvature whose decay could make the precision improper
            if not self._started and self.rule.curvature != "squared_gradient":
                self._check_informative(d, hess)
        return d.grad.mean(0), hess, d.value.mean()

    def _check_distributable(self) -> None:
        if self._local:
            raise ValueError(
                f"sites local to the subsampled plate(s) {list(self.layout.local_plates)}: "
                "each rank would hold other data's local factors; the distributed BLR drives "
                "global latents only"
            )

    def _derivatives(
        self, theta, loc, precision, curvature=True
    ) -> tuple[Derivatives, Tensor | None]:
        """Value and gradient at each particle, and the rule's curvature estimate per particle:
        the exact Hessian (``None`` without ``curvature``), IVON's reparameterization estimate,
        or Gauss--Newton's."""
        if self.rule.curvature == "ggn":
            return self._gauss_newton(theta, loc, precision)
        if self.rule.curvature in ("none", "squared_gradient"):  # SGD; RMSprop and Adam
            d = self._target.derivatives(theta, "none", mode=self.mode)
            return d, d.grad.square() if self.rule.curvature == "squared_gradient" else None
        hessian_rule = self.rule.curvature == "hessian"
        exact = hessian_rule and curvature
        mode = self._hessian_mode(exact)
        if exact and self._groups is not None and not self._groups_checked:
            self._check_groups(mode, loc, precision)
        if exact and precision.dim() == 1 and self.rule.at_mean:
            # the delta method stays deterministic: the exact diagonal, one product per group
            groups = self._groups
            if groups is None:
                groups = torch.arange(theta.shape[-1], device=theta.device)
            d = self._target.derivatives(theta, "hessian", groups, mode)
            return d, d.hess
        if exact and precision.dim() == 1:  # a diagonal guide: never a D x D matrix
            generator = None if self.collective is None else self.collective.generator
            d = self._target.derivatives(theta, "diag", self._groups, mode, generator)
            return d, d.hess
        d = self._target.derivatives(theta, "hessian" if exact else "none", mode=mode)
        if hessian_rule:  # d.hess is None between the Hessians of hessian_every
            return d, d.hess
        return d, reparam_hessian_diagonal(d.grad, theta, loc, precision)

    def _hessian_mode(self, exact: bool = True) -> str:
        """How particles are evaluated for exact Hessians: one model run each where the
        particles would otherwise go through ``torch.func.vmap``. The double backward of a
        vmapped forward reads the data once per particle and probe (``X @ w`` becomes a batched
        matrix product over copies of ``X``): with many data, two particles' Hessians take
        many times longer vmapped than one by one (the benchmark ``vectorization``, "Exact
        Hessians: vmap or one run per particle", at ``N = 10^5, D = 100``)."""
        return "loop" if exact and self.mode == "vmap" else self.mode

    def _check_groups(self, mode: str, loc: Tensor, precision: Tensor) -> None:
        """Keep the grouped Hessian diagonal (one product per coordinate of a plate row) only if
        it equals the full Hessian's, coordinate by coordinate, at two random draws from the
        guide (from a private generator: the run's draws are untouched). A model that ties rows
        of a subsampled plate together (a factor or a site outside the plate reading all of
        them) has cross terms, and then every step computes the full Hessian. A tie whose cross
        terms vanish at both draws goes unseen."""
        self._groups_checked = True
        generator = torch.Generator(device=loc.device).manual_seed(0)
        noise = torch.randn(2, loc.shape[-1], generator=generator, dtype=loc.dtype,
                            device=loc.device)  # fmt: skip
        points = loc + noise * precision.rsqrt()
        grouped = self._target.derivatives(points, "hessian", self._groups, mode).hess
        full = self._target.derivatives(points, "hessian", mode=mode).hess
        diagonal = full.diagonal(dim1=-2, dim2=-1)
        rtol = max(1e-6, 1e3 * torch.finfo(loc.dtype).eps)
        tolerance = rtol * diagonal.abs() + 1e-12 * diagonal.abs().amax()
        if not ((grouped - diagonal).abs() <= tolerance).all():
            self._groups = None
            logger.info(
                "the model ties rows of the subsampled plate(s) %s together: computing the full "
                "Hessian at every step",
                list(self.layout.local_plates),
            )

    def _gauss_newton(self, theta, loc, precision) -> tuple[Derivatives, Tensor]:
        """The per-datum gradients' outer products summed over the data (the minibatch's scaled
        to the full data), plus the curvature of the rest (priors, log-Jacobians), per
        particle. A diagonal guide takes the squared gradients and the rest's gradient-only
        estimate, which cost no more than a gradient at any ``D``; a full-covariance guide, which
        holds ``D x D`` matrices anyway, takes the outer products and the rest's exact Hessian
        (``D`` products on the priors' graph only), whose noise-free curvature keeps the
        precision positive definite where the gradient-only estimate's rank-one noise, of the
        order of the precision's square root, would not in float32."""
        full = precision.dim() == 2
        out = self._target.per_datum(theta, rest_hessian=full or self.rule.at_mean)
        value, grad = out.value, out.grad
        rest_grad = grad - out.datum_grads.sum(1)
        if self.opts.weight_decay:
            value = value + 0.5 * self.opts.weight_decay * theta.square().sum(-1)
            grad = grad + self.opts.weight_decay * theta
            rest_grad = rest_grad + self.opts.weight_decay * theta
        # The datum gradients are those of c_i l_i for a plate scale c_i: sum_i c_i g_i g_i'.
        weighted = out.datum_grads / out.scale[:, None]
        if not full:
            ggn = (out.datum_grads * weighted).sum(1)
            if self.rule.at_mean:  # no spread to estimate from: the rest's exact diagonal
                rest = out.rest_hess.diagonal(dim1=-2, dim2=-1) + self.opts.weight_decay
            else:
                rest = reparam_hessian_diagonal(rest_grad, theta, loc, precision)
            return Derivatives(value, grad, None), ggn + rest
        ggn = out.datum_grads.mT @ weighted
        rest = out.rest_hess
        if self.opts.weight_decay:
            eye = torch.eye(theta.shape[-1], dtype=rest.dtype, device=rest.device)
            rest = rest + self.opts.weight_decay * eye
        return Derivatives(value, grad, None), ggn + rest
