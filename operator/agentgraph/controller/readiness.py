"""Is a graph Ready, from what the operator's caches hold: its status's plan and its
Deployments. A child's status changes many times on the way up (created, scheduled, updated,
available); each change is checked here against the caches, and only a change of the answer
costs calls to the API server."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Child = tuple[str, Any, Any, bool]  # a Deployment: (name, replicas, pool, rollout complete)


@dataclass(frozen=True)
class Readiness:
    """What a graph's status shows: whether its plan is for the current spec, Ready, and the
    Deployments that plan names as (name, replicas, pool)."""

    current: bool
    ready: bool
    steps: frozenset[tuple[str, Any, Any]]


def available(deployment: Mapping[str, Any]) -> bool:
    """The rollout is complete: every replica updated and available, and no old pod left
    (status.replicas counts the old ReplicaSet's pods too), as `kubectl rollout status` has it."""
    wanted = deployment.get("spec", {}).get("replicas", 0)
    st = deployment.get("status", {})
    return bool(st.get("availableReplicas", 0) == wanted
                and st.get("updatedReplicas", 0) == wanted
                and st.get("replicas", 0) == wanted
                and st.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0))


def check(shown: Readiness, children: Iterable[Child]) -> bool | None:
    """Ready, from the caches; None when only a reconcile can tell: no plan for the current
    spec, or a Deployment the plan names missing or not as planned (someone edited it)."""
    if not shown.current:
        return None
    have = {name: (replicas, pool, done) for name, replicas, pool, done in children}
    for name, replicas, pool in shown.steps:
        got = have.get(name)
        if got is None or got[0] != replicas or got[1] != pool:
            return None
    return all(done for _, _, done in have.values())


def stale(shown: Iterable[Readiness], children: Iterable[Child]) -> bool:
    """Whether the Ready a graph shows may be wrong: the caches disagree with it, or cannot
    tell (a reconcile must look)."""
    first = next(iter(shown), None)
    if first is None:
        return True
    verdict = check(first, children)
    return verdict is None or verdict != first.ready
