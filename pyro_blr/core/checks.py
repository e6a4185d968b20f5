r"""Checks that refuse a model and guide the importance-sampling machinery would get wrong.

Every estimator built on :func:`pyro_blr.core.log_weights` draws the latent sites from the guide
and replays the model on them. A latent site of the model that the guide does not sample is then
drawn by the model from its prior *and scored as if observed*: its log prior enters
:math:`\log p(\mathcal D, z)` but no matching term enters :math:`\log q(z)`, so the weight is that
of a different model. Pyro's own advice for a discrete site -- mark it
``infer={"enumerate": "parallel"}`` and leave it out of the guide -- produces exactly this, and is
correct only under an enumerating objective (``TraceEnum_ELBO``), which sums the site out.
The entry points built on :func:`pyro_blr.core.log_weights` sum such sites out too (see
:mod:`pyro_blr.core.enumeration`) and ask these checks to let them through (``summed=True``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_blr.core.enumerated_terms import nonfinite_reason
from pyro_blr.core.enumeration import enumerated_sites
from pyro_blr.core.traces import PARTICLE_PLATE, sample_sites, site_log_probs
from pyro_blr.core.weights import enumerated_model_traces, vectorized_traces

__all__ = [
    "STRUCTURE_RUNS",
    "SUMMING_ENTRY_POINTS",
    "check_finite_weights",
    "check_fixed_latent_sites",
    "check_latent_masks",
    "check_model_and_guide",
    "check_no_enumerated_sites",
    "check_prototype",
    "initialized_cuda_devices",
    "nonfinite_term",
    "rng_state",
    "warn_latents_below_data_precision",
]


SUMMING_ENTRY_POINTS = (
    "pb.BLR with a Gaussian rule (pb.VON, pb.IVON, pb.Newton) or pb.MixtureRule, "
    "pb.log_evidence, pb.RenyiELBO, pb.psis_diagnostic, pb.to_inference_data, "
    "pb.loo_sensitivity and pb.sgd_evidence"
)
"""The entry points that sum sites marked ``infer={"enumerate": "parallel"}`` out, as a refusal
names them (the Gauss-Newton rules pb.VOGN and pb.OGN need each datum's gradient, which a sum
over an enumerated site ties together, and refuse such sites; so does pb.ExpFamilyRule)."""


def _is_discrete(site: dict) -> bool:
    fn = site["fn"]
    support = getattr(fn, "support", None)
    return bool(getattr(fn, "has_enumerate_support", False)) or bool(
        getattr(support, "is_discrete", False)
    )


def check_no_enumerated_sites(
    model_trace: Trace, guide_trace: Trace, summed: bool = False
) -> tuple[str, ...]:
    """Refuse a discrete latent site of the model that the guide leaves out, unless the caller
    sums it out.

    A site counts when it is a latent (unobserved) sample site of ``model_trace``, absent from
    ``guide_trace``, and either marked for enumeration (``infer={"enumerate": ...}``, e.g. by
    ``pyro.infer.config_enumerate``) or discrete. Replaying the model on the guide's draws would
    draw it from its prior and count its log prior in the joint, as if it were data.

    Args:
        model_trace: a trace of the model replayed on ``guide_trace``.
        guide_trace: a trace of the guide.
        summed: the caller sums out sites marked ``infer={"enumerate": "parallel"}`` (see
            :func:`pyro_blr.core.enumeration.enumerated_log_joint`): they pass, and are
            returned; an unmarked discrete site, or one marked ``"sequential"``, is still
            refused.

    Returns:
        The names of the sites left to parallel enumeration (empty unless ``summed``).

    Raises:
        ValueError: naming the first such site, and saying how to handle it.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro import poutine
        >>> @pyro.infer.config_enumerate
        ... def model():
        ...     k = pyro.sample("k", dist.Categorical(torch.tensor([0.3, 0.7])))
        ...     loc = torch.tensor([-1.0, 1.0])[k]
        ...     pyro.sample("x", dist.Normal(loc, 1.0), obs=torch.tensor(0.5))
        >>> def guide():  # k left to enumeration, as Pyro's TraceEnum_ELBO expects
        ...     pass
        >>> guide_trace = poutine.trace(guide).get_trace()
        >>> model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace()
        >>> try:
        ...     check_no_enumerated_sites(model_trace, guide_trace)
        ... except ValueError as error:
        ...     print(str(error).split(" is not")[0])
        latent site 'k' of the model (Categorical, marked for enumeration)
    """
    given = {name: site["value"] for name, site in sample_sites(guide_trace)}
    summed_out = enumerated_sites(model_trace, given) if summed else ()
    for name, site in sample_sites(model_trace, deterministic=False):
        if site["is_observed"] or name in guide_trace.nodes or name in summed_out:
            continue
        enumerate_ = site["infer"].get("enumerate")
        if not enumerate_ and not _is_discrete(site):
            continue
        how = "marked for enumeration" if enumerate_ else "discrete"
        fix = (
            "mark it infer={'enumerate': 'parallel'} (or wrap the model in "
            "pyro.infer.config_enumerate) and it is summed out exactly"
            if summed
            else f"this entry point does not sum enumerated sites out ({SUMMING_ENTRY_POINTS} "
            "do); use one of those, marginalize it with Pyro's TraceEnum_ELBO (and recover it "
            "with pyro.infer.infer_discrete), sum it out in the model"
        )
        raise ValueError(
            f"latent site '{name}' of the model ({type(site['fn']).__name__}, {how}) is not "
            "sampled by the guide: it would be drawn from its prior and scored as if observed, "
            f"which gives wrong weights: {fix}, or give the guide a sample site '{name}'"
        )
    return summed_out


def check_latent_masks(model_trace: Trace, summed: Iterable[str] = ()) -> None:
    """Refuse a latent site whose density is masked out at some elements (``poutine.mask``, or
    the ``_unobserved`` site Pyro makes for ``obs_mask=``): those elements appear in no term of
    the joint, so their posterior is improper and no estimate of it, or of the evidence, is
    meaningful. The sites in ``summed`` are summed out (enumerated): a mask leaves their
    distribution normalized, as in ``TraceEnum_ELBO`` (the padding of Pyro's HMM example).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     with pyro.poutine.mask(mask=torch.tensor([True, False])):
        ...         pyro.sample("z", dist.Normal(torch.zeros(2), 1.0))
        >>> try:
        ...     check_latent_masks(pyro.poutine.trace(model).get_trace())
        ... except ValueError as error:
        ...     print(str(error).split(":")[0])
        latent site 'z' is masked out at some elements
    """
    summed = set(summed)
    for name, site in sample_sites(model_trace, deterministic=False):
        mask = site["mask"]
        if site["is_observed"] or name in summed or mask is None or mask is True:
            continue
        if mask is False or (torch.is_tensor(mask) and not bool(mask.all())):
            how = (
                "; it is the site Pyro adds for obs_mask=, whose observed entries it masks out: "
                "sample the missing entries as a site of their own instead of obs_mask="
                if name.endswith("_unobserved")
                else "; sample only the elements that are really unknown (e.g. the missing "
                "entries, as a site of their own) instead of masking them"
            )
            raise ValueError(
                f"latent site '{name}' is masked out at some elements: they enter no term of "
                f"the joint density, so their posterior is improper{how}"
            )


STRUCTURE_RUNS = 16
"""How many prior runs :func:`check_fixed_latent_sites` compares with the prototype trace."""


def check_fixed_latent_sites(
    model: Callable, prototype_trace: Trace, args: tuple, kwargs: dict
) -> None:
    """Refuse a model whose latent sites change from run to run (a site sampled only in one
    branch of an ``if``): a guide built from one run has no factor for a site that other runs
    sample, and Pyro would score that site as if observed. The model is run
    :data:`STRUCTURE_RUNS` times from its prior (without gradients, leaving the random number
    generators where they were) and each run's latent sites are compared with the prototype's;
    a site that appears with probability below about 1/16 a run may go unseen.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     s = pyro.sample("s", dist.Normal(0.0, 1.0))
        ...     if s > 0:
        ...         pyro.sample("extra", dist.Normal(0.0, 1.0))
        >>> prototype = pyro.poutine.trace(model).get_trace()
        >>> try:
        ...     check_fixed_latent_sites(model, prototype, (), {})
        ... except ValueError as error:
        ...     print(str(error).split(":")[0])
        the model's latent sites change from run to run
    """

    def latent_names(trace: Trace) -> set[str]:
        return {name for name, site in sample_sites(trace) if not site["is_observed"]}

    expected = latent_names(prototype_trace)
    with torch.random.fork_rng(devices=_cuda_devices()), torch.no_grad(), poutine.block():
        for _ in range(STRUCTURE_RUNS):
            found = latent_names(poutine.trace(model).get_trace(*args, **kwargs))
            if found != expected:
                changed = sorted(found ^ expected)
                raise ValueError(
                    f"the model's latent sites change from run to run: {changed} are sampled in "
                    "some runs and not in others, so a guide built from one run has no fixed "
                    "place for them; make every run sample the same sites (e.g. sample the "
                    "site always and use it only in one branch)"
                )


def check_prototype(model: Callable, prototype_trace: Trace, args: tuple, kwargs: dict) -> None:
    """What a guide built from one prototype run of ``model`` must refuse at set-up:
    :func:`check_latent_masks` and :func:`check_fixed_latent_sites`.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> check_prototype(model, pyro.poutine.trace(model).get_trace(), (), {})  # passes
    """
    check_latent_masks(prototype_trace)
    check_fixed_latent_sites(model, prototype_trace, args, kwargs)


def initialized_cuda_devices() -> list[int]:
    """The CUDA devices whose generators a draw may have moved (for ``torch.random.fork_rng``:
    a set-up run inside it leaves every generator where it was).

    Example:
        >>> import torch
        >>> with torch.random.fork_rng(devices=initialized_cuda_devices()):
        ...     _ = torch.randn(2)
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


_cuda_devices = initialized_cuda_devices


def check_model_and_guide(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, summed: bool = False
) -> tuple[str, ...]:
    """Trace ``guide`` and ``model`` replayed on it once and run
    :func:`check_no_enumerated_sites`, leaving the random number generators where they were (the
    check does not change the draws of the run it precedes).

    ``summed``: the caller sums out the sites marked for parallel enumeration (see
    :func:`check_no_enumerated_sites`); their names are returned.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> check_model_and_guide(model, AutoNormal(model), (), {})  # nothing to refuse
        ()
    """
    with torch.random.fork_rng(devices=_cuda_devices()), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    summed_out = check_no_enumerated_sites(model_trace, guide_trace, summed)
    check_latent_masks(model_trace, summed_out)
    guide_sites = {name for name, _ in sample_sites(guide_trace)}
    # the guide's minibatch: a prior run drawing its own would name a sequential plate's latents
    # of other data (z_8) as missed by the guide
    minibatch = {n: s["value"] for n, s in guide_trace.nodes.items() if site_is_subsample(s)}
    conditioned = poutine.condition(model, data=minibatch)
    with torch.random.fork_rng(devices=_cuda_devices()), poutine.block():
        for _ in range(_PRIOR_RUNS):  # latents that control flow adds on some runs only
            prior = poutine.trace(conditioned).get_trace(*args, **kwargs)
            for name, site in sample_sites(prior, deterministic=False):
                if not site["is_observed"] and name not in guide_sites | set(summed_out):
                    raise ValueError(
                        f"latent site '{name}' of the model is not sampled by the guide (it "
                        "appears on some runs only, e.g. through control flow, or the guide "
                        "leaves it out): make the model sample it on every run, or give the "
                        "guide that site"
                    )
    return summed_out


_PRIOR_RUNS = 8
"""Prior runs of the model that look for latents a guide misses: a branch taken with
probability one half is missed with probability 2^-8."""


def nonfinite_term(terms: Iterable[tuple[str, Tensor]]) -> tuple[str, float] | None:
    """The first ``(name, log_prob)`` term with an element that is not finite, as
    ``(name, that element)``, or ``None`` when every term is finite.

    Terms are scanned in order, so a site is blamed before any term computed from it (list the
    sites first and derived terms, such as a log-Jacobian, last).

    Example:
        >>> import torch
        >>> nonfinite_term([("a", torch.zeros(3)), ("b", torch.tensor([0.0, -float("inf")]))])
        ('b', -inf)
    """
    for name, log_prob in terms:
        log_prob = log_prob.detach()
        bad = ~torch.isfinite(log_prob)
        if bad.any():
            return name, float(log_prob[bad].flatten()[0])
    return None


def rng_state() -> tuple[Tensor, list[Tensor]]:
    """The state of torch's CPU generator and of every initialized CUDA generator, for
    :func:`check_finite_weights`."""
    devices = _cuda_devices()
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def check_finite_weights(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    max_plate_nesting: int,
    state: tuple[Tensor, list[Tensor]],
    enumerated: Collection[str] = (),
) -> None:
    """Explain log importance weights that are not finite: redraw the particles of a
    :func:`pyro_blr.core.log_weights` call from the generator ``state`` it started from (see
    :func:`rng_state`) and raise naming the first site whose log density is not finite.

    The redraw is bit for bit the same draw (the same operations from the same state) and the
    generators are left where they were. Each site's log density is checked scaled and masked as
    Pyro scales it, element by element, model sites first in trace order, then guide sites.

    ``enumerated``: the model's sites summed out (as :func:`pyro_blr.core.log_weights` was
    told); a site that touches none of them is blamed as above, else their sum.

    Raises:
        ValueError: naming the site, whether it is observed, latent or the guide's, and the
            offending value.
    """
    cpu, cuda = state
    devices = _cuda_devices()[: len(cuda)]
    with torch.random.fork_rng(devices=devices), poutine.block():
        torch.set_rng_state(cpu)
        for device, device_state in zip(devices, cuda, strict=True):
            torch.cuda.set_rng_state(device_state, device)
        if enumerated:  # the draws log_weights made: the guide's, then enumerated model runs
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting - 1):
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            for trace in enumerated_model_traces(
                model, guide_trace, args, kwargs, num_particles, max_plate_nesting
            ):
                reason = nonfinite_reason(trace)
                if reason is not None:
                    raise ValueError(f"{reason}, so the log importance weights are not finite")
            model_trace = None
        else:
            model_trace, guide_trace = vectorized_traces(
                model, guide, args, kwargs, num_particles, max_plate_nesting
            )
    for trace, role in ((model_trace, "model"), (guide_trace, "guide")):
        if trace is None:
            continue
        found = nonfinite_term(site_log_probs(trace))
        if found is None:
            continue
        name, value = found
        kind = "observed" if trace.nodes[name]["is_observed"] else "latent"
        raise ValueError(
            f"the log density of {role} site '{name}' ({kind}) is {value} for some draws, so "
            "the log importance weights are not finite: "
            + (
                "the data are impossible under those draws (check the likelihood's support)"
                if value == -float("inf")
                else "a numerical failure in that site's distribution"
            )
        )
    raise ValueError(
        "the log importance weights are not finite although every site's log density is: "
        "their sum overflows"
    )


