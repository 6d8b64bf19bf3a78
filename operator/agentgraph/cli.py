"""agentgraph: validate and plan agent graphs, generate CRDs, reproduce the paper, and run a
graph's gateway and step workers.

Exit codes: 0 ok; 1 valid input but no feasible plan; 2 invalid input or usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agentgraph.api.hardware import CostBasis, HardwareProfile
from agentgraph.api.loading import Documents, LoadError, parse
from agentgraph.planner.errors import PlanningError

if TYPE_CHECKING:  # imported where used: the runtime's commands need none of them
    from rich.console import Console

    from agentgraph.api.plan import Plan, SolveStats

EXIT_INFEASIBLE = 1
EXIT_INVALID = 2
MAX_TIME_LIMIT = 86_400.0
PROFILES_ENV = "AGENTGRAPH_PROFILES"


class CliError(Exception):
    pass


def _read(path: str) -> Documents:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}") from None
    return parse(text, path)


def load_profiles(directory: str) -> list[HardwareProfile]:
    folder = Path(directory)
    if not folder.is_dir():
        raise CliError(f"{directory}: no such directory of HardwareProfiles")
    profiles: list[HardwareProfile] = []
    for path in sorted(folder.glob("*.yaml")):
        docs = _read(str(path))
        if docs.graphs:
            raise CliError(f"{path}: holds an AgentGraph; a profiles directory holds only "
                           "HardwareProfiles")
        profiles.extend(docs.profiles)
    if not profiles:
        raise CliError(f"{directory}: holds no HardwareProfile (*.yaml)")
    return profiles


def _default_profiles() -> str | None:
    if os.environ.get(PROFILES_ENV):
        return os.environ[PROFILES_ENV]
    return "hardware_profiles" if Path("hardware_profiles").is_dir() else None


def resolve(file: str, profiles_dir: str | None) -> tuple[Documents, list[HardwareProfile]]:
    """The graph file's own profiles are used alone unless --profiles is given; then both, the
    file's winning on a name clash. Without either, the default profiles directory."""
    docs = _read(file)
    if len(docs.graphs) != 1:
        raise CliError(f"{file}: expected exactly one AgentGraph, found {len(docs.graphs)}")
    if profiles_dir is None and not docs.profiles:
        profiles_dir = _default_profiles()
        if profiles_dir is None:
            raise CliError(f"{file}: no HardwareProfile in the file and no profiles directory "
                           f"(pass --profiles DIR or set {PROFILES_ENV})")
    merged = {p.name: p for p in (load_profiles(profiles_dir) if profiles_dir else [])}
    merged.update({p.name: p for p in docs.profiles})
    return docs, list(merged.values())


def cmd_validate(args: argparse.Namespace, out: Console) -> int:
    from agentgraph.planner import graph as graph_model

    docs = _read(args.file)
    # Pool names are checked against the profiles when there are any: --profiles, or the
    # file's own (as plan reads them).
    profiles = {p.name for p in (load_profiles(args.profiles) if args.profiles else [])}
    profiles.update(p.name for p in docs.profiles)
    for g in docs.graphs:
        model = graph_model.build(g)
        if profiles:
            graph_model.check_pools(model, profiles)
        checked = f", pools checked against {len(profiles)} profiles" if profiles else ""
        out.print(f"{args.file}: AgentGraph/{g.metadata.name}: ok "
                  f"({len(model.steps)} steps, {len(model.blocks)} blocks{checked})")
    for p in docs.profiles:
        out.print(f"{args.file}: HardwareProfile/{p.name}: ok")
    return 0


def cmd_plan(args: argparse.Namespace, out: Console) -> int:
    import yaml

    from agentgraph.costs.base import CostSettings
    from agentgraph.planner import solve

    docs, profiles = resolve(args.file, args.profiles)
    settings = CostSettings(cost_basis=CostBasis(args.cost_basis) if args.cost_basis else None)
    result = solve.plan(docs.graphs[0], profiles, settings, with_explanation=args.explain,
                        time_limit=args.time_limit, with_stats=args.stats)
    if args.output == "json":
        print(json.dumps(result.model_dump(by_alias=True, exclude_none=True), indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(result.model_dump(by_alias=True, exclude_none=True,
                                               mode="json"), sort_keys=False), end="")
    else:
        print_plan(docs.graphs[0].metadata.name, result, out)
        if result.solve_stats is not None:
            print_stats(result.solve_stats, out)
    if not result.feasible:
        for reason in result.reasons:
            print(f"{args.file}: {reason}", file=sys.stderr)
        return EXIT_INFEASIBLE
    return 0


def _money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4g}" if value < 1 else f"${value:,.2f}"


