"""The ``[slicenet]`` config section of Crowdlearning and S-SGD, and its checks."""

from __future__ import annotations

from dataclasses import dataclass

from crowdlearn.schema import from_section, keys, param, validate

__all__ = ["CONFIG_SECTION", "SlicenetParams", "check", "check_paper_mlp", "check_ssgd",
           "params_from_config"]

STRATEGIES = ("metis", "layerwise", "random", "contiguous")
OBJECTIVES = ("cut", "volume")
GROUPINGS = ("random", "proximity")


@dataclass(frozen=True)
class SlicenetParams:
    """The ``[slicenet]`` config section (Crowdlearning and S-SGD), declared once here
    (:mod:`crowdlearn.schema`: each field's default, documentation and limits).  The machines'
    own :class:`~crowdlearn.protocols.crowdlearning.machines.SliceParams` is built from it by
    :meth:`slice_params`."""

    group_size: int = param(5, "Devices per group, n (crowdlearning). ssgd uses 1.", min=1)
    pieces: int = param(0, "Pieces the hidden layers are cut into; 0 = group_size - 1 (fewer "
                        "pieces leave dummies).", min=0)
    theta: float = param(0.5, "Fraction θ of its owned weights a device uploads per epoch "
                         "(largest accumulated |gradient| first).", min=0, max=1)
    tau: float = param(0.5, "Download threshold τ: a weight is sent when its upload count in the"
                       " window exceeds ω·τ (τ = 1: groups do not collaborate).", min=0, max=1)
    omega: int = param(0, "Sliding window ω in group uploads; 0 = number of groups.", min=0)
    strategy: str = param("metis", "Partitioner.",
                          choices=STRATEGIES)
    objective: str = param("cut", "METIS objective: 'cut' minimises cut edges (the paper's "
                           "problem statement, the default); 'volume' minimises the traffic the "
                           "weighted-sum refinement actually sends (paper-mlp: a quarter to a "
                           "third less slice traffic, same balance).", choices=OBJECTIVES)
    grouping: str = param("random", "How devices are grouped: at random (the paper) or by "
                          "network proximity (same cell first).", choices=GROUPINGS)
    peer_to_peer: bool = param(False, "Route slice traffic over device-to-device links instead "
                               "of relaying it through the server.")
    pipeline_latency: bool = param(True, "A pass pays the pipeline's fill and drain once: the "
                                   "latency chain (every layer boundary both ways) and (stages - "
                                   "1) batch times, on top of the slowest piece or link; false: "
                                   "compute and transfers only.")
    deterministic_keys: bool = param(False, "INSECURE, for reproducible tests only: derive every"
                                     " node's key pair and session salt from the seed instead of "
                                     "the OS's randomness (anyone with the config can then open "
                                     "every sealed payload).")
    batch_size: int = param(32, "Mini-batch size of intra-group SGD.", min=1)
    lr: float = param(0.05, "SGD learning rate.", min=0, min_open=True)
    model: str = param("config", "'config': the [model] MLP; 'paper-mlp': the paper's "
                       "784-400-200-100-10 with BatchNorm (needs 784 features, 10 classes); "
                       "'paper-cnn': the paper's CNN (conv 5x5 64 - pool - conv 5x5 128 - pool - "
                       "128 - 64 - classes) on the dataset's images, sliced by feature map; or a "
                       "path to a .keras/.h5 file (a chain of Conv2D, MaxPooling2D, Flatten, "
                       "Dense, BatchNormalization, Activation layers ending in a Dense layer).")
    batchnorm: bool = param(False, "Add BatchNorm (input and before every activation) to the "
                            "[model] MLP, as in the paper's network.")


    def __post_init__(self):
        validate(self)

    def slice_params(self, *, epochs: int, group_size: int, pieces: int):
        """The machines' :class:`~crowdlearn.protocols.crowdlearning.machines.SliceParams`:
        ``epochs`` (the config's ``rounds``), the group size and pieces the builder resolved
        (S-SGD: 1 and 0), the rest from this section."""
        from crowdlearn.protocols.crowdlearning.machines import SliceParams

        return SliceParams(epochs=epochs, group_size=group_size, pieces=pieces, theta=self.theta,
                           tau=self.tau, omega=self.omega, batch_size=self.batch_size, lr=self.lr,
                           peer_to_peer=self.peer_to_peer,
                           pipeline_latency=self.pipeline_latency)


