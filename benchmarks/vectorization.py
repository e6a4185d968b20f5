"""What each way of evaluating particles costs: plate, torch.func.vmap and a loop.

The BLR evaluates the negative log joint of S particles with its gradient (and, for von and
newton, its Hessian) at every step. ``vectorize_particles="auto"`` takes the plate where the
model broadcasts, ``torch.func.vmap`` where it does not (``X @ w``, ``nn.Linear``) and a loop
where neither runs. This times the three on the same broadcasting regression (so all three
apply and agree), per call of ``pyro_blr.core.derivatives``, and reports each as a ratio to
the plate.

It also times how the exact curvature is batched, the measurements behind the choices and
constants of :mod:`pyro_blr.core.autodiff` and the Gaussian rules' estimates, on logistic
regression written ``X @ w`` (float32):

* two particles' Hessians through ``torch.func.vmap`` against one model run each, at
  ``N = 10^5, D = 100`` (why exact Hessians take the particles one run each);
* ``D`` Hessian-vector products batched by ``torch.func.vmap`` against autograd's
  ``is_grads_batched``, at ``N = 10^5, D = 100``, and a few probes on a small model (the order
  of the two below and above ``FEW_PROBES``);
* the Hessian at ``N = 10^4, D = 1000`` in chunks of ``HESSIAN_CHUNK`` products and smaller,
  down to one product at a time (what a smaller chunk costs);
* the Hessian's diagonal, exact by one product per coordinate, against Hutchinson's one-probe
  estimate, as ``D`` grows (where ``EXACT_DIAGONAL_MAX`` sits).

Run: ``python -m benchmarks.vectorization`` (``--smoke`` for a toy size).
"""

from __future__ import annotations

import time
from functools import partial

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from benchmarks._report import machine, markdown_table, parser, report
from pyro_blr.core import derivatives, latent_layout, neg_log_joint
from pyro_blr.core.autodiff import (
    EXACT_DIAGONAL_MAX,
    FEW_PROBES,
    HESSIAN_CHUNK,
    hessian_diagonal_estimate,
    hessian_diagonal_from_grad,
    hessian_from_grad,
)


def regression(num_data: int, dim: int):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(num_data, dim, generator=gen)
    y = X @ torch.randn(dim, generator=gen) + torch.randn(num_data, generator=gen)

    def model():
        w = pyro.sample("w", dist.Normal(X.new_zeros(dim), 1.0).to_event(1))
        with pyro.plate("data", num_data):
            pyro.sample("y", dist.Normal((X * w).sum(-1), 1.0), obs=y)

    return model


def evaluate(model, layout, theta, mode: str, hessian: bool) -> None:
    derivatives(lambda t: neg_log_joint(model, layout, t, vectorize=mode), theta, hessian=hessian)


