"""What per-datum gradients cost, each of the four ways (``pyro_blr.core.datum_jacobian``).

``"vogn"`` needs each datum's gradient at every particle. Four ways compute them: the model run
on each datum alone, vmapped over the plate's indices; the same on each datum's rows of the
model's arguments, for a model that reads its data whole (reverse mode under ``vmap``);
forward mode (``D`` batched Jacobian-vector products of the whole run); and the batched backward
pass (``B`` vector-Jacobian products of the whole run, the only way before). Each is timed per
particle on these models, against one gradient of the whole log joint by autograd (what a Pyro
``Trace_ELBO`` step costs per particle, less the guide):

- logistic regression written ``X @ w`` inside ``pyro.plate("data", N)`` (reads its data
  whole: no runs on one datum), ``N = 5000, D = 20``;
- the same model written ``X[idx] @ w`` with ``pyro.plate("data", N) as idx``;
- the UCI benchmark's BNN (13 inputs, 50 ReLU units, ``D = 752``) on ``N = 455`` synthetic rows
  of Boston's size, which has more coordinates than data (no forward mode);
- the first model on ``N = 300, D = 3``: below ``FORWARD_MIN_DATA`` (512) data, where the
  batched backward pass is the cheaper;
- the first model at ``N = 10^4, D = 1000`` (not in the smoke run), where forward mode's ``D``
  products cost more than the runs on each datum's arguments; the batched backward pass
  (``10^4`` products of the whole run) is not timed there, and the rows are checked against
  forward mode's.

Every way's rows are checked against the batched backward pass's (to float32 rounding) before
they are timed; each time includes the whole model run the way starts from and the check that
``per_datum_gradients`` makes of it. The way ``per_datum_gradients`` takes is asked of it.
Median of repeated calls after one warm-up call.

Run: ``python -m benchmarks.per_datum_cost`` (writes benchmarks/results/per_datum_cost.md; a
minute on one CPU thread); ``--smoke`` runs small sizes.
"""

from __future__ import annotations

import functools
import statistics
import time

import pyro
import pyro.distributions as dist
import torch

from benchmarks import models
from benchmarks._report import machine, markdown_table, parser, report
from pyro_blr.core import latent_layout
from pyro_blr.core.datum_jacobian import (
    datum_arguments,
    reproduces,
    rows_by_batched_backward,
    rows_by_forward_mode,
    rows_by_one_datum_runs,
    sums_to_gradient,
)
from pyro_blr.core.per_datum import datum_terms, per_datum_jacobian


