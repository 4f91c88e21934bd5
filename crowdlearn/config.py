"""Experiment configuration: a TOML file, validated all at once.

The schema below is the single source of truth: defaults, types, ranges and the documentation
of every key (the README's configuration reference is generated from it by
:func:`reference_markdown`).  :func:`load` collects **every** problem (unknown sections or keys,
wrong types, impossible values, missing files) and raises one :class:`ConfigError` listing them.

Examples
--------
>>> cfg = from_dict({"rounds": 3, "fedavg": {"lr": 0.1}})
>>> cfg.rounds, cfg.fedavg.lr, cfg.data.dataset
(3, 0.1, 'digits')
>>> from_dict({"rounds": 0, "fedavg": {"lrr": 1}})
Traceback (most recent call last):
...
crowdlearn.errors.ConfigError: invalid configuration (2 problem(s)):
  - rounds: must be >= 1; got 0
  - fedavg.lrr: unknown key; did you mean 'lr'? (valid: batch_size, clients_per_round, deadline_s, fraction, local_epochs, lr, min_clients, over_selection, secure_aggregation)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import os
from collections.abc import Callable
from numbers import Integral
from pathlib import Path
from types import MappingProxyType
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

from crowdlearn.errors import ConfigError

DATASETS = ("digits", "breast_cancer", "diabetes", "fashion_mnist", "cifar10")
TIERS = ("low_end", "mid_range", "flagship", "tablet", "edge_server")


from crowdlearn.schema import Key  # noqa: E402  (protocol modules import it too)
from crowdlearn.schema import check as _check  # noqa: E402  (one key's problems)

MBPS = "Mbit/s"

SCHEMA: dict[str, dict[str, Key]] = {
    "": {
        "protocol": Key(str, "fedavg", "Protocol to run (the registered protocols, :mod:`crowdlearn.registry`).", choices=()),
        "seed": Key(int, 0, "Master seed: every random stream (data split, fleet, sampling, "
                    "availability, training batches, weight initialisation) derives from it.", min=0),
        "rounds": Key(int, 20, "Rounds (FedAvg), epochs (crowdlearning, ssgd), epochs per "
                      "participant (DSSGD) or epoch blocks (baselines) to run.", min=1),
        "max_sim_time_s": Key(float, math.inf, "Stop the simulation at this simulated time "
                              "(seconds).", min=0, min_open=True),
        "eval_every": Key(int, 1, "Score the model(s) on the test set after every this many "
                          "rounds (and after eval_at's rounds and the last round); the other "
                          "rows of metrics.csv have every column but the test scores. Training, "
                          "bytes, times and the scored rows are the same as with 1. Evaluation "
                          "is most of the CPU of a run with many models (S-SGD's 120, "
                          "Crowdlearning with small groups).", min=1),
        "eval_at": Key(list, [], "Rounds (1 = the first) also scored when eval_every skips "
                       "them, e.g. [1, 2, 5] with eval_every = 10.", item_type=int, item_min=1),
        "name": Key(str, "", "Free-form run name, copied into the results."),
    },
    "data": {
        "dataset": Key(str, "digits", "Dataset.", choices=DATASETS),
        "path": Key(str, "", "Local copy of the dataset (Fashion-MNIST: a directory of IDX files "
                    "or a Keras-format .npz; empty: look in the standard places. CIFAR-10, "
                    "required: the cifar-10-batches-py directory or its .tar.gz)."),
        "partition": Key(str, "iid", "How training samples are split across devices.",
                         choices=("iid", "dirichlet", "shards", "quantity")),
        "alpha": Key(float, 0.5, "Dirichlet concentration (partition = dirichlet); smaller is "
                     "more label skew.", min=0, min_open=True),
        "shards_per_device": Key(int, 2, "Shards per device (partition = shards).", min=1),
        "sigma": Key(float, 1.0, "Log-normal spread of sizes (partition = quantity).", min=0,
                     min_open=True),
        "min_size": Key(int, 1, "Fewest samples a device may get (dirichlet, quantity).", min=1),
    },
    "training": {
        "backend": Key(str, "batched", "How device training runs: 'batched' (all the devices "
                       "of a round in one TensorFlow computation), 'keras' (one Keras model per "
                       "device: the slow reference path), 'none' (no training: weights pass "
                       "through unchanged, for simulator-only studies; jobs are still charged).",
                       choices=("batched", "keras", "none")),
        "executor": Key(str, "local", "Where a round's training jobs run: 'local' (this "
                        "process) or 'ray' (split by device shards over Ray actors that each hold "
                        "the training set; needs the ray extra; same weights as local with the same "
                        "training.threads).",
                        choices=("local", "ray")),
        "ray_actors": Key(int, 2, "Ray actors for training.executor = 'ray', each asking "
                          "Ray for training.threads CPUs (at least one) and running "
                          "TensorFlow with that many threads.",
                          min=1),
        "ray_address": Key(str, "", "Ray cluster for training.executor = 'ray' ('auto', "
                           "'ray://HOST:PORT'); empty: start a local one."),
        "threads": Key(int, 0, "TensorFlow threads per op (both its pools) for this run; 0: "
                       "TensorFlow's default, every core. A run's numbers depend on it in the "
                       "last digits (the order of float sums), so set it to reproduce a run "
                       "exactly elsewhere; a sweep of several jobs sets each run's share of the "
                       "cores (recorded in its config.json); Ray training actors use it too "
                       "(0: one thread each). Only a process's first TensorFlow run can choose "
                       "it.", min=0),
    },
    "model": {
        "arch": Key(str, "mlp", "Model family.", choices=("mlp", "cnn", "linear")),
        "hidden": Key(list, [64], "Hidden layer widths (mlp).", item_type=int,
                      item_min=1),
        "activation": Key(str, "relu", "Hidden activation.", choices=("relu", "tanh", "sigmoid")),
        "filters": Key(list, [16, 32], "Convolution filters per conv block (cnn).", item_type=int,
                      item_min=1),
        "kernel": Key(int, 3, "Convolution kernel size (cnn).", min=1),
        "dense": Key(list, [64], "Dense widths after the conv blocks (cnn).", item_type=int,
                      item_min=1),
    },
    "fleet": {
        "devices": Key(int, 100, "Number of devices.", min=1),
        "mix": Key((dict, str), {"low_end": 0.3, "mid_range": 0.4, "flagship": 0.2, "tablet": 0.1},
                   "Tier mix: a table of tier = weight, or one tier name. Tiers: "
                   + ", ".join(TIERS) + "."),
        "jitter": Key(float, 0.25, "Log-normal spread of speeds and bandwidths around the tier "
                      "values (0 = exact tier values).", min=0),
        "cells": Key(int, 4, "Access points / cells the devices are spread over.", min=1),
        "backhaul_mbps": Key(float, 1000.0, f"Cell ↔ core link capacity ({MBPS}).", min=0,
                             min_open=True),
        "server_mbps": Key(float, 0.0, f"Core ↔ server link capacity ({MBPS}); 0 = the "
                           "server tier's own rates (edge_server: 10 Gbit/s each way).", min=0),
        "server_tier": Key(str, "edge_server", "Profile of the server (it computes for the "
                           "centralized baseline).", choices=TIERS),
        "d2d_mbps": Key(float, 50.0, f"Device-to-device link capacity ({MBPS}), for "
                        "peer-to-peer modes.", min=0, min_open=True),
        "d2d_latency_s": Key(float, 0.002, "Device-to-device link latency (s).", min=0),
    },
    "privacy": {
        "attacks": Key(bool, False, "After the run, attack what the protocol's observers saw "
                       "(reconstruction from uploads, membership inference on the final "
                       "models) and add the scores to summary.json."),
    },
    "availability": {
        "model": Key(str, "always", "Availability model.", choices=("always", "sessions", "trace")),
        "mean_online_s": Key(float, 3600.0, "Mean online session (sessions).", min=0,
                             min_open=True),
        "mean_offline_s": Key(float, 1800.0, "Mean offline gap (sessions).", min=0,
                              min_open=True),
        "diurnal_amplitude": Key(float, 0.0, "Relative day/night swing a of the online "
                                 "probability, in [0, 1): it follows π + a·min(π, 1 − π)·"
                                 "cos(2π(h − peak_hour)/24), π = mean_online_s / (mean_online_s + "
                                 "mean_offline_s), its daily mean.",
                                 min=0, max=0.999),
        "peak_hour": Key(float, 20.0, "Hour of day when devices are most often online (the "
                         "online probability peaks; simulated time 0 is midnight).", min=0,
                         max=24),
        "trace": Key(str, "", "CSV of online intervals (device,start_s,end_s) for model = trace."),
        "churn": Key(float, 0.0, "Probability that a device drops out during a training task "
                     "(at a uniform moment of it; a task cancelled first takes its drop-out "
                     "with it).",
                     min=0, max=1),
        "churn_offline_s": Key(float, 600.0, "Mean time a churned device stays away.", min=0,
                               min_open=True),
        "battery": Key(bool, False, "Drain batteries (energy per FLOP and per byte); flat "
                       "devices drop out until recharged."),
        "battery_min_fraction": Key(float, 0.05, "Battery fraction under which a device drops "
                                    "out.", min=0, max=1),
        "recharge_s": Key(float, 3600.0, "Time a flat device needs before it returns.", min=0,
                          min_open=True),
        "initial_battery": Key(list, [1.0, 1.0], "Initial charge, uniform in [low, high].",
                               item_type=float),
    },
    "runtime": {
        "engine": Key(str, "simpy", "Runtime that drives the protocol machines: 'simpy' "
                      "(simulated time) or 'asyncio' (every node a task with its own TCP "
                      "connection on 127.0.0.1; see the README, 'Running over real sockets').",
                      choices=("simpy", "asyncio")),
        "time_scale": Key(float, 0.0, "asyncio: emulated seconds per real second for the "
                          "fleet model (modelled compute time, link latency and bandwidth); "
                          "0 = real time, no emulation.", min=0),
        "batch_window_s": Key(float, 0.005, "asyncio: real seconds a new job waits for "
                              "others to batch with.", min=0),
        "max_frame_mb": Key(float, 256.0, "asyncio: largest frame a connection accepts "
                            "(MB); a larger one drops the connection.", min=0, min_open=True),
        "timeout_s": Key(float, math.inf, "asyncio: stop the run after this many real "
                         "seconds.", min=0, min_open=True),
    },
}


def schema() -> dict[str, dict[str, Key]]:
    """The whole schema: the sections above, then every registered protocol's sections
    (:mod:`crowdlearn.registry`), with the ``protocol`` key's choices the registered names."""
    from crowdlearn import registry
    out = dict(SCHEMA)
    names = registry.names()
    top = dict(out[""])
    top["protocol"] = dataclasses.replace(top["protocol"], choices=names)
    out[""] = top
    for sec, keys in registry.sections().items():
        if sec in out:
            raise RuntimeError(f"protocol section [{sec}] clashes with a built-in section")
        out[sec] = dict(keys)
    return out


