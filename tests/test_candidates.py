"""Candidate generation: the fast paths give exactly what the plain definitions give."""

import math

import pytest

from agentgraph.costs.base import CostSettings
from agentgraph.planner import candidates
from agentgraph.planner import graph as graph_model
from agentgraph.planner.snapshot import ClusterSnapshot
from builders import LLAMA3_8B, LLAMA3_70B, llm, make_graph, shipped_profiles

SETTINGS = CostSettings()


def enumerate_and_sweep(so: candidates.StepOptions) -> list[tuple[float, float, tuple]]:  # type: ignore[type-arg]
    limit = math.inf if so.ttft is None else so.ttft
    raw = []
    for (src, dst), t in so.transfers.items():
        for pre in (o for o in so.slots["prefill"] if o.pool == src):
            for dec in (o for o in so.slots["decode"] if o.pool == dst):
                kv = t.estimate.latency
                if pre.estimate.latency + kv + (dec.estimate.tbt or 0.0) > limit:
                    continue
                raw.append((pre.objective + t.objective + dec.objective,
                            pre.estimate.latency + kv + dec.estimate.latency,
                            (("prefill", pre), ("decode", dec)), candidates._usage(pre, dec)))
    return candidates._prune_configs(raw, frozenset())  # type: ignore[return-value]


@pytest.mark.parametrize("model", [LLAMA3_8B, LLAMA3_70B, {**LLAMA3_70B, "dtypeBytes": 1}])
@pytest.mark.parametrize("rate", [None, 3.0, 40.0])
@pytest.mark.parametrize("ttft", [None, 0.3])
def test_vectorised_llm_front_equals_the_definition(model: dict, rate: float | None,  # type: ignore[type-arg]
                                                     ttft: float | None) -> None:
    extra = {} if ttft is None else {"ttftSeconds": ttft}
    graph = make_graph([llm("chat", model=model, input_tokens=2048, output_tokens=256)],
                       rate=rate, sla=60, **extra)
    model_ = graph_model.build(graph)
    snapshot = ClusterSnapshot.from_profiles(shipped_profiles(), SETTINGS)
    so = candidates.build(model_, snapshot, SETTINGS)["chat"]
    fast = so.configs
    slow = enumerate_and_sweep(so)
    assert fast, "the step should have configurations"
    assert [c.parts for c in fast] == [r[2] for r in slow]
    for c, r in zip(fast, slow, strict=True):
        assert c.objective == pytest.approx(r[0], rel=1e-12)
        assert c.latency == pytest.approx(r[1], rel=1e-12)


def test_equal_workloads_share_candidates_but_keep_their_own_step() -> None:
    graph = make_graph([llm("a"), llm("b", deps=["a"])], rate=5.0, sla=60)
    model_ = graph_model.build(graph)
    snapshot = ClusterSnapshot.from_profiles(shipped_profiles(), SETTINGS)
    opts = candidates.build(model_, snapshot, SETTINGS)
    assert opts["a"].configs is opts["b"].configs
    assert (opts["a"].step.name, opts["b"].step.name) == ("a", "b")
