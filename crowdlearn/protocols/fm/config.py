"""The ``[fm]`` config section, its checks and the parameters it builds."""

from __future__ import annotations

from collections.abc import Mapping

from crowdlearn.protocols.fm.params import BOUNDED, FMParams
from crowdlearn.schema import Key, from_section, keys, relation_problems

# ---------------------------------------------------------------- configuration
#: the ``[fm]`` config section (derived from :class:`~crowdlearn.protocols.fm.params.FMParams`)
CONFIG_SECTION: Mapping[str, Key] = keys(FMParams)


def cross_check(section: dict, *, protocol: str = "fm", model: dict | None = None,
                data: dict | None = None, quality: dict | None = None) -> list[str]:
    """Problems of a resolved ``[fm]`` section (and, for ``protocol = "fm"``, its neighbours)."""
    return relation_problems(FMParams, section, section="fm") + neighbours(
        protocol=protocol, model=model, data=data, quality=quality)


def neighbours(*, protocol: str = "fm", model: dict | None = None, data: dict | None = None,
               quality: dict | None = None) -> list[str]:
    """Problems of combining protocol ``fm`` with the ``[model]``, ``[data]`` and ``[quality]``
    sections."""
    out: list[str] = []
    if protocol != "fm":
        return out
    if model is not None:
        if model["arch"] == "cnn":
            out.append("model.arch: protocol 'fm' needs 'linear' or 'mlp'")
        elif model["arch"] == "mlp" and model["activation"] not in BOUNDED:
            out.append(f"model.activation: protocol 'fm' with arch = 'mlp' needs a bounded "
                       f"activation ({', '.join(BOUNDED)}); got {model['activation']!r}")
    if quality is not None:
        from crowdlearn.data import quality as q
        task = None
        if data is not None:
            task = "regression" if data["dataset"] == "diabetes" else "classification"
        out.extend(q.cross_check(quality, task=task))
    return out


def params_from_config(cfg, *, mu: float = 0.0) -> FMParams:
    """The :class:`FMParams` of a config: ``rounds`` and the ``[fm]`` section, with ``mu`` as given."""
    return from_section(FMParams, cfg.fm, rounds=cfg.rounds, mu=mu)
