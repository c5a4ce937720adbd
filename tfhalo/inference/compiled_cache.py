"""A small cache of compiled sampler programs, keyed by the objects they were traced for.

Tracing a TFP kernel (NUTS, a Gibbs sweep) takes seconds, and under XLA longer, so
:func:`tfhalo.inference.sample` and :func:`tfhalo.inference.sample_gibbs` keep the
compiled functions of the last few targets or kernels they ran: a second call with the
same one (another seed, an extended or resumed run) traces nothing.

A key names its object by ``id``, which Python may hand to a new object once the old one
is gone; each entry therefore holds its object (the *anchor*) alive and is used only while
that same object is passed again.  Holding the objects is why the cache is small.
"""

from __future__ import annotations

import collections
from typing import Callable, Hashable, TypeVar

from tfhalo.validation import check_int

__all__ = ["CompiledCache"]

T = TypeVar("T")


class CompiledCache:
    """The values built for the last ``size`` keys, least recently used first out.

    Args:
        size: how many entries to keep (>= 1).

    Example:
        >>> cache = CompiledCache(size=2)
        >>> kernel = object()
        >>> first = cache.get((id(kernel), True), kernel, lambda: ["compiled"])
        >>> cache.get((id(kernel), True), kernel, lambda: ["other"]) is first
        True
    """

    def __init__(self, size: int = 4):
        self.size = check_int("size", size, minimum=1)
        self._entries: collections.OrderedDict = collections.OrderedDict()

    def get(self, key: Hashable, anchor, build: Callable[[], T]) -> T:
        """The value kept for ``key`` and ``anchor``, or ``build()``'s, then kept.

        Args:
            key: a hashable description of everything the value depends on; it names
                ``anchor`` (usually by ``id``).
            anchor: the object the value was built for; a kept value is returned only for
                this same object (``is``), never for another that reused its ``id``.
            build: makes the value; called at most once per call.

        Returns:
            The kept or newly built value.  An unhashable key (a callable that cannot be
            hashed) builds a value each call and keeps nothing.
        """
        try:
            hit = self._entries.get(key)
        except TypeError:
            return build()
        if hit is None or hit[0] is not anchor:
            hit = (anchor, build())
            self._entries[key] = hit
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return hit[1]

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drops every entry (and with them the objects they hold alive)."""
        self._entries.clear()
