"""The linear regressions of the suite: posteriordb's ``sblrc-blr``, ``sblri-blr``,
``kidiq-kidscore_momiq``, ``kidiq-kidscore_interaction``, ``mesquite-logmesquite``,
``earnings-earn_height``, ``earnings-logearn_interaction_z``, ``nes2000-nes`` and
``kilpisjarvi_mod-kilpisjarvi``.

Every Stan program here models ``y ~ normal(beta[1] + beta[2] * x2 + ..., sigma)``; the loaders
compute the Stan program's transformed data (logs, standardization, interactions, dummies) and
return the design matrix ``X`` with a leading column of ones, so the model reads
``(X * beta).sum(-1)`` (the form of ``X @ beta`` that broadcasts over a batch of particles: see
the package's docstring).

Priors. ``blr`` has proper priors (beta ~ N(0, 10), sigma ~ HalfNormal(10): Stan's
``normal(0, 10)`` on a ``<lower=0>`` parameter). The other programs leave ``beta`` (and in
mesquite, earnings, nes and kilpisjarvi also ``sigma``) without a prior statement, which in Stan
is a flat prior on the parameter's support. These ports use a proper stand-in, N(0, FLAT^2) for
a real ``beta`` and HalfNormal(FLAT) for ``sigma``, with FLAT = 1e6: ``pb.BLR`` traces the model
from its prior when it sets up, which ``dist.ImproperUniform`` (no sampling) refuses. The
stand-in moves a posterior mean by about sd^2 |mean| / FLAT^2 (a Gaussian prior's pull), at most
6e-4 reference sds here (earn_height's intercept, -61285 with sd 9668), and leaves the sds alone
to the same order. A prior that wide makes the guides' default initialization (the median of
prior draws) meaningless, so each posterior has explicit initial values (``init_flat``,
``init_beta``, ``init_kilpisjarvi``): beta = 0 and sigma = 1, the origin of the unconstrained
space, the point ``init_to_feasible`` gives every other site.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from benchmarks.posteriordb_models._data import read, tensor

FLAT = 1e6  # the scale of the proper stand-ins for Stan's flat priors


def _flat_real(X: torch.Tensor, size: int) -> dist.Distribution:
    """The stand-in for a flat prior on a real vector: N(0, FLAT^2) per coordinate."""
    return dist.Normal(X.new_zeros(size), FLAT).to_event(1)


def _flat_positive(X: torch.Tensor) -> dist.Distribution:
    """The stand-in for a flat prior on a positive scalar: HalfNormal(FLAT)."""
    return dist.HalfNormal(X.new_tensor(FLAT))


# ---------------------------------------------------------------------------------- models
def blr(X: torch.Tensor, y: torch.Tensor) -> None:
    """sblrc-blr / sblri-blr: beta ~ N(0, 10), sigma ~ HalfNormal(10), y ~ N(X beta, sigma)."""
    beta = pyro.sample("beta", dist.Normal(X.new_zeros(X.shape[1]), 10.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(X.new_tensor(10.0)))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * beta).sum(-1), sigma), obs=y)


def flat_regression(X: torch.Tensor, y: torch.Tensor) -> None:
    """Flat priors (their stand-ins) on beta and sigma; y ~ N(X beta, sigma)."""
    beta = pyro.sample("beta", _flat_real(X, X.shape[1]))
    sigma = pyro.sample("sigma", _flat_positive(X))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * beta).sum(-1), sigma), obs=y)


def cauchy_sigma_regression(X: torch.Tensor, y: torch.Tensor) -> None:
    """kidiq: a flat prior (its stand-in) on beta, sigma ~ HalfCauchy(2.5) (Stan's
    ``cauchy(0, 2.5)`` on a ``<lower=0>`` parameter); y ~ N(X beta, sigma)."""
    beta = pyro.sample("beta", _flat_real(X, X.shape[1]))
    sigma = pyro.sample("sigma", dist.HalfCauchy(X.new_tensor(2.5)))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * beta).sum(-1), sigma), obs=y)


def kilpisjarvi(x: torch.Tensor, y: torch.Tensor, prior: torch.Tensor) -> None:
    """alpha ~ N(pmualpha, psalpha), beta ~ N(pmubeta, psbeta), a flat prior (its stand-in)
    on sigma > 0;
    y ~ N(alpha + beta x, sigma) with x the calendar year. ``prior`` holds (pmualpha, psalpha,
    pmubeta, psbeta) from the data."""
    alpha = pyro.sample("alpha", dist.Normal(prior[0], prior[1]))
    beta = pyro.sample("beta", dist.Normal(prior[2], prior[3]))
    sigma = pyro.sample("sigma", _flat_positive(x))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(alpha + beta * x, sigma), obs=y)


# ---------------------------------------------------------------------------- initial values
def init_flat(X: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"beta": X.new_zeros(X.shape[1]), "sigma": X.new_ones(())}


def init_beta(X: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"beta": X.new_zeros(X.shape[1])}


def init_kilpisjarvi(x: torch.Tensor, y: torch.Tensor, prior) -> dict[str, torch.Tensor]:
    return {"sigma": x.new_ones(())}


# --------------------------------------------------------------------------------- loaders
def _design(*columns: torch.Tensor) -> torch.Tensor:
    """The design matrix: a column of ones (the intercept beta[1]) and the given columns."""
    return torch.stack([torch.ones_like(columns[0]), *columns], -1)


def load_blr(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read(folder)
    return tensor(data["X"]), tensor(data["y"])


def load_kidscore_momiq(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read(folder)
    return _design(tensor(data["mom_iq"])), tensor(data["kid_score"])


def load_kidscore_interaction(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read(folder)
    hs, iq = tensor(data["mom_hs"]), tensor(data["mom_iq"])
    return _design(hs, iq, hs * iq), tensor(data["kid_score"])


def load_logmesquite(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read(folder)
    logs = [
        tensor(data[k]).log()
        for k in ("diam1", "diam2", "canopy_height", "total_height", "density")
    ]
    return _design(*logs, tensor(data["group"])), tensor(data["weight"]).log()


def load_earn_height(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read(folder)
    return _design(tensor(data["height"])), tensor(data["earn"])


def load_logearn_interaction_z(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read(folder)
    height, male = tensor(data["height"]), tensor(data["male"])
    z_height = (height - height.mean()) / height.std()  # Stan's sd: the N - 1 denominator
    return _design(z_height, male, z_height * male), tensor(data["earn"]).log()


def load_nes(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read(folder)
    age = tensor(data["age_discrete"])
    columns = [tensor(data[k]) for k in ("real_ideo", "race_adj")]
    columns += [(age == level).double() for level in (2, 3, 4)]  # age30_44, age45_64, age65up
    columns += [tensor(data[k]) for k in ("educ1", "gender", "income")]
    return _design(*columns), tensor(data["partyid7"])


def load_kilpisjarvi(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = read(folder)
    prior = tensor([data[k] for k in ("pmualpha", "psalpha", "pmubeta", "psbeta")])
    return tensor(data["x"]), tensor(data["y"]), prior