def _frozen(v: Any) -> Any:
    """A read-only view of a resolved value: lists become tuples, tables read-only mappings."""
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return MappingProxyType({k: _frozen(x) for k, x in v.items()})
    return v


_IMMUTABLE = ("configs are immutable, so that what runs is what config.json records; derive a "
              "changed, validated copy with cfg.replace({{{key!r}: ...}})")


class Section:
    """Read-only attribute access to one resolved section."""

    def __init__(self, name: str, values: dict[str, Any]):
        object.__setattr__(self, "_name", name)
        for k, v in values.items():
            object.__setattr__(self, k, _frozen(v))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(_IMMUTABLE.format(key=f"{self._name}.{key}"))

    __delattr__ = __setattr__

    def __repr__(self) -> str:
        return f"Section({ {k: v for k, v in self.__dict__.items() if k != '_name'}!r})"


class Config:
    """A validated, immutable configuration; ``cfg.section.key``, ``cfg.to_dict()``.

    Change a copy with :meth:`replace` (validated like a file); assigning raises.

    Examples
    --------
    >>> cfg = from_dict({"rounds": 3})
    >>> cfg.replace({"fedavg.lr": 0.1, "fleet": {"devices": 7}}).fleet.devices
    7
    >>> cfg.rounds = 2
    Traceback (most recent call last):
    ...
    AttributeError: configs are immutable, so that what runs is what config.json records; derive a changed, validated copy with cfg.replace({'rounds': ...})
    """

    def __init__(self, values: dict[str, Any], *, base_dir: Path | None = None):
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "base_dir", base_dir or Path.cwd())
        sections = schema()
        for k, v in values.items():
            object.__setattr__(self, k, Section(k, v) if isinstance(v, dict) and k in sections
                               else _frozen(v))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(_IMMUTABLE.format(key=key))

    __delattr__ = __setattr__

    def __reduce__(self):
        # picklable (process pools, Ray tasks) although its sections are read-only views
        return (Config, (copy.deepcopy(self._values),), {"base_dir": self.base_dir})

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "base_dir", state["base_dir"])

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._values)

    def to_json(self) -> str:
        return json.dumps(self._values, indent=2, sort_keys=True, default=_json_default)

    def replace(self, changes: dict[str, Any] | None = None, /, *,
                overrides: list[str] = ()) -> Config:
        """A new, validated Config with ``changes`` applied; this one is left unchanged.

        ``changes`` maps dotted keys (``"fedavg.lr"``) or sections (``"fleet": {"devices": 7}``,
        merged key by key) to values; ``overrides`` are ``--set`` strings (``"fedavg.lr=0.1"``).
        Every problem is reported at once in a :class:`ConfigError`, as for a file.
        """
        raw = self.to_dict()
        for dotted, value in (changes or {}).items():
            path = _split_key(str(dotted), f"replace: {dotted!r}")
            node = raw
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError([f"replace: {dotted!r}: {part!r} is not a section"])
            if isinstance(value, dict) and isinstance(node.get(path[-1]), dict) \
                    and ".".join(path) in schema():
                node[path[-1]].update(copy.deepcopy(value))
            else:
                node[path[-1]] = copy.deepcopy(value)
        raw = apply_overrides(raw, list(overrides))
        return from_dict(raw, base_dir=self.base_dir)

    @property
    def clients_per_round(self) -> int:
        f = self.fedavg
        return f.clients_per_round or max(1, round(f.fraction * self.fleet.devices))


