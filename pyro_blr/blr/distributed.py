r"""The BLR over ``torch.distributed``: data and Monte Carlo parallelism, one all-reduce a step.

With :math:`K` ranks, rank :math:`k` runs the model on its own shard of the data, passed to a
full-size plate as ``pyro.plate("data", N, subsample=idx_k)`` so that Pyro scales its terms by
:math:`N/B` (:func:`shard_indices` gives disjoint shards, as ``DistributedSampler`` does). Its
negative log joint :math:`\ell_k` is then an unbiased estimate of the full one, and when the
shards of a step partition the data the average is exact:

.. math::
    \frac1K \sum_{k=1}^K \ell_k(\theta) = \ell_{\text{prior}}(\theta)
        + \frac{N}{KB} \sum_{k=1}^K \sum_{i \in \text{idx}_k} \ell_i(\theta)
        = \ell(\theta) \quad\text{when } KB = N.

Each step every rank estimates the rule's expectations (gradient, curvature, loss) at its own
particles, and one all-reduce of one flattened buffer averages them; every rank then applies the
same update to the same state, so the natural parameters stay bit-identical. With
``rank_noise=True`` each rank draws its particles from its own stream, so :math:`K` ranks give
:math:`K` times the particles per step (the distributed VOGN recipe of Osawa et al. 2019).

Before the reduction the ranks agree on whether every one of them succeeded; a rank whose
estimate raised (a non-finite log joint, an error in the model) makes every rank raise, before
anything is written, so no rank hangs and every guide is left unchanged.

At set-up the ranks agree on the run (:meth:`Collective.join_run`, one all-gather of a small
signature, see :mod:`pyro_blr.blr.rank_signature`): the same latent dimension, dtype, sites and
plate sizes on every rank, else every rank raises :class:`RanksDisagree` naming the rank that
differs and how. Ranks may pass minibatches of different sizes: each rank's estimate is then
weighted by its share of the data, so that unequal shards give the answer of one process on all
of the data. A rank that stops early (or runs fewer steps) leaves the others in a collective
that fails when its peer leaves or when the process group's timeout
(``init_process_group(timeout=...)``) runs out; that failure is raised as
:class:`RanksOutOfStep`, naming the fix.

References:
    | Practical Deep Learning with Bayesian Principles (Osawa et al., NeurIPS 2019)
    | https://arxiv.org/abs/1906.02506
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from pyro_blr.blr.rank_signature import FIX, data_shares, disagreements

__all__ = [
    "Collective",
    "RankFailed",
    "RanksDisagree",
    "RanksOutOfStep",
    "rank_stream",
    "shard_indices",
]


class RankFailed(RuntimeError):
    """Another rank's step raised; this rank's guide was left unchanged."""


class RanksDisagree(ValueError):
    """The ranks run different models, dtypes or plate sizes (raised on every rank)."""


class RanksOutOfStep(RuntimeError):
    """A collective failed: another rank stopped early, ran fewer steps, or timed out."""


class Collective:
    """The reductions the BLR needs, over one process group.

    Args:
        process_group: the group (default: the default group, which must be initialized).
        rank_noise: draw each rank's particles from its own stream (seeded from rank 0's seed
            plus the rank) so that ranks average independent Monte Carlo draws; ``False`` keeps
            the global RNG, e.g. to reproduce a one-process run exactly.
    """

    def __init__(self, process_group: dist.ProcessGroup | None = None, rank_noise: bool = True):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "process_group= needs an initialized torch.distributed process group: call "
                "torch.distributed.init_process_group first (torchrun sets up its environment)"
            )
        self.group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.source = dist.get_global_rank(process_group, 0) if process_group else 0
        self.rank_noise = rank_noise
        self.generator: torch.Generator | None = None
        self.share: float | None = None  # this rank's weight in mean(); None: 1 / world_size
        self.step = 0  # the step of the last agreement, for error messages

    def _run(self, collective: Callable, *args: Any, **kwargs: Any) -> Any:
        """``collective(*args, **kwargs)``, its failure (a peer gone, a timeout) raised as
        :class:`RanksOutOfStep` naming the fix."""
        try:
            return collective(*args, **kwargs, group=self.group)
        except RuntimeError as error:  # gloo and NCCL raise DistBackendError, a RuntimeError
            raise RanksOutOfStep(
                f"BLR step {self.step}: rank {self.rank} of {self.world_size} could not reach "
                f"the other ranks ({type(error).__name__}: {str(error).splitlines()[0]}): "
                "another rank stopped early, ran fewer steps or failed outside BLR.step. Every "
                "rank must call BLR.step (and fit) the same number of times; the wait for a "
                "rank that is gone ends at the process group's timeout, "
                "torch.distributed.init_process_group(timeout=...)"
            ) from error

    def setup(self, params: Iterable[Tensor], like: Tensor) -> None:
        """Broadcast parameters from rank 0 and seed this rank's particle stream."""
        with torch.no_grad():
            for param in params:
                self._run(dist.broadcast, param.data, src=self.source)
        if self.rank_noise:
            seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
            self._run(dist.broadcast, seed, src=self.source)  # rank 0's draw everywhere
            self.generator = torch.Generator(device=like.device)
            self.generator.manual_seed(int(seed) + self.rank)

    def agree_on(
        self, what: str, values: Mapping[str, Any], may_differ: Collection[str] = ()
    ) -> list[dict[str, Any]]:
        """Every rank's ``values`` (small: numbers, strings, tuples), in one all-gather; raise
        :class:`RanksDisagree` on every rank, naming each entry that differs and each rank's
        value, if the ranks differ outside ``may_differ`` (and the entries ending in
        :data:`pyro_blr.blr.rank_signature.MINIBATCH`)."""
        gathered: list[Any] = [None] * self.world_size
        self._run(dist.all_gather_object, gathered, dict(values))
        differ = disagreements(gathered, may_differ)
        if differ:
            raise RanksDisagree(
                f"the {self.world_size} ranks disagree on {what}: " + "; ".join(differ) + f". {FIX}"
            )
        return gathered

    def join_run(self, signature: Mapping[str, Any]) -> None:
        """At the run's set-up: check that every rank runs the same model (see
        :func:`pyro_blr.blr.rank_signature.run_signature`) and weight this rank's estimates by
        its share of the data in :meth:`mean` (see
        :func:`pyro_blr.blr.rank_signature.data_shares`).

        Note:
            The shares are those of the set-up's minibatches: each rank must keep its minibatch
            size from step to step (:func:`shard_indices` does).
        """
        gathered = self.agree_on("the model's latent sites, dtype and plate sizes", signature)
        try:
            shares = data_shares(gathered)
        except ValueError as error:
            raise RanksDisagree(str(error)) from None
        self.share = None if shares is None else float(shares[self.rank])

    def agree(self, error: BaseException | None, step: int) -> None:
        """Raise on every rank if any rank's step raised (this rank's own error, re-raised)."""
        self.step = step
        failed = torch.zeros(self.world_size, dtype=torch.int64)
        failed[self.rank] = error is not None
        self._run(dist.all_reduce, failed, op=dist.ReduceOp.SUM)
        if error is not None:
            raise error
        if failed.any():
            ranks = failed.nonzero().flatten().tolist()
            raise RankFailed(
                f"BLR step {step}: rank(s) {ranks} raised; this rank's guide was left as it was "
                "before this step (see the failing rank's error)"
            )

    def mean(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The average over ranks of every tensor, in one all-reduce of one flat buffer: each
        rank weighted by its share of the data where the ranks' minibatches differ in size
        (see :meth:`join_run`), else the plain average."""
        like = tensors[0]
        flat = torch.cat([t.reshape(-1).to(like.dtype) for t in tensors])
        if self.share is not None:
            flat = flat * self.share
        self._run(dist.all_reduce, flat, op=dist.ReduceOp.SUM)
        if self.share is None:
            flat = flat / self.world_size
        out, start = [], 0
        for t in tensors:
            out.append(flat[start : start + t.numel()].reshape(t.shape).to(t.dtype))
            start += t.numel()
        return out


@contextmanager
def rank_stream(collective: Collective | None, device: torch.device) -> Iterator[None]:
    """Draw from the rank's own stream inside the block, for code that samples from the global
    RNG (``Distribution.rsample``); without a rank stream, the global RNG as it is."""
    if collective is None or collective.generator is None:
        yield
        return
    generator = collective.generator
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        if cuda:
            torch.cuda.set_rng_state(generator.get_state(), device)
        else:
            torch.set_rng_state(generator.get_state())
        yield
        generator.set_state(torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state())


def shard_indices(
    num_data: int, batch_size: int, step: int, rank: int, world_size: int, seed: int = 0
) -> Tensor:
    """This rank's minibatch indices for a step: disjoint across ranks, an epoch-wise shuffle.

    Each epoch is a permutation of ``range(num_data)`` drawn from ``seed`` and the epoch
    number, cut into global batches of ``world_size * batch_size``; rank ``k`` takes the
    ``k``-th slice of the step's global batch. Pass them to the model's plate as
    ``pyro.plate("data", num_data, subsample=idx)``: the plate scales by ``num_data / B``.

    Args:
        num_data: the plate's full size :math:`N`.
        batch_size: each rank's minibatch size :math:`B`.
        step: the step number (from 0).
        rank: this rank.
        world_size: the number of ranks :math:`K` (with :math:`KB \\le N`).
        seed: the shuffle's seed, the same on every rank.

    Example:
        >>> a = shard_indices(10, 5, step=0, rank=0, world_size=2, seed=0)
        >>> b = shard_indices(10, 5, step=0, rank=1, world_size=2, seed=0)
        >>> sorted(a.tolist() + b.tolist()) == list(range(10))
        True
    """
    for name, value in (("num_data", num_data), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    per_step = batch_size * world_size
    if per_step > num_data:
        raise ValueError(
            f"world_size * batch_size = {per_step} exceeds the {num_data} data: a step would "
            "visit a datum twice"
        )
    steps_per_epoch = num_data // per_step
    epoch, position = divmod(step, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(num_data, generator=generator)
    start = position * per_step + rank * batch_size
    return order[start : start + batch_size]
