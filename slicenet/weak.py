"""Methods called through a weak reference, for ``tf.function``.

``tf.function(self._step)`` holds the bound method, so the object and its traced function form a
reference cycle: an object dropped by its last user (a trainer evicted from a cache, a finished
simulation's) then waits for Python's full collection, which the interpreter runs by object
counts, not bytes, so the training set the trainer holds on the TensorFlow side (188 MB for
Fashion-MNIST) stays while more are made.  ``tf.function(weak_method(self, "_step"))`` traces
the same computation and leaves the object to reference counting.  (``weakref.WeakMethod`` is a
reference to dereference, not a function to call; this is the function around it.)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ByIdentity", "weak_method"]


def weak_method(obj, name: str) -> Callable:
    """A function calling ``obj.<name>`` through a weak reference to ``obj`` (so a
    ``tf.function`` of it keeps ``obj`` alive no longer than its other users do).

    >>> class A:
    ...     def twice(self, x):
    ...         return 2 * x
    >>> a = A(); f = weak_method(a, "twice"); f(3)
    6
    >>> del a; f(3)
    Traceback (most recent call last):
    ...
    ReferenceError: weak_method: the object of 'twice' is gone
    """
    ref = weakref.ref(obj)
    func = getattr(type(obj), name)

    def call(*args, **kwargs):
        target = ref()
        if target is None:
            raise ReferenceError(f"weak_method: the object of {name!r} is gone")
        return func(target, *args, **kwargs)

    call.__name__ = call.__qualname__ = name.lstrip("_") or name
    call.__doc__ = func.__doc__
    return call


class ByIdentity:
    """Values computed from read-only numpy arrays (a layout's owned-index arrays, asked for pass
    after pass), remembered by the arrays' identities, which are held weakly: an entry answers
    only while every one of its arrays is alive and is the same object; writable arrays (which
    could change) are never remembered.  At most ``limit`` entries (then it starts again).

    >>> memo = ByIdentity()
    >>> a = np.arange(3); a.setflags(write=False)
    >>> memo.put((a,), "runs of a"); memo.get((a,)), memo.get((np.arange(3),))
    ('runs of a', None)
    >>> del a; len(memo)
    0
    """

    def __init__(self, limit: int = 1024):
        self.limit = int(limit)
        self._entries: dict[tuple, tuple[list, Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, arrays: tuple) -> Any:
        hit = self._entries.get(tuple(map(id, arrays)))
        if hit is None or any(r() is not a for r, a in zip(hit[0], arrays, strict=True)):
            return None
        return hit[1]

    def put(self, arrays: tuple, value: Any) -> None:
        if not all(isinstance(a, np.ndarray) and not a.flags.writeable for a in arrays):
            return
        if len(self._entries) >= self.limit:
            self._entries.clear()
        key = tuple(map(id, arrays))
        entries = self._entries

        def gone(_, key=key):          # the first of its arrays to go takes the entry along
            entries.pop(key, None)
        self._entries[key] = ([weakref.ref(a, gone) for a in arrays], value)