def _json_default(v):
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    raise TypeError(type(v))


def from_dict(raw: dict[str, Any], *, base_dir: Path | None = None) -> Config:
    """Validate a raw mapping (as parsed from TOML) and resolve defaults."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    full = schema()     # the built-in sections and every registered protocol's
    top = full[""]
    sections = [s for s in full if s]
    for k in raw:
        if k in top:
            continue
        if k in full:      # a section; a non-table value is reported below
            continue
        valid = sorted(list(top) + sections)
        hint = difflib.get_close_matches(k, valid, n=1)
        problems.append(f"{k}: unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "")
                        + f" (valid top-level keys and sections: {', '.join(valid)})")
    for k, key in top.items():
        values[k] = _check(k, key, raw[k], problems) if k in raw else copy.deepcopy(key.default)
    for sec in sections:
        given = raw.get(sec, {})
        if not isinstance(given, dict):
            example = next(iter(full[sec]))
            problems.append(f"{sec}: is a section, not a value; got {given!r}. Set one of its "
                            f"keys instead, e.g. --set {sec}.{example}=... or [{sec}] "
                            f"{example} = ... in the file (keys: {', '.join(sorted(full[sec]))})")
            given = {}
        keys_of = full[sec]
        out = {}
        for k in given:
            if k not in keys_of:
                hint = difflib.get_close_matches(k, list(keys_of), n=1)
                problems.append(f"{sec}.{k}: unknown key"
                                + (f"; did you mean {hint[0]!r}?" if hint else "")
                                + f" (valid: {', '.join(sorted(keys_of))})")
        for k, key in keys_of.items():
            out[k] = _check(f"{sec}.{k}", key, given[k], problems) if k in given \
                else copy.deepcopy(key.default)
        values[sec] = out
    _cross_checks(values, problems, base_dir or Path.cwd())
    if problems:
        raise ConfigError(problems)
    return Config(values, base_dir=base_dir)


def _cross_checks(v: dict[str, Any], problems: list[str], base: Path) -> None:
    from crowdlearn import registry
    fleet, av, data, model = v["fleet"], v["availability"], v["data"], v["model"]
    mix = fleet["mix"]
    if isinstance(mix, str):
        mix = {mix: 1.0}
    if isinstance(mix, dict):
        for tier, w in mix.items():
            if tier not in TIERS:
                problems.append(f"fleet.mix.{tier}: unknown tier (valid: {', '.join(TIERS)})")
            elif not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                problems.append(f"fleet.mix.{tier}: weight must be a number >= 0; got {w!r}")
        if mix and all(isinstance(w, (int, float)) and w == 0 for w in mix.values()):
            problems.append("fleet.mix: at least one tier needs a positive weight")
    problems.extend(_cnn_check(model, data["dataset"]))
    late = sorted({r for r in v["eval_at"] if isinstance(r, int) and r > v["rounds"]})
    if late and isinstance(v["rounds"], int):
        problems.append(f"eval_at: round(s) {late} come after the last round (rounds = "
                        f"{v['rounds']}); remove them or raise rounds")
    lo_hi = av["initial_battery"]
    if len(lo_hi) != 2 or not all(isinstance(x, float) and 0 < x <= 1 for x in lo_hi) \
            or lo_hi[0] > lo_hi[1]:
        problems.append(f"availability.initial_battery: must be [low, high] with "
                        f"0 < low <= high <= 1; got {lo_hi!r}")
    if av["model"] == "trace":
        if not av["trace"]:
            problems.append("availability.trace: model = 'trace' needs a CSV path")
        elif not _resolve(av["trace"], base).is_file():
            problems.append(f"availability.trace: no such file {av['trace']!r}")
    if data["path"] and data["dataset"] in ("digits", "breast_cancer", "diabetes"):
        problems.append(f"data.path: {data['dataset']} is bundled with scikit-learn and takes no "
                        "path; remove data.path")
    elif data["dataset"] == "cifar10":         # never downloaded: the user's path, checked now
        from crowdlearn.data.datasets import cifar10_problem

        why = cifar10_problem(_resolve(data["path"], base) if data["path"] else None)
        if why:
            problems.append(why)
    elif data["path"] and not _resolve(data["path"], base).exists():
        problems.append(f"data.path: no such file or directory {data['path']!r}; point it at the "
                        "dataset's files or leave it empty to use the standard locations")
    if data["dataset"] == "diabetes" and data["partition"] in ("dirichlet", "shards"):
        problems.append(f"data.partition: {data['partition']!r} splits by label and diabetes is "
                        "a regression set; use 'iid' or 'quantity'")
    if model["arch"] == "cnn" and data["dataset"] in ("breast_cancer", "diabetes"):
        problems.append(f"model.arch: 'cnn' needs image data; {data['dataset']} is tabular "
                        "(use 'mlp' or 'linear')")
    problems.extend(_asyncio_check(v))
    problems.extend(registry.param_problems(v))   # the parameters dataclasses' relations
    seen = set()
    for p in registry.protocols():           # every registered section is checked
        if p.check_sections is not None and p.check_sections not in seen:
            seen.add(p.check_sections)
            problems.extend(p.check_sections(v))
    if v["protocol"] in registry.names():    # else the protocol key is reported already
        chosen = registry.get(v["protocol"])
        if chosen.check is not None:
            problems.extend(chosen.check(v))


#: Protocols the asyncio runtime cannot run yet, and why (the fix to name in the error).
#: (Crowdlearning and S-SGD run since their machines exchange real messages, issue 8 stage 4;
#: their separate-process mode is refused by ``crowdlearn serve``/``join``, see
#: :data:`crowdlearn.realtime.ONE_PROCESS_ONLY`.)
ASYNCIO_UNSUPPORTED: dict[str, str] = {}


def _asyncio_check(v: dict[str, Any]) -> list[str]:
    """What the asyncio runtime cannot run: some protocols; availability, churn and batteries
    need emulated time (``runtime.time_scale > 0``: they are the fleet model's, on its clock).

    >>> _asyncio_check({"runtime": {"engine": "asyncio", "time_scale": 0.0},
    ...                 "protocol": "crowdlearning",
    ...                 "availability": {"model": "always", "churn": 0.0, "battery": False}})
    []
    >>> _asyncio_check({"runtime": {"engine": "asyncio", "time_scale": 0.0}, "protocol": "fedavg",
    ...                 "availability": {"model": "always", "churn": 0.1, "battery": False}})[0][:58]
    "runtime.engine: 'asyncio' models availability, churn and b"
    """
    if v["runtime"]["engine"] != "asyncio":
        return []
    out = []
    why = ASYNCIO_UNSUPPORTED.get(v["protocol"])
    if why:
        out.append(f"runtime.engine: 'asyncio' cannot run protocol {v['protocol']!r} yet: "
                   f"{why}; use runtime.engine = 'simpy' (--runtime simpy)")
    av = v["availability"]
    if (av["model"] != "always" or av["churn"] > 0 or av["battery"]) \
            and not v["runtime"].get("time_scale", 0.0) > 0:
        out.append("runtime.engine: 'asyncio' models availability, churn and batteries on its "
                   "emulated clock only; set runtime.time_scale > 0 (e.g. 100), or "
                   "availability.model = 'always', churn = 0, battery = false")
    return out


#: Side of the square images of the image datasets (the CNN shape check needs it before loading).
IMAGE_SIDE = {"digits": 8, "fashion_mnist": 28, "cifar10": 32}


def _cnn_check(model: dict[str, Any], dataset: str) -> list[str]:
    """The CNN's conv blocks (kernel k, then a 2x2 max-pool each) must fit the dataset's images.

    >>> _cnn_check({"arch": "cnn", "filters": [16, 32], "kernel": 3}, "digits")[0][:59]
    'model.filters: 2 conv blocks (a 3x3 convolution and a 2x2 m'
    >>> _cnn_check({"arch": "cnn", "filters": [16], "kernel": 3}, "digits")
    []
    """
    side = IMAGE_SIDE.get(dataset)
    filters, k = model["filters"], model["kernel"]
    if model["arch"] != "cnn" or side is None or not isinstance(k, int) or k < 1:
        return []
    fits, h = 0, side
    for _ in filters:
        if h < k or h - k + 1 < 2:    # the convolution, then the 2x2 pool, must fit
            break
        h = (h - k + 1) // 2
        fits += 1
    if fits == len(filters):
        return []
    if fits == 0:
        fix = "use a smaller model.kernel"
    else:
        fix = (f"use at most {fits} block(s), e.g. model.filters = {list(filters[:fits])}, or a "
               "smaller model.kernel")
    return [f"model.filters: {len(filters)} conv blocks (a {k}x{k} convolution and a 2x2 max-pool "
            f"each) do not fit the {side}x{side} images of {dataset}: block {fits + 1} has too small "
            f"an input; {fix}"]


def _resolve(p: str, base: Path) -> Path:
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() else base / path


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"fedavg.lr=0.1"`` → (["fedavg", "lr"], 0.1); the value is read as TOML when it can be."""
    if "=" not in item:
        raise ConfigError([f"--set {item!r}: expected KEY=VALUE, e.g. --set fedavg.lr=0.1"])
    key, _, text = item.partition("=")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return _split_key(key.strip(), f"--set {item!r}"), value


def _split_key(key: str, where: str) -> list[str]:
    """``"fedavg.lr"`` → ``["fedavg", "lr"]``; an empty key or part is a ConfigError."""
    parts = key.split(".")
    if not key or not all(p.strip() for p in parts):
        raise ConfigError([f"{where}: the key is empty or has an empty part; name a key, e.g. "
                           "fedavg.lr=0.1 or rounds=5"])
    return [p.strip() for p in parts]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"--set {item!r}: {part!r} is not a section"])
        node[path[-1]] = value
    return raw


