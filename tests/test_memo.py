"""The solve memo: the same inputs give the same plan from the memo; any input that differs
(capacity, spec) is solved afresh."""

from agentgraph.api.plan import Plan
from agentgraph.planner import solve
from agentgraph.planner.memo import Memo
from builders import llm, make_graph, make_pool

POOLS = [make_pool("fast", price=0.5, tflops=1000, bandwidth=4000, nodes=1),
         make_pool("slow", price=0.4, tflops=150, bandwidth=800, nodes=8)]


def same(a: Plan, b: Plan) -> bool:
    return a.model_dump(exclude={"solve_seconds"}) == b.model_dump(exclude={"solve_seconds"})


def test_a_memo_answers_what_it_solved_and_nothing_else() -> None:
    graph = make_graph([llm("chat", output_tokens=256)], sla=2.0, rate=10.0)
    memo: Memo[solve.Solved] = Memo(8)
    fresh = solve.plan(graph, POOLS, capacity_units={"fast": 8, "slow": 64})
    first = solve.plan(graph, POOLS, capacity_units={"fast": 8, "slow": 64}, memo=memo)
    misses = memo.misses
    again = solve.plan(graph, POOLS, capacity_units={"fast": 8, "slow": 64}, memo=memo)
    assert memo.misses == misses and memo.hits >= 1
    assert same(first, fresh) and same(again, fresh)
    tight = solve.plan(graph, POOLS, capacity_units={"fast": 0, "slow": 64}, memo=memo)
    assert same(tight, solve.plan(graph, POOLS, capacity_units={"fast": 0, "slow": 64}))
    assert all(a.pool == "slow" for a in tight.assignments)
    other = make_graph([llm("chat", output_tokens=64)], sla=2.0, rate=10.0)
    assert same(solve.plan(other, POOLS, memo=memo), solve.plan(other, POOLS))


def test_a_memo_keeps_at_most_its_size() -> None:
    memo: Memo[int] = Memo(2)
    for key in range(5):
        assert memo.get(key, lambda k=key: k * 10) == key * 10  # type: ignore[misc]
    assert len(memo) == 2 and memo.get(4, lambda: -1) == 40 and memo.get(0, lambda: -1) == -1


def test_a_memo_does_not_keep_what_it_is_told_not_to() -> None:
    memo: Memo[int] = Memo(4)
    made: list[int] = []
    for _ in range(2):
        memo.get("k", lambda: made.append(1) or 7, keep=lambda v: False)  # type: ignore[func-returns-value]
    assert len(made) == 2 and len(memo) == 0
