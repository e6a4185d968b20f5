r"""How :meth:`pyro_blr.BLR.fit` ends: the feed of batches, the averages kept along the way
(:class:`Stretches`), the divergence verdict, the choice of where the guide ends and the closing
Pareto check.

The functions take what they need as arguments (the model, the guide, a way to write a
candidate's natural parameters, the distributed reductions), so that they run and can be
tested without a driver; :meth:`pyro_blr.BLR.fit` calls them in that order after its loop.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence, Sized
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pyro_blr.blr.averaging import IterateAverage, compare, converged, diverged
from pyro_blr.core import KHAT_THRESHOLD, ParetoCheck, log_weights, pareto_check

__all__ = [
    "CHECK_PARTICLES",
    "COMPARE_PARTICLES",
    "DRIFT_NATS",
    "Candidate",
    "Feed",
    "Stretches",
    "check_pareto",
    "end_at_the_best",
    "raise_if_diverged",
]

COMPARE_PARTICLES = 32
"""Draws on which :meth:`pyro_blr.BLR.fit` compares the averaged guide with the last iterate
(the same draws for both, so that their difference has little Monte Carlo error)."""

DRIFT_NATS = 0.5
"""How far (nats) the guide of an earlier stretch of a fit must beat the end of the fit, beyond
four standard errors, for :meth:`pyro_blr.BLR.fit` to warn that the iterates drifted."""

CHECK_PARTICLES = 256
"""Draws of :meth:`pyro_blr.BLR.fit`'s closing Pareto check (see
:func:`pyro_blr.core.pareto_check`); the check runs when the fit itself drew at least as many
particles, so that it costs at most about one more pass of the fit's own model evaluations
(and never a Hessian)."""

logger = logging.getLogger(__name__)


class Feed:
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
        """The model's positional arguments for the next step."""
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


