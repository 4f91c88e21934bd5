"""check_sparse finds repeated indices exactly as np.unique would, on both of its paths."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.protocols.validate import check_sparse


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 99), max_size=40), st.sampled_from([100, 10 ** 9]),
       st.booleans())
def test_repeats_found_exactly(raw, size, sort):
    idx = np.array(sorted(raw) if sort else raw, np.int64)
    vals = np.ones(len(idx), np.float32)
    err = check_sparse(idx, vals, size=size)
    repeated = np.unique(idx).size != idx.size
    assert (err == "repeated index") == repeated
    if not repeated:
        assert err is None
