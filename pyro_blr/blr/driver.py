r"""``BLR``: the Bayesian learning rule as a drop-in for ``pyro.infer.SVI``.

The driver checks the options, picks the stepper that runs the rule on the guide
(:mod:`pyro_blr.blr.steppers`), evaluates the step-size schedule, steps the model's own
parameters (variational EM) and runs the fit loop; the maths of each step lives in
:mod:`pyro_blr.blr.rules` and its estimation in the steppers.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sized
from numbers import Integral, Real
from typing import Any, NamedTuple

import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from tqdm.auto import tqdm

from pyro_blr.blr.averaging import (
    IterateAverage,
    compare,
    converged,
    diverged,
    diverging,
)
from pyro_blr.blr.distributed import Collective
from pyro_blr.blr.steppers import StepOptions, stepper_for
from pyro_blr.core import (
    KHAT_THRESHOLD,
    log_weights,
    model_keywords,
    pareto_check,
    trace_without_rng,
)

__all__ = ["BLR", "COMPARE_PARTICLES", "FitResult"]

COMPARE_PARTICLES = 32
"""Draws on which :meth:`BLR.fit` compares the averaged guide with the last iterate (the same
draws for both, so that their difference has little Monte Carlo error)."""

DRIFT_NATS = 0.5
"""How far (nats) the guide of an earlier stretch of a fit must beat the end of the fit, beyond
four standard errors, for :meth:`BLR.fit` to warn that the iterates drifted."""

_FIT_OPTIONS = (
    "num_steps",
    "progress",
    "average",
    "tol",
    "window",
    "check",
    "batches",
    "model_kwargs",
)

CHECK_PARTICLES = 256
"""Draws of :meth:`BLR.fit`'s closing Pareto check (see :func:`pyro_blr.core.pareto_check`); the
check runs when the fit itself drew at least as many particles, so that it costs at most about
one more pass of the fit's own model evaluations (and never a Hessian)."""

logger = logging.getLogger(__name__)


class FitResult(NamedTuple):
    """What :meth:`BLR.fit` returns.

    Attributes:
        losses: the loss (negative ELBO estimate) of every step.
        seconds: wall-clock time of the whole fit.
    """

    losses: list[float]
    seconds: float


def _check_number(name: str, value: Any, low: float, high: float, closed_high: bool) -> float:
    """A real, non-bool number in [low, high) (or [low, high]); numpy and 0-d tensors welcome."""
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    inside = low <= value <= high if closed_high else low <= value < high
    if not inside or math.isnan(value):
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}{bracket}, got {value}")
    return value


