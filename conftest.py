import os

import pyro
import pytest
import torch

# pytest-xdist workers share the machine's cores: with torch's default of one thread per core
# in every worker, OpenMP threads oversubscribe the cores and large linear algebra slows down
# many times over (two slow tests took 130 s and 93 s side by side, 12 s and 5 s alone).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Every test and doctest starts with an empty param store and a fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
