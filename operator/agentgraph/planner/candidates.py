"""Every way to run every step (phase), priced, filtered by hard limits, Pareto-pruned."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agentgraph.api.graph import PoolConstraints, StepKind
from agentgraph.costs import registry
from agentgraph.costs.base import (
    CostModel,
    CostSettings,
    Estimate,
    Phase,
    TransferEstimate,
    ceil_replicas,
)
from agentgraph.planner.graph import FlatStep, GraphModel
from agentgraph.planner.snapshot import PODS, ClusterSnapshot

# Kubernetes' tested limit for one cluster's pods: a step needing more replicas than this can
# never run, whatever the pools (the CLI plans on unbounded pools unless profiles give nodes).
MAX_REPLICAS = 150_000


@dataclass(frozen=True)
class Option:
    estimate: Estimate
    replicas: int
    cost_per_hour: float | None  # None without a request rate
    objective: float  # in the plan's objective unit, visits counted

    @property
    def pool(self) -> str:
        return self.estimate.pool

    @property
    def units_total(self) -> float:
        return self.replicas * self.estimate.units

    @property
    def held(self) -> tuple[tuple[str, float], tuple[str, float]]:
        """What it takes from its pool, by capacity key: units, and one pod per replica."""
        return ((self.pool, self.units_total), (self.pool + PODS, float(self.replicas)))


@dataclass(frozen=True)
class Transfer:
    src: str
    dst: str
    estimate: TransferEstimate
    objective: float


@dataclass(frozen=True)
class Config:
    """One complete way to run a step: an option per phase, and the KV transfer between them.

    The MILP chooses among these: a step touches the rest of the graph only through its
    duration, its cost and the units it holds in each pool."""

    parts: tuple[tuple[Phase, Option], ...]
    latency: float
    objective: float
    usage: tuple[tuple[str, float], ...]  # (pool, units), sorted by pool


@dataclass
class StepOptions:
    step: FlatStep
    slots: dict[Phase, list[Option]] = field(default_factory=dict)
    transfers: dict[tuple[str, str], Transfer] = field(default_factory=dict)
    configs: list[Config] = field(default_factory=list)
    ttft: float | None = None
    tbt: float | None = None
    rejected: list[str] = field(default_factory=list)

    @property
    def is_llm(self) -> bool:
        return "prefill" in self.slots


def _allowed(names: tuple[str, ...], *groups: PoolConstraints | None) -> list[str]:
    allowed = list(names)
    for c in groups:
        if c is None:
            continue
        if c.pinned_pool:
            allowed = [p for p in allowed if p == c.pinned_pool]
        if c.allowed_pools:
            allowed = [p for p in allowed if p in c.allowed_pools]
        allowed = [p for p in allowed if p not in c.forbidden_pools]
    return allowed


Running = Mapping[tuple[str, str], tuple[str, int]]  # (step, phase) -> (pool, TP) running now
Weight = Callable[[Phase, Option], float]  # the solve's price of an option / its true price


def _mover(placed: Mapping[str, tuple[str, int]], move_cost: float) -> Weight:
    def weight(phase: Phase, o: Option) -> float:
        now = placed.get(phase)
        moves = now is not None and now != (o.pool, o.estimate.tensor_parallel)
        return 1.0 + move_cost if moves else 1.0

    return weight


def _one(phase: Phase, o: Option) -> float:
    return 1.0


def build(
    graph: GraphModel,
    snapshot: ClusterSnapshot,
    settings: CostSettings,
    only_pools: Mapping[str, Collection[str]] | None = None,
    prune: bool = True,
    running: Running | None = None,
    move_cost: float = 0.0,
) -> dict[str, StepOptions]:
    """``only_pools``: per step, the pools it may use besides its own constraints (the
    baselines). ``running`` and ``move_cost``: a configuration that moves a running step phase
    to another pool or tensor parallelism is priced ``move_cost`` higher in pruning and in the
    solve (its Option keeps the true price, which the plan reports)."""
    rate = graph.sla.target_requests_per_second
    cap = graph.planning.max_utilisation
    capped = frozenset(snapshot.capacities())
    shared = graph.group_of
    result: dict[str, StepOptions] = {}
    # Steps with the same workload, visits and limits get the same candidates: nothing in an
    # option names its step. Agent graphs repeat workloads often (one model, many calls).
    memo: dict[tuple[Any, ...], StepOptions] = {}
    for name, flat in graph.steps.items():
        step = flat.step
        corrected = tuple(sorted((k[1:], v) for k, v in snapshot.corrections.items()
                                 if k[0] == name))
        placed = {phase: where for (step_name, phase), where in (running or {}).items()
                  if step_name == name} if move_cost > 0 else {}
        weight = _mover(placed, move_cost) if placed else _one
        within = None if only_pools is None else sorted(only_pools.get(name, ()))
        # A step on a shared server: its cost is the server's, not its own, so nothing is
        # pruned by cost (every (TP, batch) may be the one the server runs) and no
        # configurations are made (the solve picks each phase's option itself).
        grouped = name in shared
        key = (step.model_dump_json(exclude={"name", "depends_on", "container"}),
               graph.visits[name], corrected, tuple(sorted(placed.items())),
               None if within is None else tuple(within), grouped)
        if key in memo:
            seen = memo[key]
            result[name] = StepOptions(step=flat, slots=seen.slots, transfers=seen.transfers,
                                       configs=seen.configs, ttft=seen.ttft, tbt=seen.tbt,
                                       rejected=list(seen.rejected))
            continue
        model = registry.model_for(step)
        opts = StepOptions(step=flat)
        if step.kind is StepKind.LLM and step.llm is not None:
            opts.ttft = step.llm.ttft_seconds or graph.sla.ttft_seconds
            opts.tbt = step.llm.tbt_seconds or graph.sla.tbt_seconds
        visits = graph.visits[name]
        for phase in model.phases(step):
            phase_limits = None
            if step.llm is not None:
                phase_limits = step.llm.prefill if phase == "prefill" else step.llm.decode
            pools = _allowed(snapshot.names, step.constraints, phase_limits)
            if within is not None:
                pools = [p for p in pools if p in within]
            if not pools:
                opts.rejected.append(f"{phase}: no pool allowed by the step's constraints"
                                     + (f" within {', '.join(within)}" if within else ""))
            options: list[Option] = []
            for pool_name in pools:
                pool = snapshot.pool(pool_name)
                found = model.estimate(step, phase, pool, settings)
                opts.rejected.extend(f"{phase}: {why}" for why in found.rejected)
                factor = snapshot.correction(name, phase, pool_name)
                fewest: int | None = None
                for est in (found.options if factor == 1.0
                            else [corrected_estimate(e, factor) for e in found.options]):
                    if not fits_one_node(est.units, pool.capacity_block):
                        continue
                    priced = _price(est, rate, visits, cap)
                    if priced.replicas > MAX_REPLICAS:
                        fewest = min(fewest or priced.replicas, priced.replicas)
                        continue
                    options.append(priced)
                if fewest is not None and not any(o.pool == pool_name for o in options):
                    opts.rejected.append(
                        f"{phase}: {pool_name}: needs {fewest:,} replicas at {rate:g} "
                        f"requests/s, more than a Kubernetes cluster holds ({MAX_REPLICAS:,} "
                        "pods)")
                if found.options and all(not fits_one_node(e.units, pool.capacity_block)
                                         for e in found.options):
                    opts.rejected.append(
                        f"{phase}: {pool_name}: a replica needs at least "
                        f"{min(e.units for e in found.options):.4g} units on one node; the "
                        f"most free on any node is {pool.capacity_block:.4g}")
            options = _within_token_limits(opts, phase, options)
            opts.slots[phase] = (_prune(options, capped, phase, weight) if prune and not grouped
                                 else options)
        if opts.is_llm:
            opts.transfers = _transfers(opts, model, snapshot, settings, rate, visits)
        opts.configs = [] if grouped else _configs(opts, capped, prune, weight)
        result[name] = memo[key] = opts
    return result


def corrected_estimate(est: Estimate, factor: float) -> Estimate:
    """The estimate with a measured correction: ``factor`` times as slow, so each replica
    serves ``factor`` times fewer requests and each request costs ``factor`` times more."""
    return replace(est, latency=est.latency * factor,
                   tbt=None if est.tbt is None else est.tbt * factor,
                   throughput=None if est.throughput is None else est.throughput / factor,
                   cost_per_request=(est.cost_per_request if est.throughput is None
                                     else est.cost_per_request * factor))


def _transfers(
    opts: StepOptions,
    model: CostModel,
    snapshot: ClusterSnapshot,
    settings: CostSettings,
    rate: float | None,
    visits: float,
) -> dict[tuple[str, str], Transfer]:
    """KV transfers between every prefill pool and decode pool; none within one pool."""
    step = opts.step.step
    disaggregate = step.llm is None or step.llm.disaggregation == "auto"
    out = {}
    for src in sorted({o.pool for o in opts.slots["prefill"]}):
        for dst in sorted({o.pool for o in opts.slots["decode"]}):
            if src == dst:
                out[(src, dst)] = Transfer(src, dst, TransferEstimate(0.0, 0.0, 0.0), 0.0)
            elif disaggregate:
                t = model.kv_transfer(step, snapshot.pool(src), snapshot.pool(dst), settings)
                if t is not None:
                    per_hour = rate * 3600 if rate else 1.0
                    out[(src, dst)] = Transfer(src, dst, t, t.cost_per_request * per_hour * visits)
    return out


def fits_one_node(units: float, block: float | None) -> bool:
    """A replica's devices (or cores) all come from one node."""
    return block is None or units <= block * (1 + 1e-9) + 1e-12