def _check_positive_int(name: str, value: Any) -> int:
    """A positive integer, not a bool; numpy integers and integer 0-d tensors welcome."""
    if torch.is_tensor(value) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class _Feed:
    """The model's positional arguments for each step of a fit: ``args`` every step, or the
    next batch of an iterable, started over when it runs out."""

    def __init__(self, batches: Iterable | None, args: tuple):
        if batches is not None and args:
            raise TypeError(
                "BLR.fit: pass the data either as the model's positional arguments or as "
                "batches=, not both"
            )
        if batches is not None and not isinstance(batches, Iterable):
            raise TypeError(f"BLR.fit: batches must be an iterable, got {type(batches).__name__}")
        self.batches, self.args, self._it = batches, args, None

    def one_pass(self) -> list[tuple] | None:
        """The model's arguments for the comparisons at the end of a fit: the fit's ``args``,
        or every batch of one pass over a sized iterable (a minibatch's ELBO alone favours the
        iterate that just adapted to it); ``None`` for an unsized stream of batches."""
        if self.batches is None:
            return [self.args]
        if not isinstance(self.batches, Sized):
            return None
        return [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in self.batches]

    def next(self) -> tuple:
        if self.batches is None:
            return self.args
        for _ in range(2):  # one restart at most: an empty iterable is an error
            if self._it is None:
                self._it = iter(self.batches)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                continue
            return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        raise ValueError("BLR.fit: batches yielded no batch")


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
    ``"vogn"`` (diagonal or full; the Gauss--Newton sum of per-datum gradients' outer products as
    the Hessian),
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
            or a :class:`pyro_blr.AutoExpFamily` or :class:`pyro_blr.AutoMixture`. The guide's
            parameters are the single source of truth: each step starts from what they hold.
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float`` (``step`` counts
            the steps taken so far, from 0).
        rule: ``"ivon"``, ``"von"``, ``"vogn"`` (Gauss--Newton curvature from per-datum
            gradients) or ``"newton"`` for Gaussian guides; ``"expfamily"`` for
            :class:`pyro_blr.AutoExpFamily` (see :mod:`pyro_blr.blr.steppers.expfamily`);
            ``"mixture"`` for :class:`pyro_blr.AutoMixture` (see
            :mod:`pyro_blr.blr.steppers.mixture`). An option a rule does not use raises
            ``ValueError`` when given a non-default value.
        mc_samples: particles per step (ignored by ``"newton"``).
        antithetic: draw the particles in antithetic pairs (needs an even ``mc_samples``).
        beta1: IVON's gradient momentum.
        beta2: IVON's Hessian momentum.
        clip_radius: IVON's per-coordinate clip of the mean's update before the step size, so
            no coordinate moves by more than ``lr * clip_radius`` a step (``None``: no clip).
            It keeps the first steps safe while the curvature estimate grows to the data's
            scale (a network's hidden layers have no curvature at a symmetric start).
        weight_decay: an optional extra Gaussian penalty :math:`\delta \ge 0` on :math:`\theta`.
        vectorize_particles: ``"auto"`` (the default) evaluates the particles in the fastest way
            that gives the same numbers as one model run per particle, checked on probe particles
            at the first step: a plate left of the model's plates for broadcasting models,
            ``torch.func.vmap`` for models written ``X @ w``, ``a, b = w`` or with
            ``PyroModule[nn.Linear]``, a loop otherwise; ``True`` forces the plate, ``False``
            the loop.
        max_plate_nesting: the model's number of plate dimensions; found from a model trace when
            not given.
        ess: IVON's effective sample size :math:`N`: the number of observed data, found from
            the model's plates (a subsampled plate counts its full size) when ``None``.
        hess_init: where IVON's precision starts (see :mod:`pyro_blr.blr.ivon_start`).
            ``"auto"`` (the default): the expected Hessian diagonal at draws from the guide as
            it is (the BLR's fixed point evaluated at the start), capped by the larger of
            ``ess`` and the Hessian at the mean, up to 2048 coordinates; above that, ``ess``.
            A number: IVON's per-datum curvature :math:`h_0` in the data's units, the precision
            starting at ``ess * hess_init`` (``ess`` divided by the size of the plates a latent
            site lies in). Neither takes the guide's ``init_scale`` as the start. ``None``
            keeps the guide's own precision (e.g. to continue an earlier fit: a new driver
            with the default restarts the precision).
        hessian_every: ``"von"`` and ``"newton"`` compute the exact Hessian (one
            Hessian-vector product per coordinate: :math:`D` backward passes) at least every
            ``hessian_every`` steps and reuse the last one in between, where a step costs only
            its gradients; sooner when the last step's change of gradient shows the curvature
            off by more than a factor of two (see :mod:`pyro_blr.blr.reused_hessian`). The
            fixed point is unchanged. Not for latents local to a subsampled plate.
        process_group: the ``torch.distributed`` group to run over (see
            :mod:`pyro_blr.blr.distributed`): ``"auto"`` (the default) uses the default group
            when ``torch.distributed`` is initialized with more than one rank, ``None`` runs in
            one process. Each rank passes its own shard of the data (see
            :func:`pyro_blr.blr.distributed.shard_indices`); the guide's parameters are
            broadcast from rank 0 and every step averages the ranks' estimates in one
            all-reduce. Gaussian guides and ``AutoExpFamily``.
        rank_noise: in a distributed run, draw each rank's particles from its own stream, so
            that :math:`K` ranks average :math:`K` times the particles; ``False`` uses the
            global RNG (the same draws on every rank seeded alike).
        optim: a Pyro optimizer (e.g. ``pyro.optim.Adam({"lr": 0.01})``) for the model's own
            parameters (``pyro.param`` sites, ``nn.Parameter`` of a ``PyroModule`` that are not
            ``PyroSample``), stepped on the ELBO gradient after each BLR step: variational EM,
            type-II maximum likelihood, as ``SVI`` learns them. When the model has parameters
            and ``optim`` is ``None``, ``pyro.optim.Adam({"lr": 0.01})`` is used.
        model_steps: the optimizer steps on the model's parameters after each BLR step, each
            on a fresh one-draw ELBO gradient (variational EM: the BLR's E-step is exact or
            nearly so within a few steps, while Adam at lr 0.01 moves a log-scale parameter by
            at most 0.01 a step; one M-step per BLR step left the noise of a conjugate
            regression at 0.050 against its type-II maximum likelihood 0.0094 after 300 steps,
            five reach it). Only models with parameters pay for them. Anything but
            a ``pyro.optim.PyroOptim`` (a ``torch.optim`` class or instance) raises
            ``TypeError``: the guide is stepped by the rule, never by ``optim``.

    Attributes:
        num_steps: the steps taken so far (restored by :meth:`load_state_dict`).
        halvings: how often an exponential-family step was halved to keep the natural
            parameters valid (``"expfamily"`` and ``"mixture"``; never clamped).
        step_backs: how often a Gaussian rule returned to the state before its previous step
            and retook that step with half the step size, because the loss had jumped far
            above its value before that step or was not finite (see
            :mod:`pyro_blr.blr.step_back`); warned about once per fit.
        stepped_back: whether the last step was such a step back.
        averaged: whether the last :meth:`fit` ended at the average of its late iterates
            (``False``: at its last iterate, which had the higher ELBO or no average was kept).
        pareto: the closing Pareto check of the last :meth:`fit`
            (:class:`pyro_blr.core.ParetoCheck`), ``None`` where it was skipped.

    Raises:
        TypeError: ``rule`` cannot drive this guide, or ``optim`` is not a Pyro optimizer.
        ValueError: a hyperparameter is out of range, or an option ``rule`` does not use.

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
        clip_radius: float | None = 0.1,
        weight_decay: float = 0.0,
        vectorize_particles: bool | str = "auto",
        max_plate_nesting: int | None = None,
        optim: pyro.optim.PyroOptim | None = None,
        ess: float | None = None,
        hess_init: float | str | None = "auto",
        hessian_every: int = 1,
        process_group: Any = "auto",
        rank_noise: bool = True,
        model_steps: int = 5,
    ):
        stepper = stepper_for(rule, guide)
        if not callable(lr):
            lr = self._check_lr(lr)
        mc_samples = _check_positive_int("mc_samples", mc_samples)
        beta1 = _check_number("beta1", beta1, 0.0, 1.0, closed_high=False)
        beta2 = _check_number("beta2", beta2, 0.0, 1.0, closed_high=False)
        if clip_radius is not None:
            clip_radius = _check_number("clip_radius", clip_radius, 0.0, math.inf, True)
            if clip_radius == 0:
                raise ValueError("clip_radius must be positive, got 0")
        if (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, Real)
            or not (0 <= weight_decay < math.inf)
        ):
            raise ValueError(f"weight_decay must be non-negative and finite, got {weight_decay}")
        weight_decay = float(weight_decay)
        if vectorize_particles not in ("auto", True, False):
            raise ValueError(
                f"vectorize_particles must be 'auto', True or False, got {vectorize_particles!r}"
            )
        if max_plate_nesting is not None and (
            isinstance(max_plate_nesting, bool)
            or not isinstance(max_plate_nesting, int)
            or max_plate_nesting < 0
        ):
            raise ValueError(
                f"max_plate_nesting must be a non-negative integer, got {max_plate_nesting!r}"
            )
        if ess is not None:
            ess = _check_number("ess", ess, 0.0, math.inf, closed_high=False)
            if ess == 0:
                raise ValueError("ess must be positive, got 0")
        if isinstance(hess_init, str):
            if hess_init != "auto":
                raise ValueError(f"hess_init must be 'auto', a number or None, got {hess_init!r}")
        elif hess_init is not None:
            hess_init = _check_number("hess_init", hess_init, 0.0, math.inf, closed_high=False)
            if hess_init == 0:
                raise ValueError("hess_init must be positive, got 0 (or None to keep the guide's)")
        hessian_every = _check_positive_int("hessian_every", hessian_every)
        self.model_steps = _check_positive_int("model_steps", model_steps)
        options = StepOptions(
            mc_samples=mc_samples,
            antithetic=bool(antithetic),
            beta1=beta1,
            beta2=beta2,
            clip_radius=clip_radius,
            weight_decay=weight_decay,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=max_plate_nesting,
            ess=ess,
            hess_init=hess_init,
            hessian_every=hessian_every,
        )
        defaults = StepOptions()
        honoured = stepper.options[rule]
        for name, value in options._asdict().items():
            if name not in honoured and value != getattr(defaults, name):
                users = sorted(r for r, opts in stepper.options.items() if name in opts)
                named = ", ".join(repr(r) for r in users)
                where = f"rule{'s' if len(users) > 1 else ''} {named}" if users else "other rules"
                raise ValueError(
                    f"{name}={value!r} does not apply to rule {rule!r} (it is used by {where}); "
                    "leave it at its default"
                )
        self.model = model
        self.guide = guide
        self.lr = lr
        self.rule_name = rule
        self.optim = self._check_optim(optim)
        self.num_steps = 0
        self.averaged = False
        self.pareto = None
        self.halvings = 0
        self.step_backs = 0
        self.stepped_back = False
        self._skipped_params = False
        self._stepper = stepper(model, guide, rule, options)
        self._stepper.collective = self._collective(process_group, rank_noise, stepper, rule)
        self._pending = None
        self._model_params = None
        self._best = math.inf
        self._warned = self._warned_step_back = False

    @staticmethod
    def _collective(process_group: Any, rank_noise: bool, stepper: type, rule: str):
        """The distributed run's reductions, or ``None`` for a one-process run."""
        if process_group == "auto":
            running = torch.distributed.is_available() and torch.distributed.is_initialized()
            if not running or torch.distributed.get_world_size() == 1:
                return None
            process_group = None  # the default group
        elif process_group is None:
            return None
        if not stepper.distributable:
            raise ValueError(
                f"rule {rule!r} does not run distributed yet: use a Gaussian guide with rule "
                "'ivon', 'von', 'vogn' or 'newton' or an AutoExpFamily with 'expfamily', or pass "
                "process_group=None for one process"
            )
        return Collective(process_group, rank_noise=bool(rank_noise))

    @staticmethod
    def _check_optim(optim: Any) -> pyro.optim.PyroOptim | None:
        """``None`` or a Pyro optimizer: the one for the model's own parameters."""
        if optim is None or isinstance(optim, pyro.optim.PyroOptim):
            return optim
        what = (
            f"the class {optim.__module__}.{optim.__name__}"
            if isinstance(optim, type)
            else f"a {type(optim).__module__}.{type(optim).__name__}"
        )
        raise TypeError(
            f"optim must be a Pyro optimizer such as pyro.optim.Adam({{'lr': 0.01}}), got {what}: "
            "optim steps only the model's own parameters (pyro.param sites, nn.Parameter of a "
            "PyroModule that are not PyroSample), as SVI does; the guide is stepped by the "
            "rule (set its step size with lr=), not by an optimizer"
        )

    @staticmethod
    def _check_lr(lr: Any) -> float:
        if torch.is_tensor(lr) and lr.numel() == 1:
            lr = lr.item()
        if isinstance(lr, bool) or not isinstance(lr, Real) or not 0 < lr < math.inf:
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        return float(lr)

    # ------------------------------------------------------------------ model parameters
    def _step_model_params(self, args: tuple, kwargs: dict) -> bool:
        """One optimizer step on the model's own parameters, on the ELBO gradient (as SVI);
        ``False`` when the step was skipped (a gradient that is not finite)."""
        names, params, grads = self._stepper._together(
            self.num_steps, lambda: self._model_param_grads(args, kwargs)
        )
        if not params:
            return False
        if self._stepper.collective is not None:  # the same optimizer step on every rank
            grads = self._stepper.collective.mean(grads)
        bad = [n for n, g in zip(names, grads, strict=True) if not torch.isfinite(g).all()]
        if bad:
            # The ELBO gradient at a guide that overflowed: skip this step on the parameters
            # so that the next BLR step can step back from that guide; twice in a row
            # without a step back in between, the parameters themselves are at fault.
            if self._skipped_params and not self.stepped_back:
                raise FloatingPointError(
                    f"BLR step {self.num_steps}: the ELBO gradient of the model's parameter(s) "
                    f"{bad} is not finite two steps in a row; their values were left as they "
                    "were (lower the optimizer's learning rate, or check their initial values)"
                )
            self._skipped_params = True
            return False
        self._skipped_params = False
        if self.optim is None:
            logger.info("the model has parameters: stepping them with Adam(lr=0.01)")
            self.optim = pyro.optim.Adam({"lr": 0.01})
        for param, grad in zip(params, grads, strict=True):
            param.grad = None if grad is None else grad.detach()
        self.optim([p for p in params if p.grad is not None])
        for param in params:
            param.grad = None
        return True

    def _model_param_grads(self, args: tuple, kwargs: dict) -> tuple[list, list]:
        guide_params = {id(p) for p in self.guide.parameters()}
        with poutine.trace(param_only=True) as capture:
            loss = Trace_ELBO().differentiable_loss(self.model, self.guide, *args, **kwargs)
        sites = [
            (name, site["value"].unconstrained())
            for name, site in capture.trace.nodes.items()
            if id(site["value"].unconstrained()) not in guide_params
        ]
        if not sites:
            return [], [], []
        names, params = (list(x) for x in zip(*sites, strict=True))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
        ]
        return names, params, grads

    def _has_model_params(self, args: tuple, kwargs: dict) -> bool:
        if self._model_params is None:
            guide_params = {id(p) for p in self.guide.parameters()}
            replayed = poutine.replay(self.model, trace=self.guide.prototype_trace)
            like = next(iter(self.guide.parameters()))
            trace = trace_without_rng(replayed, args, kwargs, like)
            self._model_params = any(
                id(site["value"].unconstrained()) not in guide_params
                for site in trace.nodes.values()
                if site["type"] == "param"
            )
        return self._model_params

    # ------------------------------------------------------------------ one step
    def step(self, *args: Any, **kwargs: Any) -> float:
        r"""Take one BLR step with the model's arguments; returns the negative ELBO estimate.

        The loss is that of the guide before the step (as ``SVI.step`` reports it):
        :math:`\frac1S\sum_s \ell(\theta_s) - \mathbb H[q]`, or for ``"newton"`` the
        delta-method value :math:`\ell(m) + \tfrac12\operatorname{tr}(\nabla^2\ell(m)
        S^{-1}) - \mathbb H[q]` (exact for quadratic :math:`\ell`). A loss that climbs far
        above the best of the run (see :func:`pyro_blr.blr.averaging.diverging`) warns once.

        **A loop of your own ends at the last iterate.** With a constant ``lr`` that iterate
        jitters around the optimum by Monte Carlo and minibatch noise of order
        :math:`\sqrt{\rho}` (in a ``DataLoader`` loop it follows the last few batches: at
        lr 0.5 on Pyro's ``svi_torch.py`` example, 10 posterior sd off). Either pass the loader
        to :meth:`fit` (``blr.fit(num_steps=epochs * len(loader), batches=loader)``), which
        averages the late iterates and checks the average against the last one, or give a
        decaying schedule, e.g. ``lr=lambda t: 0.5 / (1 + t / 100)``, or average the late
        iterates yourself with :class:`pyro_blr.blr.IterateAverage`.

        Raises:
            FloatingPointError: the log joint, a gradient or a Hessian is not finite, or the
                update is, or its full precision cannot be factorized (naming float64 where
                the guide's dtype is what fails); the message names the step and the sites,
                and the guide is unchanged.
        """
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._apply(pending, args, kwargs)
        lr = self._check_lr(self.lr(self.num_steps) if callable(self.lr) else self.lr)
        info = self._stepper.step(args, kwargs, lr, self.num_steps + 1)
        self.num_steps += 1
        self.halvings += info.halvings
        self.stepped_back = info.stepped_back is not None
        if self.stepped_back:
            self.step_backs += 1
            self._warn_step_back(info.stepped_back, lr)
        if self._has_model_params(args, kwargs):
            for _ in range(self.model_steps):  # the rest wait for the next BLR step if skipped
                if not self._step_model_params(args, kwargs):
                    break
        self._watch(info.loss, lr)
        return info.loss

    def _warn_step_back(self, reason: str, lr: float) -> None:
        if not self._warned_step_back:
            self._warned_step_back = True
            warnings.warn(
                f"BLR step {self.num_steps}: {reason} after the previous step, so the driver "
                "returned to the state before it and retook it with half the step size (see "
                f"pyro_blr.blr.step_back); if this recurs (BLR.step_backs), lower lr (now {lr:g})",
                RuntimeWarning,
                stacklevel=3,
            )

    def _watch(self, loss: float, lr: float) -> None:
        if not self._warned and math.isfinite(self._best) and diverging(self._best, loss):
            self._warned = True
            warnings.warn(
                f"BLR step {self.num_steps}: the loss {loss:.4g} is far above the best of this "
                f"run, {self._best:.4g}: the fit is diverging; lower lr (now {lr:g}) or raise "
                "mc_samples",
                RuntimeWarning,
                stacklevel=3,
            )
        self._best = min(self._best, loss)

    def fit(
        self,
        *args: Any,
        num_steps: int,
        progress: bool = True,
        average: bool | None = None,
        tol: float | None = None,
        window: int = 20,
        check: bool = True,
        batches: Iterable | None = None,
        model_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> FitResult:
        r"""Take up to ``num_steps`` steps and leave the guide at a good point.

        With ``average=True`` the fit also keeps the Polyak average of the natural parameters
        of the second half of the steps (see :mod:`pyro_blr.blr.averaging`), which removes the
        jitter a constant step leaves in the last iterate, and ends at whichever of the average
        and the last iterate has the higher ELBO, both estimated on the same
        :data:`COMPARE_PARTICLES` draws (:func:`pyro_blr.blr.averaging.paired_estimates`): an
        average over iterates still far from the optimum (a short fit) never replaces a better
        last iterate. :attr:`averaged` says which was kept. The default (``None``) averages
        when ``lr`` is a constant and not when it is a schedule: a decaying schedule already
        damps the jitter. With ``tol`` the fit stops early once the mean loss of the last
        ``window`` steps is not ``tol`` nats below that of the ``window`` before
        (:func:`pyro_blr.blr.averaging.converged`); the average is then over the last
        ``window`` steps.

        The model's keyword arguments are passed as keywords, or in ``model_kwargs`` when the
        model has an argument named like an option of ``fit`` (``num_steps``, ``progress``,
        ``average``, ``tol``, ``window``, ``model_kwargs``): such a call without
        ``model_kwargs`` raises ``TypeError`` rather than take the model's argument for the
        option (see :func:`pyro_blr.core.model_keywords`).

        Args:
            *args: the model's positional arguments.
            num_steps: the most steps to take (a non-negative integer).
            progress: show a tqdm progress bar with the current loss.
            average: end at the better of the average of the late iterates and the last one
                (default: when ``lr`` is a constant).
            tol: stop when the moving-average loss improves by less than this (nats).
            window: the moving-average window of the stopping rule, in steps.
            check: end with a Pareto :math:`\hat k` check of the fitted guide as a proposal for
                the posterior, on :data:`CHECK_PARTICLES` draws (skipped for a fit that drew
                fewer particles than that, a subsampled model and a distributed run); a
                :math:`\hat k` above 0.7 warns, since the guide then misses posterior mass
                (a funnel, hierarchical scales, a skewed or heavy tail). :attr:`pareto` holds
                the result. ``False`` skips it.
            batches: an iterable of minibatches, e.g. a ``torch.utils.data.DataLoader``: step
                :math:`t` runs the model on the next batch (a tuple or list is the model's
                positional arguments, anything else its one argument; ``*args`` must be
                empty), starting the iterable over when it runs out. The model scales its
                minibatch as Pyro does (``pyro.plate(name, N, subsample_size=B)`` or
                ``subsample=``). The fit then protects the end of a minibatch loop as it does a
                full-data one (the late average, the comparison on the last batch).
            model_kwargs: the model's keyword arguments, e.g. ``model_kwargs={"window": 7}``
                for a model with an argument ``window``; ``None`` takes them from ``**kwargs``.
            **kwargs: the model's keyword arguments (when none is named like an option).

        Raises:
            TypeError: the model has an argument named like an option of ``fit`` and
                ``model_kwargs`` was not given, or keywords were given both ways.
            FloatingPointError: a step failed (see :meth:`step`), or the fit diverged: the mean
                loss of the steps after the best one (at most the last ``window``) is far above
                that best (see :func:`pyro_blr.blr.averaging.diverged`), so the guide holds no
                answer to trust.
        """
        kwargs = model_keywords(self.model, "BLR.fit", _FIT_OPTIONS, kwargs, model_kwargs)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
        if tol is not None:
            tol = _check_number("tol", tol, 0.0, math.inf, closed_high=False)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        if average is None:
            average = not callable(self.lr)
        self._best, self._warned = math.inf, False  # divergence is judged within this fit
        self._warned_step_back = False
        self.averaged = False
        self.pareto = None
        losses = []
        running = IterateAverage(self)  # the late iterates
        stretch = IterateAverage(self)  # the iterates of the current window
        track = num_steps >= 3 * window  # room for an earlier stretch to compare with the end
        early = None  # the window of the lowest mean loss: (mean, first, last step, average)
        start_averaging = num_steps // 2
        start = time.perf_counter()
        bar = tqdm(range(num_steps), disable=not progress, desc=f"BLR({self.rule_name})")
        feed = _Feed(batches, args)
        for t in bar:
            args = feed.next()
            losses.append(self.step(*args, **kwargs))
            if progress:
                bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
            if track:
                stretch.update()
                if (t + 1) % window == 0:
                    mean = math.fsum(losses[-window:]) / window
                    if early is None or mean < early[0]:
                        early = (mean, t + 2 - window, t + 1, stretch.average())
                    stretch.reset()
            if average and (t >= start_averaging or tol is not None):
                if tol is not None and (t + 1) % window == 0 and t + 1 < num_steps:
                    if converged(losses, window, tol):
                        running.update()
                        break
                    running.reset()  # with a stopping rule: average the last window only
                running.update()
            elif tol is not None and (t + 1) % window == 0 and converged(losses, window, tol):
                break
        bad, final, best = diverged(losses, window)
        if bad:
            raise FloatingPointError(
                f"BLR.fit: the loss ended at {final:.4g} (mean of the steps after the best one, "
                f"at most {window}), far above the best of the run, {best:.4g}: the fit "
                "diverged and the guide holds a diverged iterate; lower lr or raise mc_samples"
                + ("" if self.rule_name != "ivon" else " (for 'ivon': or lower clip_radius)")
            )
        candidates = {}
        if average and running.count > 1:
            candidates["average"] = (f"the average of the last {running.count} iterates", None)
        if early is not None and early[2] <= len(losses) - window:
            what = f"the average of steps {early[1]}-{early[2]} (the fit's lowest loss)"
            candidates["early"] = (what, early[3])
        if candidates:
            if "average" in candidates:
                candidates["average"] = (candidates["average"][0], running.average())
            last = ("the last iterate", self._stepper.natural_state())
            self._end_at_the_best({"last": last, **candidates}, feed.one_pass(), kwargs)
        drawn = len(losses) * self._stepper.opts.mc_samples
        if check and drawn >= CHECK_PARTICLES and self._stepper.collective is None:
            self._check_pareto(args, kwargs)
        return FitResult(losses, time.perf_counter() - start)

    def _check_pareto(self, args: tuple, kwargs: dict) -> None:
        """Warn when the fitted guide's importance ratios have a heavy tail (k-hat > 0.7)."""
        nesting = self._stepper.layout.max_plate_nesting
        self.pareto = pareto_check(self.model, self.guide, args, kwargs, CHECK_PARTICLES, nesting)
        if not self.pareto.usable:
            warnings.warn(
                f"BLR.fit: Pareto k-hat of log p - log q is {self.pareto.khat:.2f} (above "
                f"{KHAT_THRESHOLD} on {CHECK_PARTICLES} draws of the fitted guide): the guide "
                "cannot represent this posterior (a funnel, hierarchical scales, a skewed or "
                "heavy tail) and its means and spreads may be off. Use a richer guide "
                "(pb.AutoMixture, pb.AutoFlow), raise mc_samples, or reweight the guide's "
                "draws by PSIS (pb.psis_diagnostic, pb.to_inference_data); "
                "fit(check=False) skips this check",
                RuntimeWarning,
                stacklevel=3,
            )

    def _end_at_the_best(
        self, candidates: dict[str, tuple[str, dict]], data: list[tuple] | None, kwargs: dict
    ) -> None:
        """Leave the guide at the better of the last iterate and the late average, by their ELBO
        on the same draws (a tie keeps the last iterate); at the average of an earlier stretch
        of the fit only where that beats both by more than :data:`DRIFT_NATS` and four standard
        errors, with a warning: the iterates drifted away from it. ``data``: the model's
        arguments to average the ELBO over (every batch of one pass), or ``None`` when they
        cannot be had (an unsized stream of batches): then the average is kept, unchecked."""
        if data is None:
            if "average" in candidates:
                self._stepper.load_natural_state(candidates["average"][1])
                self.averaged = True
            return
        nesting = self._stepper.layout.max_plate_nesting

        def elbo_draws():
            with torch.no_grad():
                return torch.stack(
                    [
                        log_weights(
                            self.model, self.guide, args, kwargs, COMPARE_PARTICLES, nesting, False
                        ).joint
                        for args in data
                    ]
                ).mean(0)

        collective = self._stepper.collective
        names = list(candidates)
        choice = compare(
            [candidates[n][1] for n in names],
            self._stepper.load_natural_state,
            elbo_draws,
            None if collective is None else collective.mean,
        )
        gains = dict(zip(names, choice.gains, strict=True))
        end = max((n for n in names if n != "early"), key=gains.__getitem__)
        kept = end
        if "early" in gains:
            # An earlier stretch wins only by a clear margin: a close call between iterates
            # that all sit at the optimum must not trade the end of a converging fit for noise.
            diff = choice.draws[names.index("early")] - choice.draws[names.index(end)]
            lead, stderr = diff.mean(), diff.std() / math.sqrt(diff.numel())
            if collective is not None:
                lead, stderr = collective.mean([lead.reshape(1), stderr.reshape(1)])
            lead, stderr = float(lead), float(stderr)
            if lead > max(DRIFT_NATS, 4 * stderr):
                kept = "early"
        self.averaged = kept == "average"
        if kept != "last":
            self._stepper.load_natural_state(candidates[kept][1])
        logger.info(
            "BLR.fit: ELBO gains over the last iterate on the same %d draws: %s (standard "
            "errors %s); kept %s",
            COMPARE_PARTICLES,
            gains,
            choice.stderrs,
            candidates[kept][0],
        )
        if kept == "early":
            lr = self.lr(self.num_steps) if callable(self.lr) else self.lr
            warnings.warn(
                f"BLR.fit: {candidates['early'][0]} has an ELBO {lead:.3g} nats above "
                f"{candidates[end][0]} (on the same {COMPARE_PARTICLES} draws, standard error "
                f"{stderr:.2g}): the iterates drifted away from what the fit had reached, so "
                "the guide ends there, short of the optimum. A step size that stays large "
                f"(lr {lr:g} at the end) with {self._stepper.opts.mc_samples} draws a step "
                "biases the iterates; use a decaying lr, e.g. "
                f"lr=lambda t: {lr:g} / (1 + t / 20), and/or raise mc_samples",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The rule's name, the step counter and the stepper's state (tensors only), ready for
        ``torch.save`` and ``torch.load(weights_only=True)``."""
        if self._pending is not None:
            return self._pending
        return {
            "rule": self.rule_name,
            "num_steps": self.num_steps,
            "state": self._stepper.state_dict(),
        }

    def load_state_dict(self, state_dict: dict, *args: Any, **kwargs: Any) -> None:
        """Restore a :meth:`state_dict` into the guide and the driver.

        The checkpoint is checked whole before anything changes (rule, keys, shapes, finite and
        valid values) and rejected with ``ValueError`` if anything is off. Pass the model's
        arguments to restore at once; without them (a driver that has not run yet), the
        checkpoint is restored at the first step, before it draws.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"rule", "num_steps", "state"}:
            raise ValueError(
                "state_dict must be a dict with keys 'rule', 'num_steps' and 'state', as "
                "BLR.state_dict() returns"
            )
        if state_dict["rule"] != self.rule_name:
            raise ValueError(
                f"state_dict is of rule {state_dict['rule']!r}, this driver runs {self.rule_name!r}"
            )
        steps = state_dict["num_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(
                f"state_dict entry 'num_steps' must be a non-negative integer: {steps!r}"
            )
        if not isinstance(state_dict["state"], dict):
            raise ValueError("state_dict entry 'state' must be a dict")
        if args or kwargs or self._stepper.layout is not None:
            self._apply(state_dict, args, kwargs)
        else:
            self._pending = state_dict

    def _apply(self, state_dict: dict, args: tuple, kwargs: dict) -> None:
        if state_dict["state"]:
            self._stepper.load_state_dict(state_dict["state"], args, kwargs)
        self.num_steps = state_dict["num_steps"]
