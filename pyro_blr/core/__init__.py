"""A Pyro model as a flat latent vector: traces and plates, the latent layout, the log joint, log
importance weights and the checks on them, autodiff, and the view of a Gaussian guide. Every
other package builds on these; they use only public Pyro APIs."""

from pyro_blr.core.autodiff import (
    Derivatives,
    derivatives,
    hessian_diagonal_from_grad,
    hessian_from_grad,
    hessian_of_scalar,
)
from pyro_blr.core.checks import (
    check_finite_weights,
    check_fixed_latent_sites,
    check_latent_masks,
    check_model_and_guide,
    check_no_enumerated_sites,
    check_prototype,
    nonfinite_term,
    rng_state,
)
from pyro_blr.core.gaussian_guide import (
    GAUSSIAN_GUIDES,
    GaussianGuide,
    check_gaussian_guide,
    initialize_guide,
    write_param,
    write_params,
)
from pyro_blr.core.layout import LatentLayout, LatentSite, latent_layout
from pyro_blr.core.log_joint import (
    VECTORIZATIONS,
    choose_vectorization,
    log_joint,
    neg_log_joint,
)
from pyro_blr.core.model_kwargs import model_keywords, model_parameter_names
from pyro_blr.core.per_datum import (
    DataPlate,
    DatumTerms,
    PerDatum,
    data_plates,
    datum_terms,
    per_datum_gradients,
    per_datum_jacobian,
)
from pyro_blr.core.traces import (
    PARTICLE_PLATE,
    guess_max_plate_nesting,
    max_plate_nesting,
    num_observations,
    rng_kept,
    sample_sites,
    site_log_probs,
    sum_per_particle,
    trace_without_rng,
    unsubsampled_scale,
    validate_site_shapes,
)
from pyro_blr.core.weights import LogWeights, log_weights, replay_particles, vectorized_traces

__all__ = [
    "GAUSSIAN_GUIDES",
    "PARTICLE_PLATE",
    "VECTORIZATIONS",
    "DataPlate",
    "DatumTerms",
    "Derivatives",
    "GaussianGuide",
    "LatentLayout",
    "LatentSite",
    "LogWeights",
    "PerDatum",
    "check_finite_weights",
    "check_fixed_latent_sites",
    "check_gaussian_guide",
    "check_latent_masks",
    "check_model_and_guide",
    "check_no_enumerated_sites",
    "check_prototype",
    "choose_vectorization",
    "data_plates",
    "datum_terms",
    "derivatives",
    "guess_max_plate_nesting",
    "hessian_diagonal_from_grad",
    "hessian_from_grad",
    "hessian_of_scalar",
    "initialize_guide",
    "latent_layout",
    "log_joint",
    "log_weights",
    "max_plate_nesting",
    "model_keywords",
    "model_parameter_names",
    "neg_log_joint",
    "nonfinite_term",
    "num_observations",
    "per_datum_gradients",
    "per_datum_jacobian",
    "replay_particles",
    "rng_kept",
    "rng_state",
    "sample_sites",
    "site_log_probs",
    "sum_per_particle",
    "trace_without_rng",
    "unsubsampled_scale",
    "validate_site_shapes",
    "vectorized_traces",
    "write_param",
    "write_params",
]