def _by_pool(options: list[Option]) -> dict[str, list[Option]]:
    grouped: dict[str, list[Option]] = {}
    for o in options:
        grouped.setdefault(o.pool, []).append(o)
    return grouped


# objective, latency, parts, usage: a Config before it is worth building one
_Raw = tuple[float, float, tuple[tuple[Phase, Option], ...], tuple[tuple[str, float], ...]]


def _configs(opts: StepOptions, capped: frozenset[str], prune: bool,
             weight: Weight = _one) -> list[Config]:
    if opts.is_llm and prune and not any(key in capped for phase in opts.slots.values()
                                          for o in phase for key, _ in o.held):
        return _llm_front(opts, weight)
    raw: list[_Raw] = []
    if not opts.is_llm:
        raw = [(o.objective * weight("run", o), o.estimate.latency, (("run", o),), o.held)
               for o in opts.slots.get("run", [])]
    else:
        prefill, decode = _by_pool(opts.slots["prefill"]), _by_pool(opts.slots["decode"])
        limit = math.inf if opts.ttft is None else opts.ttft
        for (src, dst), t in opts.transfers.items():
            kv = t.estimate.latency
            for pre in prefill.get(src, []):
                head = pre.estimate.latency + kv
                if head > limit:
                    continue
                for dec in decode.get(dst, []):
                    if head + (dec.estimate.tbt or 0.0) > limit:
                        continue
                    raw.append((pre.objective * weight("prefill", pre) + t.objective
                                + dec.objective * weight("decode", dec),
                                head + dec.estimate.latency,
                                (("prefill", pre), ("decode", dec)), _usage(pre, dec)))
    if prune:
        raw = _prune_configs(raw, capped)
    return [Config(parts, latency, objective, tuple(sorted(usage)))
            for objective, latency, parts, usage in raw]


