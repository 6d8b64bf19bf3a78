"""Reproduce the seed paper's evaluation with the shipped profiles and the real planner.

Llama-3 8B/70B x FP16/FP8 x (512 in/4096 out, 4096 in/512 out) x (interactive: TTFT <= 250 ms
and TBT <= 20 ms; offline: no latency limit) x every prefill::decode pair of the paper's six
devices. The figure of merit is tokens/s per $ (equivalently, tokens per $: the planner's
minimum cost per request), relative to H100::H100 in the same scenario, on two cost bases: the
profiles' own (owned: purchase + financing + power) and the paper's $/hour column.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import CostBasis, HardwareProfile
from agentgraph.costs.base import CostSettings
from agentgraph.planner import solve

DEVICES = ("a40", "a100", "gaudi3", "mi300x", "h100", "b200")
MODELS: dict[str, dict[str, Any]] = {
    "8B": {"parametersBillions": 8.03, "layers": 32, "hiddenSize": 4096, "heads": 32,
           "kvHeads": 8},
    "70B": {"parametersBillions": 70.6, "layers": 80, "hiddenSize": 8192, "heads": 64,
            "kvHeads": 8},
}
DTYPES = {"FP16": 2.0, "FP8": 1.0}
SHAPES = {"512/4096": (512, 4096), "4096/512": (4096, 512)}
MODES = {"interactive": (0.25, 0.02), "offline": (None, None)}
FOCUS = ("b200::gaudi3", "h100::gaudi3", "b200::b200")


@dataclass(frozen=True)
class Scenario:
    model: str
    dtype: str
    shape: str
    mode: str

    @property
    def label(self) -> str:
        return f"{self.model} {self.dtype} {self.shape} {self.mode}"


def scenarios() -> list[Scenario]:
    return [Scenario(*s) for s in itertools.product(MODELS, DTYPES, SHAPES, MODES)]


def _graph(s: Scenario, prefill: str, decode: str) -> AgentGraph:
    tokens_in, tokens_out = SHAPES[s.shape]
    ttft, tbt = MODES[s.mode]
    sla: dict[str, Any] = {"latencySeconds": 3600.0}
    if ttft is not None:
        sla.update(ttftSeconds=ttft, tbtSeconds=tbt)
    return AgentGraph.model_validate({
        "metadata": {"name": "paper"},
        "spec": {"sla": sla, "steps": [{
            "name": "llm", "kind": "llm",
            "llm": {"model": {**MODELS[s.model], "dtypeBytes": DTYPES[s.dtype]},
                    "inputTokens": tokens_in, "outputTokens": tokens_out,
                    "prefill": {"pinnedPool": prefill}, "decode": {"pinnedPool": decode}},
        }]},
    })


def tokens_per_dollar(profiles: Sequence[HardwareProfile], s: Scenario, prefill: str,
                      decode: str, basis: CostBasis) -> float | None:
    plan = solve.plan(_graph(s, prefill, decode), profiles, CostSettings(cost_basis=basis))
    if not plan.feasible or plan.cost_per_request is None:
        return None
    tokens_in, tokens_out = SHAPES[s.shape]
    return (tokens_in + tokens_out) / plan.cost_per_request


def grid(profiles: Sequence[HardwareProfile], basis: CostBasis) -> dict[str, dict[str, float]]:
    """scenario label -> 'prefill::decode' -> tokens per $ relative to H100::H100 (NaN: none)."""
    chosen = [p for p in profiles if p.name in DEVICES]
    out: dict[str, dict[str, float]] = {}
    for s in scenarios():
        raw = {f"{p}::{d}": tokens_per_dollar(chosen, s, p, d, basis)
               for p, d in itertools.product(DEVICES, DEVICES)}
        base = raw["h100::h100"]
        out[s.label] = {k: (v / base if v is not None and base else math.nan)
                        for k, v in raw.items()}
    return out


def paper(profiles: Sequence[HardwareProfile], out_dir: Path, console: Console) -> int:
    missing = set(DEVICES) - {p.name for p in profiles}
    if missing:
        console.print(f"[red]report paper: profiles missing: {', '.join(sorted(missing))}[/]")
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {basis: grid(profiles, basis) for basis in (CostBasis.OWNED, CostBasis.HOURLY)}
    _summary(results, console)
    _csv(results, out_dir / "paper.csv")
    charts = _chart(results, out_dir)
    console.print(f"wrote {out_dir / 'paper.csv'}, {', '.join(str(c) for c in charts)}")
    return 0


def _fmt(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _summary(results: dict[CostBasis, dict[str, dict[str, float]]], console: Console) -> None:
    table = Table("cost basis", "scenario", "best pair", "best", *FOCUS, "rank b200::gaudi3",
                  title="tokens/s per $ relative to H100::H100 (higher is better)")
    for basis, by_scenario in results.items():
        for label, pairs in by_scenario.items():
            ranked = sorted(((v, k) for k, v in pairs.items() if not math.isnan(v)),
                            reverse=True)
            if not ranked:
                table.add_row(basis.value, label, "-", "-", *["-"] * len(FOCUS), "-")
                continue
            rank = next((i + 1 for i, (_, k) in enumerate(ranked) if k == FOCUS[0]), None)
            table.add_row(basis.value, label, ranked[0][1], f"{ranked[0][0]:.2f}",
                          *(_fmt(pairs[f]) for f in FOCUS), str(rank or "-"))
    console.print(table)


def _csv(results: dict[CostBasis, dict[str, dict[str, float]]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["basis", "scenario", "prefill", "decode", "relative_tokens_per_dollar"])
        for basis, by_scenario in results.items():
            for label, pairs in by_scenario.items():
                for pair, v in pairs.items():
                    p, d = pair.split("::")
                    w.writerow([basis.value, label, p, d, "" if math.isnan(v) else f"{v:.4f}"])


def _chart(results: dict[CostBasis, dict[str, dict[str, float]]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for basis, by_scenario in results.items():
        labels = list(by_scenario)
        cols = 4
        rows = math.ceil(len(labels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
        for n, label in enumerate(labels):
            ax = axes[n // cols][n % cols]
            values = [[by_scenario[label][f"{p}::{d}"] for d in DEVICES] for p in DEVICES]
            ax.imshow(values, cmap="viridis", vmin=0, vmax=3)
            ax.set_xticks(range(len(DEVICES)), DEVICES, rotation=45, fontsize=7)
            ax.set_yticks(range(len(DEVICES)), DEVICES, fontsize=7)
            ax.set_title(label, fontsize=8)
            for i, j in itertools.product(range(len(DEVICES)), range(len(DEVICES))):
                v = values[i][j]
                ax.text(j, i, "" if math.isnan(v) else f"{v:.2f}", ha="center", va="center",
                        fontsize=6, color="white" if v < 1.5 else "black")
        fig.suptitle(f"tokens/s per $ relative to H100::H100, {basis.value} cost basis "
                     "(rows: prefill device, columns: decode device; blank: infeasible)",
                     fontsize=10)
        fig.tight_layout()
        path = out_dir / f"paper-{basis.value}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
