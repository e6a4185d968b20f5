"""What the property tests share: random tiny models, every rule with every guide it accepts, and
the helpers that fit a guide and read its posterior back.

The models are Bayesian linear models in float64 with a Gaussian prior on the weights,

    w ~ N(0, prior_scale^2 I),   y_i ~ N(x_i^T w, noise^2)   or   y_i ~ Bernoulli(sigmoid(x_i^T w)),

a conjugate one (closed-form posterior and evidence) and a GLM. Hypothesis draws the number of
data, the number of features, the prior scale, the noise, and the seed of the data.

The relations are checked on the same random stream on both sides (``pyro.set_rng_seed`` before
every fit and every draw), so the two sides make the same draws and every relation holds up to
floating-point rounding, not Monte Carlo error: the tolerances come from rounding (see
:data:`RTOL`).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal
from torch import Tensor

import pyro_blr as pb
from pyro_blr.blr.rules import rule_from_name

F64 = torch.float64

# Both sides of a relation make the same draws, so they differ by rounding only: each side rounds
# every operation to a relative 2^-53 = 1.1e-16, and a step's linear solve amplifies that by the
# condition number of the posterior precision, at most 1 + (prior_scale / noise)^2 * the largest
# eigenvalue of X^T X <= 1 + (10 / 0.3)^2 * 60 < 7e4 for the data drawn here. Three steps and
# the model's own sums give less than 3 * 100 * 7e4 * 1.1e-16 = 2.3e-9; 1e-7 leaves a margin of
# 40 and still fails any error of a real relation (a lost unit, a dropped datum, a wrong scale
# are all of order one).
RTOL = 1e-7

PROFILES = [
    pytest.param("blr-default", id="default"),
    pytest.param("blr-slow", id="slow", marks=pytest.mark.slow),
]
"""Every property test runs under each profile (registered in ``conftest.py``)."""


EXAMPLES_RUN: Counter = Counter()
"""Examples each profile ran in this session (explicit, generated and shrinking), printed at the
end of the run by ``conftest.py``."""


def profile_settings(profile: str, **overrides):
    """Decorate a ``@given`` property with the settings of ``profile`` (and ``overrides``), and
    count the examples it runs in :data:`EXAMPLES_RUN`."""

    def decorate(test):
        inner = test.hypothesis.inner_test

        @functools.wraps(inner)
        def counted(*args, **kwargs):
            EXAMPLES_RUN[profile] += 1
            return inner(*args, **kwargs)

        test.hypothesis.inner_test = counted
        return settings(settings.get_profile(profile), **overrides)(test)

    return decorate


# ------------------------------------------------------------------ models
def linear_model(likelihood: str, prior_scale: float, noise: float) -> Callable:
    """A Bayesian linear model ``model(X, y)`` with a Gaussian prior of scale ``prior_scale``."""

    def model(X: Tensor, y: Tensor) -> None:
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), prior_scale).to_event(1))
        with pyro.plate("data", X.shape[0]):
            if likelihood == "normal":
                pyro.sample("y", dist.Normal(X @ w, noise), obs=y)
            else:
                pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)

    return model


@dataclass(frozen=True)
class Problem:
    """A model and its data."""

    likelihood: str
    X: Tensor = field(repr=False)
    y: Tensor = field(repr=False)
    prior_scale: float
    noise: float
    seed: int

    @property
    def num_data(self) -> int:
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    @property
    def model(self) -> Callable:
        return linear_model(self.likelihood, self.prior_scale, self.noise)

    @property
    def args(self) -> tuple[Tensor, Tensor]:
        return self.X, self.y

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return (
            f"Problem({self.likelihood!r}, num_data={self.num_data}, dim={self.dim}, "
            f"prior_scale={self.prior_scale!r}, noise={self.noise!r}, seed={self.seed})"
        )

    # The exact posterior of the conjugate (normal) model.
    def posterior(self) -> tuple[Tensor, Tensor]:
        """The exact posterior mean and covariance (``likelihood == "normal"`` only)."""
        eye = torch.eye(self.dim, dtype=F64)
        precision = eye / self.prior_scale**2 + self.X.T @ self.X / self.noise**2
        cov = torch.linalg.inv(precision)
        return cov @ self.X.T @ self.y / self.noise**2, cov


def make_problem(likelihood: str, num_data: int, dim: int, prior_scale: float, noise: float,
                 seed: int) -> Problem:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=gen, dtype=F64)
    w = torch.randn(dim, generator=gen, dtype=F64)
    if likelihood == "normal":
        y = X @ w + noise * torch.randn(num_data, generator=gen, dtype=F64)
    else:
        y = torch.bernoulli(torch.sigmoid(X @ w), generator=gen)
    return Problem(likelihood, X, y, float(prior_scale), float(noise), seed)


@st.composite
def problems(draw, likelihoods=("normal", "bernoulli"), max_data: int = 10) -> Problem:
    """Tiny linear models: 1 to ``max_data`` data, 1 to 3 features, prior scale 0.1 to 10,
    noise 0.3 to 3 (for ``"normal"``), any seed."""
    return make_problem(
        draw(st.sampled_from(likelihoods)),
        draw(st.integers(1, max_data)),
        draw(st.integers(1, 3)),
        10 ** draw(st.floats(-1, 1)),
        10 ** draw(st.floats(-0.5, 0.5)),
        draw(st.integers(0, 2**16)),
    )


# ------------------------------------------------------------------ rules and guides
GUIDES: dict[str, Callable] = {
    "AutoNormal": AutoNormal,
    "AutoDiagonalNormal": AutoDiagonalNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoExpFamily": pb.AutoExpFamily,
}
MIXTURES = ("diagonal", "full", "expfamily")


@dataclass(frozen=True)
class Case:
    """A rule, a guide it accepts and any non-default options of the driver."""

    rule: str
    guide: str
    options: tuple = ()

    @property
    def id(self) -> str:
        extra = "".join(f"-{k}={v}" for k, v in self.options)
        return f"{self.rule}-{self.guide}{extra}"

    def make_guide(self, model: Callable, unit: float = 1.0, init_loc_fn: Callable | None = None):
        """The guide, its start in the units ``unit`` (init scale and spread times ``unit``),
        so that a start in other units is the same start rescaled; ``init_loc_fn`` (default:
        the guide's own) where a relation needs both sides to start at the same point."""
        init = {} if init_loc_fn is None else {"init_loc_fn": init_loc_fn}
        if self.guide.startswith("AutoMixture"):
            component = self.guide.split("-")[1]
            return pb.AutoMixture(model, num_components=2, component=component,
                                  init_scale=0.1 * unit, init_spread=unit, **init)  # fmt: skip
        return GUIDES[self.guide](model, init_scale=0.1 * unit, **init)

    def driver(self, model: Callable, guide, lr: float, **options) -> pb.BLR:
        """The case's driver: ``options`` the driver takes go to it, the rest to the rule."""
        driver = {k: options.pop(k) for k in list(options) if k in DRIVER_OPTIONS}
        rule = rule_from_name(self.rule, lr=lr, **dict(self.options), **options)
        return pb.BLR(model, guide, rule, **driver)

    def with_options(self, **options) -> Case:
        return replace(self, options=tuple(sorted({**dict(self.options), **options}.items())))


DRIVER_OPTIONS = {
    "model_optim", "process_group", "rank_noise", "vectorize_particles", "max_plate_nesting",
    "model_steps",
}  # fmt: skip

CASES = [
    *(Case("ivon", g) for g in ("AutoNormal", "AutoDiagonalNormal")),
    *(Case(r, g) for r in ("von", "vogn", "newton")
      for g in ("AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal")),
    Case("expfamily", "AutoExpFamily"),
    *(Case("mixture", f"AutoMixture-{c}") for c in MIXTURES),
]  # fmt: skip
"""Every rule with every guide it accepts (fifteen cases)."""

GAUSSIAN_GUIDES = ("AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal")


def case_params(cases: list[Case], xfails: dict[str, str] | None = None) -> list:
    """``pytest.param`` of each case, those in ``xfails`` (by id) marked strict xfail."""
    xfails = xfails or {}
    params = []
    for c in cases:
        marks = [pytest.mark.xfail(strict=True, reason=xfails[c.id])] if c.id in xfails else []
        params.append(pytest.param(c, id=c.id, marks=marks))
    return params


# ------------------------------------------------------------------ fitting and reading
@dataclass
class Fit:
    """A fitted guide. Pyro's autoguides keep their parameters in the global param store under
    names of their own, so a guide must be read before the next fit clears the store: ``draws``
    and ``out`` are read at once."""

    guide: object
    driver: pb.BLR
    losses: list[float]
    draws: Tensor | None
    out: object = None
    refused: str | None = None
    """A fit that ``BLR.fit`` called diverged: its error, up to the first colon."""


def fit(case: Case, model: Callable, args: tuple, steps: int, lr: float, unit: float = 1.0,
        seed: int = 0, then: Callable | None = None, init_loc_fn: Callable | None = None,
        via_fit: bool = False, **options) -> Fit:  # fmt: skip
    """``steps`` BLR steps of ``case`` from a fresh param store and the RNG seeded ``seed``, by
    ``BLR.step`` or (``via_fit``) by ``BLR.fit``, which ends at the average of the late iterates;
    ``then(model, guide, args)``, if given, is called on the fitted guide (its result in
    ``Fit.out``)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = case.make_guide(model, unit, init_loc_fn)
    driver = case.driver(model, guide, lr, **options)
    if via_fit:
        try:
            losses = driver.fit(*args, num_steps=steps, progress=False).losses
        except FloatingPointError as error:  # a diverging fit (diagonal Newton at lr 1, say)
            refused = ":".join(f"FloatingPointError: {error}".split(":")[:2])
            return Fit(guide, driver, [], None, refused=refused)
    else:
        losses = [driver.step(*args) for _ in range(steps)]
    draws = guide_draws(guide, args)
    out = None if then is None else then(model, guide, args)
    return Fit(guide, driver, losses, draws, out)


def refused_alike(one: Fit, other: Fit) -> bool:
    """Whether both fits were refused as diverged, which is a relation too (the verdict must not
    depend on the data's units or on how the data are weighted); only one refused fails."""
    assert one.refused == other.refused, (one.refused, other.refused)
    return one.refused is not None


def guide_draws(guide, args: tuple, num: int = 4, seed: int = 1) -> Tensor:
    """``num`` draws of the latent ``w`` from ``guide``, on the RNG seeded ``seed``: the same
    noise for two guides of the same family, so the draws carry their location and spread."""
    pyro.set_rng_seed(seed)
    draws = []
    with torch.no_grad():
        for _ in range(num):
            trace = poutine.trace(guide).get_trace(*args)
            draws.append(trace.nodes["w"]["value"])
    return torch.stack(draws)


def guide_state(guide) -> dict[str, Tensor]:
    """Every parameter of the guide, detached copies (unconstrained values)."""
    return {name: p.detach().clone() for name, p in guide.named_parameters()}


def assert_scaled(found: Tensor, reference: Tensor, factor: float, what: str) -> None:
    """``found == factor * reference`` to :data:`RTOL`, relative to the largest entry."""
    expected = factor * reference
    atol = RTOL * float(expected.abs().max().clamp(min=1e-300))
    torch.testing.assert_close(found, expected, rtol=RTOL, atol=atol, msg=lambda m: f"{what}: {m}")


def assert_shifted(found: float, reference: float, shift: float, what: str) -> None:
    """``found == reference + shift`` to :data:`RTOL` of the terms' magnitude (a sum of
    log densities of that size rounds to that much)."""
    size = 1.0 + abs(reference) + abs(shift)
    assert math.isclose(found, reference + shift, rel_tol=0, abs_tol=RTOL * size), (
        f"{what}: {found!r} != {reference!r} + {shift!r}"
    )


def assert_near(found: float, ref: float, what: str) -> None:
    """Equal to 1e-6: for a smooth statistic of inputs that agree to rounding (PSIS's k-hat)."""
    assert math.isclose(found, ref, rel_tol=1e-6, abs_tol=1e-6), f"{what}: {found} != {ref}"