def _usage(pre: Option, dec: Option) -> tuple[tuple[str, float], ...]:
    total: dict[str, float] = {}
    for key, amount in (*pre.held, *dec.held):
        total[key] = total.get(key, 0.0) + amount
    return tuple(total.items())


def _llm_front(opts: StepOptions, weight: Weight = _one) -> list[Config]:
    """The (cost, duration) Pareto front of prefill x transfer x decode within TTFT, vectorised.

    Same result as enumerating and sweeping: sorted by cost then duration (stable, so ties keep
    the enumeration order), a combination is kept when it is strictly faster than every cheaper
    one. Only for steps that use no capacity-limited pool (units do not matter then)."""
    prefill, decode = opts.slots["prefill"], opts.slots["decode"]
    limit = math.inf if opts.ttft is None else opts.ttft
    p_obj = np.array([o.objective * weight("prefill", o) for o in prefill])
    p_lat = np.array([o.estimate.latency for o in prefill])
    d_obj = np.array([o.objective * weight("decode", o) for o in decode])
    d_lat = np.array([o.estimate.latency for o in decode])
    d_tbt = np.array([o.estimate.tbt or 0.0 for o in decode])
    p_of: dict[str, list[int]] = {}
    d_of: dict[str, list[int]] = {}
    for i, o in enumerate(prefill):
        p_of.setdefault(o.pool, []).append(i)
    for i, o in enumerate(decode):
        d_of.setdefault(o.pool, []).append(i)
    p_at = {pool: np.array(ix, dtype=np.intp) for pool, ix in p_of.items()}
    d_at = {pool: np.array(ix, dtype=np.intp) for pool, ix in d_of.items()}
    none = np.zeros(0, dtype=np.intp)
    objs, lats, pis, dis = [], [], [], []
    for (src, dst), t in opts.transfers.items():
        pi, di = p_at.get(src, none), d_at.get(dst, none)
        head = p_lat[pi][:, None] + t.estimate.latency
        ok = head + d_tbt[di][None, :] <= limit
        obj = p_obj[pi][:, None] + t.objective + d_obj[di][None, :]
        lat = head + d_lat[di][None, :]
        rows, cols = np.nonzero(ok)
        objs.append(obj[rows, cols])
        lats.append(lat[rows, cols])
        pis.append(pi[rows])
        dis.append(di[cols])
    if not objs:
        return []
    obj_all, lat_all = np.concatenate(objs), np.concatenate(lats)
    if obj_all.size == 0:
        return []
    order = np.lexsort((lat_all, obj_all))
    lat_sorted = lat_all[order]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(lat_sorted)[:-1]))
    keep = order[lat_sorted < best_before]
    p_all, d_all = np.concatenate(pis), np.concatenate(dis)
    out = []
    for k in keep:
        pre, dec = prefill[p_all[k]], decode[d_all[k]]
        out.append(Config((("prefill", pre), ("decode", dec)), float(lat_all[k]),
                          float(obj_all[k]), tuple(sorted(_usage(pre, dec)))))
    return out


