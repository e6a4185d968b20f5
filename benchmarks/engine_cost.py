"""The BLR engine's cost against the peers a user would pick instead (issue 27's acceptance table).

Every row is a ratio to its peer measured in the same process: CPU time (``time.process_time``,
all threads) and wall time per step, the median over repeats of a block of steps after a
warm-up, the methods' blocks interleaved so that load from other processes falls on both.

1. IVON on a Bayesian MLP (``PyroModule``, ``PyroSample`` weights with a Normal prior, Gaussian
   likelihood with a known noise, batch 128 of a subsampled plate): ``pb.BLR(model,
   AutoNormal(model), pb.IVON(lr, ess=N, mc_samples=1, antithetic=False))`` against the
   reference ``ivon.IVON(net.parameters(), lr, ess=N)`` (``ivon-opt``) on the same plain
   ``nn.Module`` from the same start, with the same options (``hess_init``, ``beta2``, no clip,
   its ``weight_decay`` set to the prior's precision per datum), one draw per step, the same
   minibatches. ``ivon-opt`` steps by ``lr * (hess_init + weight_decay)`` (its ``rescale_lr``,
   on by default), so ``pb.IVON`` gets that step size: the same update. Accuracy: the test RMSE
   of each at its mean after the timed steps (same start, same batches; noise sd 0.5).
2.-4. Logistic regression, ``N = 10^4``, ``D = 1000``: ``pb.VON()`` and ``pb.VOGN()`` (their
   defaults: two antithetic draws) with ``AutoNormal`` against SVI + Adam (``Trace_ELBO``, one
   particle) with ``AutoNormal``; ``pb.VON()`` with ``AutoMultivariateNormal`` against SVI +
   Adam with ``AutoMultivariateNormal``. Linear in D is checked by the growth of the step's
   CPU time from ``D = 250`` to ``D = 1000`` (4 for a cost linear in D, 16 for quadratic).
5. Breast-cancer logistic regression (standardized, an intercept column, D = 31, N(0, 1)
   prior), ``AutoNormal`` for all: ``pb.VON()`` step against NumPyro (SVI, Adam, ``AutoNormal``,
   the update jitted and compiled beforehand) and Pyro's SVI; and the CPU time of the steps
   (evaluation excluded) until the ELBO is within 1 nat of its optimum over the family, every
   ELBO computed from the same fixed draws, the optimum by L-BFGS on those draws. Adam's
   learning rate is the best of a small grid for each peer. (A smoke run asks for 5 nats.)

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.engine_cost`` (writes
``benchmarks/results/engine_cost.md``; a few minutes); ``--smoke`` for toy sizes (seconds).
Needs the peers: ``pip install ivon-opt numpyro "jax[cpu]"`` (benchmark-only).
"""

from __future__ import annotations

import itertools
import math
import statistics
import subprocess
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_value
from pyro.nn import PyroModule, PyroSample
from torch import nn

import pyro_blr as pb
from benchmarks._report import machine, markdown_table, parser, report

GOALS = {  # row -> (issue 27's goal, whether a row meets it)
    "IVON step, MLP ~1e4 weights, vs ivon-opt": ("≤ 2×", lambda r: r["ratio"] <= 2.0),
    "IVON step, MLP ~2.7e5 weights, vs ivon-opt": ("≤ 1.3×", lambda r: r["ratio"] <= 1.3),
    "VON step, AutoNormal, N=1e4 D=1000, vs SVI + Adam": ("≤ 5×", lambda r: r["ratio"] <= 5.0),
    "VOGN step, AutoNormal, N=1e4 D=1000, vs SVI + Adam": ("≤ 5×", lambda r: r["ratio"] <= 5.0),
    "VON step, AutoMultivariateNormal, N=1e4 D=1000, vs SVI + Adam": (
        "≤ 10×",
        lambda r: r["ratio"] <= 10.0,
    ),
    "VON step, breast cancer D=31, vs jitted NumPyro": (
        "≤ 2 ms CPU",
        lambda r: r["ours"][0] <= 2e-3,
    ),
    "VON time to 1 nat, breast cancer, vs jitted NumPyro": (
        "≥ 10× shorter",
        lambda r: r["ratio"] <= 0.1,
    ),
}


