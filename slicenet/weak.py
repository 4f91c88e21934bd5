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

__all__ = ["weak_method"]


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
