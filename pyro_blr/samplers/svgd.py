r"""Stein variational gradient descent with the particles packed as the kernel expects.

Pyro 1.9.2's ``pyro.infer.SVGD`` keeps its particles in one ``AutoContinuous`` latent of the
model vectorized over a particle plate, so ``svgd_particles`` is packed *site by site*: all the
particles' values of the first latent site, then all of the second, and so on. ``SVGD.step`` then
reads it with ``particles.reshape(num_particles, -1)``, as if it were packed *particle by
particle*. With one latent site the two packings agree; with two or more sites (and two or more
particles) each row the kernel sees mixes coordinates of different particles, and the update is
not Liu & Wang's. :class:`SVGD` here is Pyro's with the packing fixed; nothing else changes.
"""

from __future__ import annotations

import pyro
import pyro.infer
import torch
from pyro import poutine
from pyro.infer.svgd import SteinKernel
from pyro.infer.util import zero_grads
from torch import Tensor

__all__ = ["SVGD", "MedianRBFKernel", "particle_rows", "site_packing"]


def particle_rows(guide, packed: Tensor, num_particles: int) -> Tensor:
    """The ``(num_particles, D)`` matrix of a site-by-site packed particle vector.

    Args:
        guide: the SVGD's guide (an ``AutoContinuous`` of the particle-vectorized model).
        packed: the flat ``svgd_particles`` (or its gradient), packed site by site.
        num_particles: the number of particles.

    Returns:
        Row ``i`` holds particle ``i``'s coordinates of every site, site after site.
    """
    blocks = [value.reshape(num_particles, -1) for _, value in guide._unpack_latent(packed)]
    return torch.cat(blocks, dim=1)


def site_packing(guide, rows: Tensor, num_particles: int) -> Tensor:
    """The inverse of :func:`particle_rows`: rows back to the site-by-site packing.

    Args:
        guide: the SVGD's guide.
        rows: one row per particle, the sites' coordinates side by side.
        num_particles: the number of particles.

    Returns:
        The flat vector packed as ``svgd_particles`` is: all particles of each site in turn.
    """
    blocks, pos = [], 0
    for _, value in guide._unpack_latent(rows.new_zeros(rows.numel())):
        width = value.numel() // num_particles
        blocks.append(rows[:, pos : pos + width].reshape(-1))
        pos += width
    if pos != rows.size(1):
        raise ValueError(
            f"the particle rows hold {rows.size(1)} coordinates but the guide's sites {pos}; "
            "pass the rows built by particle_rows from this guide"
        )
    return torch.cat(blocks)