def print_plan(name: str, plan: Plan, out: Console) -> None:
    from rich.table import Table

    if not plan.feasible:
        out.print(f"[bold red]{name}: no feasible plan[/]")
        for reason in plan.reasons:
            out.print(f"  - {reason}")
        return
    assert plan.objective is not None and plan.latency_seconds is not None
    out.print(f"[bold]{name}[/]: {plan.objective.name} [green]{_money(plan.objective.value)}"
              f"[/], latency {plan.latency_seconds:.4g} s of {plan.sla_seconds:g} s SLA "
              f"(worst case {plan.worst_case_latency_seconds or 0:.4g} s), "
              f"solved in {plan.solve_seconds or 0:.3f} s")
    if plan.solver_status != "optimal":
        out.print(f"[yellow]not proven optimal: {plan.solver_status}[/]")
    hourly = plan.cost_per_hour is not None
    table = Table("step", "phase", "pool", "TP", "batch", "replicas", "latency s",
                  "$/hour" if hourly else "$/request", "bound")
    for a in plan.assignments:
        replicas = str(a.replicas) if a.server is None else (
            f"{a.replicas} shared" if a.server == a.step else f"on {a.server}")
        table.add_row(a.step, a.phase or "", a.pool, str(a.tensor_parallel), str(a.batch),
                      replicas, f"{a.latency_seconds:.4g}",
                      _money(a.cost_per_hour if hourly else a.cost_per_request), a.bound)
    out.print(table)
    if plan.servers:
        st = Table("server", "phase", "pool", "TP", "batch", "replicas", "$/hour", "steps",
                   title="shared model servers (one per model, phase and pool)")
        for s in plan.servers:
            st.add_row(s.name, s.phase, s.pool, str(s.tensor_parallel), str(s.batch),
                       str(s.replicas), _money(s.cost_per_hour), ", ".join(s.steps))
        out.print(st)
    for t in plan.transfers:
        size = f"{t.bytes_per_request / 1e6:.1f} MB, " if t.bytes_per_request else ""
        out.print(f"KV transfer {t.step}: {t.from_pool} -> {t.to_pool}, {size}"
                  f"{t.latency_seconds:.4g} s, {_money(t.cost_per_request)}/request")
    out.print(f"critical path: {' -> '.join(plan.critical_path)}")
    if plan.constraints:
        ct = Table("constraint", "value", "limit", "binding", title="constraints")
        for c in plan.constraints:
            ct.add_row(c.name, f"{c.value:.4g}", f"{c.limit:.4g}", "yes" if c.binding else "")
        out.print(ct)
    if plan.alternatives:
        at = Table("step", "phase", "pool", "why", title="why this pool")
        for alt in plan.alternatives:
            at.add_row(alt.step, alt.phase or "", alt.chosen_pool, alt.reason)
        out.print(at)
    if plan.baselines:
        bt = Table("baseline", "feasible", "latency s", plan.objective.name, "this plan saves",
                   "note", title="baselines: one accelerator type for the accelerated steps "
                   "(CPU steps on CPU); every step on one pool, where feasible; no shared "
                   "model servers")
        for b in plan.baselines:
            label = {"accelerator": f"{b.pool} + CPU", "single-pool": f"{b.pool} only",
                     "unshared": "no shared model servers"}[b.kind]
            saves = (f"{_money(b.extra)} ({b.extra / b.objective:.0%})"
                     if b.feasible and b.extra is not None and b.objective else "-")
            bt.add_row(label, "yes" if b.feasible else "no",
                       "-" if b.latency_seconds is None else f"{b.latency_seconds:.4g}",
                       _money(b.objective), saves, b.reason or "")
        out.print(bt)


