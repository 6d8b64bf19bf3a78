"""The table model: the user gives measured latency and cost per (step, phase, pool)."""

from __future__ import annotations

from agentgraph.api.graph import Step, StepKind, TableEntry, TableModel
from agentgraph.costs.base import (
    CostSettings,
    Estimate,
    EstimateResult,
    Phase,
    Pool,
    TransferEstimate,
)


class Table:
    """Latency per visit as given. Cost: ``costPerRequest`` plus the per-token prices.

    With ``requestsPerSecondPerReplica`` a replica's price is its pool's hourly price; without it
    the step is priced per use, cost per request times the request rate.
    """

    name = "table"

    def phases(self, step: Step) -> tuple[Phase, ...]:
        return ("prefill", "decode") if step.kind is StepKind.LLM else ("run",)

    def estimate(
        self, step: Step, phase: Phase, pool: Pool, settings: CostSettings
    ) -> EstimateResult:
        table = _table(step)
        result = EstimateResult()
        for entry in table.entries:
            if entry.pool != pool.name or entry.phase != phase:
                continue
            units = entry.tensor_parallel * pool.units_per_device
            cost = _entry_cost(step, entry)
            throughput = entry.requests_per_second_per_replica
            if cost is None:
                if throughput is None:
                    raise ValueError(
                        f"step {step.name}: table entry for {pool.name}/{phase} needs a cost "
                        "or requestsPerSecondPerReplica"
                    )
                cost = units * pool.unit_hour_usd / 3600.0 / throughput
            result.options.append(
                Estimate(
                    pool=pool.name,
                    phase=phase,
                    tensor_parallel=entry.tensor_parallel,
                    batch=1,
                    latency=entry.latency_seconds,
                    units=units,
                    cost_per_request=cost,
                    bound="table",
                    throughput=throughput,
                    tbt=entry.tbt_seconds,
                )
            )
        if not result.options:
            result.rejected.append(f"{pool.name}: no table entry for phase {phase}")
        return result

    def kv_transfer(
        self, step: Step, src: Pool, dst: Pool, settings: CostSettings
    ) -> TransferEstimate | None:
        tokens = step.llm.input_tokens if step.llm else 0
        for entry in _table(step).kv_transfer:
            if entry.from_pool == src.name and entry.to_pool == dst.name:
                per_token = (entry.cost_per_input_token or 0.0) * tokens
                cost = (entry.cost_per_request or 0.0) + per_token
                return TransferEstimate(entry.latency_seconds, bytes=0.0, cost_per_request=cost)
        return None


def _table(step: Step) -> TableModel:
    if step.table is None:
        raise ValueError(f"step {step.name}: costModel 'table' needs a 'table' block")
    return step.table


def _entry_cost(step: Step, entry: TableEntry) -> float | None:
    parts = [entry.cost_per_request, entry.cost_per_input_token, entry.cost_per_output_token]
    if all(p is None for p in parts):
        return None
    tokens_in = step.llm.input_tokens if step.llm else 0
    tokens_out = step.llm.output_tokens if step.llm else 0
    return (
        (entry.cost_per_request or 0.0)
        + (entry.cost_per_input_token or 0.0) * tokens_in
        + (entry.cost_per_output_token or 0.0) * tokens_out
    )
