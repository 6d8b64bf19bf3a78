"""One ledger of what every admitted graph holds in every pool, and the queue of those waiting.

Kueue's answer for jobs, applied to graphs: a graph is planned against each pool's capacity
minus what the *other* admitted graphs hold, under one lock, in a fixed order (priority, then
creation time), and its hold is recorded before any of its children is created. Two graphs
therefore never plan into the same free devices, and a graph's room does not shrink because
another one arrived: a placement changes only with its own spec, its measured load or the
pools. The ledger lives in memory (the leader is the only writer) and is rebuilt from the
graphs' statuses (``status.admission.holds``) when an operator starts, so a restart in the
middle of admitting over-commits nothing: a hold is written before the children are.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (namespace, graph)


@dataclass(frozen=True)
class Hold:
    """What one graph holds: units (devices, or cores for CPU pools) and pod slots per pool,
    and its planned $/hour (for namespace budgets)."""

    units: Mapping[str, float] = field(default_factory=dict)
    pods: Mapping[str, float] = field(default_factory=dict)
    cost_per_hour: float = 0.0


@dataclass(frozen=True)
class Waiting:
    """A graph in the queue: its order, why it waits, and what its last try saw and found (a
    try with the same inputs would find the same: admission does not plan it again)."""

    priority: int
    created: str  # RFC 3339: sorts as time
    reason: Any  # api.status.Reason
    detail: str = ""  # what ran out, or by how much the budget is exceeded
    cost: float | None = None  # $/hour it would cost with room (or its plan's, over budget)
    signature: Hashable = None  # the inputs of the last try
    plan: Any = None  # api.plan.Plan: what the last try returned


class Ledger:
    def __init__(self) -> None:
        self.lock = threading.RLock()  # held from capacity to the recorded hold
        self.holds: dict[Key, Hold] = {}
        self.waiting: dict[Key, Waiting] = {}
        # Graphs an admission sweep passes over (invalid, or fitting nowhere), by the
        # generation it saw: their own reconciles report them; a new spec is swept again.
        self.undecidable: dict[Key, int | None] = {}
        self.persisted: set[Key] = set()  # whose hold, as it is now, its status records
        # Graphs that gave their hold back because objects they would create are someone
        # else's, by generation: those (kind, name) are checked before they are admitted again.
        self.blocked: dict[Key, tuple[int | None, tuple[tuple[str, str], ...]]] = {}
        self.seeded = False

    def seed(self, holds: Iterable[tuple[Key, Hold]]) -> None:
        """The holds the graphs' statuses record, once, when this operator starts leading."""
        with self.lock:
            if self.seeded:
                return
            for key, hold in holds:
                if key not in self.holds:
                    self.holds[key] = hold
                    self.persisted.add(key)
            self.seeded = True

    def others(self, key: Key) -> tuple[dict[str, float], dict[str, float]]:
        """Units and pods per pool held by every graph but ``key``."""
        units: dict[str, float] = {}
        pods: dict[str, float] = {}
        with self.lock:
            held = list(self.holds.items())
        for other, hold in held:
            if other == key:
                continue
            for pool, amount in hold.units.items():
                units[pool] = units.get(pool, 0.0) + amount
            for pool, amount in hold.pods.items():
                pods[pool] = pods.get(pool, 0.0) + amount
        return units, pods

    def holders(self) -> frozenset[Key]:
        with self.lock:
            return frozenset(self.holds)

    def spend(self, namespace: str, but: Key | None = None) -> float:
        """$/hour the admitted graphs of ``namespace`` hold (``but`` left out)."""
        with self.lock:
            return sum(h.cost_per_hour for k, h in self.holds.items()
                       if k[0] == namespace and k != but)

    def admit(self, key: Key, hold: Hold) -> bool:
        """Record ``key``'s hold; True when it changed (its status must record it again)."""
        self.waiting.pop(key, None)
        changed = self.holds.get(key) != hold
        if changed:
            self.persisted.discard(key)
        self.holds[key] = hold
        return changed

    def wait(self, key: Key, why: Waiting) -> int:
        """Queue ``key`` (it keeps what it holds, if anything); its 1-based position."""
        self.waiting[key] = why
        return self.position(key)

    def position(self, key: Key) -> int:
        return self.queue().index(key) + 1

    def queue(self) -> list[Key]:
        """The waiting graphs, first in line first."""
        with self.lock:
            waiting = dict(self.waiting)
        return sorted(waiting, key=lambda k: (-waiting[k].priority, waiting[k].created, k))

    def release(self, key: Key) -> bool:
        """``key`` is gone: its hold and its place in the queue. True when it held something."""
        with self.lock:
            self.waiting.pop(key, None)
            self.undecidable.pop(key, None)
            self.blocked.pop(key, None)
            self.persisted.discard(key)
            return self.holds.pop(key, None) is not None
