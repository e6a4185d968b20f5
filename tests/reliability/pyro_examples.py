"""Pyro's own example models, copied verbatim from the Pyro repository (Apache-2.0), each with its
source named above it, and a user's model with a bare ``assert``; used by
``test_pyro_models_run.py``.

They live outside the test module so that pytest does not rewrite their ``assert`` statements:
a bare ``assert`` must raise an ``AssertionError`` with an empty message, as it does for users.
Lint and format are off for the file: the models stay as Pyro wrote them.
"""
# ruff: noqa
# fmt: off

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import Gamma, Normal, Poisson, Uniform

# ---------------------------------------------------------------- logistic growth (finding 1)
# From pyro-ppl/pyro, tutorial/source/logistic-growth.ipynb ("A first model"). The tutorial's
# dataset is the Nextstrain counts; only its "time_step_days" is read by the model.
dataset = {"time_step_days": 14}


def basic_model(counts):
    T, L = counts.shape

    # Define plates over lineage and time
    lineage_plate = pyro.plate("lineages", L, dim=-1)
    time_plate = pyro.plate("time", T, dim=-2)

    # Define a growth rate (i.e. slope) and an init (i.e. intercept) for each lineage
    with lineage_plate:
        rate = pyro.sample("rate", dist.Normal(0, 1))
        init = pyro.sample("init", dist.Normal(0, 1))

    # We measure time in units of the SARS-CoV-2 generation time of 5.5 days
    time = torch.arange(float(T)) * dataset["time_step_days"] / 5.5

    # Assume lineages grow linearly in logit space
    logits = init + rate * time[:, None]

    # We use the softmax function (the multivariate generalization of the
    # sigmoid function) to define normalized probabilities from the logits
    probs = torch.softmax(logits, dim=-1)
    assert probs.shape == (T, L)

    # Observe counts via a multinomial likelihood.
    with time_plate:
        pyro.sample(
            "obs",
            dist.Multinomial(probs=probs.unsqueeze(-2), validate_args=False),
            obs=counts.unsqueeze(-2),
        )


def basic_model_with_message(counts):
    """basic_model with a message on its assert: the fit the bare assert must not change."""
    T, L = counts.shape
    lineage_plate = pyro.plate("lineages", L, dim=-1)
    time_plate = pyro.plate("time", T, dim=-2)
    with lineage_plate:
        rate = pyro.sample("rate", dist.Normal(0, 1))
        init = pyro.sample("init", dist.Normal(0, 1))
    time = torch.arange(float(T)) * dataset["time_step_days"] / 5.5
    logits = init + rate * time[:, None]
    probs = torch.softmax(logits, dim=-1)
    assert probs.shape == (T, L), "probs has a particle dimension"
    with time_plate:
        pyro.sample(
            "obs",
            dist.Multinomial(probs=probs.unsqueeze(-2), validate_args=False),
            obs=counts.unsqueeze(-2),
        )


# ---------------------------------------------------------------- sparse gamma DEF (finding 2)
# From pyro-ppl/pyro, examples/sparse_gamma_def.py (the SparseGammaDEF class's __init__ and
# model); the layer sizes are set smaller after construction, as a test needs.
class SparseGammaDEF(object):
    def __init__(self):
        # define the sizes of the layers in the deep exponential family
        self.top_width = 100
        self.mid_width = 40
        self.bottom_width = 15
        self.image_size = 64 * 64
        # define hyperpaameters that control the prior
        self.alpha_z = torch.tensor(0.1)
        self.beta_z = torch.tensor(0.1)
        self.alpha_w = torch.tensor(0.1)
        self.beta_w = torch.tensor(0.3)
        # define parameters used to initialize variational parameters
        self.alpha_init = 0.5
        self.mean_init = 0.0
        self.sigma_init = 0.1
        self.softplus = torch.nn.Softplus()

    # define the model
    def model(self, x):
        x_size = x.size(0)

        # sample the global weights
        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            w_top = pyro.sample("w_top", Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            w_mid = pyro.sample("w_mid", Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            w_bottom = pyro.sample("w_bottom", Gamma(self.alpha_w, self.beta_w))

        # sample the local latent random variables
        # (the plate encodes the fact that the z's for different datapoints are conditionally independent)
        with pyro.plate("data", x_size):
            z_top = pyro.sample("z_top", Gamma(self.alpha_z, self.beta_z).expand([self.top_width]).independent(1))
            mean_mid = torch.matmul(z_top, w_top.reshape(-1, self.top_width, self.mid_width))
            z_mid = pyro.sample("z_mid", Gamma(self.alpha_z, self.beta_z / mean_mid).independent(1))
            mean_bottom = torch.matmul(z_mid, w_mid.view(-1, self.mid_width, self.bottom_width))
            z_bottom = pyro.sample("z_bottom", Gamma(self.alpha_z, self.beta_z / mean_bottom).independent(1))
            mean_obs = torch.matmul(z_bottom, w_bottom.view(-1, self.bottom_width, self.image_size))

            # observe the data using a poisson likelihood
            pyro.sample('obs', Poisson(mean_obs).independent(1), obs=x)


# ---------------------------------------------------------------- inclined plane (finding 3)
# From pyro-ppl/pyro, examples/inclined_plane.py (the simulator and the model).
little_g = 9.8  # m/s/s
mu0 = 0.12  # actual coefficient of friction in the experiment
time_measurement_sigma = 0.02  # observation noise in seconds (known quantity)


# the forward simulator, which does numerical integration of the equations of motion
# in steps of size dt, and optionally includes measurement noise

def simulate(mu, length=2.0, phi=np.pi / 6.0, dt=0.005, noise_sigma=None):
    T = torch.zeros(())
    velocity = torch.zeros(())
    displacement = torch.zeros(())
    acceleration = torch.tensor(little_g * np.sin(phi)) - \
        torch.tensor(little_g * np.cos(phi)) * mu

    if acceleration.numpy() <= 0.0:  # the box doesn't slide if the friction is too large
        return torch.tensor(1.0e5)   # return a very large time instead of infinity

    while displacement.numpy() < length:  # otherwise slide to the end of the inclined plane
        displacement += velocity * dt
        velocity += acceleration * dt
        T += dt

    if noise_sigma is None:
        return T
    else:
        return T + noise_sigma * torch.randn(())


# define model with uniform prior on mu and gaussian noise on the descent time
def model(observed_data):
    mu_prior = Uniform(0.0, 1.0)
    mu = pyro.sample("mu", mu_prior)

    def observe_T(T_obs, obs_name):
        T_simulated = simulate(mu)
        T_obs_dist = Normal(T_simulated, torch.tensor(time_measurement_sigma))
        pyro.sample(obs_name, T_obs_dist, obs=T_obs)

    for i, T_obs in enumerate(observed_data):
        observe_T(T_obs, "obs_%d" % i)

    return mu


# ---------------------------------------------------------------- a user's bare assert (finding 5)
def only_sigma_one(y):
    """A model that accepts only sigma = 1, the guide's start, with a bare assert."""
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    assert abs(float(sigma) - 1.0) < 1e-6
    pyro.sample("y", dist.Normal(0.0, sigma), obs=y)
# fmt: on