def print_stats(stats: SolveStats, out: Console) -> None:
    from rich.table import Table

    sizes = Table("model", "configurations", title="solver model (--stats)")
    sizes.add_row("candidates (Pareto-pruned)", str(stats.configurations))
    sizes.add_row("after the latency bounds and slack fixing", str(stats.after_bounds))
    if stats.after_merging is not None:
        sizes.add_row(f"after merging {stats.steps} steps into {stats.choices} choices "
                      "(series-parallel)", str(stats.after_merging))
    sizes.add_row("after reduced-cost fixing (what the searches get)", str(stats.after_fixing))
    out.print(sizes)
    lp = "-" if stats.lp_bound is None else f"{stats.lp_bound:.6g}"
    start = "-" if stats.start is None else f"{stats.start:.6g}"
    out.print(f"{stats.rows} rows, {stats.steps_fixed} steps fixed before the search, "
              f"LP bound {lp}, first incumbent {start} ({stats.start_from}), "
              f"{stats.nodes} branch-and-bound nodes")
    out.print("seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.seconds.items()))


def cmd_crds(args: argparse.Namespace, out: Console) -> int:
    import yaml

    from agentgraph.api import crdgen

    target = Path(args.out)
    target.mkdir(parents=True, exist_ok=True)
    for name, doc in crdgen.all_crds().items():
        (target / name).write_text(crdgen.HEADER + yaml.safe_dump(doc, sort_keys=False),
                                   encoding="utf-8")
        out.print(f"wrote {target / name}")
    return 0


def cmd_chart(args: argparse.Namespace, out: Console) -> int:
    from agentgraph import chart

    for path in chart.write(Path(args.out), Path(args.root)):
        out.print(f"wrote {path}")
    return 0


def cmd_serve(args: argparse.Namespace, out: Console) -> int:
    from agentgraph import local
    from agentgraph.planner import solve
    from agentgraph.runtime import http

    docs, profiles = resolve(args.file, args.profiles)
    graph = docs.graphs[0]
    plan = solve.plan(graph, profiles)
    if not plan.feasible:
        for reason in plan.reasons:
            print(f"{args.file}: {reason}", file=sys.stderr)
        return EXIT_INFEASIBLE

    def announce(run: local.Running) -> None:
        print_plan(graph.metadata.name, plan, out)
        out.print(f"[bold]{graph.metadata.name}[/] answers at {run.url}/v1/invoke and "
                  f"{run.url}/v1/chat/completions (Ctrl-C stops it)")

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the way to stop it
        http.run(lambda: local.serve(graph, profiles, args.host, args.port, announce, plan))
    return 0


def cmd_joint(args: argparse.Namespace, out: Console) -> int:
    """The joint re-planning report on the cluster the kubeconfig points at."""
    from kubernetes import client, config
    from rich.table import Table

    from agentgraph.controller import joint
    from agentgraph.controller.cluster import Cluster

    try:
        config.load_kube_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as e:
        raise CliError(f"joint: no cluster to read: {e}") from e
    try:
        graphs, world = joint.read(Cluster(client.ApiClient()))
    except (client.ApiException, OSError) as e:
        raise CliError(f"joint: reading the cluster failed: {e}") from e
    found = joint.report(graphs, world, time_limit=args.time_limit)
    saving = found.saving
    share = saving / found.first_come_total if found.first_come_total else 0.0
    if args.output == "json":
        print(json.dumps({
            "status": found.status, "solveSeconds": round(found.seconds, 4),
            "firstComePerHour": round(found.first_come_total, 6),
            "jointPerHour": round(found.joint_total, 6),
            "savingPerHour": round(saving, 6), "savingFraction": round(share, 6),
            "graphs": [{"graph": r.key, "firstComePerHour": round(r.first_come, 6),
                        "jointPerHour": round(r.joint, 6), "moves": r.moves}
                       for r in found.rows],
            "leftOut": [{"graph": k, "why": why} for k, why in found.left_out]}, indent=2))
        return 0
    table = Table("graph", "first come $/h", "joint $/h", "what would move",
                  title=f"joint re-planning (advisory), solver: {found.status}")
    for r in found.rows:
        table.add_row(r.key, _money(r.first_come), _money(r.joint),
                      "\n".join(r.moves) or "nothing")
    table.add_row("total", _money(found.first_come_total), _money(found.joint_total),
                  f"saves {_money(saving)}/hour ({share:.1%})")
    out.print(table)
    for key, why in found.left_out:
        out.print(f"left out: {key}: {why}")
    return 0


def cmd_report(args: argparse.Namespace, out: Console) -> int:
    from agentgraph import report  # matplotlib is needed here only

    profiles = load_profiles(args.profiles or _default_profiles() or "hardware_profiles")
    return report.paper(profiles, Path(args.out), out)


def _seconds(text: str) -> float:
    """A solver time limit: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 0 < value <= MAX_TIME_LIMIT:
        raise argparse.ArgumentTypeError(f"{text}: give seconds above 0 and at most "
                                         f"{MAX_TIME_LIMIT:g}")
    return value


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("agentgraph")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from agentgraph import __version__

        return __version__


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentgraph", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"agentgraph {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a file of AgentGraphs and HardwareProfiles")
    v.add_argument("file")
    v.add_argument("--profiles", help="directory of HardwareProfile YAML: check the pool "
                   "names steps give against them (the file's own profiles count too)")
    v.set_defaults(func=cmd_validate)
    pl = sub.add_parser("plan", help="plan an AgentGraph on hardware profiles")
    pl.add_argument("file")
    pl.add_argument("--profiles", help=f"directory of HardwareProfile YAML (default: "
                    f"${PROFILES_ENV}, else ./hardware_profiles)")
    pl.add_argument("--output", "-o", choices=["table", "yaml", "json"], default="table")
    pl.add_argument("--explain", action="store_true",
                    help="add binding constraints, next-best alternatives and baselines")
    pl.add_argument("--cost-basis", choices=[b.value for b in CostBasis],
                    help="price every pool on this basis instead of each profile's own")
    pl.add_argument("--time-limit", type=_seconds, default=60.0,
                    help="solver seconds (default 60)")
    pl.add_argument("--stats", action="store_true",
                    help="print the solver model's size before and after each reduction and "
                    "where the time went (in -o json/yaml: solveStats)")
    pl.set_defaults(func=cmd_plan)
    c = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the models")
    c.add_argument("--out", default="crds")
    c.set_defaults(func=cmd_crds)
    ch = sub.add_parser("chart", help="write the Helm chart's generated files: "
                        "values.schema.json and its copies of the CRDs and shipped profiles")
    ch.add_argument("--out", default="charts/agentgraph-operator")
    ch.add_argument("--root", default=".", help="repository root (hardware_profiles/ is read "
                    "from here)")
    ch.set_defaults(func=cmd_chart)
    r = sub.add_parser("report", help="reproduce the seed paper's evaluation")
    r.add_argument("which", choices=["paper"])
    r.add_argument("--profiles")
    r.add_argument("--out", default="reports")
    r.set_defaults(func=cmd_report)
    j = sub.add_parser("joint", help="advisory: plan every admitted graph of a cluster together "
                       "and show what $/hour that saves against their first-come plans")
    j.add_argument("--kubeconfig", help="default: $KUBECONFIG, else ~/.kube/config")
    j.add_argument("--output", "-o", choices=["table", "json"], default="table")
    j.add_argument("--time-limit", type=_seconds, default=60.0,
                   help="solver seconds (default 60)")
    j.set_defaults(func=cmd_joint)
    sv = sub.add_parser("serve", help="run a graph on this machine, no cluster: its workers "
                        "and gateway on loopback ports")
    sv.add_argument("file")
    sv.add_argument("--profiles")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.set_defaults(func=cmd_serve)
    from agentgraph.runtime import commands

    commands.add_parsers(sub)
    return p


RUNTIME_COMMANDS = ("worker", "gateway", "loadgen")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in RUNTIME_COMMANDS:
        code: int = args.func(args)
        return code
    from rich.console import Console

    to_stderr = args.command == "plan" and args.output != "table"
    stream = sys.stderr if to_stderr else sys.stdout
    out = Console(stderr=to_stderr, width=None if stream.isatty() else 160)
    try:
        code = args.func(args, out)
        return code
    except LoadError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
    except PlanningError as e:
        for issue in e.issues:
            print(f"{args.file}: {issue}", file=sys.stderr)
    except CliError as e:
        print(str(e), file=sys.stderr)
    return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
