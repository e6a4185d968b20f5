"""Every public entry point on one device (CUDA by default), with a table of what ran.

Each row runs one entry point on a small model whose data live on the device, checks that the
numbers are finite and that the guide's parameters (or the outputs) stayed on the device, and
times it. Run ``python -m benchmarks.gpu_check`` on a machine with a GPU; ``--device cpu`` (or
``--smoke``) runs the same checks on the CPU.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from benchmarks._report import markdown_table
from pyro_blr.blr.rules import rule_from_name


def regression(device: torch.device, n: int = 200, d: int = 5):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=gen).to(device)
    y = X @ torch.arange(1.0, d + 1).to(device) + 0.5 * torch.randn(n, generator=gen).to(device)

    def model(X, y, subsample_size=None):
        w = pyro.sample("w", dist.Normal(X.new_zeros(d), 1.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(X.new_tensor(2.0)))
        with pyro.plate("data", X.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("y", dist.Normal(X[idx] @ w, sigma), obs=y[idx])

    return model, (X, y)


def on_device(values, device: torch.device) -> bool:
    return all(v.device.type == device.type for v in values if torch.is_tensor(v))


def checks(device: torch.device) -> dict[str, Callable[[], tuple[float, bool]]]:
    """Entry point -> a run returning (a number that must be finite, whether it stayed on the
    device)."""
    model, data = regression(device)

    def blr(rule, guide_class, **kw):
        def run():
            guide = guide_class(model)
            losses = pb.BLR(model, guide, rule_from_name(rule, lr=0.3, **kw)).fit(
                *data, num_steps=20, progress=False
            )
            return losses.losses[-1], on_device(guide.parameters(), device)

        return run

    def fitted():
        guide = AutoMultivariateNormal(model)
        pb.BLR(model, guide, pb.VON(lr=0.5)).fit(*data, num_steps=30, progress=False)
        return guide

    def svi(guide, loss):
        def run():
            g = guide(model)
            svi = SVI(model, g, pyro.optim.Adam({"lr": 0.01}), loss)
            value = [svi.step(*data) for _ in range(10)][-1]
            return value, on_device(g.parameters(), device)

        return run

    def evidence():
        result = pb.log_evidence(model, fitted(), *data, num_particles=200)
        return result.value, True

    def sgd():
        result = pb.sgd_evidence(model, *data, num_chains=8, num_steps=20, step_size=1e-5)
        return result.best, result.bound.device.type == device.type

    def idata():
        out = pb.to_inference_data(model, fitted(), *data, num_samples=100)
        return float(out.posterior["w"].mean()), True

    def psis():
        return pb.psis_diagnostic(model, fitted(), *data, num_samples=200).khat, True

    def sensitivity():
        result = pb.loo_sensitivity(model, fitted(), *data)
        return float(result.elpd_loo), result.loo_lpd.device.type == device.type

    return {
        "BLR ivon (AutoNormal)": blr("ivon", AutoNormal),
        "BLR von (AutoMultivariateNormal)": blr("von", AutoMultivariateNormal),
        "BLR newton (AutoMultivariateNormal)": blr("newton", AutoMultivariateNormal),
        "BLR expfamily (AutoExpFamily)": blr("expfamily", pb.AutoExpFamily, mc_samples=8),
        "BLR mixture (AutoMixture)": blr("mixture", pb.AutoMixture),
        "SVI + RenyiELBO(0.5) (AutoNormal)": svi(AutoNormal, pb.RenyiELBO(0.5, 8)),
        "SVI + Trace_ELBO (AutoFlow)": svi(pb.AutoFlow, Trace_ELBO()),
        "log_evidence": evidence,
        "sgd_evidence": sgd,
        "to_inference_data": idata,
        "psis_diagnostic": psis,
        "loo_sensitivity": sensitivity,
    }


def main(device: str = "cuda") -> list[list[str]]:
    device = torch.device(device)
    rows = []
    for name, run in checks(device).items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        start = time.perf_counter()
        try:
            value, stayed = run()
            ok = math.isfinite(float(value)) and stayed
            outcome = "ok" if ok else ("not finite" if stayed else "left the device")
            shown = f"{float(value):.4g}"
        except Exception as error:  # every failure is a row of the table
            outcome, shown = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}", "-"
        rows.append([name, outcome, shown, f"{time.perf_counter() - start:.2f}"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"Device: {device} ({name})")
    print("\n".join(markdown_table(["entry point", "outcome", "value", "seconds"], rows)))
    return rows


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--device", default="cuda")
    cli.add_argument("--smoke", action="store_true", help="the same checks on the CPU")
    options = cli.parse_args()
    main("cpu" if options.smoke else options.device)
