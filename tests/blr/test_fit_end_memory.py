"""BLR.fit's closing Pareto check on a model that broadcasts the particles wrong (softmax
regression written ``X @ W + b``, as in examples/removing_a_class.py): the particle plate would
build logits of ``(K, K, N, C)``, 16 GB there; the check must go to one run per particle without
ever building them, and weigh every particle as one run of the model alone does."""

import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_blr.blr.fit_end import CHECK_PARTICLES, check_pareto
from pyro_blr.core.weights import PROBE_PARTICLES, log_weights

N, D, C = 200, 8, 5


def softmax_regression(sizes):
    """The model of examples/removing_a_class.py; ``sizes`` gets the shape of every logits
    tensor the model builds."""

    def model(X, y):
        W = pyro.sample("W", dist.Normal(X.new_zeros(D, C), 1.0).to_event(2))
        b = pyro.sample("b", dist.Normal(X.new_zeros(C), 1.0).to_event(1))
        logits = X @ W + b  # in a particle plate: W (K, 1, D, C), b (K, 1, C) -> (K, K, N, C)
        sizes.append(tuple(logits.shape))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model


def data():
    generator = torch.Generator().manual_seed(0)
    X = torch.rand(N, D, generator=generator, dtype=torch.float64)
    return X, torch.randint(C, (N,), generator=generator)


def test_closing_check_never_builds_a_tensor_larger_than_one_run_per_particle():
    sizes = []
    model = softmax_regression(sizes)
    X, y = data()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    guide(X, y)
    sizes.clear()
    with warnings.catch_warnings():  # an unfitted guide: k-hat is large, not the point here
        warnings.simplefilter("ignore", RuntimeWarning)
        check = check_pareto(model, guide, (X, y), {}, 1)
    assert check.num_samples == CHECK_PARTICLES and check.khat == check.khat
    # The bound is the data's size: the largest logits a run may build are those of the probe
    # in the plate, (P, P, N, C), with P = PROBE_PARTICLES, far below the K x K plate's
    # (256, 256, N, C) (before the probe: 65536 N C elements, 2.6 GB here, 16 GB on digits).
    largest = max(torch.Size(s).numel() for s in sizes)
    assert largest <= PROBE_PARTICLES**2 * N * C, max(sizes, key=lambda s: torch.Size(s).numel())


def test_weights_of_the_wrong_broadcast_are_those_of_one_run_per_particle():
    sizes = []
    model = softmax_regression(sizes)
    X, y = data()
    pyro.set_rng_seed(1)
    guide = AutoNormal(model)
    guide(X, y)
    draws = []

    def recorded(X, y):
        draws.append(guide(X, y))

    weights = log_weights(model, recorded, (X, y), {}, 16, 1, False)
    W, b = draws[0]["W"].reshape(16, D, C), draws[0]["b"].reshape(16, C)
    # One run per particle by hand, in float64: equal to round-off (1e-10).
    expected = torch.stack(
        [
            dist.Normal(0.0, 1.0).log_prob(W[k]).sum()
            + dist.Normal(0.0, 1.0).log_prob(b[k]).sum()
            + dist.Categorical(logits=X @ W[k] + b[k]).log_prob(y).sum()
            for k in range(16)
        ]
    )
    median = guide.median(X, y)
    scale = {n: guide.quantiles([0.841344746], X, y)[n][0] - median[n] for n in ("W", "b")}
    log_q = torch.stack(
        [
            dist.Normal(median["W"], scale["W"]).log_prob(W[k]).sum()
            + dist.Normal(median["b"], scale["b"]).log_prob(b[k]).sum()
            for k in range(16)
        ]
    )
    torch.testing.assert_close(weights.joint, expected - log_q, rtol=1e-6, atol=1e-6)
