"""An open-loop load generator for a graph's gateway (`agentgraph loadgen`), for demos, tests and
benchmarks.

Open loop: requests leave on schedule whatever the answers do, so a slow graph meets the load
it would meet in production instead of slowing its own clients down (a closed loop, with
``concurrency``, measures saturation throughput instead). A fixed rate, or stages of rates
("10:30,40:30": 10/s for 30 s, then 40/s for 30 s). Bounded in time and in count; requests
still in flight past ``max_in_flight`` are not sent and counted as dropped. Loopback targets
only: this is a test tool, not a way to load someone else's service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from agentgraph.runtime import http

MAX_IN_FLIGHT = 10_000


@dataclass(frozen=True)
class Stage:
    rate: float  # requests per second
    seconds: float


@dataclass
class Sample:
    stage: int
    sent_at: float  # seconds since the start
    latency: float
    status: int  # 0: no HTTP answer (connection failure, timeout)
    error: str = ""


@dataclass
class Report:
    stages: list[Stage]
    samples: list[Sample] = field(default_factory=list)
    dropped: int = 0
    elapsed: float = 0.0


def parse_stages(text: str) -> list[Stage]:
    """"rate:seconds,rate:seconds" -> stages; errors name the piece."""
    stages = []
    for piece in text.split(","):
        rate, _, seconds = piece.partition(":")
        try:
            stage = Stage(float(rate), float(seconds))
        except ValueError:
            raise ValueError(f"stage {piece!r}: expected RATE:SECONDS") from None
        if not (stage.rate > 0 and stage.seconds > 0 and math.isfinite(stage.rate)
                and math.isfinite(stage.seconds)):
            raise ValueError(f"stage {piece!r}: rate and seconds must be positive")
        stages.append(stage)
    return stages


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if not host:
        raise ValueError(f"{url}: no host")
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError as e:
        raise ValueError(f"{url}: cannot resolve {host}: {e}") from None
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise ValueError(f"{url}: {host} is not a loopback address; loadgen only loads this "
                         "machine (use kubectl port-forward to reach a remote gateway)")


async def run(url: str, body: Any, stages: Sequence[Stage] = (), concurrency: int = 0,
              duration: float = 0.0, max_requests: int | None = None, timeout: float = 30.0,
              max_in_flight: int = MAX_IN_FLIGHT, client: http.Client | None = None
              ) -> Report:
    """Open loop over ``stages``, or a closed loop of ``concurrency`` senders for
    ``duration`` seconds."""
    client = client or http.Client()
    payload = orjson.dumps(body)
    report = Report(list(stages) or [Stage(0.0, duration)])
    loop = asyncio.get_running_loop()
    start = loop.time()
    in_flight: set[asyncio.Task[None]] = set()
    count = 0

    async def one(stage: int) -> None:
        sent = loop.time()
        headers = {"Content-Type": "application/json", "X-Request-Id": uuid.uuid4().hex}
        try:
            async with asyncio.timeout(timeout):
                got = await client.request("POST", url, payload, headers)
            status, error = got.status, ""
            if status >= 400:
                data = got.json() if got.body else None
                error = str((data or {}).get("error", {}).get("reason", "")) if isinstance(
                    data, dict) else ""
        except (http.HTTPError, TimeoutError) as e:
            status, error = 0, str(e) or type(e).__name__
        report.samples.append(Sample(stage, sent - start, loop.time() - sent, status, error))

    if concurrency > 0:
        end = start + duration

        async def sender() -> None:
            nonlocal count
            while loop.time() < end and (max_requests is None or count < max_requests):
                count += 1
                await one(0)

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    else:
        at = start
        for index, stage in enumerate(stages):
            n = int(stage.rate * stage.seconds)
            for i in range(n):
                if max_requests is not None and count >= max_requests:
                    break
                due = at + i / stage.rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(in_flight) >= max_in_flight:
                    report.dropped += 1
                    continue
                count += 1
                task = asyncio.create_task(one(index))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            at += stage.seconds
        if in_flight:
            await asyncio.wait(in_flight)
    report.elapsed = loop.time() - start
    return report


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-100) by nearest rank; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def summary(report: Report) -> list[dict[str, Any]]:
    """One row per stage (and one for all of them)."""
    rows = []
    groups = [(str(i + 1), [s for s in report.samples if s.stage == i])
              for i in range(len(report.stages))]
    if len(groups) > 1:
        groups.append(("all", report.samples))
    for name, samples in groups:
        ok = [s.latency for s in samples if s.status == 200]
        errors: dict[str, int] = {}
        for s in samples:
            if s.status != 200:
                errors[str(s.status or "no answer")] = errors.get(str(s.status or "no answer"),
                                                                   0) + 1
        span = (max(s.sent_at for s in samples) - min(s.sent_at for s in samples)
                if len(samples) > 1 else 0.0)
        stage = report.stages[int(name) - 1] if name != "all" else None
        rows.append({
            "stage": name, "asked": stage.rate if stage else None, "sent": len(samples),
            "ok": len(ok), "errors": errors,
            "rate": round((len(samples) - 1) / span, 2) if span > 0 else None,
            "p50": percentile(ok, 50), "p95": percentile(ok, 95), "p99": percentile(ok, 99),
            "max": max(ok) if ok else math.nan})
    return rows


def format_table(report: Report) -> str:
    lines = [f"{'stage':>5} {'asked/s':>8} {'sent':>7} {'ok':>7} {'sent/s':>8} "
             f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}  errors"]
    for row in summary(report):
        lines.append(
            f"{row['stage']:>5} {row['asked'] or '-':>8} {row['sent']:>7} {row['ok']:>7} "
            f"{row['rate'] or '-':>8} {row['p50'] * 1e3:>8.1f} {row['p95'] * 1e3:>8.1f} "
            f"{row['p99'] * 1e3:>8.1f} {row['max'] * 1e3:>8.1f}  "
            + (", ".join(f"{k}: {v}" for k, v in sorted(row["errors"].items())) or "-"))
    lines.append(f"{len(report.samples)} requests in {report.elapsed:.1f} s"
                 + (f"; {report.dropped} not sent (over {MAX_IN_FLIGHT} in flight)"
                    if report.dropped else ""))
    return "\n".join(lines)
