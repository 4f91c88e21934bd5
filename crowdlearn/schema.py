"""Configuration keys, declared once: a protocol's parameters dataclass is its config section.

A protocol declares its parameters as one frozen dataclass whose fields are made with
:func:`param`: default, documentation and limits (type, bounds, choices) in the field, and the
rules that tie several keys together in a ``relations(v, key)`` static method.  Everything else
is derived from it:

* the config section (``{key: Key}``, the README's reference rows): :func:`keys`;
* the problems of a section's values, as the config reports them (``dssgd.theta_u: must be > 0;
  got 0.0``): :func:`check` for one key, :func:`relation_problems` for the relations;
* the dataclass's own validation, the same rules with the same words (a :class:`ValueError`
  listing every problem): :func:`validate`, called from ``__post_init__``;
* the dataclass from a resolved config section: :func:`from_section`.

Kept apart from :mod:`crowdlearn.config` so that protocol modules can declare their sections
without importing the config module that registers them.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class ToyParams:
...     rounds: int = param(MISSING, "Rounds.", type=int, min=1, config=False)
...     lr: float = param(0.05, "SGD learning rate.", min=0, min_open=True)
...     order: str = param("fixed", "Order of access.", choices=("fixed", "random"))
...
...     @staticmethod
...     def relations(v, key):
...         return [f"{key('lr')}: must be < 1 with {key('order')} = 'random'"] \\
...             if v["order"] == "random" and v["lr"] >= 1 else []
...
...     def __post_init__(self):
...         validate(self)
>>> list(keys(ToyParams)), keys(ToyParams)["lr"].default
(['lr', 'order'], 0.05)
>>> ToyParams(rounds=0, lr=0.0)
Traceback (most recent call last):
...
ValueError: rounds: must be >= 1; got 0; lr: must be > 0; got 0.0
>>> ToyParams(rounds=1, lr=2.0, order="random")
Traceback (most recent call last):
...
ValueError: lr: must be < 1 with order = 'random'
>>> relation_problems(ToyParams, {"lr": 2.0, "order": "random"}, section="toy")
["toy.lr: must be < 1 with toy.order = 'random'"]
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["Key", "check", "from_section", "is_params", "keys", "param",
           "relation_problems", "validate"]


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default, documentation and limits."""

    type: type | tuple
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    min_open: bool = False            # min is exclusive
    choices: tuple | None = None
    item_type: type | None = None     # for lists
    item_min: float | None = None     # for lists of numbers: the least item allowed


_META = "crowdlearn.key"          # field metadata: the field's Key
_CONFIG = "crowdlearn.config"     # field metadata: whether the field is a config key


def param(default: Any, doc: str = "", *, type: type | tuple | None = None,
          min: float | None = None, max: float | None = None, min_open: bool = False,
          choices: tuple | None = None, item_type: type | None = None,
          item_min: float | None = None, config: bool = True) -> Any:
    """A parameters-dataclass field that is a config key (``config=False``: a field with the
    same limits that the config does not set, e.g. ``rounds``, a top-level key, or a value the
    builder resolves).  ``type`` defaults to the default's type (``bool``, ``int``, ``float``,
    ``str``; a list or tuple is a ``list``); pass ``default=MISSING`` for a required field."""
    if type is None:
        if default is MISSING:
            raise TypeError("a required param() needs its type")
        type = list if isinstance(default, (list, tuple)) else default.__class__
    key = Key(type, default, doc, min=min, max=max, min_open=min_open, choices=choices,
              item_type=item_type, item_min=item_min)
    meta = {_META: key, _CONFIG: config}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _copy(v):
    return list(v) if isinstance(v, list) else dict(v)


def is_params(obj: Any) -> bool:
    """Whether ``obj`` is a parameters dataclass (a class with :func:`param` fields)."""
    return isinstance(obj, type) and dataclasses.is_dataclass(obj) and \
        any(_META in f.metadata for f in dataclasses.fields(obj))


