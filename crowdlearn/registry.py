"""The one protocol registry: where a protocol plugs into config, experiment, executor, results
and the attack suite.

A protocol declares itself once, as a :class:`Protocol`: its name, its parameters (one dataclass
per config section it owns, the single source of the section's keys, defaults, documentation,
limits and cross-key rules, :mod:`crowdlearn.schema`), what else to check, how to build its machines, the job runners it needs, the observer views the
attack suite may use and its own summary fields.  Config (the ``protocol`` key's choices, the
sections, the cross-checks, the README reference), the experiment (building, the executor's
runners, the summary), the CLI and :class:`~crowdlearn.privacy.attacks.views.PrivacyProbe` read it
from here; no other table names protocols.

The built-in protocols are found, not listed: every module or subpackage of
:mod:`crowdlearn.protocols` that has a ``PROTOCOLS`` attribute (a sequence of :class:`Protocol`)
is registered on first use, in module-name order.  Code outside the package (a test, a notebook, a
plug-in) calls :func:`register`.  See ``docs/design.md``, "How to add a protocol".

Examples
--------
>>> from crowdlearn import registry
>>> registry.get("fedavg").sections["fedavg"]["lr"].default
0.05
>>> "crowdlearning" in registry.names() and "dssgd" in registry.names()
True
>>> registry.get("fedavgg")
Traceback (most recent call last):
...
KeyError: "unknown protocol 'fedavgg'; did you mean 'fedavg'? (known: ...)"
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crowdlearn import schema
from crowdlearn.schema import Key

__all__ = ["Protocol", "get", "names", "param_problems", "protocols", "register", "sections",
           "server_view", "unregister"]


@dataclass(frozen=True)
class Protocol:
    """One protocol's declaration.

    Parameters
    ----------
    name
        The value of the config's ``protocol`` key.
    build
        ``build(ctx) -> {node_id: Machine}``, from the experiment's build context (``ctx.config``,
        ``ctx.dataset``, ``ctx.spec``, ``ctx.parts``, ``ctx.init_weights``, ``ctx.rngs``,
        ``ctx.device_rngs``, ``ctx.devices``, ``ctx.graph``; ``ctx.extra`` for the objects its
        summary, views and tests read; ``ctx.cached(key, make)`` to share a costly object between
        simulations).
    doc
        One line for the README's protocol list and the ``protocol`` key's documentation.
    params
        Config sections this protocol owns, each declared by its parameters dataclass: section
        name → a class whose fields are :func:`~crowdlearn.schema.param` s (the section's keys,
        defaults, documentation and limits) and whose ``relations`` state the rules between
        keys, checked in every config.  :attr:`sections` lists their keys.  Protocols that share
        a section (FedAvg and its baselines) name the same class.
    sections
        Config sections this protocol owns given as plain mappings, section name → {key:
        :class:`~crowdlearn.schema.Key`} (a section declared elsewhere); after construction,
        every section of the protocol, :attr:`params`' included.  Every registered section is
        valid in every config, whatever the protocol.
    check_sections
        ``check_sections(values) -> [problem]``: problems of the owned sections, checked in every
        config (``values`` is the whole resolved config as nested dicts).
    check
        ``check(values) -> [problem]``: problems of combining this protocol with the rest of the
        config, checked only when it is the protocol chosen.
    runners
        ``runners(sim) -> {job_kind: runner}``: the executor's runners for this protocol's job
        kinds (besides the generic ``"train"``), given the simulation (its trainer, dataset).
    deferred_kinds
        Job kinds of :attr:`runners` whose results stay deferred until a machine reads them (so
        that all pending jobs of the kind run in one batch), like the generic ``"train"``.
    server_view
        What the attack suite may watch at the server, as ``"module:Class"``: ``Class(cap)`` is
        built with the number of uploads to keep (``None``: only the models the protocol
        reports).  A name, not the class, so that a pure protocol module does not import the
        attack suite (which imports TensorFlow); :func:`server_view` resolves it when attacks
        run.
    summary
        ``summary(sim) -> dict``: extra fields for ``summary.json``.
    attack_records
        ``attack_records(sim, n) -> (fields, records)``: for the attack suite, at most ``n``
        uploads an attacker of this protocol can read, as ``(device, indices, values)``, and the
        summary fields that say how many (phong, hres: what the server colluding with a
        participant decrypts).
    needs_tensorflow
        Whether the protocol uses TensorFlow whatever ``training.backend`` says (its own compute
        path), so that the CLI loads it quietly up front.
    """

    name: str
    build: Callable[[Any], dict]
    doc: str = ""
    sections: Mapping[str, Mapping[str, Key]] = field(default_factory=dict)
    params: Mapping[str, type] = field(default_factory=dict)
    check_sections: Callable[[dict], list[str]] | None = None
    check: Callable[[dict], list[str]] | None = None
    runners: Callable[[Any], dict] | None = None
    deferred_kinds: tuple[str, ...] = ()
    server_view: str | None = None
    summary: Callable[[Any], dict] | None = None
    attack_records: Callable[[Any, int], tuple[dict, list]] | None = None
    needs_tensorflow: bool = False

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"protocol name must be an identifier; got {self.name!r}")
        for sec, cls in self.params.items():
            if not schema.is_params(cls):
                raise TypeError(f"params[{sec!r}] must be a dataclass with schema.param fields; "
                                f"got {cls!r}")
            if sec in self.sections and self.sections[sec] is not schema.keys(cls):
                raise ValueError(f"section [{sec}] is declared both in sections and in params")
        object.__setattr__(self, "sections", {**{
            sec: schema.keys(cls) for sec, cls in self.params.items()}, **self.sections})


_REGISTRY: dict[str, Protocol] = {}
_LOADED = False


def _load_builtins() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import crowdlearn.protocols as pkg
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{pkg.__name__}.{mod.name}")
        for p in getattr(module, "PROTOCOLS", ()):
            if isinstance(p, Protocol):
                _add(p, replace=False)


def _add(p: Protocol, *, replace: bool) -> None:
    if p.name in _REGISTRY and _REGISTRY[p.name] is not p and not replace:
        raise ValueError(f"protocol {p.name!r} is registered already; pass replace=True to "
                         "replace it")
    for sec, keys in p.sections.items():
        for other in _REGISTRY.values():
            if other.name != p.name and sec in other.sections \
                    and other.sections[sec] is not keys:
                raise ValueError(f"protocol {p.name!r} declares config section [{sec}], which "
                                 f"protocol {other.name!r} declares differently; share the "
                                 "same mapping or choose another section name")
    _REGISTRY[p.name] = p


def register(p: Protocol, *, replace: bool = False) -> Protocol:
    """Make ``p`` known to config, experiment and results; returns ``p``."""
    _load_builtins()
    _add(p, replace=replace)
    return p


def unregister(name: str) -> None:
    """Forget a protocol registered with :func:`register` (tests clean up with this)."""
    _load_builtins()
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered protocol names, in registration order."""
    _load_builtins()
    return tuple(_REGISTRY)


