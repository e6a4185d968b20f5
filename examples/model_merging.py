"""Model merging: posteriors fitted on separate shards of the data, merged into one.

Bayesian logistic regression on the breast-cancer data (569 examples, 30 standardized features
and an intercept). The data are split into K shards; each shard's posterior is fitted alone by
the delta method (``pb.Newton``: MAP mean, Hessian precision), as separate parties or tasks
would. ``merge`` adds their natural parameters and subtracts the shared N(0, I) prior K - 1
times (Daheim et al., ICLR 2024); the result is compared with the fit on all the data, and with
the plain average of the shard means that ignores their uncertainty.

Run: ``python examples/model_merging.py`` (writes examples/results/model_merging.md; a few
seconds). ``--smoke`` runs one split only.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal
from tqdm.auto import tqdm

import pyro_blr as pb
from pyro_blr.blr.merge import merge, natural_parameters

try:  # imported as examples.model_merging (by the tests)
    from examples._report import markdown_table, report, smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/model_merging.py
    from _report import markdown_table, report, smoke_flag


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Standardized features with an intercept column, and 0/1 labels, in float64."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X = torch.tensor(data.data, dtype=torch.float64)
    X = (X - X.mean(0)) / X.std(0)
    X = torch.cat([torch.ones(len(X), 1, dtype=X.dtype), X], -1)
    return X, torch.tensor(data.target, dtype=torch.float64)


def model(X: torch.Tensor, y: torch.Tensor) -> None:
    """Logistic regression, w ~ N(0, I)."""
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


def laplace(X: torch.Tensor, y: torch.Tensor) -> AutoMultivariateNormal:
    """The delta method's fixed point: damped Newton steps, then full ones."""
    guide = AutoMultivariateNormal(model)
    blr = pb.BLR(model, guide, pb.Newton(lr=lambda t: min(1.0, 0.3 + t / 10)))
    for _ in range(30):
        blr.step(X, y)
    return guide


def kl(p: tuple[torch.Tensor, torch.Tensor], q: tuple[torch.Tensor, torch.Tensor]) -> float:
    """KL(N(p) || N(q)) for (mean, precision) pairs."""
    return float(
        torch.distributions.kl_divergence(
            dist.MultivariateNormal(p[0], precision_matrix=p[1]),
            dist.MultivariateNormal(q[0], precision_matrix=q[1]),
        )
    )


def moments(guide) -> tuple[torch.Tensor, torch.Tensor]:
    naturals = natural_parameters(guide)
    return naturals.mean(), naturals.precision


def main(smoke: bool = False) -> dict:
    local = pyro.settings.get("module_local_params")
    pyro.settings.set(module_local_params=True)  # each guide keeps its own parameters
    try:
        return _main(smoke)
    finally:
        pyro.settings.set(module_local_params=local)


def _main(smoke: bool) -> dict:
    X, y = load_data()
    full = moments(laplace(X, y))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    rows, results = [], {}
    for num_shards in tqdm((3,) if smoke else (2, 3, 5, 10), "shard counts", disable=smoke):
        shards = order.tensor_split(num_shards)
        guides = [laplace(X[i], y[i]) for i in shards]
        merged = moments(merge(guides, X, y))
        average = torch.stack([moments(g)[0] for g in guides]).mean(0)

        def sd_distance(mean: torch.Tensor) -> float:  # in the full posterior's metric
            delta = mean - full[0]
            return float(delta @ full[1] @ delta) ** 0.5

        results[num_shards] = {
            "merged_distance": sd_distance(merged[0]),
            "average_distance": sd_distance(average),
            "merged_kl": kl(full, merged),
            "shard_distance": max(sd_distance(moments(g)[0]) for g in guides),
        }
        r = results[num_shards]
        rows.append(
            (num_shards, len(shards[0]), f"{r['shard_distance']:.2f}",
             f"{r['average_distance']:.2f}", f"{r['merged_distance']:.3f}",
             f"{r['merged_kl']:.4f}")
        )  # fmt: skip
    header = ["shards", "examples per shard", "farthest shard", "average of means",
              "merged (natural parameters)", "KL(full ‖ merged)"]  # fmt: skip
    lines = [
        "Distance of each estimate's mean from the full-data posterior mean, in full-posterior "
        "standard deviations (‖m − m_full‖_S), and the KL divergence of the merged Gaussian",
        "",
        *markdown_table(header, rows),
    ]
    report(lines, "model_merging", smoke)
    return results


if __name__ == "__main__":
    main(smoke_flag(__doc__, "one split only, nothing written"))
