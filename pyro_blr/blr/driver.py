r"""``BLR``: the Bayesian learning rule as a drop-in for ``pyro.infer.SVI``.

The driver picks the stepper that runs the rule on the guide (:mod:`pyro_blr.blr.steppers`),
evaluates the step-size schedule, steps the model's own parameters (variational EM) and runs
the fit loop; its options are checked in :mod:`pyro_blr.blr.options`, the end of a fit (the
feed of batches, the divergence verdict, where the guide ends, the Pareto check) lives in
:mod:`pyro_blr.blr.fit_end`, the maths of each step in :mod:`pyro_blr.blr.rules` and its
estimation in the steppers.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import pyro.optim
import torch
from tqdm.auto import tqdm

from pyro_blr.blr.averaging import diverging, problem_size
from pyro_blr.blr.fit_end import (
    CHECK_PARTICLES,
    COMPARE_PARTICLES,
    Candidate,
    Feed,
    Stretches,
    check_pareto,
    end_at_the_best,
    raise_if_diverged,
)
from pyro_blr.blr.model_params import has_model_params, model_param_grads, model_trace
from pyro_blr.blr.options import (
    check_driver_options,
    check_fit_options,
    check_lr,
    check_optim,
    check_positive_int,
    collective_for,
    moved_option,
)
from pyro_blr.blr.rules import Rule, as_rule
from pyro_blr.blr.steppers import stepper_for
from pyro_blr.blr.steppers.base import step_options
from pyro_blr.core import DataStamp, model_keywords

__all__ = ["BLR", "COMPARE_PARTICLES", "FitResult"]

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

logger = logging.getLogger(__name__)


class FitResult(NamedTuple):
    """What :meth:`BLR.fit` returns.

    Attributes:
        losses: the loss (negative ELBO estimate) of every step.
        seconds: wall-clock time of the whole fit.
    """

    losses: list[float]
    seconds: float


class BLR:
    r"""The Bayesian learning rule, shaped like ``pyro.infer.SVI``.

    For a Gaussian guide, with the negative log joint
    :math:`\ell(\theta) = -\log p(\mathcal D, \theta)` in the guide's unconstrained coordinates
    (plates scaled by :math:`N/B` under subsampling, log-Jacobians of constrained sites
    included), every step is a natural-gradient step on the ELBO of
    :math:`q = \mathcal N(m, S^{-1})`:

    .. math::
        S \leftarrow (1-\rho) S + \rho\, \mathbb E_q[\nabla^2 \ell], \qquad
        m \leftarrow m - \rho\, S^{-1} \mathbb E_q[\nabla \ell],

    with the expectations and the positivity safeguard chosen by the rule, an object in the
    place ``pyro.infer.SVI`` keeps its optimizer (:mod:`pyro_blr.blr.rules`):
    :class:`~pyro_blr.blr.rules.IVON` (diagonal; gradient-only curvature, momentum),
    :class:`~pyro_blr.blr.rules.VON` (exact curvature at draws, Riemannian precision update),
    :class:`~pyro_blr.blr.rules.VOGN` and :class:`~pyro_blr.blr.rules.OGN` (the Gauss--Newton
    sum of per-datum gradients' outer products, at draws and at the mean),
    :class:`~pyro_blr.blr.rules.Newton` (gradient and Hessian at the mean). The prior comes from
    the model, so no weight decay is needed. :class:`pyro_blr.AutoExpFamily` and
    :class:`pyro_blr.AutoMixture` take the same step in their own natural parameters
    (:class:`~pyro_blr.blr.rules.ExpFamilyRule`, :class:`~pyro_blr.blr.rules.MixtureRule`).
    Each rule holds its own options (``lr``, ``mc_samples``, ...): an option exists only on
    the rule that uses it.

    Monte Carlo expectations use antithetic pairs :math:`m \pm S^{-1/2}\epsilon` by default, which
    make the gradient estimate exact on quadratic :math:`\ell` (the curvature is exact there
    where the rule uses the exact Hessian, ``VON`` and ``Newton``; IVON's gradient-only
    estimate of it is unbiased, not exact).

    References:
        | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
        | Variational Learning is Effective for Large Deep Networks (Shen et al., ICML 2024)
          https://arxiv.org/abs/2402.17641

    Args:
        model: a Pyro model, unchanged.
        guide: ``AutoNormal``, ``AutoDiagonalNormal`` or ``AutoMultivariateNormal`` of ``model``,
            or a :class:`pyro_blr.AutoExpFamily` or :class:`pyro_blr.AutoMixture`. The guide's
            parameters are the single source of truth: each step starts from what they hold.
        rule: a rule object such as ``pb.IVON(lr=0.1)`` or ``pb.VON(lr=0.5, mc_samples=4)``,
            a rule's name as a shorthand for its defaults (``"von"``), or ``None`` (the
            default) for the rule that follows the guide
            (:func:`pyro_blr.blr.rules.default_rule`): ``VON`` for ``AutoMultivariateNormal``,
            ``IVON`` for a diagonal Gaussian (``VON`` where its latents are local to a
            subsampled plate), ``ExpFamilyRule`` and ``MixtureRule`` for this package's
            guides. A Pyro optimizer or an ELBO here raises ``TypeError`` saying what to pass.
        model_optim: a Pyro optimizer (e.g. ``pyro.optim.Adam({"lr": 0.01})``) for the model's
            own parameters (``pyro.param`` sites, ``nn.Parameter`` of a ``PyroModule`` that
            are not ``PyroSample``), stepped on the ELBO gradient after each BLR step:
            variational EM, type-II maximum likelihood, as ``SVI`` learns them. When the model
            has parameters and ``model_optim`` is ``None``, ``pyro.optim.Adam({"lr": 0.01})``
            is used. Anything but a ``pyro.optim.PyroOptim`` raises ``TypeError``: the guide is
            stepped by the rule, never by ``model_optim``.
        process_group: the ``torch.distributed`` group to run over (see
            :mod:`pyro_blr.blr.distributed`): ``"auto"`` (the default) uses the default group
            when ``torch.distributed`` is initialized with more than one rank, ``None`` runs in
            one process. Each rank passes its own shard of the data (see
            :func:`pyro_blr.blr.distributed.shard_indices`); the guide's parameters are
            broadcast from rank 0 and every step averages the ranks' estimates in one
            all-reduce. Every guide the BLR drives.
        rank_noise: in a distributed run, draw each rank's particles from its own stream, so
            that :math:`K` ranks average :math:`K` times the particles; ``False`` uses the
            global RNG (the same draws on every rank seeded alike).
        vectorize_particles: ``"auto"`` (the default) evaluates the particles in the fastest way
            that gives the same numbers as one model run per particle, checked on probe particles
            at the first step: a plate left of the model's plates for broadcasting models,
            ``torch.func.vmap`` for models written ``X @ w``, ``a, b = w`` or with
            ``PyroModule[nn.Linear]``, a loop otherwise; ``True`` forces the plate, ``False``
            the loop.
        max_plate_nesting: the model's number of plate dimensions; found from a model trace when
            not given.
        model_steps: the optimizer steps on the model's parameters after each BLR step, each
            on a fresh one-draw ELBO gradient (variational EM: the BLR's E-step is exact or
            nearly so within a few steps, while Adam at lr 0.01 moves a log-scale parameter by
            at most 0.01 a step; one M-step per BLR step left the noise of a conjugate
            regression at 0.050 against its type-II maximum likelihood 0.0094 after 300 steps,
            five reach it). Only models with parameters pay for them.

    Attributes:
        num_steps: the steps taken so far (restored by :meth:`load_state_dict`).
        halvings: how often an exponential-family step was halved to keep the natural
            parameters valid (``"expfamily"`` and ``"mixture"``; never clamped).
        step_backs: how often the rule returned to the state before its previous step
            and retook that step with half the step size, because the loss had jumped far
            above its value before that step or was not finite (see
            :mod:`pyro_blr.blr.step_back`); warned about once per fit.
        stepped_back: whether the last step was such a step back.
        averaged: whether the last :meth:`fit` ended at the average of its late iterates
            (``False``: at its last iterate, which beat the average clearly or no average was kept,
            or, with a warning, at the average of an earlier stretch of the fit).
        pareto: the closing Pareto check of the last :meth:`fit`
            (:class:`pyro_blr.core.ParetoCheck`), ``None`` where it was skipped.

    Raises:
        TypeError: ``rule`` cannot drive this guide or is not a rule (an optimizer, an ELBO),
            ``model_optim`` is not a Pyro optimizer, or an option of a rule was passed to the
            driver (the message names the rule to pass it to).
        ValueError: an unknown rule name, or a driver option out of range.

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
        >>> loss = pb.BLR(model, guide, pb.Newton(lr=1.0)).step(y)
        >>> posterior = guide.get_posterior()  # exact: N(6/4, 1/4)
        >>> print(f"{posterior.mean.item():.4f} {posterior.variance.item():.4f}")
        1.5000 0.2500
    """

    def __init__(
        self,
        model: Callable,
        guide: object,
        rule: Rule | str | None = None,
        *,
        model_optim: pyro.optim.PyroOptim | None = None,
        process_group: Any = "auto",
        rank_noise: bool = True,
        vectorize_particles: bool | str = "auto",
        max_plate_nesting: int | None = None,
        model_steps: int = 5,
        **rule_options: Any,
    ):
        if rule_options:
            raise TypeError(moved_option(rule_options, rule, guide))
        follows_guide = rule is None
        rule = as_rule(rule, guide)
        stepper = stepper_for(rule, guide)
        check_driver_options(rule, vectorize_particles, max_plate_nesting)
        self.model_steps = check_positive_int("model_steps", model_steps)
        self.model = model
        self.guide = guide
        self.model_optim = check_optim(model_optim)
        self.num_steps = 0
        self.averaged = False
        self.pareto = None
        self.halvings = 0
        self.step_backs = 0
        self.stepped_back = False
        self._skipped_params = False
        options = step_options(rule, vectorize_particles, max_plate_nesting)
        self._stepper = stepper(model, guide, rule, options)
        self._stepper.follows_guide = follows_guide
        self._stepper.collective = collective_for(process_group, rank_noise, stepper, rule.name)
        self._pending = None
        self._model_params = None
        self._best = math.inf
        self._warned = self._warned_step_back = False
        self._sized = None  # (the data's shapes, the problem's size) of the last judged rise

    @property
    def rule(self) -> Rule:
        """The rule this driver runs (the guide's default switches IVON to VON for latents
        local to a subsampled plate at the first step)."""
        return self._stepper.rule

    @property
    def rule_name(self) -> str:
        """The rule's name (its string shorthand)."""
        return self._stepper.rule_name

    @property
    def lr(self) -> float | Callable[[int], float]:
        """The rule's step size: a float or a schedule ``step -> float``."""
        return self._stepper.rule.lr

    def natural_state(self) -> dict[str, torch.Tensor]:
        """The guide's distribution in natural parameters, detached (the rule's update is linear
        in them, so an average of these is a Polyak average of the iterates)."""
        return self._stepper.natural_state()

    def load_natural_state(self, state: dict[str, torch.Tensor]) -> None:
        """Write a :meth:`natural_state` (e.g. an average of several) into the guide."""
        self._stepper.load_natural_state(state)

    # ------------------------------------------------------------------ model parameters
    def _step_model_params(self, args: tuple, kwargs: dict) -> bool:
        """One optimizer step on the model's own parameters, on the ELBO gradient (as SVI);
        ``False`` when the step was skipped (a gradient that is not finite)."""
        names, params, grads = self._stepper.together(
            self.num_steps, lambda: model_param_grads(self.model, self.guide, args, kwargs)
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
        if self.model_optim is None:
            logger.info("the model has parameters: stepping them with Adam(lr=0.01)")
            self.model_optim = pyro.optim.Adam({"lr": 0.01})
        for param, grad in zip(params, grads, strict=True):
            param.grad = None if grad is None else grad.detach()
        self.model_optim([p for p in params if p.grad is not None])
        for param in params:
            param.grad = None
        return True

    def _has_model_params(self, args: tuple, kwargs: dict) -> bool:
        if self._model_params is None:
            self._model_params = has_model_params(self.model, self.guide, args, kwargs)
        return self._model_params

    # ------------------------------------------------------------------ one step
    def step(self, *args: Any, **kwargs: Any) -> float:
        r"""Take one BLR step with the model's arguments; returns the negative ELBO estimate.

        The loss is that of the guide before the step (as ``SVI.step`` reports it):
        :math:`\frac1S\sum_s \ell(\theta_s) - \mathbb H[q]`, or for ``"newton"`` the
        delta-method value :math:`\ell(m) + \tfrac12\operatorname{tr}(\nabla^2\ell(m)
        S^{-1}) - \mathbb H[q]` (exact for quadratic :math:`\ell`). A loss that climbs far
        above the best of the run, by more than :math:`100 + 10(N + D)` nats (see
        :func:`pyro_blr.blr.averaging.diverging`), warns once (once per :meth:`fit`).

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
        lr = check_lr(self.lr(self.num_steps) if callable(self.lr) else self.lr)
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
        self._watch(info.loss, lr, args, kwargs)
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

    def _watch(self, loss: float, lr: float, args: tuple, kwargs: dict) -> None:
        if not self._warned and math.isfinite(self._best) and self._diverging(loss, args, kwargs):
            self._warned = True
            warnings.warn(
                f"BLR step {self.num_steps}: the loss {loss:.4g} is far above the best of this "
                f"run, {self._best:.4g}: the fit is diverging; lower lr (now {lr:g}) or raise "
                "mc_samples",
                RuntimeWarning,
                stacklevel=3,
            )
        self._best = min(self._best, loss)

    def _diverging(self, loss: float, args: tuple, kwargs: dict) -> bool:
        """Whether ``loss`` is far above the best of the run (see
        :func:`pyro_blr.blr.averaging.diverging`); the problem's size is found (one model
        trace) only for a rise that could be a divergence at all."""
        if not diverging(self._best, loss, size=0):
            return False
        return diverging(self._best, loss, size=self._problem_size(args, kwargs))

    def _problem_size(self, args: tuple, kwargs: dict) -> float:
        """The number of observed data plus latent values on this data (see
        :func:`pyro_blr.blr.averaging.problem_size`), the same on every rank of a distributed
        run (their mean); cached while the data objects are the same in one process
        (:class:`pyro_blr.core.DataStamp`: tensors inside dicts and lists included)."""
        collective = self._stepper.collective
        if collective is None and self._sized is not None and self._sized[0].matches(args, kwargs):
            return self._sized[1]
        key = DataStamp.of(args, kwargs)
        size = float(problem_size(model_trace(self.model, self.guide, args, kwargs)))
        if collective is not None:
            (mean,) = collective.mean([torch.tensor([size], dtype=torch.float64)])
            size = float(mean)
        self._sized = (key, size)
        return size

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
        jitter a constant step leaves in the last iterate, and ends there unless the last
        iterate's ELBO beats the average's by more than
        :data:`pyro_blr.blr.fit_end.DRIFT_NATS` and four standard errors, both estimated on the
        same :data:`pyro_blr.blr.fit_end.COMPARE_PARTICLES` draws
        (:func:`pyro_blr.blr.averaging.paired_estimates`): an average over iterates still far
        from the optimum (a short fit) never replaces a clearly better last iterate. With at
        least ``3 * window`` steps the fit also keeps the average of the window of its lowest
        mean loss, and ends there instead, with a warning, only where its ELBO beats the end's
        by more than
        :data:`pyro_blr.blr.fit_end.DRIFT_NATS` and four standard errors on the same draws (the
        iterates drifted away from what the fit had reached).
        :attr:`averaged` says whether the late average was kept. The default (``None``) averages
        when ``lr`` is a constant and not when it is a schedule: a decaying schedule already
        damps the jitter. With ``tol`` the fit stops early once the mean loss of the last
        ``window`` steps is not ``tol`` nats below that of the ``window`` before
        (:func:`pyro_blr.blr.averaging.converged`); the average is then over the last
        ``window`` steps.

        The model's keyword arguments are passed as keywords, or in ``model_kwargs`` when the
        model has an argument named like an option of ``fit`` (``num_steps``, ``progress``,
        ``average``, ``tol``, ``window``, ``check``, ``batches``, ``model_kwargs``): such a call
        without ``model_kwargs`` raises ``TypeError`` rather than take the model's argument for
        the option (see :func:`pyro_blr.core.model_keywords`).

        Args:
            *args: the model's positional arguments.
            num_steps: the most steps to take (a non-negative integer).
            progress: show a tqdm progress bar with the current loss.
            average: end at the average of the late iterates unless the last one is clearly
                better (default: when ``lr`` is a constant).
            tol: stop when the moving-average loss improves by less than this (nats).
            window: the moving-average window of the stopping rule, in steps.
            check: end with a Pareto :math:`\hat k` check of the fitted guide as a proposal for
                the posterior, on :data:`pyro_blr.blr.fit_end.CHECK_PARTICLES` draws (skipped for
                a fit that drew
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
                full-data one: the candidates' ELBOs are averaged over one pass of a sized
                iterable (every batch); for an unsized stream the late average is kept
                unchecked.
            model_kwargs: the model's keyword arguments, e.g. ``model_kwargs={"window": 7}``
                for a model with an argument ``window``; ``None`` takes them from ``**kwargs``.
            **kwargs: the model's keyword arguments (when none is named like an option).

        Raises:
            TypeError: the model has an argument named like an option of ``fit`` and
                ``model_kwargs`` was not given, or keywords were given both ways.
            FloatingPointError: a step failed (see :meth:`step`), or the fit diverged: the mean
                loss of the steps after the best one (at most the last ``window``) is more than
                :math:`100 + 10(N + D)` nats above that best, :math:`N` the observed data and
                :math:`D` the latent values (see :func:`pyro_blr.blr.averaging.diverged`; the
                verdict does not depend on the data's units), so the guide holds no answer to
                trust.
        """
        kwargs = model_keywords(self.model, "BLR.fit", _FIT_OPTIONS, kwargs, model_kwargs)
        tol = check_fit_options(num_steps, tol, window)
        if average is None:
            average = not callable(self.lr)
        self._best, self._warned = math.inf, False  # divergence is judged within this fit
        self._warned_step_back = False
        self.averaged = False
        self.pareto = None
        losses = []
        stretches = Stretches(self, num_steps, window, tol, average)
        start = time.perf_counter()
        bar = tqdm(range(num_steps), disable=not progress, desc=f"BLR({self.rule_name})")
        feed = Feed(batches, args)
        for t in bar:
            args = feed.next()
            losses.append(self.step(*args, **kwargs))
            if progress:
                bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
            if stretches.after_step(t, losses):
                break
        if losses:
            size = self._problem_size(args, kwargs)
            raise_if_diverged(losses, window, size, self.rule_name)
        candidates = stretches.candidates(len(losses))
        if candidates:
            self._end_at_the_best(candidates, feed.one_pass(), kwargs)
        drawn = len(losses) * self._stepper.opts.mc_samples
        if check and drawn >= CHECK_PARTICLES and self._stepper.collective is None:
            nesting = self._stepper.layout.max_plate_nesting
            self.pareto = check_pareto(self.model, self.guide, args, kwargs, nesting)
        return FitResult(losses, time.perf_counter() - start)

    def _end_at_the_best(self, candidates: dict, data: list[tuple] | None, kwargs: dict) -> None:
        """Leave the guide at the best of the last iterate and ``candidates`` (see
        :func:`pyro_blr.blr.fit_end.end_at_the_best`)."""
        last = Candidate("the last iterate", self._stepper.natural_state())
        collective = self._stepper.collective
        kept = end_at_the_best(
            {"last": last, **candidates},
            data,
            kwargs,
            model=self.model,
            guide=self.guide,
            nesting=self._stepper.layout.max_plate_nesting,
            load=self._stepper.load_natural_state,
            reduce=None if collective is None else collective.mean,
            lr_end=self.lr(self.num_steps) if callable(self.lr) else self.lr,
            mc_samples=self._stepper.opts.mc_samples,
        )
        self.averaged = kept == "average"

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
        # a driver whose IVON was chosen by the guide runs VON on local latents (decided at set-up)
        switches = self._stepper.follows_guide and self.rule_name == "ivon"
        if state_dict["rule"] != self.rule_name and not (switches and state_dict["rule"] == "von"):
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
        stepped = self.num_steps > 0 or self._stepper.layout is not None
        if not state_dict["state"] and (steps > 0 or stepped):
            # A checkpoint of a driver that had not stepped holds no guide and no rule state:
            # loaded here it would reset the step count and keep this run's guide and momentum.
            raise ValueError(
                "state_dict was taken before the first step and holds no guide or rule state "
                f"(num_steps {steps}); this driver has stepped, so loading it would reset the "
                "step count but keep the guide and the rule's state as they are: load it into "
                "a new driver with a new guide, or take the checkpoint after a step"
            )
        if args or kwargs or self._stepper.layout is not None:
            self._apply(state_dict, args, kwargs)
        else:
            self._pending = state_dict

    def _apply(self, state_dict: dict, args: tuple, kwargs: dict) -> None:
        if state_dict["state"]:
            self._stepper.load_state_dict(state_dict["state"], args, kwargs)
        self.num_steps = state_dict["num_steps"]
