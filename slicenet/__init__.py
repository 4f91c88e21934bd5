"""SliceNet: slicing a neural network's hidden layers across a group of devices.

The cost graph (:mod:`slicenet.graph`), the partitioners (:mod:`slicenet.partition`) and the plan
(:mod:`slicenet.plan`) are pure (numpy, networkx, pymetis).  :mod:`slicenet.keras_io` converts
Keras models and imports Keras only when called; :mod:`slicenet.plot` imports matplotlib only
when called.  Importing this package imports neither TensorFlow nor matplotlib.

Examples
--------
>>> from slicenet import CostGraph, partition, paper_mlp_description
>>> g = CostGraph.from_layers((784,), paper_mlp_description().layers)
>>> plan = partition(g, 10)
>>> round(plan.total_compute / plan.n)
10170

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from slicenet.graph import (
    BYTES_PER_VALUE,
    Activation,
    BatchNorm,
    Conv2D,
    CostGraph,
    Dense,
    Dominator,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    ModelDescription,
    Traffic,
    layer_from_dict,
    paper_cnn_description,
    paper_mlp_description,
    traffic_per_sample,
)
from slicenet.keras_io import build_keras, from_keras, load_keras, paper_cnn, paper_mlp
from slicenet.partition import OBJECTIVES, STRATEGIES, partition
from slicenet.plan import PieceStats, SlicePlan
from slicenet.plot import plot_plan

_EXECUTION = ("DOMINATOR", "Message", "PiecewiseNetwork", "WeightSpec", "count_floats",
              "monolithic_step", "piecewise_step", "weight_specs")


def __getattr__(name):  # the execution API imports TensorFlow lazily, on first use
    if name in _EXECUTION:
        from slicenet import execution
        return getattr(execution, name)
    raise AttributeError(f"module 'slicenet' has no attribute {name!r}")

__all__ = [
    *_EXECUTION,
    "BYTES_PER_VALUE",
    "OBJECTIVES",
    "STRATEGIES",
    "Activation",
    "BatchNorm",
    "Conv2D",
    "CostGraph",
    "Dense",
    "Dominator",
    "Dropout",
    "Flatten",
    "Layer",
    "MaxPool2D",
    "ModelDescription",
    "PieceStats",
    "SlicePlan",
    "Traffic",
    "build_keras",
    "from_keras",
    "layer_from_dict",
    "load_keras",
    "paper_cnn",
    "paper_cnn_description",
    "paper_mlp",
    "paper_mlp_description",
    "partition",
    "plot_plan",
    "traffic_per_sample",
]
