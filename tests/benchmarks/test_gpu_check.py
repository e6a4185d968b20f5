"""The device check's rows run on the CPU and give finite numbers that stay on the device."""

import math

import pyro
import pytest
import torch

from benchmarks import gpu_check

FAST = ["SVI + Trace_ELBO (AutoFlow)", "BLR expfamily (AutoExpFamily)", "sgd_evidence"]


@pytest.mark.parametrize("name", FAST)
def test_device_check_rows_on_the_cpu(name):
    pyro.set_rng_seed(0)
    value, stayed = gpu_check.checks(torch.device("cpu"))[name]()
    assert math.isfinite(float(value)) and stayed
