"""The end of a fit (pyro_blr.blr.fit_end), run without a driver."""

import pytest
import torch

from pyro_blr.blr.fit_end import Candidate, Feed, end_at_the_best, raise_if_diverged


def test_the_feed_cycles_through_its_batches_and_refuses_data_given_twice():
    feed = Feed([(1, 2), 3], ())
    assert [feed.next() for _ in range(5)] == [(1, 2), (3,), (1, 2), (3,), (1, 2)]
    assert feed.one_pass() == [(1, 2), (3,)]
    assert Feed(None, (7,)).next() == (7,) and Feed(None, (7,)).one_pass() == [(7,)]
    assert Feed(iter([1, 2]), ()).one_pass() is None  # an unsized stream: no pass to compare on
    with pytest.raises(TypeError, match="not both"):
        Feed([1], (2,))
    with pytest.raises(ValueError, match="batches yielded no batch"):
        Feed([], ()).next()


def test_an_unsized_stream_keeps_the_late_average_unchecked():
    written = []
    candidates = {
        "last": Candidate("the last iterate", {"x": torch.zeros(1)}),
        "average": Candidate("the average", {"x": torch.ones(1)}),
    }
    kept = end_at_the_best(
        candidates,
        None,
        {},
        model=None,
        guide=None,
        nesting=0,
        load=written.append,
        reduce=None,
        lr_end=0.1,
        mc_samples=2,
    )
    assert kept == "average" and written == [candidates["average"].state]


def test_a_diverged_fit_raises_naming_the_fix():
    raise_if_diverged([300.0, 120.0, 121.0], window=20, size=3, rule="von")  # no climb
    with pytest.raises(FloatingPointError, match=r"lower clip_radius"):
        raise_if_diverged([300.0, 120.0, 9000.0, 8000.0], window=20, size=3, rule="ivon")
    with pytest.raises(FloatingPointError, match=r"ended at 8500 .* best of the run, 120"):
        raise_if_diverged([300.0, 120.0, 9000.0, 8000.0], window=20, size=3, rule="von")