class Stretches:
    """What a fit keeps along the way to choose where it ends: the average of its late iterates
    (the second half of the steps, or with a stopping rule the last ``window``) and the average
    of the window of its lowest mean loss (with at least ``3 * window`` steps), and whether the
    stopping rule says to stop (see :func:`pyro_blr.blr.averaging.converged`).

    Args:
        blr: the driver whose iterates are averaged (see
            :class:`pyro_blr.blr.averaging.IterateAverage`).
        num_steps: :meth:`pyro_blr.BLR.fit`'s option of that name.
        window: :meth:`pyro_blr.BLR.fit`'s option of that name.
        tol: :meth:`pyro_blr.BLR.fit`'s option of that name.
        average: whether to keep the late average.
    """

    def __init__(self, blr: Any, num_steps: int, window: int, tol: float | None, average: bool):
        self.num_steps, self.window, self.tol, self.average = num_steps, window, tol, average
        self.running = IterateAverage(blr)  # the late iterates
        self.stretch = IterateAverage(blr)  # the iterates of the current window
        self.track = num_steps >= 3 * window  # room for an earlier stretch to compare with
        self.early = None  # the window of the lowest mean loss: (mean, first, last step, average)

    def after_step(self, t: int, losses: Sequence[float]) -> bool:
        """Record the iterate of step ``t`` (0-based) and its loss; ``True``: stop the fit."""
        window, tol = self.window, self.tol
        at_window = (t + 1) % window == 0
        if self.track:
            self.stretch.update()
            if at_window:
                mean = math.fsum(losses[-window:]) / window
                if self.early is None or mean < self.early[0]:
                    self.early = (mean, t + 2 - window, t + 1, self.stretch.average())
                self.stretch.reset()
        if self.average and (t >= self.num_steps // 2 or tol is not None):
            if tol is not None and at_window and t + 1 < self.num_steps:
                if converged(losses, window, tol):
                    self.running.update()
                    return True
                self.running.reset()  # with a stopping rule: average the last window only
            self.running.update()
            return False
        return tol is not None and at_window and converged(losses, window, tol)

    def candidates(self, num_losses: int) -> dict[str, Candidate]:
        """The averages the fit may end at instead of its last iterate, after ``num_losses``
        steps: ``"average"`` (of more than one late iterate) and ``"early"`` (a window that
        ended at least ``window`` steps before the end)."""
        out = {}
        if self.average and self.running.count > 1:
            what = f"the average of the last {self.running.count} iterates"
            out["average"] = Candidate(what, self.running.average())
        early = self.early
        if early is not None and early[2] <= num_losses - self.window:
            what = f"the average of steps {early[1]}-{early[2]} (the fit's lowest loss)"
            out["early"] = Candidate(what, early[3])
        return out


def raise_if_diverged(losses: Sequence[float], window: int, size: float, rule: str) -> None:
    """Raise ``FloatingPointError`` when the fit ended far above its best loss (see
    :func:`pyro_blr.blr.averaging.diverged`; ``size`` the problem's size in its terms)."""
    bad, final, best = diverged(losses, window, size=size)
    if bad:
        raise FloatingPointError(
            f"BLR.fit: the loss ended at {final:.4g} (mean of the steps after the best one, "
            f"at most {window}), far above the best of the run, {best:.4g}: the fit "
            "diverged and the guide holds a diverged iterate; lower lr or raise mc_samples"
            + ("" if rule != "ivon" else " (for 'ivon': or lower clip_radius)")
        )


class Candidate(NamedTuple):
    """A state the fit may end at: what to call it in messages, and its natural parameters."""

    what: str
    state: dict[str, Tensor]


def end_at_the_best(
    candidates: dict[str, Candidate],
    data: list[tuple] | None,
    kwargs: dict,
    *,
    model: Callable,
    guide: Any,
    nesting: int,
    load: Callable[[dict[str, Tensor]], None],
    reduce: Callable[[list[Tensor]], list[Tensor]] | None,
    lr_end: float,
    mc_samples: int,
) -> str:
    """Leave the guide at the late average, or at the last iterate where its ELBO beats the
    average's by more than :data:`DRIFT_NATS` and four standard errors on the same draws (a
    short fit, whose average lags behind: the jitter the average removes is too small for the
    draws to see, so a close call keeps the average); at the average of an earlier stretch of
    the fit only where that beats the end by the same margin, with a warning: the iterates
    drifted away from it.

    Args:
        candidates: ``"last"`` (the guide as it is), and any of ``"average"`` (the late
            average) and ``"early"`` (the average of the window of the lowest mean loss).
        data: the model's arguments to average the ELBO over (every batch of one pass), or
            ``None`` when they cannot be had (an unsized stream of batches): then the average
            is kept, unchecked.
        kwargs: the model's keyword arguments.
        model: the model.
        guide: the guide.
        nesting: the model's plate nesting.
        load: writes a candidate's natural parameters into the guide.
        reduce: the mean over the ranks of a distributed run (``None`` for one process).
        lr_end: the step size at the end of the fit, and ``mc_samples`` the draws a step, for
            the warning.

    Returns:
        The name of the candidate the guide was left at.
    """
    if data is None:
        if "average" in candidates:
            load(candidates["average"].state)
            return "average"
        return "last"

    def elbo_draws():
        with torch.no_grad():
            return torch.stack(
                [
                    log_weights(model, guide, args, kwargs, COMPARE_PARTICLES, nesting, False).joint
                    for args in data
                ]
            ).mean(0)

    names = list(candidates)
    choice = compare([candidates[n].state for n in names], load, elbo_draws, reduce)
    gains = dict(zip(names, choice.gains, strict=True))
    stderrs = dict(zip(names, choice.stderrs, strict=True))
    # The late average removes a constant step's jitter, which 32 draws cannot see: it is kept
    # unless the last iterate beats it clearly (a short fit, whose average lags far behind).
    end = "average" if "average" in gains else "last"
    if end == "average" and -gains["average"] > max(DRIFT_NATS, 4 * stderrs["average"]):
        end = "last"
    kept = end
    if "early" in gains:
        # An earlier stretch wins only by a clear margin: a close call between iterates
        # that all sit at the optimum must not trade the end of a converging fit for noise.
        diff = choice.draws[names.index("early")] - choice.draws[names.index(end)]
        lead, stderr = diff.mean(), diff.std() / math.sqrt(diff.numel())
        if reduce is not None:
            lead, stderr = reduce([lead.reshape(1), stderr.reshape(1)])
        lead, stderr = float(lead), float(stderr)
        if lead > max(DRIFT_NATS, 4 * stderr):
            kept = "early"
    if kept != "last":
        load(candidates[kept].state)
    logger.info(
        "BLR.fit: ELBO gains over the last iterate on the same %d draws: %s (standard "
        "errors %s); kept %s",
        COMPARE_PARTICLES,
        gains,
        choice.stderrs,
        candidates[kept].what,
    )
    if kept == "early":
        warnings.warn(
            f"BLR.fit: {candidates['early'].what} has an ELBO {lead:.3g} nats above "
            f"{candidates[end].what} (on the same {COMPARE_PARTICLES} draws, standard error "
            f"{stderr:.2g}): the iterates drifted away from what the fit had reached, so "
            "the guide ends there, short of the optimum. A step size that stays large "
            f"(lr {lr_end:g} at the end) with {mc_samples} draws a step "
            "biases the iterates; use a decaying lr, e.g. "
            f"lr=lambda t: {lr_end:g} / (1 + t / 20), and/or raise mc_samples",
            RuntimeWarning,
            stacklevel=4,
        )
    return kept


def check_pareto(
    model: Callable, guide: Any, args: tuple, kwargs: dict, nesting: int
) -> ParetoCheck:
    """The Pareto check of the fitted guide on :data:`CHECK_PARTICLES` draws; warns when its
    importance ratios have a heavy tail (k-hat above :data:`pyro_blr.core.KHAT_THRESHOLD`)."""
    pareto = pareto_check(model, guide, args, kwargs, CHECK_PARTICLES, nesting)
    if not pareto.usable:
        warnings.warn(
            f"BLR.fit: Pareto k-hat of log p - log q is {pareto.khat:.2f} (above "
            f"{KHAT_THRESHOLD} on {CHECK_PARTICLES} draws of the fitted guide, whose raw "
            f"weights have an effective sample size of {pareto.ess:.0f}{_equal_weights(pareto)}"
            "): the guide "
            "cannot represent this posterior (a funnel, hierarchical scales, a skewed or "
            "heavy tail) and its means and spreads may be off. Use a richer guide "
            "(pb.AutoMixture, pb.AutoFlow), raise mc_samples, or reweight the guide's "
            "draws by PSIS (pb.psis_diagnostic, pb.to_inference_data); "
            "fit(check=False) skips this check",
            RuntimeWarning,
            stacklevel=3,
        )
    return pareto


def _equal_weights(pareto: ParetoCheck) -> str:
    """A clause for the warning when the raw weights are nearly equal (effective sample size
    above 90% of the draws): then k-hat reads the shape of log p - log q beyond the draws
    (see :class:`pyro_blr.core.ParetoCheck`), not a draw that dominates."""
    if not pareto.ess > 0.9 * pareto.num_samples:
        return ""
    return (
        "; the weights are nearly equal, so k-hat reads how log p - log q rises beyond the "
        "draws (e.g. mass between modes the guide does not cover), not a draw that dominates"
    )
