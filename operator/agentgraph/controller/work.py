"""One reconcile per graph at a time; triggers that arrive meanwhile collapse into one more run.

kopf runs sync handlers in a thread pool, and a graph is touched by its own events, by each of
its Deployments' events, by Node events and by the resync loop. Without this, two threads could plan
the same graph at once from different snapshots and apply the loser's plan last. With it, a
burst of N events while a reconcile runs costs one extra reconcile, not N.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Hashable


class Level(enum.IntEnum):
    """What a trigger asks for; a pending request keeps the highest level asked."""

    READINESS = 1  # a child's status moved: recompute Ready from what is applied
    MEASURE = 2  # the replanner's pass: measure, decide; FULL when that changed the inputs
    FULL = 3  # spec, pools, drift or resync: snapshot -> plan -> apply -> status


class Coalescer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Hashable, Level | None] = {}  # running keys -> level asked since
        self._queued: dict[Hashable, Level] = {}  # keys handed to a thread, not started yet

    def queue(self, key: Hashable, level: Level) -> bool:
        """Note a request about to be handed to a thread; False when one for ``key`` is queued
        already (that one will run at the higher of the two levels): a burst of N triggers
        before a thread is free costs one run, not N."""
        with self._lock:
            if key in self._queued:
                self._queued[key] = max(self._queued[key], level)
                return False
            self._queued[key] = level
            return True

    def dequeue(self, key: Hashable) -> Level:
        """The level a queued request runs at, as its thread starts it."""
        with self._lock:
            return self._queued.pop(key)

    def run(self, key: Hashable, level: Level, work: Callable[[Level], None]) -> bool:
        """Run ``work(level)`` now, or, when ``key`` is already running in another thread, leave
        the request to that thread and return False at once. The running thread repeats the
        work until no request is left, so the last trigger is always followed by a run."""
        with self._lock:
            if key in self._pending:
                asked = self._pending[key]
                self._pending[key] = level if asked is None else max(asked, level)
                return False
            self._pending[key] = None
        try:
            while True:
                work(level)
                with self._lock:
                    asked = self._pending[key]
                    if asked is None:
                        del self._pending[key]
                        return True
                    self._pending[key] = None
                level = asked
        except BaseException:
            with self._lock:
                self._pending.pop(key, None)
            raise

    def busy(self) -> int:
        with self._lock:
            return len(self._pending)