def _prune_configs(configs: list[_Raw], capped: frozenset[str]) -> list[_Raw]:
    """Drop configurations another beats or ties on cost, duration and every capped pool's
    units. Without capped pools this is the 2-D Pareto front, found by one sweep."""
    # A stable sort: ties keep the deterministic enumeration order.
    ordered = sorted(configs, key=lambda c: (c[0], c[1]))
    if not any(pool in capped for c in configs for pool, _ in c[3]):
        front, best_latency = [], math.inf
        for c in ordered:
            if c[1] < best_latency:
                front.append(c)
                best_latency = c[1]
        return front

    # One configuration can beat another only if it holds units in no capped pool the other
    # does not (its units there would exceed the other's zero). So each is checked against
    # the kept ones whose capped pools are a subset of its own, as a matrix: an LLM step that
    # fits everywhere has tens of thousands of combinations (seen: 57,060, and minutes of
    # pairwise checks before).
    kept: list[_Raw] = []
    tables: dict[frozenset[str], _Rows] = {}  # per set of capped pools held: the kept rows
    below: dict[frozenset[str], list[frozenset[str]]] = {}  # the sets within each set
    for c in ordered:
        mine = {p: u for p, u in c[3] if p in capped and u > 0}
        support = frozenset(mine)
        if support not in below:
            below[support] = [t for t in below if t <= support]
            for t in below:
                if support < t:
                    below[t].append(support)
            below[support].append(support)
            tables[support] = _Rows(sorted(support))
        if any(tables[t].beat(c[1], mine) for t in below[support]):
            continue
        kept.append(c)
        tables[support].add(c[1], mine)
    return kept