# ---------------------------------------------------------------------------- timing
def per_step(steps: dict[str, Callable[[], object]], warmup: int, repeats: int, block: int):
    """Median CPU and wall seconds per step of each method: ``warmup`` steps each, then
    ``repeats`` rounds in which every method runs a block of ``block`` steps in turn."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: ([], []) for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(block):
                step()
            times[name][0].append((time.process_time() - cpu) / block)
            times[name][1].append((time.perf_counter() - wall) / block)
    return {name: (statistics.median(c), statistics.median(w)) for name, (c, w) in times.items()}


def row(name: str, ours: tuple, peer: tuple, peer_name: str, note: str = "") -> dict:
    """A row of the table: ours against the peer, per step, as a CPU-time ratio."""
    ratio = ours[0] / peer[0]
    goal, meets = GOALS[name]
    out = {"row": name, "ours": ours, "peer": peer, "peer name": peer_name, "ratio": ratio,
           "wall ratio": ours[1] / peer[1], "goal": goal, "note": note}  # fmt: skip
    return out | {"met": bool(meets(out))}


# ---------------------------------------------------------------------------- 1. IVON on an MLP
class BayesianMLP(PyroModule):
    """``sizes[0] -> ... -> 1`` with ReLU, N(0, prior_scale^2) weights and biases, and a
    Gaussian likelihood of known ``noise`` over a plate of ``len(X)`` subsampled at ``idx``."""

    def __init__(self, sizes: list[int], prior_scale: float, noise: float):
        super().__init__()
        layers = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layer = PyroModule[nn.Linear](fan_in, fan_out)
            prior = dist.Normal(0.0, prior_scale)
            layer.weight = PyroSample(prior.expand([fan_out, fan_in]).to_event(2))
            layer.bias = PyroSample(prior.expand([fan_out]).to_event(1))
            layers.append(layer)
        self.layers = PyroModule[nn.ModuleList](layers)
        self.noise = noise

    def forward(self, X, y=None, idx=None):
        rows = X if idx is None else X[idx]
        for layer in self.layers[:-1]:
            rows = torch.relu(layer(rows))
        mean = self.layers[-1](rows).squeeze(-1)
        with pyro.plate("data", X.shape[0], subsample=idx):
            obs = None if y is None else (y if idx is None else y[idx])
            pyro.sample("y", dist.Normal(mean, self.noise), obs=obs)
        return mean


def plain_mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def ivon_row(sizes: list[int], name: str, num_data: int, timing: tuple[int, int, int]) -> dict:
    import ivon  # ivon-opt, a benchmark-only peer (GPL-3: used, never copied)

    torch.manual_seed(0)
    lr, h0, beta2, prior_scale, noise, batch = 0.1, 0.1, 0.99999, 1.0, 0.5, 128
    decay = 1 / (num_data * prior_scale**2)  # the prior's precision per datum
    teacher = plain_mlp(sizes)
    X = torch.randn(2 * num_data, sizes[0])
    with torch.no_grad():
        signal = teacher(X).squeeze(-1)
    y = signal / signal.std() + noise * torch.randn(len(X))
    (X, X_test), (y, y_test) = X.split(num_data), y.split(num_data)
    warmup, repeats, block = timing
    batches = torch.randint(num_data, (warmup + repeats * block, batch)).unbind()
    net = plain_mlp(sizes)  # the common start

    def rmse(mean):
        return float((mean - y_test).square().mean().sqrt())

    with torch.no_grad():
        rmse_start = rmse(net(X_test).squeeze(-1))
    start = {f"layers.{i // 2}.{k}": v.detach().clone() for i, m in enumerate(net)
             if isinstance(m, nn.Linear) for k, v in m.named_parameters()}  # fmt: skip

    opt = ivon.IVON(net.parameters(), lr=lr, ess=num_data, hess_init=h0, beta1=0.9,
                    beta2=beta2, weight_decay=decay)  # fmt: skip
    theirs = iter(batches)

    def ivon_step():
        idx = next(theirs)
        with opt.sampled_params(train=True):
            opt.zero_grad()
            loss = 0.5 * (net(X[idx]).squeeze(-1) - y[idx]).square().mean() / noise**2
            loss.backward()
        opt.step()

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = BayesianMLP(sizes, prior_scale, noise)
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=start))
    # ivon-opt's rescale_lr (on by default) steps by lr * (hess_init + weight_decay): the
    # same update in pb is that step size.
    rule = pb.IVON(lr * (h0 + decay), ess=num_data, mc_samples=1, antithetic=False,
                   hess_init=h0, beta1=0.9, beta2=beta2, clip_radius=None)  # fmt: skip
    blr = pb.BLR(model, guide, rule)
    ours = iter(batches)
    times = per_step({"pb": lambda: blr.step(X, y, next(ours)), "ivon": ivon_step}, *timing)
    with torch.no_grad():
        rmse_ivon = rmse(net(X_test).squeeze(-1))
        rmse_pb = rmse(pyro.poutine.condition(model, data=guide.median())(X_test))
    weights = sum(p.numel() for p in net.parameters())
    note = (f"{weights} weights; test RMSE at the mean after {len(batches)} steps: pb "
            f"{rmse_pb:.3f}, ivon-opt {rmse_ivon:.3f} (start {rmse_start:.3f})")  # fmt: skip
    out = row(name, times["pb"], times["ivon"], "ivon-opt IVON", note)
    out.update(weights=weights, rmse_pb=rmse_pb, rmse_ivon=rmse_ivon, rmse_start=rmse_start)
    return out


def ivon_rows(smoke: bool) -> list[dict]:
    if smoke:
        small, large, num_data, timing = [4, 16, 1], [4, 32, 32, 1], 256, (2, 3, 2)
    else:  # 11 041 and 271 873 weights
        small, large, num_data, timing = [16, 96, 96, 1], [16, 512, 512, 1], 8192, (20, 15, 20)
    return [
        ivon_row(small, "IVON step, MLP ~1e4 weights, vs ivon-opt", num_data, timing),
        ivon_row(large, "IVON step, MLP ~2.7e5 weights, vs ivon-opt", num_data, timing),
    ]


# ---------------------------------------------------------------------------- 2-4. N=1e4, D=1000
def logistic(X: torch.Tensor, y: torch.Tensor) -> None:
    """Logistic regression with N(0, I) weights (the intercept, if any, a column of X)."""
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


def synthetic(num_data: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=gen)
    w = torch.randn(dim, generator=gen)
    return X, torch.bernoulli(torch.sigmoid(X @ (2 * w / w.norm())), generator=gen)


def stepper(method: str, X, y) -> Callable[[], float]:
    """One step of ``method`` ("adam", "von", "vogn"; "mvn ..." for AutoMultivariateNormal)."""
    guide = (AutoMultivariateNormal if method.startswith("mvn") else AutoNormal)(logistic)
    if method.endswith("adam"):
        svi = SVI(logistic, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
        return lambda: svi.step(X, y)
    blr = pb.BLR(logistic, guide, pb.VOGN() if method.endswith("vogn") else pb.VON())
    return lambda: blr.step(X, y)


def logistic_rows(smoke: bool) -> list[dict]:
    if smoke:
        num_data, dims, timing = 300, (10, 40), (1, 3, 1)
    else:
        num_data, dims, timing = 10**4, (250, 1000), (2, 5, 1)
    cpu = {}
    for dim in dims:
        X, y = synthetic(num_data, dim)
        pyro.clear_param_store()
        methods = {m: stepper(m, X, y) for m in ("adam", "von", "vogn", "mvn adam", "mvn von")}
        cpu[dim] = per_step(methods, *timing)
    big, small = cpu[dims[1]], cpu[dims[0]]

    def growth(m):
        adam = big["adam"][0] / small["adam"][0]
        return (f"CPU per step x{big[m][0] / small[m][0]:.1f} from D={dims[0]} to D={dims[1]} "
                f"(Adam's x{adam:.1f})")  # fmt: skip

    return [
        row("VON step, AutoNormal, N=1e4 D=1000, vs SVI + Adam", big["von"], big["adam"],
            "SVI + Adam (AutoNormal)", growth("von")),
        row("VOGN step, AutoNormal, N=1e4 D=1000, vs SVI + Adam", big["vogn"], big["adam"],
            "SVI + Adam (AutoNormal)", growth("vogn")),
        row("VON step, AutoMultivariateNormal, N=1e4 D=1000, vs SVI + Adam", big["mvn von"],
            big["mvn adam"], "SVI + Adam (AutoMultivariateNormal)", growth("mvn von")),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- 5. breast cancer
def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X = torch.tensor(data.data, dtype=torch.float32)
    X = torch.cat([torch.ones(len(X), 1), (X - X.mean(0)) / X.std(0)], 1)
    return X, torch.tensor(data.target, dtype=torch.float32)


class FixedDrawELBO:
    """The ELBO of a diagonal Gaussian ``N(loc, scale^2)`` for :func:`logistic`, from the same
    ``draws`` standard normal draws for every method (common random numbers), in float64."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, draws: int):
        self.X, self.y = X.double(), y.double()
        gen = torch.Generator().manual_seed(1)
        self.eps = torch.randn(draws, X.shape[1], generator=gen, dtype=torch.float64)

    def __call__(self, loc, scale) -> torch.Tensor:
        loc, scale = torch.as_tensor(loc).double(), torch.as_tensor(scale).double()
        theta = loc + scale * self.eps
        logits = theta @ self.X.T
        log_joint = (self.y * logits - nn.functional.softplus(logits)).sum(-1)
        log_prior = -0.5 * theta.square().sum(-1) - 0.5 * len(loc) * math.log(2 * math.pi)
        entropy = scale.log().sum() + 0.5 * len(loc) * (1 + math.log(2 * math.pi))
        return (log_joint + log_prior).mean() + entropy

    def optimum(self) -> float:
        """The largest value over the family, by L-BFGS on (loc, log scale)."""
        loc = torch.zeros(self.X.shape[1], dtype=torch.float64, requires_grad=True)
        log_scale = torch.full_like(loc, -2.0).requires_grad_()
        opt = torch.optim.LBFGS([loc, log_scale], max_iter=500, tolerance_grad=1e-10,
                                line_search_fn="strong_wolfe")  # fmt: skip

        def closure():
            opt.zero_grad()
            loss = -self(loc, log_scale.exp())
            loss.backward()
            return loss

        opt.step(closure)
        return float(self(loc.detach(), log_scale.detach().exp()))


