"""crowdlearn: simulate fleets of mobile devices that learn together without sharing data."""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow start-up chatter out of user output

__version__ = "0.1.0"
