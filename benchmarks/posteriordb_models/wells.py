"""posteriordb ``wells_data-wells_dist``: logistic regression of switching wells on the distance
to the nearest safe well (metres, unscaled).

switched[i] ~ Bernoulli(logit^-1(beta[1] + beta[2] dist[i])). Stan's flat prior on beta becomes
the proper stand-in N(0, FLAT^2), FLAT = 1e6, with the explicit initial value beta = 0
(``init``), as in :mod:`benchmarks.posteriordb_models.regressions`; it moves the posterior means
by about 1e-14 sds.

posteriordb has no reference draws for this posterior. The posterior has two dimensions, so
:func:`quadrature_reference` computes its means and sds by quadrature instead: a trapezoid rule
on a 241 x 241 grid over +-12 sds of the Laplace approximation (in its whitened coordinates,
where the trapezoid rule converges geometrically for smooth, fast-decaying integrands).
``python -m benchmarks.posteriordb_models.wells`` writes them to
``data/wells_data-wells_dist/reference_summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from benchmarks.posteriordb_models._data import read, tensor
from benchmarks.posteriordb_models.regressions import FLAT


def model(X: torch.Tensor, switched: torch.Tensor) -> None:
    """X is the design matrix [1, dist]."""
    beta = pyro.sample("beta", dist.Normal(X.new_zeros(2), FLAT).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=(X * beta).sum(-1)), obs=switched)


def init(X: torch.Tensor, switched: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"beta": X.new_zeros(2)}


def load(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read(folder)
    distance = tensor(data["dist"])
    return torch.stack([torch.ones_like(distance), distance], -1), tensor(data["switched"])


def _log_joint(beta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y | beta) for a batch of beta (..., 2): Stan's flat prior adds nothing (the
    reference is that of the Stan program)."""
    logits = beta @ X.T
    return (y * logits - torch.nn.functional.softplus(logits)).sum(-1)


def quadrature_reference(X: torch.Tensor, y: torch.Tensor, points: int = 241, width: float = 12.0):
    """Posterior means and sds of beta by quadrature (see the module's docstring)."""
    beta = X.new_zeros(2)
    for _ in range(50):  # Newton's method to the mode
        grad = torch.func.grad(_log_joint)(beta, X, y)
        hessian = torch.func.hessian(_log_joint)(beta, X, y)
        beta = beta - torch.linalg.solve(hessian, grad)
    scale = torch.linalg.cholesky(torch.linalg.inv(-hessian))
    z = torch.linspace(-width, width, points, dtype=X.dtype)
    grid = torch.stack(torch.meshgrid(z, z, indexing="ij"), -1).reshape(-1, 2)
    betas = beta + grid @ scale.T
    log_density = torch.cat([_log_joint(chunk, X, y) for chunk in betas.split(4096)])
    weights = torch.softmax(log_density, 0)[:, None]  # equal cells: the Jacobian cancels
    mean = (weights * betas).sum(0)
    sd = (weights * (betas - mean) ** 2).sum(0).sqrt()
    return mean, sd


def main(folder: Path) -> None:
    mean, sd = quadrature_reference(*load(folder))
    summary = {f"beta[{i + 1}]": {"mean": float(mean[i]), "sd": float(sd[i])} for i in range(2)}
    summary["_source"] = (
        "computed by benchmarks.posteriordb_models.wells.quadrature_reference (trapezoid rule, "
        "241 x 241 points over +-12 Laplace sds); posteriordb has no reference draws for wells"
    )
    (folder / "reference_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(Path(__file__).resolve().parent / "data" / "wells_data-wells_dist")