def logistic_whole(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


def logistic_indexed(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", len(y)) as idx:
        pyro.sample("y", dist.Bernoulli(logits=X[idx] @ w), obs=y[idx])


bnn = functools.partial(models.bnn, activation=torch.relu, noise_prior=(6.0, 6.0))


def problems(smoke: bool):
    """(name, model, X, y) for each model, on generated data."""
    gen = torch.Generator().manual_seed(0)
    n, d = (600, 5) if smoke else (5000, 20)
    X = torch.randn(n, d, generator=gen)
    y = torch.bernoulli(torch.sigmoid(X @ torch.randn(d, generator=gen)), generator=gen)
    n_bnn = 60 if smoke else 455
    X_bnn = torch.randn(n_bnn, 13, generator=gen)
    y_bnn = torch.randn(n_bnn, generator=gen)
    n_small, d_small = 300, 3
    X_small, y_small = X[:n_small, :d_small], y[:n_small]
    found = [
        (f"logistic `X @ w`, N = {n}, D = {d}", logistic_whole, X, y),
        (f"logistic `X[idx] @ w`, N = {n}, D = {d}", logistic_indexed, X, y),
        (f"BNN, N = {n_bnn}, D = 752", bnn, X_bnn, y_bnn),
        (f"logistic `X @ w`, N = {n_small}, D = {d_small}", logistic_whole, X_small, y_small),
    ]
    if not smoke:
        X_big = torch.randn(10**4, 1000, generator=gen)
        y_big = torch.bernoulli(torch.sigmoid(X_big @ (torch.randn(1000, generator=gen) / 16)),
                                generator=gen)  # fmt: skip
        found.append(("logistic `X @ w`, N = 10000, D = 1000", logistic_whole, X_big, y_big))
    return found


def timed(fn, repeats: int) -> tuple[object, float]:
    """The result of ``fn()`` and its median milliseconds over ``repeats`` calls after one."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return result, 1e3 * statistics.median(times)


WAYS = ("batched backward", "forward mode", "one datum each", "one datum's arguments each")


def measure(model, X, y, repeats: int) -> dict[str, float | None]:
    """Milliseconds per particle of a gradient and of each way that applies (``None`` where
    one does not), and the largest difference of each way's rows from the batched pass's (from
    forward mode's where the batched pass is too slow to time, more than 5000 data)."""
    pyro.set_rng_seed(0)
    layout = latent_layout(pyro.poutine.trace(model).get_trace(X, y))
    row = (0.1 * torch.randn(layout.dim)).requires_grad_(True)

    def whole_run():
        return datum_terms(model, layout, row, (X, y), {}, {})

    def terms(theta, minibatch):
        return datum_terms(model, layout, theta, (X, y), {}, minibatch)[:2]

    def gradient():
        per_datum, _, rest, _, _ = whole_run()
        return torch.autograd.grad(per_datum.sum() + rest, row)[0]

    def batched():
        return rows_by_batched_backward(whole_run()[0], row)

    def one_datum():
        per_datum, scale, _, _, trace = whole_run()
        rows = rows_by_one_datum_runs(terms, row, "data", trace.nodes["data"]["value"], {})
        if rows is None or not reproduces(rows, per_datum, scale, row):
            return None
        return rows[0] * scale[:, None]

    def forward():
        per_datum = whole_run()[0]
        rows = rows_by_forward_mode(terms, row, {})
        return rows if rows is not None and sums_to_gradient(rows, per_datum, row) else None

    def arguments():
        per_datum, scale, _, _, trace = whole_run()
        data, with_rows = datum_arguments((X, y), {}, len(y))

        def cut_terms(theta, minibatch, *rows):
            cut_args, cut_kwargs = with_rows(*rows)
            return datum_terms(model, layout, theta, cut_args, cut_kwargs, minibatch, False)[:2]

        indices = trace.nodes["data"]["value"]
        rows = rows_by_one_datum_runs(cut_terms, row, "data", indices, {}, data)
        if rows is None or not reproduces(rows, per_datum, scale, row):
            return None
        return rows[0] * scale[:, None]

    out = {"gradient": timed(gradient, repeats)[1]}
    if len(y) <= 5000:
        reference, out["batched backward"] = timed(batched, repeats)
    else:
        reference, out["batched backward"] = forward(), None
    error = 0.0
    ways = (("one datum each", one_datum), ("one datum's arguments each", arguments),
            ("forward mode", forward))  # fmt: skip
    for name, way in ways:
        rows = way()
        if rows is None:
            out[name] = None
            continue
        error = max(error, float((rows - reference).abs().max() / reference.abs().max()))
        out[name] = timed(way, repeats)[1]
    out["error"] = error
    out["taken"] = per_datum_jacobian(model, layout, row, (X, y), {}, {}, whole_run())[1]
    return out


def main(smoke: bool = False) -> list[dict]:
    repeats = 2 if smoke else 10
    results, table = [], []
    for name, model, X, y in problems(smoke):
        row = {"model": name, **measure(model, X, y, repeats)}
        results.append(row)
        gradient = row["gradient"]
        for way in WAYS:
            ms = row[way]
            cell = "does not apply" if ms is None else f"{ms:.1f}"
            if ms is None and way == "batched backward":
                cell = "not timed (B products)"
            ratio = "-" if ms is None else f"{ms / gradient:.1f}"
            table.append((name, way, cell, ratio, "yes" if way == row["taken"] else ""))
        table.append((name, "one gradient (autograd)", f"{gradient:.2f}", "1.0", ""))
    lines = [
        "# What per-datum gradients cost",
        "",
        f"{machine('per_datum_cost', smoke)} Median milliseconds per particle; every way's rows "
        "agree with the batched backward pass's (forward mode's at N = 10000) to "
        f"{max(r['error'] for r in results):.1e} of their largest entry.",
        "",
        *markdown_table(
            ["model", "way", "ms per particle", "x one gradient", "vogn takes it"], table
        ),
    ]
    report(lines, "per_datum_cost", smoke)
    return results


if __name__ == "__main__":
    main(parser(__doc__, "small sizes").parse_args().smoke)
