"""The planner: pure, deterministic, no I/O. Graph checks, candidates, MILP, plan, explain."""