def protocols() -> tuple[Protocol, ...]:
    """Every registered :class:`Protocol`, in registration order."""
    _load_builtins()
    return tuple(_REGISTRY.values())


def get(name: str) -> Protocol:
    """The declaration of protocol ``name``; a ``KeyError`` naming the known ones otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        raise KeyError(f"unknown protocol {name!r}" + (f"; did you mean {hint[0]!r}?" if hint
                                                       else "")
                       + f" (known: {', '.join(_REGISTRY)})") from None


def sections() -> dict[str, Mapping[str, Key]]:
    """Every registered protocol's config sections, in registration order (each once)."""
    out: dict[str, Mapping[str, Key]] = {}
    for p in protocols():
        for sec, keys in p.sections.items():
            out.setdefault(sec, keys)
    return out


def param_problems(values: dict) -> list[str]:
    """The cross-key problems (``relations``) of every registered parameters dataclass, each
    section once, on a resolved config's ``values`` (nested dicts)."""
    seen: dict[str, type] = {}
    for p in protocols():
        for sec, cls in p.params.items():
            seen.setdefault(sec, cls)
    out: list[str] = []
    for sec, cls in seen.items():
        out.extend(schema.relation_problems(cls, values[sec], section=sec))
    return out


def server_view(p: Protocol, cap: int) -> Any:
    """The server view ``p`` declares, keeping at most ``cap`` uploads (``None`` if none)."""
    if p.server_view is None:
        return None
    module, _, attr = p.server_view.partition(":")
    return getattr(importlib.import_module(module), attr)(cap)
