r"""``BLR``: the Bayesian learning rule as a drop-in for ``pyro.infer.SVI``.

Each step samples particles from the guide's Gaussian in unconstrained coordinates, runs the
unchanged model on them (vectorized), takes gradients (and Hessians) of the negative log joint
:math:`\ell` by autograd, hands them to a pure update rule from :mod:`pyro_blr.blr.rules`, and
writes the new mean and precision back into the guide's Pyro parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from numbers import Real
from typing import Any, NamedTuple

import torch
from pyro.infer.autoguide import AutoMultivariateNormal
from torch import Tensor
from tqdm.auto import tqdm

from pyro_blr.blr.curvature import reparam_hessian_diagonal
from pyro_blr.core import Derivatives, derivatives
from pyro_blr.blr.expfamily import ExpFamilyStepper
from pyro_blr.core import GaussianGuide, check_gaussian_guide, initialize_guide
from pyro_blr.core import latent_layout, neg_log_joint, trace_without_rng
from pyro_blr.blr.mixture import ExpFamilyMixtureStepper, MixtureStepper
from pyro_blr.blr.rules import RULES
from pyro_blr.families.gaussian import gaussian_family
from pyro_blr.guides.expfamily import AutoExpFamily
from pyro_blr.guides.expfamily_mixture import ExpFamilyMixture
from pyro_blr.guides.mixture import AutoMixture

__all__ = ["BLR", "FitResult"]


class FitResult(NamedTuple):
    """What :meth:`BLR.fit` returns.

    Attributes:
        losses: the loss (negative ELBO estimate) of every step.
        seconds: wall-clock time of the whole fit.
    """

    losses: list[float]
    seconds: float


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")


class BLR:
    r"""The Bayesian learning rule for Gaussian guides, shaped like ``pyro.infer.SVI``.

    With the negative log joint :math:`\ell(\theta) = -\log p(\mathcal D, \theta)` in the guide's
    unconstrained coordinates (plates scaled by :math:`N/B` under subsampling, log-Jacobians of
    constrained sites included), every step is a natural-gradient step on the ELBO of
    :math:`q = \mathcal N(m, S^{-1})`:

    .. math::
        S \leftarrow (1-\rho) S + \rho\, \mathbb E_q[\nabla^2 \ell], \qquad
        m \leftarrow m - \rho\, S^{-1} \mathbb E_q[\nabla \ell],

    with the expectations and the positivity safeguard chosen by ``rule`` (see
    :mod:`pyro_blr.blr.rules`): ``"ivon"`` (diagonal; gradient-only curvature, momentum),
    ``"von"`` (diagonal or full; exact Hessians by autograd, Riemannian precision update),
    ``"newton"`` (diagonal or full; gradient and Hessian at the mean). The prior comes from the
    model, so no weight decay is needed; ``weight_decay`` adds :math:`\tfrac\delta2\lVert\theta
    \rVert^2` to :math:`\ell` for those who want one.

    Monte Carlo expectations use antithetic pairs :math:`m \pm S^{-1/2}\epsilon` by default, which
    make the gradient and Hessian estimates exact on quadratic :math:`\ell`.

    References:
        | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
        | Variational Learning is Effective for Large Deep Networks (Shen et al., ICML 2024)
          https://arxiv.org/abs/2402.17641

    Args:
        model: a Pyro model, unchanged.
        guide: ``AutoNormal``, ``AutoDiagonalNormal`` or ``AutoMultivariateNormal`` of ``model``,
            or a :class:`pyro_blr.AutoExpFamily` or :class:`pyro_blr.AutoMixture`.
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float`` (``step`` counts
            the steps taken so far, from 0).
        rule: ``"ivon"``, ``"von"`` or ``"newton"`` for Gaussian guides; ``"expfamily"`` for
            :class:`pyro_blr.AutoExpFamily` (see :mod:`pyro_blr.blr.expfamily`); ``"mixture"``
            for :class:`pyro_blr.AutoMixture` (see :mod:`pyro_blr.blr.mixture`).
        mc_samples: particles per step (ignored by ``"newton"``).
        antithetic: draw the particles in antithetic pairs (needs an even ``mc_samples``).
        beta1: IVON's gradient momentum.
        beta2: IVON's Hessian momentum.
        clip_radius: IVON's optional per-coordinate clip of the mean's update.
        weight_decay: an optional extra Gaussian penalty :math:`\delta \ge 0` on :math:`\theta`.
        vectorize_particles: run the model once on all particles (it must broadcast, as for
            Pyro's ``vectorize_particles=True``: write ``(X * w).sum(-1)``, not ``X @ w``);
            ``False`` runs it once per particle (e.g. ``PyroModule[nn.Linear]`` layers).
        max_plate_nesting: the model's number of plate dimensions; found from a model trace when
            not given.

    Raises:
        TypeError: the guide holds no Gaussian that ``rule`` can drive.
        ValueError: a hyperparameter is out of range.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> import pyro_blr as pb
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([1.0, 2.0, 3.0])
        >>> guide = AutoMultivariateNormal(model)
        >>> loss = pb.BLR(model, guide, lr=1.0, rule="newton").step(y)
        >>> posterior = guide.get_posterior()  # exact: N(6/4, 1/4)
        >>> print(f"{posterior.mean.item():.4f} {posterior.variance.item():.4f}")
        1.5000 0.2500
    """

    def __init__(
        self,
        model: Callable,
        guide: object,
        lr: float | Callable[[int], float] = 0.1,
        rule: str = "ivon",
        mc_samples: int = 2,
        antithetic: bool = True,
        beta1: float = 0.9,
        beta2: float = 0.999,
        clip_radius: float | None = None,
        weight_decay: float = 0.0,
        vectorize_particles: bool = True,
        max_plate_nesting: int | None = None,
    ):
        steppers = {  # mixtures first: an exp-family mixture is also an AutoExpFamily
            "mixture": ((AutoMixture, ExpFamilyMixture), MixtureStepper),
            "expfamily": (AutoExpFamily, ExpFamilyStepper),
        }
        if rule not in RULES and rule not in steppers:
            raise ValueError(f"unknown rule {rule!r}; choose one of {sorted([*RULES, *steppers])}")
        self._stepper = None
        for name, (guide_class, stepper) in steppers.items():
            label = "AutoMixture" if name == "mixture" else "AutoExpFamily"
            if rule == name or isinstance(guide, guide_class):
                if rule != name or not isinstance(guide, guide_class):
                    raise TypeError(
                        f"rule {name!r} drives pb.{label} guides, and {label} takes rule "
                        f"{name!r} (got rule {rule!r} with {type(guide).__name__})"
                    )
                if isinstance(guide, ExpFamilyMixture):
                    stepper = ExpFamilyMixtureStepper
                self._stepper = stepper(model, guide, mc_samples)
                break
        self.rule_name = rule
        self.rule = RULES.get(rule)  # None for the rules with their own stepper
        if self._stepper is None:
            check_gaussian_guide(guide, "BLR")
            if isinstance(guide, AutoMultivariateNormal) and not self.rule.full_covariance:
                full = [name for name, r in RULES.items() if r.full_covariance]
                raise TypeError(
                    f"rule {rule!r} drives diagonal Gaussians only, not AutoMultivariateNormal: "
                    f"use rule {' or '.join(repr(n) for n in full)}, or "
                    "AutoNormal/AutoDiagonalNormal"
                )
        if not callable(lr):
            self._check_lr(lr)
        if not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        pairs = self.rule is not None and antithetic and not self.rule.at_mean
        if pairs and mc_samples % 2:
            raise ValueError(
                f"antithetic sampling draws pairs: mc_samples must be even, got {mc_samples} "
                "(or pass antithetic=False)"
            )
        _check_unit_interval("beta1", beta1)
        _check_unit_interval("beta2", beta2)
        if clip_radius is not None and not clip_radius > 0:
            raise ValueError(f"clip_radius must be positive, got {clip_radius}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        self.model = model
        self.guide = guide
        self.lr = lr
        self.mc_samples = mc_samples
        self.antithetic = antithetic
        self.weight_decay = weight_decay
        self.vectorize_particles = vectorize_particles
        self.max_plate_nesting = max_plate_nesting
        self._options = (
            {"beta1": beta1, "beta2": beta2, "clip_radius": clip_radius} if rule == "ivon" else {}
        )
        self._layout = None
        self._gaussian = None
        self._state = None
        self._pending = None
        self.num_steps = 0

    @staticmethod
    def _check_lr(lr: float) -> float:
        if not isinstance(lr, Real) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        return float(lr)

    # ------------------------------------------------------------------ set-up
    def _setup(self, args: tuple, kwargs: dict) -> None:
        guide = self.guide
        like = initialize_guide(guide, args, kwargs)
        model_trace = None
        if self.max_plate_nesting is None:
            model_trace = trace_without_rng(self.model, args, kwargs, like)
        layout = latent_layout(guide.prototype_trace, model_trace)
        if self.max_plate_nesting is not None:
            layout = type(layout)(layout.sites, layout.dim, self.max_plate_nesting)
        self._layout = layout
        self._gaussian = GaussianGuide(guide, layout)
        loc, precision = self._gaussian.read()
        self._state = self.rule.init(loc, precision)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.load_state_dict(pending)

    # ------------------------------------------------------------------ one step
    def _particles(self, loc: Tensor, precision: Tensor) -> Tensor:
        if self.rule.at_mean:
            return loc.unsqueeze(0)
        num = self.mc_samples // 2 if self.antithetic else self.mc_samples
        noise = torch.randn(num, loc.shape[-1], dtype=loc.dtype, device=loc.device)
        if self.antithetic:
            noise = torch.cat([noise, -noise])
        return gaussian_family(precision).sample(loc, precision, noise)

    def _neg_log_joint(self, theta: Tensor, args: tuple, kwargs: dict, terms_out=None) -> Tensor:
        value = neg_log_joint(
            self.model, self._layout, theta, args, kwargs, self.vectorize_particles, terms_out
        )
        if self.weight_decay:
            value = value + 0.5 * self.weight_decay * theta.square().sum(-1)
        return value

    def _check_finite(self, theta: Tensor, d: Derivatives, args: tuple, kwargs: dict) -> None:
        step = self.num_steps + 1
        kept = "the guide's parameters were left as they were before this step"
        if not torch.isfinite(d.value).all():
            traces = []
            with torch.no_grad():
                self._neg_log_joint(theta, args, kwargs, traces)
            bad = sorted(
                {
                    name
                    for trace in traces
                    for name, site in trace.nodes.items()
                    if "blr_log_prob" in site
                    and not torch.isfinite(torch.as_tensor(site["blr_log_prob"])).all()
                }
            )
            where = f"at site(s) {bad}" if bad else "in the log-Jacobian of a constrained site"
            raise FloatingPointError(
                f"BLR step {step}: the log joint is not finite {where}; {kept}"
            )
        for label, tensor in (("gradient", d.grad), ("Hessian", d.hess)):
            if tensor is None or torch.isfinite(tensor).all():
                continue
            bad_coords = (~torch.isfinite(tensor)).reshape(-1, self._layout.dim).any(0)
            sites = sorted({self._layout.site_at(int(i)) for i in bad_coords.nonzero()})
            raise FloatingPointError(
                f"BLR step {step}: the {label} is not finite at {sites}; {kept}"
            )

    def step(self, *args: Any, **kwargs: Any) -> float:
        """Take one BLR step with the model's arguments; returns the negative ELBO estimate.

        The loss is that of the guide before the step (as ``SVI.step`` reports it):
        :math:`\\frac1S\\sum_s \\ell(\\theta_s) - \\mathbb H[q]`, or for ``"newton"`` the
        delta-method value :math:`\\ell(m) + \\tfrac12\\operatorname{tr}(\\nabla^2\\ell(m)
        S^{-1}) - \\mathbb H[q]` (exact for quadratic :math:`\\ell`).

        Raises:
            FloatingPointError: the log joint, a gradient or a Hessian is not finite, or the
                update is; the message names the step and the sites, and the guide is unchanged.
        """
        lr = self._check_lr(self.lr(self.num_steps) if callable(self.lr) else self.lr)
        if self._stepper is not None:
            loss = self._stepper.step(args, kwargs, lr, self.num_steps + 1)
            self.num_steps += 1
            return loss
        if self._state is None:
            self._setup(args, kwargs)
        state = self._state
        loc, precision = state.loc, state.precision
        family = gaussian_family(precision)
        theta = self._particles(loc, precision)
        d = derivatives(
            lambda t: self._neg_log_joint(t, args, kwargs),
            theta,
            hessian=self.rule.curvature == "hessian",
        )
        self._check_finite(theta, d, args, kwargs)
        grad = d.grad.mean(0)
        if d.hess is None:
            hess = reparam_hessian_diagonal(d.grad, theta, loc, precision).mean(0)
        else:
            hess = d.hess.mean(0)
            if family.diagonal:
                hess = hess.diagonal()
        loss = d.value.mean() - family.entropy(precision)
        if self.rule.at_mean:  # delta method: E_q[l] = l(m) + tr(H S^-1) / 2 for quadratic l
            spread = family.solve(precision, hess)
            loss = loss + 0.5 * (spread.sum() if family.diagonal else spread.diagonal().sum())
        new_state = self.rule.update(state, grad, hess, lr, self.num_steps + 1, **self._options)
        if not all(torch.isfinite(t).all() for t in new_state):
            raise FloatingPointError(
                f"BLR step {self.num_steps + 1}: the update is not finite (lr={lr}); "
                "the guide's parameters were left as they were before this step"
            )
        self._gaussian.write(new_state.loc, new_state.precision)
        self._state = new_state
        self.num_steps += 1
        return float(loss)

    def fit(self, *args: Any, num_steps: int, progress: bool = True, **kwargs: Any) -> FitResult:
        """Take ``num_steps`` steps; returns the losses and the wall-clock seconds.

        Args:
            *args: the model's positional arguments.
            num_steps: how many steps to take.
            progress: show a tqdm progress bar with the current loss.
            **kwargs: the model's keyword arguments.
        """
        losses = []
        start = time.perf_counter()
        bar = tqdm(range(num_steps), disable=not progress, desc=f"BLR({self.rule_name})")
        for _ in bar:
            losses.append(self.step(*args, **kwargs))
            if progress:
                bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
        return FitResult(losses, time.perf_counter() - start)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The rule's state (mean, precision, momentum), the step counter and the rule's name."""
        if self._state is None:
            if self._pending is not None:
                return self._pending
            return {"rule": self.rule_name, "num_steps": self.num_steps, "state": None}
        state = {name: value.clone() for name, value in self._state._asdict().items()}
        return {"rule": self.rule_name, "num_steps": self.num_steps, "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict`; the guide's parameters are set to the restored Gaussian.

        If the driver has not run yet, the state is applied at the first step (after the guide
        is initialized).
        """
        if state_dict["rule"] != self.rule_name:
            raise ValueError(
                f"state_dict is of rule {state_dict['rule']!r}, this driver runs {self.rule_name!r}"
            )
        if self._state is None:
            self._pending = state_dict
            self.num_steps = state_dict["num_steps"]
            return
        if state_dict["state"] is None:
            return
        fields = state_dict["state"]
        current = self._state._asdict()
        for name, value in fields.items():
            if name not in current or value.shape != current[name].shape:
                raise ValueError(f"state_dict entry {name!r} does not fit this guide's latents")
        like = self._state.loc
        state = type(self._state)(
            **{k: v.to(dtype=like.dtype, device=like.device).clone() for k, v in fields.items()}
        )
        self._gaussian.write(state.loc, state.precision)
        self._state = state
        self.num_steps = state_dict["num_steps"]
