"""crowdlearn: simulate fleets of mobile devices that learn together without sharing data."""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow start-up chatter out of user output

__version__ = "0.1.0"


def sweep(config=None, grid=(), seeds=1, **kwargs):
    """Run a config over a grid of values and seeds; see :func:`crowdlearn.sweeps.sweep`.

    Returns a pandas DataFrame with one row per run.
    """
    from crowdlearn.sweeps import sweep as _sweep

    return _sweep(config, grid, seeds, **kwargs)