@functools.cache
def keys(cls: type) -> Mapping[str, Key]:
    """The config section a parameters dataclass declares: ``{key: Key}`` in field order (the
    same mapping object at every call, so protocols that share the class share the section)."""
    return MappingProxyType({f.name: f.metadata[_META] for f in dataclasses.fields(cls)
                             if _META in f.metadata and f.metadata[_CONFIG]})


def _limits(cls: type) -> dict[str, Key]:
    return {f.name: f.metadata[_META] for f in dataclasses.fields(cls) if _META in f.metadata}


def relation_problems(cls: type, values: Mapping[str, Any], *, section: str = "") -> list[str]:
    """Problems of the rules that tie several of ``cls``' keys together (its ``relations``),
    with key names as the config spells them (``section.key``)."""
    rel: Callable | None = getattr(cls, "relations", None)
    if rel is None:
        return []
    return list(rel(values, (lambda k: f"{section}.{k}") if section else (lambda k: k)))


def validate(obj: Any) -> None:
    """Raise one :class:`ValueError` listing every problem of a parameters dataclass instance:
    each field against its limits, then, if they all hold, the relations (call it from
    ``__post_init__``)."""
    problems: list[str] = []
    for name, key in _limits(type(obj)).items():
        check(name, key, getattr(obj, name), problems)
    if not problems:
        problems = relation_problems(type(obj), {f.name: getattr(obj, f.name)
                                                 for f in dataclasses.fields(obj)})
    if problems:
        raise ValueError("; ".join(problems))


def from_section(cls: type, section: Any, **extra: Any) -> Any:
    """``cls`` from a resolved config section (an object with the keys as attributes, or a
    mapping), plus ``extra`` fields (``rounds``, resolved values)."""
    get = section.__getitem__ if isinstance(section, Mapping) else \
        functools.partial(getattr, section)
    return cls(**{k: get(k) for k in keys(cls) if k not in extra}, **extra)


def check(path: str, key: Key, value: Any, problems: list[str]) -> Any:
    """Check ``value`` against ``key`` (type, choices, bounds, list items); append what is wrong
    to ``problems`` as ``"path: ..."`` and return the value to use (ints widened to float for a
    float key; the default if the type is wrong)."""
    want = key.type if isinstance(key.type, tuple) else (key.type,)
    if float in want and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in want:
        problems.append(f"{path}: expected {_names(want)}; got a boolean {value!r}")
        return key.default
    if isinstance(value, tuple) and list in want:
        value = list(value)
    if isinstance(value, MappingProxyType) and dict in want:    # a resolved config's table
        value = dict(value)
    if not isinstance(value, want):
        problems.append(f"{path}: expected {_names(want)}; got {type(value).__name__} {value!r}")
        return key.default
    if key.choices is not None and value not in key.choices:
        hint = difflib.get_close_matches(str(value), key.choices, n=1)
        problems.append(f"{path}: must be one of {', '.join(key.choices)}; got {value!r}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            problems.append(f"{path}: must be a number; got nan")
        if key.min is not None and (value < key.min or (key.min_open and value == key.min)):
            problems.append(f"{path}: must be {'>' if key.min_open else '>='} {key.min:g}; got {value}")
        if key.max is not None and value > key.max:
            problems.append(f"{path}: must be <= {key.max:g}; got {value}")
    if isinstance(value, list) and key.item_type is not None:
        items = []
        for i, item in enumerate(value):
            if key.item_type is float and isinstance(item, int) and not isinstance(item, bool):
                item = float(item)
            if not isinstance(item, key.item_type) or isinstance(item, bool):
                problems.append(f"{path}[{i}]: expected {key.item_type.__name__}; got {item!r}")
            elif key.item_min is not None and item < key.item_min:
                problems.append(f"{path}[{i}]: must be >= {key.item_min:g}; got {item}")
            items.append(item)
        value = items
    return value


def _names(types: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(t, t.__name__) for t in types)