def warn_latents_below_data_precision(model_trace: Trace) -> None:
    """Warn when an observed site holds float64 data but the latent sites are float32.

    A prior built from float32 constants (``Gamma(torch.tensor(0.1), ...)``, as Pyro's
    ``examples/sparse_gamma_def.py`` writes it) gives float32 latents whatever the data's dtype;
    the guide's parameters follow the latents, so the fit runs in float32, as Pyro's SVI runs it.
    Passing float64 data (``x.double()``) then does not make a float64 fit, which the warning
    says, naming a latent site and the fix.

    Example:
        >>> import warnings, pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0), 1.0))
        ...     pyro.sample("x", dist.Poisson(rate), obs=x)
        >>> trace = pyro.poutine.trace(model).get_trace(torch.tensor(3.0, dtype=torch.float64))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_latents_below_data_precision(trace)
        >>> str(caught[0].message).split(":")[0]
        "observed site 'x' holds float64 data but latent site 'rate' is float32"
    """
    latents, observed = [], []
    for name, site in sample_sites(model_trace, deterministic=False):
        value = site["value"]
        if torch.is_tensor(value) and value.is_floating_point():
            (observed if site["is_observed"] else latents).append((name, value.dtype))
    if not latents:
        return
    latent, dtype = latents[0]
    finfo = torch.finfo(dtype)
    for name, data_dtype in observed:
        if torch.finfo(data_dtype).eps < finfo.eps:
            warnings.warn(
                f"observed site '{name}' holds {str(data_dtype).removeprefix('torch.')} data but "
                f"latent site '{latent}' is {str(dtype).removeprefix('torch.')}: its prior is "
                "built from constants of that dtype, so the guide and the fit follow it (as "
                "Pyro's SVI does) and do not reach the data's precision. For a fit in the data's "
                "dtype, build the priors from it (e.g. torch.tensor(0.1, dtype=x.dtype), or "
                "x.new_tensor(0.1)) and make a new guide",
                UserWarning,
                stacklevel=2,
            )
            return
