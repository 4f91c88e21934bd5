"""crowdlearn: simulate fleets of mobile devices that learn together without sharing data."""

__version__ = "0.1.0"