class _Rows:
    """Kept configurations holding units in the same capped pools: latency, then the units in
    each of ``keys``, one row each."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.table = np.empty((16, len(keys) + 1))
        self.count = 0

    def beat(self, latency: float, mine: Mapping[str, float]) -> bool:
        """Whether a row is at or under this configuration on every axis."""
        if not self.count:
            return False
        me = np.array([latency, *(mine[k] for k in self.keys)])
        return bool((self.table[:self.count] <= me).all(axis=1).any())

    def add(self, latency: float, mine: Mapping[str, float]) -> None:
        if self.count == len(self.table):
            self.table = np.concatenate([self.table, np.empty_like(self.table)])
        self.table[self.count] = [latency, *(mine[k] for k in self.keys)]
        self.count += 1


def _within_token_limits(opts: StepOptions, phase: Phase, options: list[Option]) -> list[Option]:
    """Hard per-phase limits: no decode slower than TBT, no prefill alone slower than TTFT."""
    if phase == "decode" and opts.tbt is not None:
        limit, field_name = opts.tbt, "tbtSeconds"
        value = {id(o): o.estimate.tbt or 0.0 for o in options}
    elif phase == "prefill" and opts.ttft is not None:
        limit, field_name = opts.ttft, "ttftSeconds"
        value = {id(o): o.estimate.latency for o in options}
    else:
        return options
    kept = [o for o in options if value[id(o)] <= limit]
    if options and not kept:
        best = min(options, key=lambda o: value[id(o)])
        opts.rejected.append(
            f"{phase}: no configuration meets {field_name} {limit:g} s; the fastest is "
            f"{value[id(best)]:.4g} s on {best.pool} (TP {best.estimate.tensor_parallel}, "
            f"batch {best.estimate.batch})")
    return kept


def _price(est: Estimate, rate: float | None, visits: float, max_util: float) -> Option:
    if rate is None:
        return Option(est, 1, None, est.cost_per_request * visits)
    step_rate = rate * visits
    if est.throughput is None:  # usage-priced (table without a replica throughput)
        hourly = est.cost_per_request * step_rate * 3600
        return Option(est, 1, hourly, hourly)
    replicas = ceil_replicas(step_rate, est.throughput, max_util)
    # A replica's hourly price is what it earns flat out: cost per request * its throughput.
    hourly = replicas * est.cost_per_request * est.throughput * 3600.0
    return Option(est, replicas, hourly, hourly)


def _prune(options: list[Option], capped: frozenset[str], phase: Phase = "run",
           weight: Weight = _one) -> list[Option]:
    """Per pool, drop options another option beats or ties on every axis that matters: cost
    (as the solve prices it), latency, time between tokens, and units where the pool's size is
    limited."""
    kept: list[Option] = []
    for pool, group in sorted(_by_pool(options).items()):
        units, pods = pool in capped, pool + PODS in capped  # one pool: the same for all
        keys = [(o.objective * weight(phase, o), o.estimate.latency, o.estimate.tbt or 0.0,
                 o.units_total if units else 0.0, float(o.replicas) if pods else 0.0)
                for o in group]
        order = sorted(range(len(group)), key=lambda i: (
            *keys[i], group[i].estimate.tensor_parallel, group[i].estimate.batch))
        front: list[tuple[float, ...]] = []
        for i in order:
            # sorted by cost first: only a kept option can beat or tie this one
            k = keys[i]
            if any(f[1] <= k[1] and f[2] <= k[2] and f[3] <= k[3] and f[4] <= k[4]
                   for f in front):
                continue
            front.append(k)
            kept.append(group[i])
    return kept
