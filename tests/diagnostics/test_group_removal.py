"""Removing a group of data at once: the exact rank-|G| downdate on conjugate models (full and
diagonal guides), the cheap diagonal version's formula, predictions, and the errors raised."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.core import GaussianGuide, latent_layout
from pyro_blr.diagnostics.group_removal import removal_sensitivity
from pyro_blr.diagnostics.removal_predictions import removal_predictions
from tests.scenarios import linear_regression

CLOSE = dict(atol=1e-8, rtol=0)


def exact_fit(s, guide_class):
    guide = guide_class(s.model)
    pb.BLR(s.model, guide, pb.Newton(lr=1.0)).step(s.X, s.y)  # conjugate: exact in one step
    return guide


def refit(s, keep):
    """The exact posterior without the removed data: mean and precision."""
    X, y = s.X[keep], s.y[keep]
    precision = torch.eye(X.shape[1], dtype=X.dtype) / s.prior_scale**2 + X.T @ X / s.noise**2
    return torch.linalg.solve(precision, X.T @ y / s.noise**2), precision


def kept(num_data, index):
    keep = torch.ones(num_data, dtype=torch.bool)
    keep[torch.as_tensor(index)] = False
    return keep


@pytest.fixture
def regression():
    s = linear_regression(num_data=24, dim=3)
    return s, exact_fit(s, AutoMultivariateNormal)


@pytest.mark.parametrize(
    "groups",
    [
        {"first five": [0, 1, 2, 3, 4], "one": [17], "every third": list(range(0, 24, 3))},
        [torch.arange(12), torch.arange(24) >= 20],  # indices and a boolean mask
        torch.arange(24) % 4,  # one label per datum: four groups
    ],
)
def test_full_guide_removal_is_the_exact_refit_without_the_group(regression, groups):
    s, guide = regression
    removal = removal_sensitivity(s.model, guide, s.X, s.y, groups=groups)
    if torch.is_tensor(groups):
        members = [torch.nonzero(groups == g).flatten() for g in range(4)]
        assert removal.labels == (0, 1, 2, 3)
    else:
        members = list(groups.values()) if isinstance(groups, dict) else groups
        members = [torch.nonzero(torch.as_tensor(m)).flatten() if torch.as_tensor(m).dtype ==
                   torch.bool else torch.as_tensor(m) for m in members]  # fmt: skip
    assert removal.method == "newton" and removal.plate == "data"
    assert removal.sizes.tolist() == [len(m) for m in members]
    for g, index in enumerate(members):
        mean, precision = refit(s, kept(24, index))
        torch.testing.assert_close(removal.means()[g], mean, **CLOSE)
        torch.testing.assert_close(removal.precision[g], precision, **CLOSE)
        shift = mean - s.posterior_mean
        torch.testing.assert_close(
            removal.influence[g], (shift @ s.posterior_precision @ shift).sqrt(), **CLOSE
        )


def test_groups_of_one_datum_agree_with_loo_sensitivity(regression):
    s, guide = regression
    removal = removal_sensitivity(s.model, guide, s.X, s.y, groups=torch.arange(24))
    loo = pb.loo_sensitivity(s.model, guide, s.X, s.y)
    torch.testing.assert_close(removal.mean_shift, loo.mean_shift, **CLOSE)


def mean_field_fit(s):
    """The mean-field fixed point of the Gaussian posterior: its exact mean and its precision's
    diagonal (written directly: a diagonal Newton step does not reach it in one step)."""
    guide = AutoNormal(s.model)
    guide(s.X, s.y)
    gaussian = GaussianGuide(guide, latent_layout(guide.prototype_trace))
    gaussian.write(s.posterior_mean, s.posterior_precision.diagonal())
    return guide


def test_diagonal_guide_removal_is_the_mean_field_refit(regression):
    s, _ = regression
    guide = mean_field_fit(s)
    index = [2, 3, 5, 7, 11, 13]
    removal = removal_sensitivity(s.model, guide, s.X, s.y, groups=[index])
    mean, precision = refit(s, kept(24, index))
    # The mean-field fixed point of a Gaussian target: its exact mean, its precision's diagonal.
    torch.testing.assert_close(removal.means()[0], mean, **CLOSE)
    torch.testing.assert_close(removal.precision[0], precision.diagonal(), **CLOSE)


def test_the_diagonal_method_divides_the_groups_gradient_by_the_guides_precision(regression):
    s, _ = regression
    guide = mean_field_fit(s)
    groups = {"a": [0, 1, 2], "b": list(range(10, 24))}
    cheap = removal_sensitivity(s.model, guide, s.X, s.y, groups=groups, method="diagonal")
    assert cheap.method == "diagonal" and cheap.precision is None
    loc, precision = GaussianGuide(guide, latent_layout(guide.prototype_trace)).read()
    for g, index in enumerate(groups.values()):
        X, y = s.X[index], s.y[index]
        grad = X.T @ (y - X @ loc) / s.noise**2  # gradient of the group's log-likelihood
        torch.testing.assert_close(cheap.mean_shift[g], -grad / precision, **CLOSE)


def independent_model(X, y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(3, dtype=y.dtype), 1.0).to_event(1))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu * X, 0.5).to_event(1), obs=y)


def test_diagonal_and_newton_differ_by_the_groups_share_of_the_precision():
    # Independent coordinates: Newton divides by S - H_G, the cheap version by S, exactly.
    gen = torch.Generator().manual_seed(3)
    X = 1 + torch.rand(30, 3, generator=gen, dtype=torch.float64)
    y = X + 0.5 * torch.randn(30, 3, generator=gen, dtype=torch.float64)
    guide = AutoNormal(independent_model)
    pb.BLR(independent_model, guide, pb.Newton(lr=1.0)).step(X, y)
    index = list(range(8))
    newton = removal_sensitivity(independent_model, guide, X, y, groups=[index])
    cheap = removal_sensitivity(independent_model, guide, X, y, groups=[index], method="diagonal")
    precision = 1 + X.square().sum(0) / 0.25
    ratio = (precision - X[index].square().sum(0) / 0.25) / precision
    torch.testing.assert_close(cheap.mean_shift, newton.mean_shift * ratio, **CLOSE)


def test_predictions_after_removal_are_the_refits_predictions(regression):
    s, guide = regression
    X_new = torch.randn(5, 3, dtype=s.X.dtype, generator=torch.Generator().manual_seed(9))
    groups = {"first half": list(range(12)), "last": [23]}
    removal = removal_sensitivity(s.model, guide, s.X, s.y, groups=groups)
    out = removal_predictions(s.model, guide, removal, X_new, torch.zeros(5, dtype=s.X.dtype),
                              site="y")  # fmt: skip
    torch.testing.assert_close(out.before, X_new @ s.posterior_mean, **CLOSE)
    for g, index in enumerate(groups.values()):
        mean, _ = refit(s, kept(24, index))
        torch.testing.assert_close(out.after[g], X_new @ mean, **CLOSE)
    torch.testing.assert_close(out.change, out.after - out.before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="site 'probs' is not in the model's trace"):
        removal_predictions(s.model, guide, removal, X_new, X_new[:, 0], site="probs")


# --- errors: each names the group, the site or the option ---------------------------------------


@pytest.mark.parametrize(
    "groups, message",
    [
        ({"empty": []}, "group 'empty' is empty"),
        ([[0, 24]], "group 0 has an index outside the data plate's 24 elements"),
        ([[3, 3]], "group 0 lists a datum twice"),
        ([0, 1, 2], "flat list of integers"),
        (torch.arange(5), r"one label per datum \(24\)"),
        ({"mask": torch.ones(5, dtype=torch.bool)}, "group 'mask' is a boolean mask of shape"),
        ("class 3", "groups must be a dict"),
    ],
)
def test_malformed_groups_are_named(regression, groups, message):
    s, guide = regression
    with pytest.raises(ValueError, match=message):
        removal_sensitivity(s.model, guide, s.X, s.y, groups=groups)


def test_options_and_models_it_cannot_handle_are_refused(regression):
    s, guide = regression
    with pytest.raises(ValueError, match="method must be one of"):
        removal_sensitivity(s.model, guide, s.X, s.y, groups=[[0]], method="exact")
    with pytest.raises(
        ValueError, match=r"the first argument is a guide \(AutoMultivariateNormal\)"
    ):
        removal_sensitivity(guide, s.model, s.X, s.y, groups=[[0]])
    y_nan = s.y.clone()
    y_nan[3] = float("nan")
    with pytest.raises(
        ValueError, match=r"observed site 'y' .* not finite at batch index \[\[3\]\]"
    ):
        removal_sensitivity(s.model, guide, s.X, y_nan, groups=[[0]])
    sub = linear_regression(num_data=24, dim=3, subsample_size=6)
    with pytest.raises(ValueError, match="plate 'data' is subsampled"):
        removal_sensitivity(sub.model, guide, s.X, s.y, groups=[[0]])

    def local(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(z, 1.0), obs=y)

    y = torch.zeros(4)
    local_guide = AutoNormal(local)
    pb.BLR(local, local_guide, pb.Newton(lr=1.0)).step(y)
    with pytest.raises(ValueError, match="latent site 'z' is local to the data plate"):
        removal_sensitivity(local, local_guide, y, groups=[[0]])


@pytest.mark.parametrize("method", ["newton", "diagonal"])
def test_an_unfitted_guide_is_refused(regression, method):
    s, _ = regression
    pyro.clear_param_store()  # else the new guide takes the fitted one's parameters from it
    guide = AutoMultivariateNormal(s.model)
    message = "fixed point" if method == "newton" else "the fit's own error exceeds the shift"
    with pytest.raises(ValueError, match=message):
        removal_sensitivity(s.model, guide, s.X, s.y, groups=[[0]], method=method)


def test_check_false_skips_the_fixed_point_check_for_estimates_during_training(regression):
    s, _ = regression
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(s.model)  # its initial state, as at the start of training
    guide(s.X, s.y)
    for method in ("newton", "diagonal"):
        removal = removal_sensitivity(s.model, guide, s.X, s.y, groups=[[0]], method=method,
                                      check=False)  # fmt: skip
        assert torch.isfinite(removal.mean_shift).all()


def test_the_diagonal_method_warns_when_the_fit_error_is_a_tenth_of_a_shift(regression):
    s, guide = regression
    gaussian = GaussianGuide(guide, latent_layout(guide.prototype_trace))
    loc, precision = gaussian.read()
    # Move the mean 0.3 posterior sd off its fixed point along the first eigenvector.
    eigenvalues, eigenvectors = torch.linalg.eigh(precision)
    gaussian.write(loc + 0.3 * eigenvectors[:, 0] / eigenvalues[0].sqrt(), precision)
    with pytest.warns(UserWarning, match="mean is 0.3 posterior standard deviations"):
        removal = removal_sensitivity(s.model, guide, s.X, s.y, groups=[[0]], method="diagonal")
    # Warned, not refused: the shift (measured 0.57) lies between the gap and ten times it.
    assert 0.3 < float(removal.influence[0]) < 3


def test_a_removal_leaving_no_positive_precision_names_the_group(regression):
    s, guide = regression
    gaussian = GaussianGuide(guide, latent_layout(guide.prototype_trace))
    loc, precision = gaussian.read()
    gaussian.write(loc, 0.6 * precision)  # near a fixed point (warned), 40% short of curvature
    with pytest.warns(UserWarning, match="near but not at a fixed point"):
        with pytest.raises(ValueError, match=r"group\(s\) \['most'\] of plate 'data'"):
            removal_sensitivity(s.model, guide, s.X, s.y, groups={"most": list(range(20))})
