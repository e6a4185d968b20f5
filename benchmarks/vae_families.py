"""VAE latent families on 8×8 digits: test NLL for latent dimensions 2, 5 and 10.

The protocol of Figurnov, Mohamed & Mnih (2018, Table 2: MNIST, latent dimensions 2 to 40) at
the size of scikit-learn's digits: the VAE of ``examples/vae_latent_families.py`` (one hidden
layer of 128 softplus units in each network, Bernoulli pixels), trained by SVI + Adam for 300
epochs on 1437 images, with latent pairs N(0, 1)/Normal, Gamma(1, 1)/Gamma, Beta(1, 1)/Beta and
uniform/von Mises. Test negative log-likelihood per image (nats, lower is better) on 360 held-out
images by ``pb.log_evidence`` (IWAE per image, K = 500), with its Monte Carlo standard error;
one training seed per cell.

Run: ``python -m benchmarks.vae_families`` (writes benchmarks/results/vae_families.md and
docs/assets/vae_families.png); ``--smoke`` trains one epoch with K = 10.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks._report import ASSETS, machine, markdown_table, parser, pyplot, report, save_figure
from examples import vae_latent_families as vae

LATENT_DIMS = (2, 5, 10)


def figure(nll: dict[int, dict[str, tuple[float, float]]], folder: Path = ASSETS) -> Path:
    """Test NLL against the latent dimension, one line per family."""
    fig, ax = pyplot().subplots(figsize=(5, 3.2))
    for family in vae.FAMILIES:
        ax.plot(list(nll), [nll[d][family][0] for d in nll], "o-", label=family)
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("test NLL (nats per image)")
    ax.set_xticks(list(nll))
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, "vae_families", dpi=120, folder=folder)


def main(smoke: bool = False) -> dict[int, dict[str, tuple[float, float]]]:
    num_epochs, num_particles = (1, 10) if smoke else (300, 500)
    train_x, test_x, _ = vae.load()
    nll: dict[int, dict[str, tuple[float, float]]] = {}
    seconds: dict[str, float] = dict.fromkeys(vae.FAMILIES, 0.0)
    for dim in LATENT_DIMS:
        nll[dim] = {}
        for family in vae.FAMILIES:
            model, elapsed = vae.train(family, dim, train_x, num_epochs)
            nll[dim][family] = vae.test_nll(model, test_x, num_particles)
            seconds[family] += elapsed
            print(f"dim {dim}, {family}: {nll[dim][family][0]:.2f} nats", flush=True)
    table = [
        (dim, *(f"{value:.2f} ± {stderr:.2f}" for value, stderr in row.values()))
        for dim, row in nll.items()
    ]
    table.append(("training seconds (all dims)", *(f"{seconds[f]:.0f}" for f in vae.FAMILIES)))
    lines = [
        "# VAE latent families",
        "",
        f"{machine('vae_families', smoke)} Digits 8×8 (binarized), {len(train_x)} training and "
        f"{len(test_x)} test images, {num_epochs} epochs of SVI + Adam; test NLL by IWAE with "
        f"K = {num_particles} (nats per image, ± Monte Carlo standard error; lower is better).",
        "",
        *markdown_table(["latent dimension", *vae.FAMILIES], table),
    ]
    report(lines, "vae_families", smoke)
    if not smoke:
        figure(nll)
    return nll


if __name__ == "__main__":
    main(parser(__doc__, "one epoch, K = 10").parse_args().smoke)