def per_call(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


# ------------------------------------------------------------------- how curvature is batched
def logistic(num_data: int, dim: int, seed: int = 0):
    """Data, a Pyro model written ``X @ w`` (no broadcasting over particles) and its negative
    log likelihood as a plain function of particles ``(S, D) -> (S,)``."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=gen)
    y = torch.bernoulli(
        torch.sigmoid(X @ torch.randn(dim, generator=gen) / dim**0.5), generator=gen
    )

    def model():
        w = pyro.sample("w", dist.Normal(X.new_zeros(dim), 1.0).to_event(1))
        with pyro.plate("data", num_data):
            pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)

    def nll(theta):
        logits = theta @ X.T
        return F.binary_cross_entropy_with_logits(
            logits, y.expand_as(logits), reduction="none"
        ).sum(-1)

    return model, nll


def graph(fn, theta):
    """``theta`` as a leaf and the gradient of ``fn`` with its graph, for Hessian products."""
    theta = theta.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(theta).sum(), theta, create_graph=True)
    return grad, theta


def particles_hessians(smoke: bool) -> tuple[str, list]:
    """Two particles' exact Hessians through vmap against one model run each."""
    num_data, dim, repeats = (500, 5, 2) if smoke else (10**5, 100, 3)
    model, _ = logistic(num_data, dim)
    layout = latent_layout(pyro.poutine.trace(model).get_trace())
    theta = 0.1 * torch.randn(2, layout.dim, generator=torch.Generator().manual_seed(1))
    ms = {
        mode: per_call(partial(evaluate, model, layout, theta, mode, True), repeats)
        for mode in ("vmap", "loop")
    }
    rows = [[mode, f"{ms[mode]:.0f}", f"{ms[mode] / ms['loop']:.1f}x"] for mode in ms]
    title = (
        f"Two particles' exact Hessians, logistic `X @ w` with N = {num_data}, D = {dim}: ms per "
        f"call of `derivatives` (mean of {repeats})."
    )
    return title, markdown_table(["particles by", "ms", "vs one run each"], rows)


def probe_batching(smoke: bool) -> tuple[str, list]:
    """Hessian-vector products batched by torch.func.vmap against is_grads_batched."""
    cases = [(500, 5, 5), (200, 4, 4)] if smoke else [(10**5, 100, 100), (10**3, 4, 4)]
    rows = []
    for num_data, dim, num_probes in cases:
        _, nll = logistic(num_data, dim)
        grad, theta = graph(nll, 0.1 * torch.randn(1, dim))
        probes = torch.eye(dim)[:num_probes, None, :]  # (P, S = 1, D)

        def product(probe, grad=grad, theta=theta):
            return torch.autograd.grad(grad, theta, probe, retain_graph=True)[0]

        ways = {
            "torch.func.vmap": lambda product=product, probes=probes: torch.func.vmap(product)(
                probes
            ),
            "is_grads_batched": lambda grad=grad, theta=theta, probes=probes: torch.autograd.grad(
                grad, theta, probes, retain_graph=True, is_grads_batched=True
            ),
        }
        repeats = 2 if num_probes > FEW_PROBES else 50
        ms = {name: per_call(way, repeats) for name, way in ways.items()}
        for name in ways:
            rows.append(
                [f"N = {num_data}, D = {dim}", num_probes, name, f"{ms[name]:.2f}",
                 f"{ms[name] / ms['torch.func.vmap']:.1f}x"]
            )  # fmt: skip
    title = (
        f"Hessian-vector products of logistic `X @ w` batched two ways (ms per batch); pyro_blr "
        f"takes `is_grads_batched` up to FEW_PROBES = {FEW_PROBES} probes and vmap above."
    )
    return title, markdown_table(["data", "probes", "batched by", "ms", "vs vmap"], rows)


def hessian_chunks(smoke: bool) -> tuple[str, list]:
    """One Hessian in chunks of products, down to one product at a time."""
    num_data, dim = (200, 20) if smoke else (10**4, 1000)
    chunks = (32, 8, 1) if smoke else (HESSIAN_CHUNK, 256, 64, 16, 1)
    _, small = logistic(50, 4)
    hessian_from_grad(*graph(small, torch.zeros(1, 4)), chunk_size=2)  # warm-up
    _, nll = logistic(num_data, dim)
    grad, theta = graph(nll, 0.1 * torch.randn(1, dim))
    reference, rows = None, []
    for chunk in chunks:
        start = time.perf_counter()
        hess = hessian_from_grad(grad, theta, chunk_size=chunk).detach()
        seconds = time.perf_counter() - start
        if reference is None:
            reference, first = hess, seconds
        gap = float((hess - reference).abs().max() / reference.abs().max())
        label = "one product at a time" if chunk == 1 else f"{chunk}"
        rows.append([label, f"{seconds:.2f}", f"{seconds / first:.1f}x", f"{gap:.1e}"])
    title = (
        f"One Hessian of logistic `X @ w` with N = {num_data}, D = {dim} (one particle) by "
        f"`hessian_from_grad` in chunks of products (HESSIAN_CHUNK = {HESSIAN_CHUNK}: one chunk "
        "here); seconds of one call; the last column is the largest difference from the first "
        "row's Hessian over its largest entry."
    )
    return title, markdown_table(
        ["products per chunk", "seconds", "vs the first", "difference"], rows
    )


def diagonal_costs(smoke: bool) -> tuple[str, list]:
    """The Hessian's diagonal, exact by groups, against Hutchinson's one-probe estimate."""
    num_data, dims, repeats = (200, (4, 8), 2) if smoke else (10**4, (16, 64, 256, 1024), 5)
    rows = []
    for dim in dims:
        _, nll = logistic(num_data, dim)
        theta = 0.1 * torch.randn(2, dim, generator=torch.Generator().manual_seed(1))
        groups = torch.arange(dim)

        def exact(theta=theta, nll=nll, groups=groups):
            hessian_diagonal_from_grad(*graph(nll, theta), groups)

        def estimate(theta=theta, nll=nll):
            hessian_diagonal_estimate(*graph(nll, theta), probes=1)

        ms = {"exact": per_call(exact, repeats), "estimate": per_call(estimate, repeats)}
        rows.append(
            [dim, f"{ms['exact']:.1f}", f"{ms['estimate']:.1f}",
             f"{ms['exact'] / ms['estimate']:.1f}x", "exact" if dim <= EXACT_DIAGONAL_MAX
             else "estimate"]
        )  # fmt: skip
    title = (
        f"The Hessian's diagonal for two particles of logistic `X @ w`, N = {num_data}: exact "
        "(one product per coordinate, batched) against Hutchinson's estimate (one probe), ms per "
        f'call with the gradient (mean of {repeats}); `"diag"` is exact up to '
        f"EXACT_DIAGONAL_MAX = {EXACT_DIAGONAL_MAX} coordinates."
    )
    return title, markdown_table(
        ["D", "exact ms", "estimate ms", "exact / estimate", "takes"], rows
    )


def main(smoke: bool = False) -> dict[tuple[str, bool], float]:
    num_data, dim, particles, repeats = (100, 5, 4, 3) if smoke else (2000, 20, 8, 20)
    model = regression(num_data, dim)
    layout = latent_layout(pyro.poutine.trace(model).get_trace())
    theta = torch.randn(particles, layout.dim, generator=torch.Generator().manual_seed(1))
    times, rows = {}, []
    for hessian in (False, True):
        for mode in ("plate", "vmap", "loop"):
            times[mode, hessian] = per_call(
                partial(evaluate, model, layout, theta, mode, hessian), repeats
            )
        for mode in ("plate", "vmap", "loop"):
            ms = times[mode, hessian]
            rows.append(
                ["gradient + Hessian" if hessian else "gradient", mode, f"{ms:.2f}",
                 f"{ms / times['plate', hessian]:.1f}x"]
            )  # fmt: skip
    lines = [
        "# Evaluating particles: plate, vmap, loop",
        "",
        machine("vectorization", smoke)
        + f" Regression with N = {num_data}, D = {dim}, S = {particles} particles; ms per call of "
        "`derivatives` (mean of "
        f"{repeats}).",
        "",
        *markdown_table(["derivatives", "particles by", "ms", "vs plate"], rows),
    ]
    sections = {
        "Exact Hessians: vmap or one run per particle": particles_hessians,
        "Hessian-vector products: vmap or is_grads_batched": probe_batching,
        "Hessian chunks": hessian_chunks,
        "The Hessian's diagonal: exact or estimated": diagonal_costs,
    }
    for heading, measure in sections.items():
        title, table = measure(smoke)
        lines += ["", f"## {heading}", "", title, "", *table]
    report(lines, "vectorization", smoke)
    return times


if __name__ == "__main__":
    main(smoke=parser(__doc__, "a toy size; writes nothing").parse_args().smoke)
