r"""The Gaussian rules (``"ivon"``, ``"von"``, ``"vogn"``, ``"ogn"``, ``"newton"``, and the
optimizers as their limits, ``"sgd"``, ``"rmsprop"``, ``"adam"``) on Pyro's Gaussian autoguides.

Each step reads the guide's mean and precision, draws particles :math:`\theta_s = m \pm
S^{-1/2}\epsilon_s` (antithetic pairs by default; the mean itself for ``"newton"``), evaluates
:math:`\ell` with its gradient (and exact Hessian, or IVON's gradient-only estimate), applies the
rule and writes the new Gaussian back. The guide is the single source of truth: a change made to
it behind the driver's back (SVI steps, another driver, ``pyro.get_param_store`` edits) is picked
up at the next step, and only the rule's extra state (IVON's momentum) lives in the stepper.

**Local latents under subsampling** (``AutoNormal``, which keeps them per datum; rules ``"von"``
and ``"newton"``): this is natural-gradient stochastic variational inference for local-global
models (Hoffman, Blei, Wang & Paisley 2013). Each step draws the minibatch as the model draws it,
and the flat vector holds the global sites and the minibatch's rows of the local ones. The
minibatch log joint scales every local term by :math:`N/B`, which makes its gradient in the
global coordinates an unbiased estimate of the full-data one; in a local coordinate
:math:`z_i` only datum :math:`i`'s own terms appear, so dividing its gradient and curvature by
:math:`N/B` gives them exactly, and the rows drawn take a natural-gradient step on their own
exact objective while the others keep their values. The rows of a subsampled plate do not
interact, so the exact Hessian's diagonal there takes one Hessian-vector product per coordinate
of a row and per global coordinate (:meth:`~pyro_blr.core.LatentLayout.plate_groups`), not one
per coordinate of the minibatch; the first step checks this against the full Hessian and keeps
the full one for a model that ties rows together.

References:
    | Stochastic Variational Inference (Hoffman, Blei, Wang & Paisley, JMLR 2013)
    | https://jmlr.org/papers/v14/hoffman13a.html
"""

from __future__ import annotations

import math
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from torch import Tensor

from pyro_blr.blr import ivon_start
from pyro_blr.blr.averaging import diverging
from pyro_blr.blr.guide_io import GuideIO
from pyro_blr.blr.prior_scale import prior_scale
from pyro_blr.blr.reused_hessian import ReusedHessian
from pyro_blr.blr.rules import VON, Estimates, GaussianState
from pyro_blr.blr.step_back import StepBack
from pyro_blr.blr.steppers.base import StepInfo, Stepper, prepare_layout
from pyro_blr.blr.steppers.gaussian_checkpoints import GaussianCheckpoints
from pyro_blr.blr.steppers.gaussian_diagnosis import update_error
from pyro_blr.blr.steppers.gaussian_estimates import GaussianEstimates
from pyro_blr.blr.steppers.gaussian_prior import prior_groups, prior_precision
from pyro_blr.blr.steppers.minibatches import Minibatches
from pyro_blr.core import (
    GAUSSIAN_GUIDES,
    Target,
    all_finite,
    num_observations,
    rng_kept,
    trace_without_rng,
)
from pyro_blr.families import gaussian_family

__all__ = ["GaussianStepper"]


