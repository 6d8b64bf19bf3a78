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


def _dominated_pairwise(configs: list, capped: frozenset[str]) -> list:  # type: ignore[type-arg]
    """The definition, one pair at a time: in order of (cost, latency), a configuration is
    dropped when a kept one is at or under it on latency and on every capped pool's units."""
    kept: list = []  # type: ignore[type-arg]
    for c in sorted(configs, key=lambda c: (c[0], c[1])):
        mine = {p: u for p, u in c[3] if p in capped}
        if any(k[1] <= c[1] and all(mine.get(p, 0.0) >= u for p, u in k[3] if p in capped)
               for k in kept):
            continue
        kept.append(c)
    return kept


def test_pruning_with_capped_pools_equals_the_pairwise_definition() -> None:
    """Random configurations over six pools (four capped), each holding units and pods in
    one or two pools, with many ties: the grouped, matrix check keeps exactly what the
    pairwise definition keeps, in the same order."""
    import random

    pools = ["a", "b", "c", "d", "e", "f"]
    capped = frozenset(["a", "a/pods", "b", "b/pods", "c", "c/pods", "d"])
    for seed in range(40):
        rng = random.Random(seed)
        configs = []
        for _ in range(rng.randint(1, 300)):
            held: dict[str, float] = {}
            for pool in rng.sample(pools, rng.randint(1, 2)):
                replicas = rng.randint(1, 3)
                held[pool] = held.get(pool, 0.0) + replicas * rng.choice([1, 2, 4])
                held[pool + "/pods"] = held.get(pool + "/pods", 0.0) + replicas
            configs.append((float(rng.randint(1, 20)), float(rng.randint(1, 20)), (),
                            tuple(sorted(held.items()))))
        got = candidates._prune_configs(configs, capped)  # type: ignore[arg-type]
        assert [id(c) for c in got] == [id(c) for c in _dominated_pairwise(configs, capped)]


def test_a_graph_nothing_meets_even_unlimited_never_builds_the_limited_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in the e2e fuzzing: a one-layer LLM that fits everywhere, on limited pools, under
    an SLA two tools alone miss. Without the pools' limits nothing meets it, so nothing can
    with them: the plan says why at once, and the limited candidates (units in every Pareto
    check: 57,060 LLM combinations, minutes of pruning before) are never built."""
    from agentgraph.planner import solve
    from builders import tool

    tiny = {"parametersBillions": 8, "layers": 1, "hiddenSize": 4096, "heads": 32,
            "kvHeads": 8}
    graph = make_graph([tool("s0", latency=0.05), tool("s1", latency=0.05, deps=["s0"]),
                        llm("s2", model=tiny, input_tokens=1, output_tokens=64)], sla=0.05)
    profiles = shipped_profiles()
    built: list[bool] = []
    real = candidates.build

    def build(model, snapshot, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(bool(snapshot.capacities()))
        return real(model, snapshot, *args, **kwargs)

    monkeypatch.setattr(candidates, "build", build)
    plan = solve.plan(graph, profiles, capacity_units={p.name: 64 for p in profiles},
                      capacity_pods={p.name: 220 for p in profiles},
                      capacity_block={p.name: 8 for p in profiles})
    assert not plan.feasible
    assert any("sla.latencySeconds: 0.05 s cannot be met" in r for r in plan.reasons)
    assert built == [False]  # only the model without the limits
