"""A VAE whose latent family matches its prior: Normal, Gamma, Beta or von Mises.

A variational autoencoder on scikit-learn's 8×8 digits (binarized at half intensity), written as
Pyro users write one: a model with a decoder network and an amortized guide with an encoder
network, trained by ``pyro.infer.SVI``. Only the latent pair changes:

| latent | prior | posterior (encoder output) | decoder input |
|---|---|---|---|
| Normal | N(0, 1) | Normal(loc, scale) | z |
| Gamma | Gamma(1, 1) | Gamma(concentration, rate) | z |
| Beta | Beta(1, 1) | Beta(a, b) | z |
| von Mises | uniform on the circle | VonMises(loc, concentration ≥ 1) | (cos z, sin z) |

Positive parameters are softplus outputs. The von Mises concentration is kept above 1: with the
floor at 0 the encoder collapses to the prior on these data (every concentration tends to 0 and the
test NLL stays at 24.8 nats, the decoder's marginal), a posterior collapse that the floor removes.

Gamma and Beta samples are reparameterized by torch (implicit gradients); the von Mises guide is
``pyro_blr.distributions.VonMises``, whose ``rsample`` carries implicit-reparameterization
gradients (Figurnov, Mohamed & Mnih 2018, https://arxiv.org/abs/1805.08498). The test negative
log-likelihood is the importance-weighted bound of ``pb.log_evidence`` (per image, K draws).

Run: ``python examples/vae_latent_families.py`` (two latent dimensions, all four families; writes
examples/results/vae_latent_families.md and docs/assets/vae_latent_families.png; ``--smoke`` is
quick). ``python -m benchmarks.vae_families`` runs the full table over latent dimensions.
Four fits of 150 epochs and their 500-particle test NLLs: one to two minutes on 2 CPU cores
(the table's seconds column is the training alone), with a progress bar over the families.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from sklearn.datasets import load_digits
from torch import nn
from torch.distributions import constraints
from torch.nn.functional import softplus
from tqdm.auto import tqdm

import pyro_blr as pb
from pyro_blr.distributions import VonMises

try:  # imported as examples.vae_latent_families (by the tests and benchmarks)
    from examples._report import markdown_table, pyplot, report, save_figure, smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/vae_latent_families.py
    from _report import markdown_table, pyplot, report, save_figure, smoke_flag

FAMILIES = ("Normal", "Gamma", "Beta", "von Mises")


class CircularUniform(dist.TorchDistribution):
    """The uniform distribution on the circle, density 1/(2π) for every angle (any winding)."""

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real

    def __init__(self, batch_shape=(), validate_args=None):
        super().__init__(torch.Size(batch_shape), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return CircularUniform(batch_shape)

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        return (torch.rand(shape) * 2 - 1) * math.pi

    def log_prob(self, value):
        return torch.full_like(value, -math.log(2 * math.pi))


def load(dtype=torch.float32, seed: int = 0):
    """Binarized digits, shuffled and split 80/20: training images, test images, test labels."""
    digits = load_digits()
    images = torch.tensor(digits.data > 8, dtype=dtype)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(images))
    return images[order[:cut]], images[order[cut:]], torch.tensor(digits.target)[order[cut:]]


class VAE(nn.Module):
    """A VAE with one hidden layer in each network and a chosen latent family."""

    def __init__(self, family: str, latent_dim: int, hidden: int = 128, pixels: int = 64):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown latent family {family!r}; choose one of {FAMILIES}")
        self.family, self.latent_dim = family, latent_dim
        inputs = 2 * latent_dim if family == "von Mises" else latent_dim
        self.decoder = nn.Sequential(
            nn.Linear(inputs, hidden), nn.Softplus(), nn.Linear(hidden, pixels)
        )
        self.encoder = nn.Sequential(
            nn.Linear(pixels, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent_dim)
        )

    def prior(self, x: torch.Tensor) -> dist.Distribution:
        shape = (x.shape[0], self.latent_dim)
        one = x.new_ones(shape)
        return {
            "Normal": lambda: dist.Normal(0 * one, one),
            "Gamma": lambda: dist.Gamma(one, one),
            "Beta": lambda: dist.Beta(one, one),
            "von Mises": lambda: CircularUniform(shape),
        }[self.family]()

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        a, b = self.encoder(x).chunk(2, -1)
        positive = softplus(b) + 1e-3
        return {
            "Normal": lambda: dist.Normal(a, positive),
            "Gamma": lambda: dist.Gamma(softplus(a) + 1e-3, positive),
            "Beta": lambda: dist.Beta(softplus(a) + 1e-3, positive),
            "von Mises": lambda: VonMises(a, softplus(b) + 1),
        }[self.family]()

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x).to_event(1))
            if self.family == "von Mises":
                z = torch.cat([torch.cos(z), torch.sin(z)], -1)
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x).to_event(1))


def train(
    family: str, latent_dim: int, train_x: torch.Tensor, num_epochs: int, seed: int = 0
) -> tuple[VAE, float]:
    """Fit a VAE by SVI + Adam on minibatches of 100 images; returns it and the seconds taken."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = VAE(family, latent_dim).to(train_x.dtype)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    start = time.perf_counter()
    for _ in range(num_epochs):
        for batch in torch.randperm(len(train_x)).split(100):
            loss = svi.step(train_x[batch])
            if not math.isfinite(loss):
                raise FloatingPointError(f"{family} VAE: non-finite loss")
    return vae, time.perf_counter() - start


def test_nll(vae: VAE, test_x: torch.Tensor, num_particles: int = 500) -> tuple[float, float]:
    """Test negative log-likelihood per image (nats) and its standard error, by IWAE."""
    estimate = pb.log_evidence(
        vae.model, vae.guide, test_x, num_particles=num_particles, max_plate_nesting=1
    )
    return -estimate.value / len(test_x), estimate.stderr / len(test_x)


def figure(vaes: dict[str, VAE], test_x: torch.Tensor, labels: torch.Tensor) -> None:
    """The test images' latent means in two dimensions, coloured by digit."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(vaes), figsize=(3.2 * len(vaes), 3.2))
    for ax, (family, vae) in zip(axes, vaes.items(), strict=True):
        with torch.no_grad():
            z = vae.posterior(test_x).mean
        if family == "von Mises":  # mean directions, read on [-pi, pi)
            z = torch.remainder(z + math.pi, 2 * math.pi) - math.pi
        ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=6)
        ax.set_title(f"{family} latent")
    fig.tight_layout()
    save_figure(fig, "vae_latent_families", dpi=110)


def main(smoke: bool = False) -> dict[str, float]:
    num_epochs, num_particles = (1, 10) if smoke else (150, 500)
    train_x, test_x, test_labels = load()
    vaes, nll, rows = {}, {}, []
    for family in tqdm(FAMILIES, "latent families", disable=smoke):
        vaes[family], seconds = train(family, 2, train_x, num_epochs)
        nll[family], stderr = test_nll(vaes[family], test_x, num_particles)
        rows.append((family, f"{nll[family]:.2f} ± {stderr:.2f}", f"{seconds:.0f}"))
    lines = [
        f"Digits 8×8 (binarized), 2 latent dimensions, {num_epochs} epochs of SVI + Adam; "
        f"test NLL by IWAE with K = {num_particles} (nats per image).",
        "",
        *markdown_table(["latent", "test NLL", "seconds"], rows),
    ]
    report(lines, "vae_latent_families", smoke)
    if not smoke:
        figure(vaes, test_x, test_labels)
    return nll


if __name__ == "__main__":
    main(smoke_flag(__doc__, "one epoch, few particles"))