class GaussianStepper(GaussianEstimates, GaussianCheckpoints, Stepper):
    """Runs the Gaussian rules on ``AutoNormal`` and ``AutoDiagonalNormal``, and those with
    ``full_covariance`` (``"von"``, ``"vogn"``, ``"ogn"``, ``"newton"``, ``"sgd"``) on
    ``AutoMultivariateNormal``."""

    kind = "gaussian"
    distributable = True

    @classmethod
    def accepts(cls, guide: Any, rule: Any) -> bool:
        full = isinstance(guide, AutoMultivariateNormal)
        return isinstance(guide, GAUSSIAN_GUIDES) and (rule.full_covariance or not full)

    def __init__(self, model, guide, rule, options):
        super().__init__(model, guide, rule, options)
        self.layout, self.mode, self._io = None, None, None
        self._state = None
        self._local, self._per_step_minibatch, self._subsample = False, False, None
        self._batches = Minibatches()
        self._target: Target | None = None  # the model on the current data and minibatch
        self._groups, self._groups_checked = None, False
        self._started = False  # whether a step has run or a checkpoint was restored
        self._undo: StepBack | None = None  # how to retake the last step (non-local only)
        self._steps_back = True  # set at set-up: not for a model that draws minibatches
        every = options.hessian_every
        self._reused = ReusedHessian(every) if every > 1 else None  # von, newton
        # ivon and von start on the model's scale unless hess_init=None keeps the guide's
        self._starts = rule.option("hess_init") is not None
        self._scale: Tensor | None = None  # the prior's scale per coordinate, once computed

    # ---------------------------------------------------------------- the guide, read and written
    def _setup(self, args: tuple, kwargs: dict) -> None:
        allow_local = isinstance(self.guide, AutoNormal)
        self.layout, self.mode = prepare_layout(
            self.model, self.guide, args, kwargs, self.opts, allow_local=allow_local
        )
        self._io = GuideIO(self.guide, self.layout)
        self._target = None
        self._local = bool(self.layout.local_plates)
        # Local rows do not interact: the Hessian's diagonal takes one product per coordinate
        # of a row (plus one per global coordinate), not one per coordinate of the minibatch.
        like = next(iter(self.guide.parameters()))
        exact = self.rule.curvature == "hessian"
        self._groups = self.layout.plate_groups(like.device) if self._local and exact else None
        self._groups_checked = False
        if self._local and self.opts.hessian_every > 1:
            raise ValueError(
                f"sites local to the subsampled plate(s) {list(self.layout.local_plates)}: "
                "each step draws other rows, whose Hessian the last step's cannot stand for; "
                "leave hessian_every=1"
            )
        if self._local and not self.rule.drives_local:
            if self.follows_guide:  # the default rule follows the guide: VON for local latents
                self.rule, self.rule_name = VON(lr=self.rule.lr), "von"
                self.opts = self.opts._replace(beta1=0.9, beta2=0.999, clip_radius=0.1)
            else:
                kept = (
                    "a momentum" if self.rule_name == "ivon" else "a history (momentum, averages)"
                )
                raise ValueError(
                    f"sites local to the subsampled plate(s) {list(self.layout.local_plates)}: "
                    f"{type(self.rule).__name__} keeps {kept} per coordinate, which would be "
                    "needed per datum; use pb.VON(...) or pb.Newton(...) for local latents under "
                    "subsampling"
                )
        # Every particle must see the same minibatch: one drawn per step unless the plate path
        # (one model run for all particles) draws it anyway, and always for local latents.
        # set-up draws nothing a resumed run would miss
        self._batches = Minibatches()
        subsampled = self._batches.plan(self.model, args, kwargs, self._latents(), like)
        self._per_step_minibatch = self._local or (subsampled and self.mode != "plate")
        # Two steps' losses compare only on the same data: minibatches differ step to step.
        self._steps_back = not subsampled
        self.ess = self.opts.ess
        # the start and the perturbed RMSprop and Adam (Vadam's precision) use it
        if (self._starts or self.opts.perturb) and self.ess is None:
            # on the guide's starting values: a prior without a sampler is never sampled
            replayed = poutine.replay(self.model, trace=self.guide.prototype_trace)
            self.ess = num_observations(trace_without_rng(replayed, args, kwargs, like))
        if self.rule.curvature == "ggn" and self.layout.enumerated:
            raise ValueError(
                f"{type(self.rule).__name__} needs each datum's gradient, and the model's "
                f"enumerated site(s) {list(self.layout.enumerated)} tie the data to a sum over "
                "their values; use pb.VON(...), pb.IVON(...) or pb.Newton(...), which sum them "
                "out exactly"
            )
        if self.rule.curvature == "ggn":
            if self._local:
                raise ValueError(
                    f"sites local to the subsampled plate(s) {list(self.layout.local_plates)}: "
                    f"{type(self.rule).__name__} does not drive local latents; use pb.VON(...) or "
                    "pb.Newton(...)"
                )
            self._per_step_minibatch = subsampled  # one run per particle: share the minibatch

    def _latents(self) -> dict[str, Tensor]:
        """The guide's starting value of every latent site: a model run conditioned on them
        draws nothing but its minibatches."""
        nodes = self.guide.prototype_trace.nodes
        return {site.name: nodes[site.name]["value"] for site in self.layout.sites}

    def _current_state(self):
        """The rule's state with the guide's current Gaussian: the state written last while
        the guide's parameters are unchanged since (:class:`~pyro_blr.blr.guide_io.GuideIO`'s
        stamp, no read), else as read from the guide."""
        if self._state is not None and not self._local and self._io.unchanged():
            return self._state
        loc, precision = self._io.read(self._subsample)
        if self._state is None or self._local:
            return self.rule.init(GaussianState(loc, precision))
        return self._state._replace(loc=loc, precision=precision)

    def _guide_written_outside(self) -> None:
        if self._io is not None:
            self._io.forget()

    def _write(self, state) -> None:
        self._io.write(state.loc, state.precision, self._subsample)
        self._state, self._started = state, True

    # ---------------------------------------------------------------- one step
    def _units(self, args: tuple, kwargs: dict, like: Tensor, step_number: int) -> Tensor:
        """The prior's scale per coordinate (see :mod:`pyro_blr.blr.prior_scale`), NaN where
        unknown, computed once per stepper (the same on every rank: averaged)."""
        if self._scale is None:
            fn = lambda: prior_scale(self.model, self.layout, args, kwargs, like)  # noqa: E731
            scale = self.together(step_number, fn)
            if scale is None:  # a prior without a sampler: unit scale, as before
                scale = like.new_full((self.layout.dim,), math.nan)
            if self.collective is not None:
                (scale,) = self.collective.mean([scale])
            self._scale = scale
        return self._scale

    def _start(self, state, args: tuple, kwargs: dict, step_number: int) -> Tensor:
        """The starting precision (see :mod:`pyro_blr.blr.ivon_start`), a matrix for a
        full-covariance guide; the run's random stream is untouched."""
        loc, precision = state.loc, state.precision
        auto = self.opts.hess_init == "auto"
        scale = self._units(args, kwargs, loc, step_number) if auto else None

        def start() -> Tensor:
            fn = lambda t: self._neg_log_joint(t, self._hessian_mode())  # noqa: E731
            diagonal = precision if precision.dim() == 1 else precision.diagonal()
            trace = self.guide.prototype_trace
            with rng_kept(loc):  # a subsampled model draws its minibatch again here
                return ivon_start.starting_precision(
                    fn, self.layout, trace, self.ess, self.opts.hess_init, loc, diagonal, scale,
                    reduce=None if self.collective is None else self.collective.mean,
                )  # fmt: skip

        out = self.together(step_number, start)  # the same on every rank: curvatures reduced
        return out if precision.dim() == 1 else torch.diag_embed(out)

    def step(self, args: tuple, kwargs: dict, lr: float, step_number: int) -> StepInfo:
        if self.layout is None:
            self.together(step_number, lambda: self._setup(args, kwargs))
        self._join(step_number, args, kwargs)
        self._subsample = None
        if self._per_step_minibatch:
            like = next(iter(self.guide.parameters()))
            self._subsample = self.together(
                step_number,
                lambda: self._batches.draw(self.model, args, kwargs, self._latents(), like),
            )
        self._target = self.together(step_number, lambda: self._target_for(args, kwargs))
        state = self._current_state()
        if state is not self._state or not self._same_data():
            self._undo = None  # first step, local rows, guide changed outside, other data
        if state is not self._state and self._reused is not None:
            self._reused.reset()  # a Gaussian written from outside: a fresh Hessian
        if self.rule.option("clip_radius") is not None:
            self._units(args, kwargs, state.loc, step_number)  # the clip's units
        if not self._started and not self._local and self._starts:
            state = state._replace(precision=self._start(state, args, kwargs, step_number))
        loc, precision = state.loc, state.precision
        family = gaussian_family(precision)
        fresh = self._reused is None or self._reused.due()
        try:
            grad, hess, value = self.together(
                step_number,
                lambda: self._estimate(loc, precision, step_number, fresh),
            )
        except FloatingPointError as error:
            # Step back only where the last step caused it: in one process (in a distributed
            # run the other ranks see RankFailed), and where the state before that step is
            # still finite (a non-finite datum fails everywhere: the error is the user's).
            if self._undo is None or self.collective is not None:
                raise
            if not self._finite_at(self._undo.state.loc):
                raise
            return self._step_back(step_number, str(error).split(": ", 1)[-1].split("; ")[0])
        if self.collective is not None:  # one all-reduce: every rank then takes the same step
            if fresh and hess is not None:
                grad, hess, value = self.collective.mean([grad, hess, value])
            else:
                grad, value = self.collective.mean([grad, value])
        if self._reused is not None:
            hess = self._reused.use(loc, grad, hess if fresh else None, precision)
        # the delta method's trace term needs a Hessian (or its Gauss-Newton stand-in)
        curved = self.rule.at_mean and self.rule.curvature in ("hessian", "ggn")
        if self._local:  # local coordinates: their own terms exactly (see the module docstring)
            scale = self.layout.coordinate_scale(grad)
            grad, hess = grad / scale, hess / scale
            entropy = 0.5 * (scale * (1 + math.log(2 * math.pi) - precision.log())).sum()
            loss = value - entropy
            if curved:
                loss = loss + 0.5 * (scale * hess / precision).sum()
        else:
            loss = value - family.entropy(precision)
            if curved:  # delta method: E_q[l] = l(m) + tr(H S^-1) / 2 (quadratic l)
                spread = family.solve(precision, hess)
                loss = loss + 0.5 * (spread.sum() if family.diagonal else spread.diagonal().sum())
        loss = float(loss)
        if self._undo is not None and diverging(self._undo.loss, loss):
            return self._step_back(step_number, f"the loss rose to {loss:.4g}")
        self._take(state, grad, hess, lr, step_number)
        if not self._local and self._steps_back:
            data = self._target.stamp
            self._undo = StepBack(state, grad, hess, lr, step_number, loss, data=data)
        return StepInfo(loss)

    def _same_data(self) -> bool:
        """Whether this step's data are the very objects of the last step's, unchanged in place
        (only then are two steps' losses comparable: a step on other data may well have a
        larger loss). The Target is kept exactly while they are, so its stamp tells."""
        return self._undo is not None and self._undo.data is self._target.stamp

    def _target_for(self, args: tuple, kwargs: dict) -> Target:
        """The model on this data and this step's minibatch: the last step's Target while the
        data objects are the same (:meth:`pyro_blr.core.Target.matches`), else a new one."""
        target = self._target
        if target is None or not target.matches(args, kwargs):
            target = Target.build(
                self.model, args, kwargs, self.layout, self.mode,
                weight_decay=self.opts.weight_decay,
            )  # fmt: skip
        return target.with_subsample(self._subsample)

    def _prior_precision(self, state) -> Tensor:
        """Vadam's :math:`\\delta` at the state's mean (:func:`prior_precision`)."""
        target, loc = self._target, state.loc
        groups = prior_groups(self.layout, self.guide.prototype_trace, loc.device)
        return prior_precision(
            self.model, target.args, target.kwargs, self.layout, self._hessian_mode(), loc,
            weight_decay=self.opts.weight_decay, subsample=self._subsample,
            rule_name=type(self.rule).__name__, groups=groups,
        )  # fmt: skip

    @torch.no_grad()
    def _finite_at(self, loc: Tensor) -> bool:
        """Whether the log joint is finite at ``loc``."""
        return all_finite(self._neg_log_joint(loc[None]))

    def _take(self, state, grad: Tensor, hess: Tensor, lr: float, step_number: int):
        """Apply the rule to ``state`` and write the result into the guide, or raise
        FloatingPointError with the guide unchanged if the update is not finite or its
        precision cannot be factorized."""
        units = self._scale if self.rule.option("clip_radius") is not None else None
        ess, delta = None, None
        if self.opts.perturb:  # Vadam's precision v / N + delta
            ess, delta = self.ess, self.together(step_number, lambda: self._prior_precision(state))

        def update(state, grad, hess, lr, step):
            estimates = Estimates(grad, hess, step, units, ess=ess, prior_precision=delta)
            return self.rule.update(state, estimates, lr)[0]

        new_state, failure = None, None
        try:
            new_state = update(state, grad, hess, lr, step_number)
            if all_finite(*new_state):
                self._write(new_state)  # computes every parameter before writing any
                return
        except torch.linalg.LinAlgError as error:  # e.g. an overflowed full precision
            failure = error
        raise update_error(
            update,
            state,
            (grad, hess),
            lr,
            step_number,
            {},
            self.layout.site_at,
            new_state=new_state,
            error=failure,
        ) from failure

    def _step_back(self, step_number: int, reason: str) -> StepInfo:
        """Return to the state before the last step and retake it with half the step size
        (see :mod:`pyro_blr.blr.step_back`); the loss reported is that of the state returned
        to."""
        undo = self._undo.halved()
        if self._reused is not None:  # its Hessian and last step may be the rejected point's
            self._reused.reset()
        if undo.exhausted:
            self._write(undo.state)
            self._undo = None
            raise FloatingPointError(
                f"BLR step {step_number}: after step {undo.step_number} {reason}, and that step "
                f"diverged even at lr={undo.lr_now * 2:g} (lr={undo.lr:g} halved "
                f"{undo.halvings - 1} times): the fit diverged; lower lr or raise mc_samples. "
                f"The guide holds the state before step {undo.step_number}"
            )
        self._take(undo.state, undo.grad, undo.hess, undo.lr_now, step_number)
        self._undo = undo
        return StepInfo(undo.loss, stepped_back=reason)