def pyro_method(rule_or_lr, X, y):
    """(step, (loc, scale)) of pb.BLR with a rule, or of SVI + Adam at a learning rate."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(logistic, init_loc_fn=init_to_value(values={"w": X.new_zeros(X.shape[1])}))
    if isinstance(rule_or_lr, float):
        svi = SVI(logistic, guide, pyro.optim.Adam({"lr": rule_or_lr}), Trace_ELBO())
        step = lambda: svi.step(X, y)  # noqa: E731
    else:
        blr = pb.BLR(logistic, guide, rule_or_lr)
        step = lambda: blr.step(X, y)  # noqa: E731
    return step, lambda: (guide.locs.w.detach(), guide.scales.w.detach())


def numpyro_method(lr: float, X, y, cache: dict | None = None):
    """(step, (loc, scale)) of NumPyro's SVI + Adam with AutoNormal from its start, the update
    jitted and compiled here (so that no step pays for compilation); ``cache`` keeps the compiled
    update and the start by ``lr`` (JAX's states are immutable: each run starts afresh)."""
    cache = {} if cache is None else cache
    if lr not in cache:
        cache[lr] = numpyro_compiled(lr, X, y)
    svi, update, start, data = cache[lr]
    state = [start]

    def step():
        state[0], loss = update(state[0], *data)
        return loss.block_until_ready()

    def params():
        p = svi.get_params(state[0])
        return torch.tensor(p["w_auto_loc"].tolist()), torch.tensor(p["w_auto_scale"].tolist())

    return step, params


def numpyro_compiled(lr: float, X, y):
    """NumPyro's SVI, its update compiled, its start and the data as JAX arrays."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import SVI as NumPyroSVI
    from numpyro.infer import Trace_ELBO as NumPyroELBO
    from numpyro.infer.autoguide import AutoNormal as NumPyroAutoNormal
    from numpyro.infer.initialization import init_to_value as numpyro_init_to_value

    def model(X, y):
        w = numpyro.sample("w", nd.Normal(jnp.zeros(X.shape[1]), 1.0).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", nd.Bernoulli(logits=X @ w), obs=y)

    data = jnp.asarray(X.numpy()), jnp.asarray(y.numpy())
    start = numpyro_init_to_value(values={"w": jnp.zeros(X.shape[1])})
    guide = NumPyroAutoNormal(model, init_loc_fn=start)
    svi = NumPyroSVI(model, guide, numpyro.optim.Adam(lr), NumPyroELBO())
    state = svi.init(jax.random.PRNGKey(0), *data)
    return svi, jax.jit(svi.update).lower(state, *data).compile(), state, data


def time_to_target(method, elbo: FixedDrawELBO, target: float, max_steps: int, every: int = 1):
    """CPU and wall seconds of the steps (evaluation, every ``every`` steps, excluded) until the
    ELBO reaches ``target``, and the steps taken; ``None`` for the seconds if it never does."""
    step, params = method
    cpu = wall = 0.0
    for i in range(1, max_steps + 1):
        c, w = time.process_time(), time.perf_counter()
        step()
        cpu, wall = cpu + time.process_time() - c, wall + time.perf_counter() - w
        with torch.no_grad():
            if i % every == 0 and float(elbo(*params())) >= target:
                return (cpu, wall), i
    return None, max_steps


def breast_cancer_rows(smoke: bool) -> list[dict]:
    X, y = breast_cancer()
    if smoke:  # within 5 nats: 50-300 steps (within 1: 100-3000)
        draws, nats, max_steps, every, lrs, timing = 64, 5.0, 1000, 10, (0.1,), (3, 3, 5)
    else:
        draws, nats, max_steps, every, lrs = 512, 1.0, 5000, 1, (0.01, 0.03, 0.1)
        timing = (20, 15, 20)
    elbo = FixedDrawELBO(X, y, draws)
    target = elbo.optimum() - nats
    ours, ours_steps = time_to_target(pyro_method(pb.VON(), X, y), elbo, target, max_steps)
    peers = {}
    compiled = {}

    def numpyro(lr, X, y):
        return numpyro_method(lr, X, y, compiled)

    for peer, build in (("NumPyro", numpyro), ("Pyro SVI", pyro_method)):
        runs = [(time_to_target(build(lr, X, y), elbo, target, max_steps, every), lr) for lr in lrs]
        reached = [(t, steps, lr) for (t, steps), lr in runs if t is not None]
        peers[peer] = min(reached, key=lambda r: r[0][0]) if reached else None
    steps = {"pb": pyro_method(pb.VON(), X, y)[0], "NumPyro": numpyro(lrs[0], X, y)[0],
             "Pyro SVI": pyro_method(lrs[0], X, y)[0]}  # fmt: skip
    step_times = per_step(steps, *timing)
    pyro_ms = 1e3 * step_times["Pyro SVI"][0]
    step_row = row("VON step, breast cancer D=31, vs jitted NumPyro", step_times["pb"],
                   step_times["NumPyro"], "NumPyro SVI + Adam (jit)",
                   f"Pyro SVI + Adam: {pyro_ms:.2f} ms CPU per step")  # fmt: skip

    def said(name, result):
        if result is None:
            return f"{name}: not reached in {max_steps} steps at lr {lrs}"
        return f"{name}: {result[0][0]:.3f} s CPU, {result[1]} steps (Adam lr {result[2]})"

    nan = (float("nan"), float("nan"))
    numpyro_time = nan if peers["NumPyro"] is None else peers["NumPyro"][0]
    note = (f"within {nats:g} nat of the optimum {target + nats:.2f} (L-BFGS on {draws} fixed "
            f"draws); pb VON(): "
            f"{'not reached' if ours is None else f'{ours[0]:.3f} s CPU'}, {ours_steps} steps; "
            f"{said('NumPyro', peers['NumPyro'])}; "
            f"{said('Pyro SVI', peers['Pyro SVI'])}")  # fmt: skip
    nat_row = row("VON time to 1 nat, breast cancer, vs jitted NumPyro", ours or nan,
                  numpyro_time, "NumPyro SVI + Adam (jit, best lr)", note)  # fmt: skip
    return [step_row, nat_row]


# ---------------------------------------------------------------------------- the table
def table(rows: list[dict]) -> list[str]:
    def ms(seconds: float) -> str:
        return f"{1e3 * seconds:.{2 if seconds < 0.01 else 1 if seconds < 1 else 0}f}"

    def per(t):
        return f"{ms(t[0])} ms; {ms(t[1])} ms"

    return markdown_table(
        ["row", "ours: CPU; wall", "peer", "peer: CPU; wall", "CPU ratio (wall)", "goal", "met",
         "notes"],
        [[r["row"], per(r["ours"]), r["peer name"], per(r["peer"]),
          f"{r['ratio']:.2f}× ({r['wall ratio']:.2f}×)", r["goal"], "met" if r["met"] else "missed",
          r["note"]] for r in rows],
    )  # fmt: skip


def code_version() -> str:
    """The commit measured (``-dirty`` with uncommitted changes), or ``unknown``."""
    try:
        command = ["git", "describe", "--always", "--dirty"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def main(smoke: bool = False) -> list[dict]:
    rows = ivon_rows(smoke) + logistic_rows(smoke) + breast_cancer_rows(smoke)
    lines = [
        "# The BLR engine's cost against its peers",
        "",
        machine("engine_cost", smoke) + f" Code: `{code_version()}`. CPU: "
        "`time.process_time` (all threads, JAX's included); per step: the median over "
        "repeated blocks of steps after a warm-up, the methods' blocks interleaved, so that "
        "load from other processes (which inflates wall time on a shared machine) falls on "
        "both. Ratio: ours over the peer's CPU time (wall time in brackets); the goals are "
        "issue 27's. Accuracy of the IVON rows: test RMSE at the mean of each fit after the "
        "timed steps, from the same start on the same minibatches. Linear in D: a cost linear "
        "in D grows about 4× from D = 250 to D = 1000, a quadratic one 16×.",
        "",
        *table(rows),
    ]
    report(lines, "engine_cost", smoke)
    return rows


if __name__ == "__main__":
    main(parser(__doc__, "toy sizes, in seconds; writes nothing").parse_args().smoke)
