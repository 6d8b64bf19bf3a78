"""A bounded memo of solves: the same graph on the same pools gives the same answer.

The operator plans a graph again on every resync, every replanner pass and every admission
retry, mostly with inputs that did not change, and a burst of graphs with one spec (a team's
template applied 200 times) asks the same question 200 times. The candidates and the MILP's
answer are a pure function of the spec, the pools (with their capacities), the corrections,
the settings and the running placement, so they are kept, least recently used first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], V],
            keep: Callable[[V], bool] = lambda _: True) -> V:
        """The value for ``key``, made (outside the lock) when it is not kept; kept only when
        ``keep`` says so (an answer cut short by a time limit depends on the machine's load)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = make()
        if not keep(value):
            return value
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)
