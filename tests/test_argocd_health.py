"""The chart's Argo CD health check (Lua), run by a real Lua on statuses the operator writes."""

from __future__ import annotations

from typing import Any

import lupa
import pytest

from agentgraph.api.plan import Objective, Plan
from agentgraph.api.status import Admission, Reason
from agentgraph.controller import status
from builders import ROOT

SCRIPT = (ROOT / "charts" / "agentgraph-operator" / "argocd" / "agentgraph-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """As Argo CD runs it: the resource as the global ``obj``, a table {status, message} back."""
    lua = lupa.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    found = lua.execute(SCRIPT)
    return str(found["status"]), str(found["message"])


def graph(st: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
                           "metadata": {"name": "g", "generation": generation}, "spec": {}}
    if st is not None:
        doc["status"] = st
    return doc


def plan() -> Plan:
    return Plan(feasible=True, objective=Objective(name="costPerHour", value=1.0),
                latency_seconds=1.0, sla_seconds=2.0, cost_per_hour=1.0)


@pytest.mark.parametrize(("st", "generation", "expected"), [
    (None, 1, ("Progressing", "waiting for the operator to plan it")),
    (status.build(None, 1, plan(), [], ready=False, at="t"), 1,
     ("Progressing", "rolling out the plan")),
    (status.build(None, 1, plan(), [], ready=True, at="t"), 1, ("Healthy", "Ready")),
    (status.build(None, 1, plan(), [], ready=True, at="t"), 2,
     ("Progressing", "the operator has not planned generation 2 yet")),
    (status.build(None, 1, None, ["spec.sla.latencySeconds: 0.1 s cannot be met"], False,
                  at="t"), 1, ("Degraded", "spec.sla.latencySeconds: 0.1 s cannot be met")),
    (status.with_error(status.build(None, 1, plan(), [], True, at="t"),
                       "full reconcile failed: denied", 1, at="t"), 1,
     ("Degraded", "full reconcile failed: denied")),
    (status.with_error(None, "full reconcile failed: denied", 1, at="t"), 1,
     ("Degraded", "full reconcile failed: denied")),  # a first reconcile failing
    (status.with_error(status.build(None, 1, plan(), [], True, at="t"),
                       "full reconcile failed: denied", 2, at="t"), 2,
     ("Degraded", "full reconcile failed: denied")),  # failing on a new generation
    (status.build(None, 1, plan(), [], False, at="t", admission=Admission(),
                  waiting=(Reason.INSUFFICIENT_CAPACITY, "h100 is 8 devices short")), 1,
     ("Suspended", "h100 is 8 devices short")),
])
def test_health_follows_the_conditions(st: dict[str, Any] | None, generation: int,
                                       expected: tuple[str, str]) -> None:
    assert health(graph(st, generation)) == expected