def column_sites(guide, packed: Tensor, num_particles: int) -> list[str]:
    """The site name of each column of :func:`particle_rows`'s matrix of ``packed``."""
    names = []
    for site, value in guide._unpack_latent(packed):
        names += [site["name"]] * (value.numel() // num_particles)
    return names


class MedianRBFKernel(SteinKernel):
    r"""Liu & Wang's RBF kernel: one bandwidth for all coordinates, from the median distance.

    .. math::

        k(x, x') = \exp\bigl(-\lVert x - x' \rVert^2 / h\bigr), \qquad
        h = \operatorname{med}^2 / \log(n + 1),

    where :math:`\operatorname{med}` is the median pairwise distance between the :math:`n`
    particles (Liu & Wang 2016, Section 5). Pyro's ``RBFSteinKernel`` takes one median per
    coordinate instead, which is 0 (and the kernel NaN) on a coordinate every particle shares,
    such as biases started at 0. Returned per coordinate, as Pyro's ``SVGD`` expects: with
    ``mode="multivariate"`` the per-coordinate log kernels sum to :math:`\log k(x, x')`.

    Example:
        >>> k = MedianRBFKernel()
        >>> log_k, grad = k.log_kernel_and_grad(torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 4.0]]))
        >>> bool(torch.isfinite(log_k).all()), tuple(grad.shape)
        (True, (3, 3, 2))
    """

    @torch.no_grad()
    def log_kernel_and_grad(self, particles: Tensor) -> tuple[Tensor, Tensor]:
        """Per-coordinate log kernel and kernel gradient, shapes ``(N, N, D)``."""
        delta = particles.unsqueeze(0) - particles.unsqueeze(1)  # [n, m] = x_m - x_n
        norm_sq = delta.pow(2.0)
        num = particles.size(0)
        upper = torch.ones(num, num, dtype=torch.bool).triu(1)
        median = norm_sq.sum(-1)[upper].median()
        h = median / torch.log(torch.tensor(num + 1.0, dtype=particles.dtype))
        return -(norm_sq / h), 2.0 * delta / h


class SVGD(pyro.infer.SVGD):
    r"""Pyro's ``SVGD`` with the particles unpacked per site before the kernel sees them.

    Stein variational gradient descent (Liu & Wang 2016, Algorithm 1) moves particles
    :math:`x_1, \dots, x_n` along

    .. math::

        \phi(x_i) = \frac1n \sum_j k(x_j, x_i)\,\nabla_{x_j} \log p(x_j, \mathcal D)
            + \nabla_{x_j} k(x_j, x_i),

    where each :math:`x_j` is the whole latent vector of particle :math:`j`. Pyro 1.9.2 packs its
    particles site by site and reshapes them particle by particle, so on a model with more than one
    latent site the kernel's rows mix particles (the update is wrong, silently). This ``step``
    rebuilds each particle's row from the guide's own layout, and maps the update back to the
    packing the optimiser holds. Signature, optimiser, kernel, ``mode`` and return value are
    Pyro's; with one latent site the step is Pyro's to round-off.

    Reference: Q. Liu and D. Wang, "Stein Variational Gradient Descent: A General Purpose
    Bayesian Inference Algorithm", NeurIPS 2016.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer import RBFSteinKernel
        >>> from pyro_blr.samplers import SVGD
        >>> def model(y):
        ...     a = pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     b = pyro.sample("b", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(a + b, 1.0), obs=y)
        >>> pyro.clear_param_store(); _ = pyro.set_rng_seed(0)
        >>> svgd = SVGD(model, RBFSteinKernel(), pyro.optim.Adam({"lr": 0.1}), 8, 1)
        >>> grads = [svgd.step(torch.ones(3)) for _ in range(3)]
        >>> sorted(grads[-1])
        ['a', 'b']
        >>> svgd.get_named_particles()["a"].shape
        torch.Size([8, 1])
    """

    @torch.no_grad()
    def step(self, *args, **kwargs):
        """One SVGD step with the particles read per particle; Pyro's signature and return.

        Returns:
            dict: site name -> mean squared SVGD gradient, to monitor convergence.
        """
        with torch.enable_grad(), poutine.trace(param_only=True) as param_capture:
            loss = self.loss(self.model, self.guide, *args, **kwargs)
            loss.backward()
        params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}

        particles = pyro.param("svgd_particles").unconstrained()
        num = self.num_particles
        rows = particle_rows(self.guide, particles, num)
        rows_grad = particle_rows(self.guide, particles.grad, num)

        log_kernel, kernel_grad = self.kernel.log_kernel_and_grad(rows)
        self._check_finite(params, rows_grad, "the log joint's gradient", "check the model")
        self._check_finite(
            params,
            log_kernel.isfinite().logical_and(kernel_grad.isfinite()).all(0).all(0),
            "the kernel",
            "a per-coordinate bandwidth (pyro.infer.RBFSteinKernel) is 0 where every particle "
            "shares a value: start the particles apart, or use "
            "pyro_blr.samplers.svgd.MedianRBFKernel (one bandwidth for all coordinates)",
        )
        if self.mode == "multivariate":
            kernel = log_kernel.sum(-1).exp()
            attractive = torch.mm(kernel, rows_grad)
            repulsive = torch.einsum("nm,nm...->n...", kernel, kernel_grad)
        else:
            kernel = log_kernel.exp()
            attractive = torch.einsum("nmd,md->nd", kernel, rows_grad)
            repulsive = torch.einsum("nmd,nmd->nd", kernel, kernel_grad)
        particles.grad = site_packing(self.guide, (attractive + repulsive) / num, num)

        squared_gradients = {
            site["name"]: value.mean().item()
            for site, value in self.guide._unpack_latent(particles.grad.pow(2.0))
        }
        self.optim(params)
        zero_grads(params)
        return squared_gradients

    def _check_finite(self, params: set, values: Tensor, what: str, fix: str) -> None:
        """Raise before any update (the gradients zeroed), naming the sites whose coordinates
        ``values`` (rows, or a per-column mask) are not all finite."""
        finite = values if values.dtype == torch.bool else values.isfinite().all(0)
        if bool(finite.all()):
            return
        packed = pyro.param("svgd_particles").unconstrained().detach()
        names = column_sites(self.guide, packed, self.num_particles)
        bad = sorted({name for name, ok in zip(names, finite.tolist(), strict=True) if not ok})
        zero_grads(params)
        raise ValueError(
            f"SVGD step: {what} is not finite at sites {bad}; no particle was moved. Fix: {fix}"
        )
