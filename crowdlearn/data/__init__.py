"""Datasets and their split across devices (see ``docs/design.md``, section "Data")."""

from crowdlearn.data.datasets import (
    Dataset,
    cifar10_problem,
    fashion_mnist_available,
    load_dataset,
)
from crowdlearn.data.partition import PARTITIONERS, partition, partition_stats

__all__ = [
    "PARTITIONERS",
    "Dataset",
    "cifar10_problem",
    "fashion_mnist_available",
    "load_dataset",
    "partition",
    "partition_stats",
]
