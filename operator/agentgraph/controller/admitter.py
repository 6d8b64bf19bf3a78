"""The admitter: one thread of the operator's own that decides newcomers as they arrive.

kopf runs every sync handler on one small thread pool, and during a burst that pool is busy
creating the children of the graphs already admitted. A newcomer waiting there for a thread
would be decided only after all of them. The AgentGraph watch wakes this thread instead (from
the event loop, at once), and it decides every graph that has arrived and is neither holding
nor waiting, in order (priority, then creation time: ``admission.sweep``). The graph's own
reconcile then finds its decision made and goes on to its children.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from agentgraph.controller import admission, indexes
from agentgraph.controller.ledger import Key
from agentgraph.controller.state import STATE

log = logging.getLogger("agentgraph.admission")


class Admitter:
    def __init__(self) -> None:
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._lock = threading.Lock()
        self._bodies: dict[Key, dict[str, Any]] = {}  # newcomers as their events brought them

    def wake(self, kwargs: Mapping[str, Any], key: Key, body: Mapping[str, Any]) -> None:
        """A newcomer arrived: sweep soon (many wakes while a sweep runs make one more)."""
        with self._lock:
            self._bodies[key] = copy.deepcopy(dict(body))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(kwargs,), daemon=True,
                                            name="admitter")
            self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def _run(self, kwargs: Mapping[str, Any]) -> None:
        while True:
            self._wake.wait()
            if self._stop:
                return
            self._wake.clear()
            started = time.perf_counter()
            try:
                done = self.sweep(kwargs)
                if done:
                    log.info("decided %d newcomers in %.2f s", done,
                             time.perf_counter() - started)
            except Exception:  # the next arrival (or a graph's own reconcile) tries again
                log.exception("admission sweep failed")

    def sweep(self, kwargs: Mapping[str, Any]) -> int:
        """Decide the newcomers now (also called by a newcomer's own reconcile)."""
        ledger = STATE.ledger
        if not ledger.seeded:
            ledger.seed(indexes.keyed(kwargs, "holds").items())
        known = indexes.keyed(kwargs, "arrivals")
        # Never wait for the event loop while holding the lock: wake() takes it on the loop.
        with self._lock:
            for done in [k for k in self._bodies if k not in known or k in ledger.holds
                         or k in ledger.waiting]:
                del self._bodies[done]  # deleted, or decided by its own reconcile
            arrivals = [(k, *v) for k, v in known.items()
                        if k not in ledger.holds and k not in ledger.waiting
                        and (k not in ledger.undecidable or k in self._bodies)]
            bodies = {k: self._bodies.pop(k) for k, *_ in arrivals if k in self._bodies}
        if not arrivals:
            return 0
        settings = STATE.config
        assert STATE.cluster is not None
        return admission.sweep(STATE.cluster, arrivals, bodies, indexes.world(kwargs), ledger,
                               indexes.keyed(kwargs, "budgets"),
                               settings.solver_time_limit_seconds, settings.keep_within,
                               settings.replan.move_cost)
