"""Attacks on what a protocol's observers actually see (ring 1: TensorFlow, imported lazily).

Modules
-------
:mod:`~crowdlearn.privacy.attacks.metrics`
    PSNR, SSIM (Gaussian window, numpy/scipy) and a reference classifier's accuracy on
    reconstructions.
:mod:`~crowdlearn.privacy.attacks.reconstruction`
    Phong et al.'s first-layer ratio: exact one-sample inputs from full gradients, and the pixels
    a sparse DSSGD upload reveals; an end-to-end helper that runs a real DSSGD participant turn.
:mod:`~crowdlearn.privacy.attacks.inversion`
    Gradient inversion by optimisation (DLG / Geiping et al. cosine loss, iDLG/LLG labels),
    scored after Hungarian matching.
:mod:`~crowdlearn.privacy.attacks.membership`
    Yeom et al.'s loss-threshold membership inference (ROC AUC, membership advantage).
:mod:`~crowdlearn.privacy.attacks.views`
    Observer views fed by a running simulation (DSSGD server, FedAvg server, final models, a
    SliceNet follower), the follower's reconstruction from weighted sums, and
    :func:`~crowdlearn.privacy.attacks.views.privacy_report` for ``summary.json``.

The names below are re-exported lazily: importing this package does not import TensorFlow.

References
----------
L. T. Phong et al., IEEE TIFS 13(5), 2018; L. Zhu et al., NeurIPS 2019; J. Geiping et al.,
NeurIPS 2020; S. Yeom et al., IEEE CSF 2018; L. Chen et al., IEEE SECON 2018.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "metrics": ("psnr", "ssim", "ReferenceClassifier"),
    "reconstruction": ("reconstruct_from_first_layer", "reconstruct_from_sparse",
                       "per_neuron_reconstructions", "score_reconstruction",
                       "dssgd_participant_upload", "first_layer", "dense_to_sparse"),
    "inversion": ("invert_gradients", "match_and_score", "model_gradients", "infer_labels",
                  "per_sample_losses"),
    "membership": ("loss_threshold_attack", "auc", "membership_global_model",
                   "membership_local_models", "membership_group_models", "local_models"),
    "views": ("ObserverView", "DSSGDServerView", "FedAvgServerView", "ModelTap",
              "SliceNetFollowerView", "PrivacyProbe", "attach", "privacy_report",
              "reconstruct_from_weighted_sums", "follower_pass"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


def __dir__():
    return sorted([*globals(), *_WHERE])
