"""Fourteen posteriordb posteriors written in Pyro, with loaders that read the project's own copy
of their data and reference summaries (``data/<posterior>/``, BSD-3, ``data/LICENCE.md``).

Each model is a port of its posteriordb Stan program: the same priors, the same likelihood, the
Stan program's transformed data computed in the loader. Where Stan puts a flat (improper) prior
on a parameter, the port uses a proper stand-in far wider than the posterior (N(0, 1e6^2),
HalfNormal(1e6); see :mod:`~benchmarks.posteriordb_models.regressions`, which bounds its effect)
rather than ``dist.ImproperUniform``: ``pb.BLR`` traces the model from its prior when it sets
up, and ``ImproperUniform`` cannot be sampled. The HMM's ordered means are Stan's, with a
sampler (:class:`~benchmarks.posteriordb_models.hmm.PositiveOrderedNormal`). A prior that wide
would make a random initial point meaningless, so every posterior comes with ``init``: explicit
initial values for its stand-in sites (the origin of the unconstrained space, the point
``init_to_feasible`` gives every other site). :func:`init_loc_fn` turns them into the
``init_loc_fn``/``init_strategy`` every method of the benchmark starts from.

The models broadcast over a batch of particles left of their plates (``(X * beta).sum(-1)``
rather than ``X @ beta``, ``...`` indexing): ``pb.BLR`` would also fit ``X @ beta`` (it
evaluates such a model with ``torch.func.vmap``), but ``pb.to_inference_data`` and
``pb.psis_diagnostic`` draw their particles in one vectorized plate, which ``X @ beta`` refuses
(measured on pyro_blr 0.1.0.dev0).

``POSTERIORS`` maps posteriordb's name to a :class:`Posterior`; :func:`reference` reads a
reference summary (mean and sd per parameter, constrained values, posteriordb's names such as
``beta[1]``), and :func:`flatten` lays out draws of the model's sites under those names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from pyro.infer.autoguide import init_to_feasible, init_to_value

from benchmarks.posteriordb_models import arma, eight_schools, gp, hmm, regressions, wells

DATA = Path(__file__).resolve().parent / "data"

__all__ = ["DATA", "POSTERIORS", "Posterior", "flatten", "init_loc_fn", "reference"]


class Posterior(NamedTuple):
    """One posterior: its model, the loader of its data (the model's arguments) and the explicit
    initial values of its improper-prior sites (a function of the model's arguments)."""

    name: str
    model: Callable
    load: Callable[[], tuple]
    init: Callable[..., dict[str, torch.Tensor]]


def _entry(name: str, module, model: Callable | None = None, load=None, init=None) -> Posterior:
    return Posterior(
        name,
        model or module.model,
        load or partial(module.load, DATA / name),
        init or getattr(module, "init", lambda *args: {}),
    )


POSTERIORS: dict[str, Posterior] = {
    p.name: p
    for p in [
        _entry("eight_schools-eight_schools_noncentered", eight_schools),
        _entry(
            "sblrc-blr",
            regressions,
            regressions.blr,
            partial(regressions.load_blr, DATA / "sblrc-blr"),
            lambda *args: {},
        ),
        _entry(
            "sblri-blr",
            regressions,
            regressions.blr,
            partial(regressions.load_blr, DATA / "sblri-blr"),
            lambda *args: {},
        ),
        _entry("wells_data-wells_dist", wells),
        _entry(
            "kidiq-kidscore_momiq",
            regressions,
            regressions.cauchy_sigma_regression,
            partial(regressions.load_kidscore_momiq, DATA / "kidiq-kidscore_momiq"),
            regressions.init_beta,
        ),
        _entry(
            "kidiq-kidscore_interaction",
            regressions,
            regressions.cauchy_sigma_regression,
            partial(regressions.load_kidscore_interaction, DATA / "kidiq-kidscore_interaction"),
            regressions.init_beta,
        ),
        _entry(
            "mesquite-logmesquite",
            regressions,
            regressions.flat_regression,
            partial(regressions.load_logmesquite, DATA / "mesquite-logmesquite"),
            regressions.init_flat,
        ),
        _entry(
            "earnings-earn_height",
            regressions,
            regressions.flat_regression,
            partial(regressions.load_earn_height, DATA / "earnings-earn_height"),
            regressions.init_flat,
        ),
        _entry(
            "earnings-logearn_interaction_z",
            regressions,
            regressions.flat_regression,
            partial(
                regressions.load_logearn_interaction_z, DATA / "earnings-logearn_interaction_z"
            ),
            regressions.init_flat,
        ),
        _entry(
            "nes2000-nes",
            regressions,
            regressions.flat_regression,
            partial(regressions.load_nes, DATA / "nes2000-nes"),
            regressions.init_flat,
        ),
        _entry(
            "kilpisjarvi_mod-kilpisjarvi",
            regressions,
            regressions.kilpisjarvi,
            partial(regressions.load_kilpisjarvi, DATA / "kilpisjarvi_mod-kilpisjarvi"),
            regressions.init_kilpisjarvi,
        ),
        _entry("gp_pois_regr-gp_pois_regr", gp),
        _entry("arma-arma11", arma),
        _entry("hmm_example-hmm_example", hmm),
    ]
}


def init_loc_fn(posterior: Posterior, args: tuple) -> Callable:
    """The initialization every method uses: the explicit values of the improper sites, and the
    unconstrained origin (``init_to_feasible``) for the others."""
    return init_to_value(values=posterior.init(*args), fallback=init_to_feasible)


def reference(name: str, dtype=torch.float64) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The reference summary of a posterior: parameter names (posteriordb's, in the file's
    order), means and sds."""
    summary = json.loads((DATA / name / "reference_summary.json").read_text())
    names = [n for n in summary if not n.startswith("_")]
    mean = torch.tensor([summary[n]["mean"] for n in names], dtype=dtype)
    sd = torch.tensor([summary[n]["sd"] for n in names], dtype=dtype)
    return names, mean, sd


def flatten(samples: dict[str, torch.Tensor], names: list[str], num_draws: int) -> torch.Tensor:
    """(draws, len(names)) float64 draws laid out under posteriordb's names: site ``s`` of a
    vector site becomes ``s[1]``, ``s[2]``, ...; a scalar site keeps its name."""
    columns = {}
    for site, value in samples.items():
        value = torch.as_tensor(value).reshape(num_draws, -1).double()
        if value.shape[1] == 1 and site in names:
            columns[site] = value[:, 0]
        else:
            for i in range(value.shape[1]):
                columns[f"{site}[{i + 1}]"] = value[:, i]
    missing = [n for n in names if n not in columns]
    if missing:
        raise KeyError(f"the draws have no values for {missing}")
    return torch.stack([columns[n] for n in names], -1)