#: the ``[slicenet]`` section, shared by ``crowdlearning`` and ``ssgd`` (derived from
#: :class:`SlicenetParams`)
CONFIG_SECTION = keys(SlicenetParams)


def params_from_config(cfg) -> SlicenetParams:
    """:class:`SlicenetParams` of a resolved config's ``[slicenet]`` section."""
    return from_section(SlicenetParams, cfg.slicenet)


MODELS = ("config", "paper-mlp", "paper-cnn")


def check_paper_mlp(v: dict) -> list[str]:
    """``slicenet.model``: a preset that fits the dataset, or a readable Keras file
    (crowdlearning, ssgd, and the centralized baseline, which then trains that network:
    C-SGD)."""
    import os

    model, dataset = v["slicenet"]["model"], v["data"]["dataset"]
    if model == "paper-mlp" and dataset != "fashion_mnist":
        return [f"slicenet.model: {model!r} takes 28x28 images and 10 classes; use dataset "
                "'fashion_mnist' (or model 'config')"]
    if model == "paper-cnn" and dataset not in ("fashion_mnist", "cifar10"):
        return [f"slicenet.model: {model!r} takes 28x28x1 (fashion_mnist) or 32x32x3 (cifar10) "
                "images and 10 classes; use one of those datasets (or model 'config')"]
    if model not in MODELS:
        if not model.endswith((".keras", ".h5")):
            return [f"slicenet.model: {model!r} is neither one of {', '.join(MODELS)} nor a "
                    "path to a .keras or .h5 file"]
        if not os.path.isfile(model):
            return [f"slicenet.model: no Keras model file at {model!r}; give an existing "
                    ".keras/.h5 path (relative paths start at the working directory)"]
    return []


def check_ssgd(v: dict) -> list[str]:
    """Problems of running ``ssgd`` (or ``crowdlearning``) with the rest of the config."""
    protocol, problems = v["protocol"], check_paper_mlp(v)
    if v["training"]["executor"] == "ray":
        problems.append(f"training.executor: 'ray' splits train jobs; {protocol} runs its "
                        "own compute path in this process; remove training.executor = 'ray'")
    if v["training"]["backend"] != "batched":
        problems.append(f"training.backend: {protocol} always trains on its fused batched "
                        f"path; remove training.backend = {v['training']['backend']!r}")
    if v["model"]["arch"] != "mlp" and v["slicenet"]["model"] == "config":
        problems.append(f"model.arch: {protocol} slices the [model] section's MLP only; use "
                        "arch = 'mlp', or a convolutional network with slicenet.model = "
                        "'paper-cnn' or a Keras file")
    return problems


def check(v: dict) -> list[str]:
    """Problems of running ``crowdlearning``: the group and piece counts, then as :func:`check_ssgd`."""
    sl, fleet, problems = v["slicenet"], v["fleet"], []
    if fleet["devices"] >= 1 and sl["group_size"] > fleet["devices"]:
        problems.append(f"slicenet.group_size: {sl['group_size']} is more than fleet.devices "
                        f"= {fleet['devices']}")
    if sl["pieces"] > max(sl["group_size"] - 1, 0) or (sl["group_size"] > 1
                                                       and sl["pieces"] == 0
                                                       and sl["group_size"] - 1 < 1):
        problems.append(f"slicenet.pieces: at most group_size - 1 = {sl['group_size'] - 1} "
                        f"pieces (one device is the dominator); got {sl['pieces']}")
    return problems + check_ssgd(v)