def from_recorded(data: dict[str, Any]) -> dict[str, Any]:
    """The raw config of a results folder's ``config.json`` (its ``"config"``, or the mapping
    itself), with the ``"inf"`` that JSON cannot hold read back as ∞ where the key is a number.

    >>> from_recorded({"config": {"max_sim_time_s": "inf", "name": "inf"}, "versions": {}})
    {'max_sim_time_s': inf, 'name': 'inf'}
    """
    raw = data["config"] if isinstance(data.get("config"), dict) else data
    out = copy.deepcopy(raw)
    for sec, keys in schema().items():
        node = out if not sec else out.get(sec)
        if not isinstance(node, dict):
            continue
        for k, key in keys.items():
            numeric = key.type is float or (isinstance(key.type, tuple) and float in key.type)
            if numeric and node.get(k) in ("inf", "-inf"):
                node[k] = float(node[k])
    return out


def load(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Read a TOML config, or a results folder's ``config.json`` (to make a recorded run again;
    its relative paths are read from the current folder), or the defaults when ``path`` is None;
    apply ``--set`` overrides."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"{path}: no such config file"])
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(p.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ConfigError([f"{path}: not a config (a JSON object is needed)"])
                raw = from_recorded(data)
            else:
                raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError([f"{path}: not valid JSON: {exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{path}: not a text file in UTF-8 ({exc.reason} at byte "
                               f"{exc.start}); give a TOML config file"]) from None
        except OSError as exc:
            raise ConfigError([f"{path}: cannot be read ({exc.strerror})"]) from None
        # a TOML file's relative paths are read from its folder; a recorded config.json's,
        # as its run read them: from the folder the command runs in
        base = Path.cwd() if p.suffix.lower() == ".json" else p.resolve().parent
    raw = apply_overrides(raw, list(overrides))
    return from_dict(raw, base_dir=base)


def reference_markdown() -> str:
    """The configuration reference as a Markdown table (used for the README)."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for sec, keys in schema().items():
        for k, key in keys.items():
            name = f"{sec}.{k}" if sec else k
            default = json.dumps(key.default, default=_json_default)
            doc = key.doc + (f" One of: {', '.join(key.choices)}." if key.choices else "")
            lines.append(f"| `{name}` | `{default}` | {doc} |")
    return "\n".join(lines)


def evaluation_schedule(cfg) -> Callable[[Any], bool] | None:
    """Which rows of a run are scored on the test set (``eval_every``, ``eval_at``; the last
    round always): a predicate of a row's 0-based ``round``, or ``None`` (every row).  A row
    whose round is not an integer is scored.

    >>> due = evaluation_schedule(from_dict({"rounds": 50, "eval_every": 10, "eval_at": [1, 2, 5]}))
    >>> [r + 1 for r in range(50) if due(r)]
    [1, 2, 5, 10, 20, 30, 40, 50]
    >>> due = evaluation_schedule(from_dict({"rounds": 7, "eval_every": 3}))
    >>> [r + 1 for r in range(7) if due(r)], evaluation_schedule(from_dict({"rounds": 7}))
    ([3, 6, 7], None)
    """
    every, at, last = int(cfg.eval_every), frozenset(cfg.eval_at), int(cfg.rounds)
    if every == 1:
        return None

    def due(rnd: Any) -> bool:
        if not isinstance(rnd, Integral):
            return True
        k = int(rnd) + 1
        return k % every == 0 or k in at or k >= last
    return due
