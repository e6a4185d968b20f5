"""The data a fit was set up with: later data of another dtype, or a shape the model fails on,
are refused naming the argument; a model that changes its input is found and the input restored."""

from functools import partial

import numpy as np
import pytest
import torch

from pyro_blr.core.data_signature import (
    DataSnapshot,
    data_arrays,
    data_checked,
    data_signature,
)


def model(X, y=None, *, extra=None):
    pass


def test_arrays_are_named_as_the_model_names_its_arguments():
    X, y = torch.zeros(3, 2), torch.zeros(3)
    names = [n for n, _ in data_arrays(model, (X,), {"y": y, "extra": {"w": [np.zeros(2)]}})]
    assert names == ["argument 'X'", "argument 'y'", "argument 'extra[\"w\"][0]'"]
    # data bound in by functools.partial, as Pyro's tutorials pass them, are named too
    assert [n for n, _ in data_arrays(partial(model, X), (y,), {})] == [
        "argument 'X'",
        "argument 'y'",
    ]


def test_another_floating_dtype_is_refused_naming_the_argument():
    X, y = torch.zeros(3, 2), torch.zeros(3)
    signature = data_signature(model, (X, y), {})
    signature.check(model, (torch.zeros(5, 2), torch.zeros(5)), {})  # other rows: fine
    with pytest.raises(ValueError, match="argument 'y' is float64, but it was float32"):
        signature.check(model, (X, y.double()), {})


def test_an_integer_dtype_change_is_not_refused():
    index = torch.arange(3)
    signature = data_signature(model, (index,), {})
    signature.check(model, (index.int(),), {})


def test_a_failure_on_another_feature_count_names_the_argument():
    X, y = torch.zeros(3, 2), torch.zeros(3)
    signature = data_signature(model, (X, y), {})
    error = RuntimeError("size mismatch\n   Trace Shapes: ...")
    with pytest.raises(ValueError, match=r"argument 'X' of shape \(3, 4\), \(3, 2\) at set-up"):
        signature.explain(error, model, (torch.zeros(3, 4), y), {})
    # another number of rows is not a reason: the error is left to the caller
    signature.explain(error, model, (torch.zeros(7, 2), torch.zeros(7)), {})


def test_data_checked_names_the_argument_and_keeps_the_models_error_as_cause():
    signature = data_signature(model, (torch.zeros(3, 2),), {})
    with pytest.raises(ValueError, match="argument 'X'") as info:
        with data_checked(signature, model, (torch.zeros(3, 5),), {}):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="the model's own"):  # nothing changed: its own error
        with data_checked(signature, model, (torch.zeros(3, 2),), {}):
            raise RuntimeError("the model's own")


def test_a_snapshot_finds_a_change_in_place_and_restores_the_data():
    X = torch.tensor([[1.0, float("nan")], [3.0, 4.0]])
    y = np.array([1.0, 2.0])
    snapshot = DataSnapshot(model, (X, y), {})
    snapshot.check()  # NaN == NaN here: unchanged data pass
    X /= 2
    with pytest.raises(ValueError, match="the model changes its argument 'X' in place"):
        snapshot.check()
    assert X[0, 0] == 1.0 and X[1, 1] == 4.0 and X[0, 1].isnan()
    y += 1
    with pytest.raises(ValueError, match="argument 'y' in place"):
        snapshot.check()
    assert y.tolist() == [1.0, 2.0]
